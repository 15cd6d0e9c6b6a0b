"""Building blocks of benchmarks/significance_calibration.py, the simulation behind the report's default test."""

from __future__ import annotations

import importlib.util
import math
import sys

import numpy as np
import pytest

from tests.conftest import REPO
from scipy import stats

PATH = REPO / "benchmarks" / "significance_calibration.py"


@pytest.fixture(scope="module")
def cal():
    spec = importlib.util.spec_from_file_location("significance_calibration", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _splits(cal, model, rng):
    return cal.draw_split(rng, model.n_val, model), cal.draw_split(rng, model.n_test, model)


def _seeded(cal, model, rng, val, test, n_seeds, strength=None, effects=None, noise=None):
    effects = cal.draw_effects(rng, n_seeds, model) if effects is None else effects
    noise = cal.draw_noise(rng, n_seeds, model) if noise is None else noise
    return cal.method_runs(val, test, model.strength if strength is None else strength, effects, noise, model, False)


def test_wilson_matches_hand_computation(cal):
    # 5 / 100: p = 0.05, z^2 = 3.8415; centre (0.05 + 0.019207) / 1.038415 = 0.066647,
    # half-width 1.96 * sqrt(0.000475 + 0.000096) / 1.038415 = 0.045103 (published: [0.0215, 0.1118])
    low, high = cal.wilson(5, 100)
    assert low == pytest.approx(0.021544, abs=2e-6) and high == pytest.approx(0.111750, abs=2e-6)
    z2 = cal.Z95**2  # k = 0: [0, z^2 / (n + z^2)]; k = n: [n / (n + z^2), 1]
    assert cal.wilson(0, 50) == pytest.approx((0.0, z2 / (50 + z2)), abs=1e-12)
    assert cal.wilson(50, 50) == pytest.approx((50 / (50 + z2), 1.0), abs=1e-12)
    assert all(math.isnan(x) for x in cal.wilson(0, 0))


def test_mc_error_rate(cal):
    assert cal.mc_error_fpr(3, 10**12) == pytest.approx(0.05, abs=1e-9)
    expected = stats.t.sf(stats.t.ppf(0.95, 2) / math.sqrt(1 + 3 / 100), 2)
    assert cal.mc_error_fpr(3, 100) == pytest.approx(expected) and 0.05 < expected < 0.052


def test_null_methods_have_the_same_expected_f1(cal):
    """A and B drawn as the simulation draws them (same splits, independent seed effects and noise): the mean
    test macro F1 agree within 4 standard errors; the split effect cancels (both share the splits), so the SE is
    sqrt(2 / (splits * seeds)) times the pooled within-split seed std."""
    model, rng = cal.Model(), np.random.default_rng(11)
    diffs, within = [], []
    for _ in range(6):
        val, test = _splits(cal, model, rng)
        a, b = (_seeded(cal, model, rng, val, test, 10) for _ in range(2))
        diffs.append(a.test_f1.mean() - b.test_f1.mean())
        within += [a.test_f1.var(ddof=1), b.test_f1.var(ddof=1)]
    se = math.sqrt(np.mean(within) * 2 / 60)
    assert 0.0 < se < 0.004  # the tolerance below is at most 1.6 points, so a real head start would show
    assert abs(np.mean(diffs)) <= 4 * se


def test_seed_effects_are_shared_between_val_and_test(cal):
    """A lucky seed is lucky on both splits: a clearly positive val/test correlation across seeds and a seed std of
    test macro F1 of 1-2 points; with the seed effects switched off (deterministic) the correlation is much weaker
    (only the image noise and the threshold choice are left)."""
    model, rng = cal.Model(), np.random.default_rng(12)
    pooled = {False: ([], []), True: ([], [])}
    std = []
    for _ in range(6):
        val, test = _splits(cal, model, rng)
        for det in (False, True):
            runs = _seeded(cal, model, rng, val, test, 10, effects=cal.draw_effects(rng, 10, model, det))
            pooled[det][0].append(runs.val_f1 - runs.val_f1.mean())
            pooled[det][1].append(runs.test_f1 - runs.test_f1.mean())
            if not det:
                std.append(runs.test_f1.std(ddof=1))
    corr = {det: np.corrcoef(np.concatenate(v), np.concatenate(t))[0, 1] for det, (v, t) in pooled.items()}
    assert corr[False] > 0.3 and corr[False] > corr[True] + 0.2
    assert 0.009 < np.mean(std) < 0.02


@pytest.mark.parametrize("deterministic", [False, True])
def test_alternative_achieves_the_requested_difference(cal, deterministic):
    """The calibrated offset for +2 points, checked on fresh draws with common random numbers: within 4 combined
    standard errors (of the calibration's mean gain near the offset and of this measurement), and that tolerance
    itself at most 0.8 points (the threshold choice on val is discrete, so even common random numbers leave a
    noisy gain per split)."""
    model = cal.Model()
    n_sets, n_seeds = (36, 1) if deterministic else (12, 3)
    offsets, grid, mean, gains = cal.calibrate_offsets(np.random.default_rng(13), model, [0.02], n_sets, n_seeds,
                                                       deterministic)
    assert np.all(np.diff(mean) >= 0) and mean[0] == 0.0
    j = int(np.argmin(np.abs(grid - offsets[0])))
    se_cal = gains[:, j].std(ddof=1) / math.sqrt(n_sets)
    rng = np.random.default_rng(14)
    measured = []
    for _ in range(n_sets):
        val, test = _splits(cal, model, rng)
        effects = cal.draw_effects(rng, n_seeds, model, deterministic)
        noise = cal.draw_noise(rng, n_seeds, model)
        base, up = (_seeded(cal, model, rng, val, test, n_seeds, model.strength + o, effects, noise)
                    for o in (0.0, offsets[0]))
        measured.append(up.test_f1.mean() - base.test_f1.mean())
    se = math.hypot(se_cal, np.std(measured, ddof=1) / math.sqrt(n_sets))
    assert 4 * se <= 0.008
    assert abs(np.mean(measured) - 0.02) <= 4 * se


def test_val_picked_rule(cal):
    """Declared always tallies A's p; val-picked uses B's test under the null when val picks B, and counts a miss
    (without testing) under an alternative."""
    tally, called = cal.Tally(), []

    def swap():
        called.append(1)
        return 0.01

    cal._tally_pair(tally, "t", "3", 0, 0.5, swap, a_picked=False)
    assert tally.count[("t", "declared", "3", 0)] == [0, 1, 0]
    assert tally.count[("t", "val-picked", "3", 0)] == [1, 1, 0] and called == [1]
    cal._tally_pair(tally, "t", "3", 1, 0.01, swap, a_picked=False)
    assert tally.count[("t", "declared", "3", 1)] == [1, 1, 0]
    assert tally.count[("t", "val-picked", "3", 1)] == [0, 1, 0] and called == [1]
    cal._tally_pair(tally, "t", "3", 1, math.nan, swap, a_picked=True)
    assert tally.count[("t", "val-picked", "3", 1)] == [0, 2, 1]
    assert cal._reject(0.05) and not cal._reject(0.0501) and not cal._reject(math.nan)


@pytest.mark.slow
def test_quick_run_has_every_line(cal, tmp_path):
    out = tmp_path / "table.md"
    result = cal.main(["--quick", "--markdown", str(out)], log=lambda line: None)
    keys = [(r["test"], r["rule"], r["seeds"]) for r in result["rows"]]
    expected = {(t, rule, str(n)) for t in ("seed-t", "hier-boot", "image-boot") for rule in cal.RULES
                for n in cal.SEED_COUNTS}
    expected |= {("image-boot", rule, "1 v 1") for rule in cal.RULES}
    expected |= {("seed-t", rule, "1 v 3") for rule in cal.RULES}
    assert len(keys) == len(set(keys)) == len(expected) and set(keys) == expected
    quick = cal.QUICK
    for row in result["rows"]:
        assert row["ci_low"] <= row["fpr"] <= row["ci_high"]
        assert len(row["power"]) == 3 and all(0.0 <= p <= 1.0 for p in row["power"])
        if row["seeds"] in ("3", "5", "10"):
            reps = (quick.reps if row["test"] == "seed-t"
                    else quick.boot_reps[cal.SEED_COUNTS.index(int(row["seeds"]))])
        else:
            reps = quick.det_boot_reps if row["seeds"] == "1 v 1" else quick.det_seed_reps
        assert row["reps"] == row["power_reps"] == reps
    text = out.read_text()
    assert len([line for line in text.splitlines() if line.startswith("| ")]) == len(expected) + 1  # and the header
    model = result["model"]
    assert 0.2 < model["mean_test_f1"] < 0.5 and model["val_test_seed_corr"] > 0
