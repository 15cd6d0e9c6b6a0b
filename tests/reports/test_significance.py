"""Vectorised bootstrap (bench.reports.significance) against explicit resampling and hand-computable cases."""

import math

import numpy as np
import pytest
from scipy import stats

from bench import metrics
from bench.reports.significance import (
    RunScores,
    compare_to_reference,
    at_floor,
    format_p,
    holm_bounds,
    hierarchical_bootstrap,
    holm,
    image_weights,
    metric_draws,
    paired_bootstrap,
)
from bench.reports.seed_tests import seed_mdd, seed_test, seed_welch


def _labels(n=200, c=4, seed=0):
    return (np.random.default_rng(seed).random((n, c)) < 0.3).astype(np.float32)


def _tied_run(n=90, c=6, seed=0, threshold=0.1):
    """Scores with heavy ties: many exactly 1.0 (saturated) and the rest on a 0.1 grid (float32, so 0.1 is not
    above the threshold 0.1); labels with one class without positives and one with only positives; a ranking
    with ties of its own."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.3).astype(np.float32)
    y[:, 0] = 0.0
    y[:, 1] = 1.0
    scores = np.round(rng.random((n, c)), 1).astype(np.float32)
    scores[rng.random((n, c)) < 0.35] = 1.0
    ranking = np.round(rng.normal(size=(n, c)), 1)  # float64, tied on a 0.1 grid
    return RunScores(scores, y, threshold, ranking)


def _reference(run, metric, idx):
    """The metric of the explicitly resampled arrays (bench.metrics, unweighted)."""
    if metric == "macro_f1":
        return metrics.macro_f1(run.scores[idx], run.labels[idx], run.threshold)
    if metric == "mAP":
        ranking = run.scores if run.ranking is None else run.ranking
        return metrics.mean_average_precision(ranking[idx], run.labels[idx])
    return metrics.accuracy(run.scores[idx], run.labels[idx])


def _full(run, metric):
    """The metric on the full test set."""
    return _reference(run, metric, np.arange(len(run.labels)))


def _random_indices(n, n_boot, seed):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    idx[0] = 0  # one image n times
    idx[1] = np.arange(n)  # the test set itself
    idx[2, : n // 2] = idx[2, n // 2 : 2 * (n // 2)]  # many duplicates
    return idx


@pytest.mark.parametrize("metric", ["macro_f1", "mAP"])
@pytest.mark.parametrize("use_ranking", [False, True])
def test_metric_draws_equal_the_metric_of_explicit_resamples(metric, use_ranking):
    for seed in range(3):
        run = _tied_run(seed=seed, threshold=(0.1, 0.5, 0.95)[seed])
        if not use_ranking:
            run = RunScores(run.scores, run.labels, run.threshold)
        idx = _random_indices(len(run.labels), 37, seed)  # 37: not a multiple of the packed lanes
        weights = np.stack([np.bincount(i, minlength=len(run.labels)) for i in idx])
        expected = np.array([_reference(run, metric, i) for i in idx])
        draws = metric_draws(run, metric, weights)
        assert draws.shape == (37,) and draws.dtype == np.float64
        np.testing.assert_allclose(draws, expected, rtol=0, atol=1e-12)
        assert np.ptp(expected) > 0.05  # the resamples differ: the comparison means something


def test_metric_draws_accuracy_equal_explicit_resamples():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 5, size=120)
    scores = np.round(rng.random((120, 5)), 1).astype(np.float32)  # argmax ties go to the lowest class
    run = RunScores(scores, y)
    idx = _random_indices(120, 50, 4)
    weights = np.stack([np.bincount(i, minlength=120) for i in idx])
    expected = np.array([metrics.accuracy(scores[i], y[i]) for i in idx])
    np.testing.assert_allclose(metric_draws(run, "accuracy", weights), expected, rtol=0, atol=1e-12)


def test_large_counts_widen_the_packed_lanes():
    """Rows summing past 2**16 need wider lanes than 16 bits; compare with the rows repeated explicitly."""
    run = _tied_run(n=30, c=4, seed=5)
    rng = np.random.default_rng(5)
    weights = rng.integers(2500, 5000, size=(3, 30))
    weights[0, 0] = 70_000  # one image alone past 2**16
    assert weights.sum(axis=1).min() >= 2**16
    for metric in ("macro_f1", "mAP"):
        expected = [_reference(run, metric, np.repeat(np.arange(30), w)) for w in weights]
        np.testing.assert_allclose(metric_draws(run, metric, weights), expected, rtol=0, atol=1e-12)


def test_map_on_the_ranking_ignores_the_tie_order_of_saturated_scores():
    rng = np.random.default_rng(6)
    n, c = 150, 5
    y = (rng.random((n, c)) < 0.3).astype(np.float32)
    margin = rng.normal(0.0, 1.0, (n, c)) + 3.0 * y + 20.0 * (rng.random((n, c)) < 0.4)
    probs = (1.0 / (1.0 + np.exp(-margin))).astype(np.float32)
    assert np.mean(probs == 1.0) > 0.3  # saturated: one big tie group per class
    weights = image_weights(n, 64, rng)
    reverse = np.arange(n)[::-1]  # reverses the order of the images inside every tie group
    run = RunScores(probs, y, 0.5, margin)
    flipped = RunScores(probs[reverse], y[reverse], 0.5, margin[reverse])
    on_ranking = metric_draws(run, "mAP", weights)
    np.testing.assert_allclose(metric_draws(flipped, "mAP", weights[:, reverse]), on_ranking, rtol=0, atol=1e-12)
    repeated = [np.repeat(np.arange(n), w) for w in weights[:5]]
    expected = [metrics.mean_average_precision(margin[i], y[i]) for i in repeated]
    np.testing.assert_allclose(on_ranking[:5], expected, rtol=0, atol=1e-12)
    # the saturated probabilities rank differently (ties): the ranking is what was used
    on_probs = metric_draws(RunScores(probs, y, 0.5), "mAP", weights)
    assert np.abs(on_probs - on_ranking).max() > 1e-3
    flipped_probs = metric_draws(RunScores(probs[reverse], y[reverse], 0.5), "mAP", weights[:, reverse])
    np.testing.assert_allclose(flipped_probs, on_probs, rtol=0, atol=1e-12)


def test_image_weights_are_the_draws_of_the_former_loop():
    n, n_boot = 57, 20
    weights = image_weights(n, n_boot, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    expected = np.stack([np.bincount(rng.integers(0, n, size=n), minlength=n) for _ in range(n_boot)])
    assert weights.shape == (n_boot, n) and (weights.sum(axis=1) == n).all()
    np.testing.assert_array_equal(weights, expected)


def test_paired_bootstrap_is_the_former_image_loop():
    y = _labels(80, 3, seed=7)
    rng = np.random.default_rng(8)
    best = [RunScores(rng.random(y.shape).astype(np.float32) * 0.5 + 0.5 * y, y, 0.4) for _ in range(2)]
    other = [RunScores(rng.random(y.shape).astype(np.float32), y, 0.5) for _ in range(3)]
    n_boot = 60
    for metric in ("macro_f1", "mAP"):
        loop_rng = np.random.default_rng(0)
        draws = []
        for _ in range(n_boot):
            idx = loop_rng.integers(0, 80, size=80)
            means = [np.mean([_reference(r, metric, idx) for r in runs]) for runs in (best, other)]
            draws.append(means[0] - means[1])
        out = paired_bootstrap(best, other, metric, n_boot=n_boot, seed=0)
        assert out["ci95_low"] == pytest.approx(np.percentile(draws, 2.5), abs=1e-12)
        assert out["ci95_high"] == pytest.approx(np.percentile(draws, 97.5), abs=1e-12)
        assert out["p_value"] == (1 + np.sum(np.array(draws) <= 0)) / (n_boot + 1)
        assert out["test"] == "paired bootstrap (test images)"


def test_identical_methods_give_a_large_p_and_zero_difference():
    y = _labels()
    s = np.random.default_rng(1).random(y.shape).astype(np.float32)
    runs = [RunScores(s, y, 0.5)]
    for metric in ("macro_f1", "mAP"):
        out = hierarchical_bootstrap(runs, runs, metric, n_boot=200)
        assert out["diff"] == 0.0 and out["p_value"] == 1.0 and out["ci95_low"] == out["ci95_high"] == 0.0
    # three seeds each, the same three: the seed draws differ between the methods, the difference is centred on 0
    seeds = [RunScores(np.random.default_rng(k).random(y.shape).astype(np.float32), y, 0.5) for k in range(3)]
    out = hierarchical_bootstrap(seeds, list(seeds), "macro_f1", n_boot=400)
    assert out["diff"] == 0.0 and out["p_value"] >= 0.5 and out["ci95_low"] < 0 < out["ci95_high"]


def test_a_method_better_on_every_image_with_stable_seeds_gets_the_smallest_p():
    y = _labels()
    rng = np.random.default_rng(2)
    perfect = [RunScores(np.where(y > 0, 0.9, 0.1).astype(np.float32) + np.float32(0.01 * k), y, 0.5)
               for k in range(3)]
    noise = [RunScores(rng.random(y.shape).astype(np.float32), y, 0.5) for _ in range(3)]
    n_boot = 300
    for metric in ("macro_f1", "mAP"):
        out = hierarchical_bootstrap(perfect, noise, metric, n_boot=n_boot)
        expected = 1.0 - np.mean([_full(r, metric) for r in noise])
        assert out["diff"] == pytest.approx(expected, abs=1e-12)
        assert out["p_value"] == 1 / (n_boot + 1) and out["ci95_low"] > 0
        assert out["test"] == "hierarchical bootstrap (seeds and test images)"


def _accuracy_runs(n, accuracies, seed):
    """Multiclass runs right on a random subset of the images of each given size."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    runs = []
    for acc in accuracies:
        right = rng.permutation(n) < round(acc * n)
        runs.append(RunScores(np.eye(4, dtype=np.float32)[np.where(right, y, (y + 1) % 4)], y))
    return runs


def test_an_advantage_within_the_seed_spread_is_not_significant_hierarchically():
    reference = _accuracy_runs(1000, (0.95, 0.70, 0.45), seed=0)  # mean 0.70, seeds far apart
    other = _accuracy_runs(1000, (0.62, 0.62, 0.62), seed=1)  # mean 0.62, stable
    image_only = paired_bootstrap(reference, other, "accuracy", n_boot=500)
    both = hierarchical_bootstrap(reference, other, "accuracy", n_boot=500)
    assert image_only["diff"] == both["diff"] == pytest.approx(0.08)
    assert image_only["p_value"] < 0.01  # images alone: a clear win
    assert both["p_value"] > 0.2 and both["p_value"] > 20 * image_only["p_value"]  # seeds: within the spread
    assert both["ci95_low"] < 0 < image_only["ci95_low"]


def test_single_runs_make_the_seed_level_trivial():
    reference = _accuracy_runs(300, (0.8,), seed=2)
    other = _accuracy_runs(300, (0.7,), seed=3)
    both = hierarchical_bootstrap(reference, other, "accuracy", n_boot=100, seed=4)
    image_only = paired_bootstrap(reference, other, "accuracy", n_boot=100, seed=4)
    assert both.pop("test") != image_only.pop("test") and both == image_only


def test_same_seed_same_output_and_the_output_records_n_boot_and_seed():
    y = _labels(60, 3, seed=9)
    rng = np.random.default_rng(9)
    methods = {name: [RunScores(rng.random(y.shape).astype(np.float32), y, 0.5) for _ in range(3)]
               for name in ("c", "a", "b")}
    first = compare_to_reference(methods, "a", ["macro_f1", "mAP"], n_boot=120, seed=5)
    assert first == compare_to_reference(methods, "a", ["macro_f1", "mAP"], n_boot=120, seed=5)
    assert first != compare_to_reference(methods, "a", ["macro_f1", "mAP"], n_boot=120, seed=6)
    assert set(first) == {"b", "c"} and set(first["b"]) == {"macro_f1", "mAP"}
    for result in (first["b"]["mAP"], hierarchical_bootstrap(methods["a"], methods["b"], "mAP", n_boot=120, seed=5)):
        assert result["n_boot"] == 120 and result["seed"] == 5
        assert set(result) >= {"diff", "ci95_low", "ci95_high", "p_value", "n_boot", "seed", "test"}
    again = [hierarchical_bootstrap(methods["a"], methods["b"], "mAP", n_boot=120, seed=5) for _ in range(2)]
    assert again[0] == again[1]


def test_compare_to_reference_shares_one_draw_and_adjusts_with_holm():
    y = _labels(70, 3, seed=10)
    rng = np.random.default_rng(10)

    def runs(quality, k):
        return [RunScores(np.clip(quality * y + rng.random(y.shape), 0, 1).astype(np.float32), y, 0.5)
                for _ in range(k)]

    methods = {"a-ref": runs(0.6, 3), "b": runs(0.3, 2), "c": runs(0.0, 1), "d": runs(0.5, 3)}
    out = compare_to_reference(methods, "a-ref", ["macro_f1", "mAP"], n_boot=150, seed=1)
    for metric in ("macro_f1", "mAP"):
        p = [out[m][metric]["p_value"] for m in ("b", "c", "d")]
        assert [out[m][metric]["p_holm"] for m in ("b", "c", "d")] == holm(p)
        for m in ("b", "c", "d"):
            observed = np.mean([_full(r, metric) for r in methods[m]])
            reference = np.mean([_full(r, metric) for r in methods["a-ref"]])
            assert out[m][metric]["diff"] == pytest.approx(reference - observed, abs=1e-12)
    # two methods, the reference sorting first: the very draws of hierarchical_bootstrap with that seed
    two = {"a-ref": methods["a-ref"], "b": methods["b"]}
    pair = compare_to_reference(two, "a-ref", ["mAP"], n_boot=150, seed=1)["b"]["mAP"]
    single = hierarchical_bootstrap(methods["a-ref"], methods["b"], "mAP", n_boot=150, seed=1)
    assert pair.pop("p_holm") == pair["p_value"] and pair.pop("p_holm_bound") == pair["p_bound"] and pair == single
    # given image weights: the same draws as drawing them from the seed
    weights = image_weights(70, 150, np.random.default_rng(1))
    with_weights = hierarchical_bootstrap(methods["a-ref"], methods["b"], "mAP", seed=1, weights=weights)
    assert with_weights["n_boot"] == 150 and with_weights["diff"] == single["diff"]


def test_mismatched_runs_and_unknown_names_are_errors():
    y = np.random.default_rng(3).integers(0, 3, size=90)
    onehot = np.eye(3, dtype=np.float32)[y]
    runs = [RunScores(onehot, y)]
    with pytest.raises(ValueError, match="same test images"):
        hierarchical_bootstrap(runs, [RunScores(onehot[:10], y[:10])], "accuracy")
    with pytest.raises(ValueError, match="same test images"):
        hierarchical_bootstrap(runs, [RunScores(onehot, (y + 1) % 3)], "accuracy")
    with pytest.raises(ValueError, match="same test images"):
        compare_to_reference({"a": runs, "b": [RunScores(onehot[:10], y[:10])]}, "a", ["accuracy"])
    with pytest.raises(ValueError, match="metric"):
        hierarchical_bootstrap(runs, runs, "f2")
    with pytest.raises(ValueError, match="reference"):
        compare_to_reference({"a": runs}, "z", ["accuracy"])
    with pytest.raises(ValueError, match="weights"):
        metric_draws(runs[0], "accuracy", np.ones((4, 89)))


def test_holm_against_hand_computation():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])  # 3 x 0.01, then max(2 x 0.03, 1 x 0.04)
    assert holm([0.2, 0.5, 0.01]) == pytest.approx([0.4, 0.5, 0.03])
    assert holm([0.6, 0.9]) == [1.0, 1.0]  # capped at 1
    assert holm([0.03]) == [0.03] and holm([]) == []
    adjusted = holm([0.02, math.nan, 0.01])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)
    p = np.random.default_rng(0).random(8)
    order = np.argsort(p)
    assert (np.diff(np.array(holm(p))[order]) >= 0).all()  # monotone in the raw p


def test_format_p():
    assert format_p(0.0004) == "< 0.001" and format_p(1 / 1001) == "< 0.001"
    assert format_p(0.0123) == "0.012" and format_p(0.001) == "0.001" and format_p(1.0) == "1.000"
    assert format_p(math.nan) == "-" and format_p(None) == "-"
    assert format_p(1 / 101, bound=True) == "<= 0.010"  # at the floor of 100 resamples: a bound, rounded up
    assert format_p(6 / 1001, bound=True) == "<= 0.006"  # README's old table: 1/1001 times Holm's 6
    assert format_p(0.0004, bound=True) == "< 0.001"


def test_holm_keeps_bounds():
    """Six comparisons at the floor of 1000 resamples: every adjusted p is 6/1001 and only a bound; a bound that
    does not set the adjusted value leaves it exact, and a p capped at 1 is exact."""
    floor = 1 / 1001
    adjusted, bounds = holm_bounds([floor] * 6, [True] * 6)
    assert adjusted == pytest.approx([6 * floor] * 6) and all(bounds)
    adjusted, bounds = holm_bounds([floor, 0.04], [True, False])  # 2 x floor, then max(2 x floor, 0.04) = 0.04
    assert adjusted == pytest.approx([2 * floor, 0.04]) and bounds == [True, False]
    adjusted, bounds = holm_bounds([0.6, 0.7], [True, False])
    assert adjusted == [1.0, 1.0] and bounds == [False, False]
    assert holm_bounds([0.02, math.nan], [False, True])[0][0] == pytest.approx(0.02)
    assert at_floor(1 / 1001, 1000) and not at_floor(2 / 1001, 1000)


def test_seed_test_matches_scipy_and_says_why():
    ref, other = [0.52, 0.55, 0.53], [0.48, 0.47, 0.50]
    p, why = seed_test(ref, other)
    assert why == "" and p == pytest.approx(stats.ttest_ind(ref, other, equal_var=False, alternative="greater").pvalue)
    p, why = seed_test(ref, [0.50])  # a deterministic method: one-sample t of the reference's seeds against it
    assert why == "" and p == pytest.approx(stats.ttest_1samp(ref, 0.50, alternative="greater").pvalue)
    p, why = seed_test([0.50], other)  # a deterministic reference: is the other's mean below it?
    assert why == "" and p == pytest.approx(stats.ttest_1samp(other, 0.50, alternative="less").pvalue)
    # outside what the calibration covers, no p and the reason
    for a, b, words in (([0.5], [0.4], "one run each"), ([0.5, 0.6], [0.4, 0.45], "fewer than 3 seeds"),
                        ([0.5, 0.6], [0.4], "fewer than 3 seeds"), ([0.5] * 3, [0.4] * 3, "no seed variance"),
                        ([0.5] * 3, [0.4], "no seed variance")):
        p, why = seed_test(a, b)
        assert math.isnan(p) and why == words, (a, b)


@pytest.mark.slow
def test_seed_mdd_has_the_stated_power():
    """At the minimum detectable difference, an independent simulation of scipy's Welch test (normal seeds, std 1,
    other draws than seed_mdd's) rejects 80% of the time; the difference scales with the std."""
    rng = np.random.default_rng(0)
    assert seed_mdd(2.0, 3) == pytest.approx(2 * seed_mdd(1.0, 3))
    for n in (3, 5, 10):
        mdd = seed_mdd(1.0, n)
        a = rng.normal(mdd, 1.0, size=(20000, n))
        b = rng.normal(0.0, 1.0, size=(20000, n))
        rejected = stats.ttest_ind(a, b, axis=1, equal_var=False, alternative="greater").pvalue < 0.05
        assert rejected.mean() == pytest.approx(0.8, abs=0.01), n
    assert seed_mdd(1.0, 3) > seed_mdd(1.0, 5) > seed_mdd(1.0, 10) and math.isnan(seed_mdd(1.0, 1))


def test_seed_welch():
    reference, other = [0.52, 0.55, 0.53], [0.48, 0.47, 0.50]
    expected = stats.ttest_ind(reference, other, equal_var=False, alternative="greater").pvalue
    assert seed_welch(reference, other) == pytest.approx(expected) and expected < 0.01
    assert seed_welch(other, reference) > 0.99
    assert math.isnan(seed_welch([0.5], other)) and math.isnan(seed_welch(reference, []))
