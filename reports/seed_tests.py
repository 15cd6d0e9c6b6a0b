"""Seed-level significance tests (one number per run: its test score), and their power: the report's default test.

Calibrated by simulation (``benchmarks/significance_calibration.py``; results in ``benchmarks/RESULTS.md``): with
the reference declared in advance, :func:`seed_test` rejects at most 5% of true nulls at 3, 5 and 10 seeds and for
3 seeds against a single deterministic run. No torch; numpy and scipy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

def seed_welch(reference_values: Sequence[float], other_values: Sequence[float]) -> float:
    """One-sided Welch t-test over seeds that the reference's mean is greater (scipy's
    ``ttest_ind(equal_var=False, alternative="greater")``); NaN when either side has fewer than 2 values or neither
    side varies over its seeds (the test is undefined there)."""
    a, b = np.asarray(reference_values, dtype=np.float64), np.asarray(other_values, dtype=np.float64)
    if a.size < 2 or b.size < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return math.nan
    from scipy import stats

    return float(stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)


SEED_TEST = "seed-level t-test"
MIN_SEEDS = 3  # the fewest runs a seeded side needs: the calibration (benchmarks/significance_calibration.py) starts there


def seed_test(reference_values: Sequence[float], other_values: Sequence[float]) -> tuple[float, str]:
    """The report's default test: one-sided, of "the reference's mean over seeds is greater", on the runs' test
    scores (one number per run: each already carries its test set's image-level noise for that seed). It is run
    only where the calibration showed it holds its level (false-positive rate <= 0.05 at alpha 0.05, see
    benchmarks/RESULTS.md):

    * both sides with :data:`MIN_SEEDS` or more runs: Welch's t-test (:func:`seed_welch`);
    * one side a single run (a deterministic method) and the other :data:`MIN_SEEDS` or more: a one-sample t-test
      of the other side's runs against that value (``df = n - 1``; the single run's value is taken as exact, which
      it is for a deterministic method on the fixed test set);
    * anything else, no test (NaN) and the reason in words: two single runs (the only noise left is the test
      images', and the paired image bootstrap there rejects 5.7% of true nulls, CI up to 7.8%), fewer than
      :data:`MIN_SEEDS` seeds on a side, or no variation to test against.

    Returns:
        ``(p, why)``: ``why`` is ``""`` when ``p`` was computed, else a short reason.
    """
    from scipy import stats

    a, b = np.asarray(reference_values, dtype=np.float64), np.asarray(other_values, dtype=np.float64)
    if a.size < 1 or b.size < 1:
        return math.nan, "no runs"
    if a.size == 1 and b.size == 1:
        return math.nan, "one run each"
    if any(1 < x.size < MIN_SEEDS for x in (a, b)):
        return math.nan, f"fewer than {MIN_SEEDS} seeds"
    if a.size >= MIN_SEEDS and b.size >= MIN_SEEDS:
        if np.ptp(a) == 0 and np.ptp(b) == 0:
            return math.nan, "no seed variance"
        return float(stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue), ""
    seeded, single, alternative = (a, b[0], "greater") if a.size > 1 else (b, a[0], "less")
    if np.ptp(seeded) == 0:
        return math.nan, "no seed variance"
    return float(stats.ttest_1samp(seeded, single, alternative=alternative).pvalue), ""


def seed_mdd(std: float, n_seeds: int, alpha: float = 0.05, power: float = 0.8, draws: int = 200_000) -> float:
    """The smallest true difference that the one-sided Welch test at ``alpha`` detects with probability ``power``,
    for two methods of ``n_seeds`` normal runs each with seed standard deviation ``std`` (in ``std``'s unit).

    Welch's test rejects when ``(mean_a - mean_b) / se > t_crit(df)``, where ``se`` and ``df`` depend only on the
    sample variances. For one draw of null samples (statistic ``t0``), a true difference ``d`` adds ``d / se``, so
    the draw rejects exactly when ``d > (t_crit(df) - t0) se``: the power at ``d`` is the fraction of draws whose
    threshold is below ``d``, and the answer is the ``power`` quantile of those thresholds (``draws`` Monte Carlo
    draws from a fixed seed: the same number every call). NaN for fewer than 2 seeds or a non-positive std."""
    if n_seeds < 2 or not std > 0:
        return math.nan
    from scipy import stats

    rng = np.random.default_rng(20241204)
    a, b = rng.standard_normal((2, draws, n_seeds))
    va, vb = a.var(axis=1, ddof=1) / n_seeds, b.var(axis=1, ddof=1) / n_seeds
    se = np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (n_seeds - 1) + vb**2 / (n_seeds - 1))
    t0 = (a.mean(axis=1) - b.mean(axis=1)) / se
    thresholds = (stats.t.ppf(1 - alpha, df) - t0) * se
    return float(std * np.quantile(thresholds, power))
