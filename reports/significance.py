"""Significance of method differences from the stored test scores (no retraining, no torch): numpy only.

A bootstrap resample draws the test images with replacement. Drawing an image ``k`` times is the same as giving it
the weight ``k``, so a resample is a row of multinomial counts (:func:`image_weights`) and every metric is computed
for all resamples at once from weighted confusion counts and weighted cumulative counts (:func:`metric_draws`),
without a Python loop over resamples. For counts from ``bincount(idx)`` the result equals, to rounding, the metric
of the explicitly resampled arrays ``scores[idx]``, ``labels[idx]``:

* ``macro_f1``: ``TP = weights @ (pred & y)``, ``#pred = weights @ pred``, ``#pos = weights @ y`` (exact
  integer sums); per class F1 = 2TP / (2TP + FP + FN) = 2TP / (#pred + #pos), 0 when undefined; mean over all
  classes. ``pred`` is ``scores > threshold`` in the scores' dtype, as :func:`bench.metrics.macro_f1`.
* ``mAP``: per class the images are sorted once by the ranking scores (descending, stable); equal scores form one
  tie group and a positive gets the precision at the end of its group, as
  :func:`bench.metrics.per_class_average_precision` (sklearn's ``average_precision_score``); a resample repeats
  an image inside its own group, so the groups do not change. Only the groups holding a positive matter:
  cumulative sums of the sorted weights give the weighted number of images up to each such group's end, and over
  the positives alone, the true positives; AP = sum over groups of (weighted positives in the group) x
  (cumulative TP / cumulative count), divided by the weighted positives. Classes without (weighted) positives
  count 0 in the mean. The ranking is ``RunScores.ranking`` when given (unsaturated logit margins), else the
  probabilities.
* ``accuracy``: weighted mean of ``argmax(scores) == label``.

:func:`hierarchical_bootstrap` resamples the test images (the same draw for both methods: paired) and, independently
per method, its seeds (runs), so a difference within the seed-to-seed spread is not called significant; with one
run per method the seed level is trivial. :func:`compare_to_reference` compares every method to a reference on one
shared image draw and adds Holm-Bonferroni adjusted p-values. :func:`paired_bootstrap` is the image-only bootstrap
(the seeds kept fixed), kept for existing callers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from bench import metrics

METRICS = ("macro_f1", "mAP", "accuracy")
HIERARCHICAL_TEST = "hierarchical bootstrap (seeds and test images)"
VERSION = 1  # bump when what the bootstrap computes changes: it keys the report cache
IMAGE_TEST = "paired bootstrap (test images)"


@dataclass(frozen=True)
class RunScores:
    """One run's test scores and labels.

    Attributes:
        scores: [N, C] probabilities (float32); the F1 threshold applies to these, in their dtype.
        labels: [N, C] binary (multilabel) or [N] int class indices (multiclass).
        threshold: The threshold the run's protocol applied to test (``None``: 0.5).
        ranking: [N, C] unsaturated ranking scores (e.g. logit margins, float64) for mAP; ``None``: ``scores``.
            Probabilities saturate (many exactly 1.0 in float32), which makes ties that the logits do not have.
    """

    scores: np.ndarray
    labels: np.ndarray
    threshold: float | None = None
    ranking: np.ndarray | None = None


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"bootstrap metric {metric!r}: expected one of {', '.join(METRICS)}")


def _threshold(run: RunScores) -> float:
    return 0.5 if run.threshold is None else run.threshold


def _ranking(run: RunScores) -> np.ndarray:
    return np.asarray(run.scores if run.ranking is None else run.ranking, dtype=np.float64)


def metric_value(run: RunScores, metric: str, index: np.ndarray | None = None) -> float:
    """The metric of one run on the full test set, or on the images ``index`` (unweighted, via bench.metrics)."""
    _check_metric(metric)
    pick = (lambda a: a) if index is None else (lambda a: np.asarray(a)[index])
    if metric == "macro_f1":
        return metrics.macro_f1(pick(run.scores), pick(run.labels), _threshold(run))
    if metric == "mAP":
        return metrics.mean_average_precision(pick(_ranking(run)), pick(run.labels))
    return metrics.accuracy(pick(run.scores), pick(run.labels))


def image_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap resamples of ``n`` items as counts: [n_boot, n] int64, each row multinomial summing to ``n``.

    Row ``b`` is ``bincount(rng.integers(0, n, size=n))`` for the ``b``-th draw, the very draws of a loop of
    ``n_boot`` calls ``rng.integers(0, n, size=n)`` from the same generator.
    """
    if n < 1 or n_boot < 1:
        raise ValueError(f"image_weights needs n >= 1 and n_boot >= 1; got n={n}, n_boot={n_boot}")
    idx = rng.integers(0, n, size=(n_boot, n))
    idx += np.arange(n_boot)[:, None] * n
    return np.bincount(idx.ravel(), minlength=n_boot * n).reshape(n_boot, n)


class _Resamples:
    """Bootstrap weights [n_boot, N] prepared once for the metric draws of every run.

    ``wt``: the weights transposed, [N, n_boot], float32 while every sum of counts stays below 2**24 (so the
    confusion counts by matrix product are exact integers), else float64. ``packed_t``: the same counts as
    unsigned lanes (16 bits while every row sums below 2**16, else 32 or 64) packed into uint64 words, transposed
    to [words, N]. Adding two words adds all their lanes at once, and no lane carries into the next because no
    cumulative sum exceeds the largest row sum, which fits a lane; the AP's cumulative sums thus handle 4
    resamples per element. :func:`_lanes` unpacks a result.
    """

    def __init__(self, weights: np.ndarray, n: int) -> None:
        w = np.asarray(weights)
        if w.ndim != 2 or w.shape[1] != n or w.shape[0] < 1:
            raise ValueError(f"weights must be [n_boot, {n}] (one count per test image); got shape {w.shape}")
        if w.dtype.kind not in "biuf" or (w < 0).any() or (w.dtype.kind == "f" and (w != np.round(w)).any()):
            raise ValueError("weights must be non-negative integer counts")
        self.n_boot = w.shape[0]
        largest = int(w.sum(axis=1).max())
        # float32 sums of integers are exact below 2**24: half the work of float64 in the confusion counts
        self.wt = np.ascontiguousarray(w.T, dtype=np.float32 if largest < 2**24 else np.float64)
        self.lane = np.uint16 if largest < 2**16 else np.uint32 if largest < 2**32 else np.uint64
        self.per_word = 8 // np.dtype(self.lane).itemsize
        padded = np.zeros((n, -(-self.n_boot // self.per_word) * self.per_word), dtype=self.lane)
        padded[:, : self.n_boot] = w.T
        self.packed_t = np.ascontiguousarray(padded.view(np.uint64).T)  # [words, N]


def metric_draws(run: RunScores, metric: str, weights: np.ndarray) -> np.ndarray:
    """The metric on each weighted resample of the test images, vectorised over resamples.

    Args:
        run: The run's scores and labels.
        metric: ``macro_f1``, ``mAP`` or ``accuracy``.
        weights: [n_boot, N] non-negative integer counts per test image (e.g. from :func:`image_weights`).

    Returns:
        float64 [n_boot]; entry ``b`` equals the unweighted metric on the images repeated ``weights[b]`` times.
    """
    _check_metric(metric)
    return _draws(run, metric, _Resamples(weights, len(run.labels)))


def _draws(run: RunScores, metric: str, res: _Resamples) -> np.ndarray:
    """:func:`metric_draws` from prepared weights (shared between runs)."""
    if metric == "accuracy":
        correct = (np.argmax(run.scores, axis=1) == np.asarray(run.labels)).astype(res.wt.dtype)
        return (correct @ res.wt).astype(np.float64) / res.wt.sum(axis=0, dtype=np.float64)
    y = np.asarray(run.labels).astype(bool)
    if y.ndim != 2:
        raise ValueError(f"{metric} needs [N, C] binary labels; got shape {y.shape}")
    if metric == "macro_f1":
        pred = metrics._predict(metrics._float_scores(run.scores), _threshold(run))
        n_class = y.shape[1]
        indicators = np.concatenate([pred & y, pred, y], axis=1).astype(res.wt.dtype)
        counts = (indicators.T @ res.wt).astype(np.float64)  # [3C, n_boot], exact integers
        tp, denom = counts[:n_class], counts[n_class : 2 * n_class] + counts[2 * n_class :]
        f1 = np.divide(2.0 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
        return f1.mean(axis=0)
    return _average_precision(_ranking(run), y, res).mean(axis=0)


def _average_precision(ranking: np.ndarray, y: np.ndarray, res: _Resamples) -> np.ndarray:
    """Weighted AP per class and resample: [C, n_boot] (see the module docstring).

    Per class, with the images sorted by ranking: cumulative sums of the packed weights give the (weighted)
    number of images up to each tie group's end, and over the positives alone, the true positives; only the K
    groups that hold a positive are kept. The sums run along the contiguous axis of ``res.packed_t``.
    """
    n_class = y.shape[1]
    orders = np.argsort(-ranking, axis=0, kind="stable")
    out = np.zeros((n_class, res.n_boot))
    for c in range(n_class):
        order = orders[:, c]
        pos = np.flatnonzero(y[order, c])  # sorted positions of the positives
        if pos.size == 0:
            continue
        r = ranking[order, c]
        ends = np.flatnonzero(np.append(r[:-1] != r[1:], True))  # last position of each tie group
        pos_end = ends[np.searchsorted(ends, pos)]  # end of each positive's tie group (non-decreasing)
        last = np.flatnonzero(np.append(pos_end[:-1] != pos_end[1:], True))  # last positive of each group
        group_end = pos_end[last]
        images = np.take(res.packed_t, order[: group_end[-1] + 1], axis=1)
        np.cumsum(images, axis=1, out=images)
        positives = np.take(res.packed_t, order[pos], axis=1)
        np.cumsum(positives, axis=1, out=positives)
        cum_tp = np.take(positives, last, axis=1)  # [words, K] packed: true positives up to each group's end
        tp = cum_tp.copy()  # per group; no lane borrows, every lane is non-decreasing along the groups
        tp[:, 1:] -= cum_tp[:, :-1]
        # lanes [K, n_boot] (exact integer counts): the sum over groups adds whole rows
        count, cum_tp, tp = (_lanes(res, a) for a in (np.take(images, group_end, axis=1), cum_tp, tp))
        np.maximum(count, 1, out=count)  # no images up to a group: no positives either (0 / 1)
        precision = np.divide(cum_tp, count, dtype=np.float64)  # at each group's end
        total = np.multiply(precision, tp, out=precision).sum(axis=0)
        n_pos = cum_tp[-1].astype(np.float64)
        out[c] = np.divide(total, n_pos, out=np.zeros(res.n_boot), where=n_pos > 0)
    return out


def _lanes(res: _Resamples, packed: np.ndarray) -> np.ndarray:
    """Packed sums [words, K] -> their lanes [K, n_boot] (one row per group)."""
    return np.ascontiguousarray(packed.T).view(res.lane)[:, : res.n_boot]


def _check_same_test_set(runs: Sequence[RunScores], what: str) -> int:
    if not runs:
        raise ValueError(f"{what} needs at least one run per method")
    labels = np.asarray(runs[0].labels)
    for run in runs:
        same = np.shape(run.labels) == labels.shape and np.shape(run.scores)[0] == labels.shape[0]
        if not same or not np.array_equal(run.labels, labels):
            raise ValueError(f"{what} needs every run scored on the same test images and labels")
    return labels.shape[0]


def _seed_counts(n_runs: int, n_boot: int, rng: np.random.Generator) -> np.ndarray | None:
    """Seed resamples as counts [n_boot, n_runs]; ``None`` (each run once) for a single run."""
    return image_weights(n_runs, n_boot, rng) if n_runs > 1 else None


def _seed_means(
    runs: Sequence[RunScores], metric: str, res: _Resamples, seed_counts: np.ndarray | None
) -> np.ndarray:
    """Mean over the drawn seeds of the metric on each image resample: [n_boot] (``seed_counts`` [n_boot, S],
    ``None``: every run once)."""
    draws = np.stack([_draws(r, metric, res) for r in runs])  # [S, n_boot]
    if seed_counts is None:
        return draws.mean(axis=0)
    return np.einsum("bs,sb->b", seed_counts.astype(np.float64), draws) / len(runs)


def _observed(runs: Sequence[RunScores], metric: str) -> float:
    """Mean over the runs of the metric on the full test set."""
    return float(np.mean([metric_value(r, metric) for r in runs]))


def _result(observed: float, draws: np.ndarray, n_boot: int, seed: int, test: str) -> dict:
    low, high = np.percentile(draws, [2.5, 97.5])
    return {
        "diff": float(observed),
        "ci95_low": float(low),
        "ci95_high": float(high),
        "p_value": float((1 + np.count_nonzero(draws <= 0)) / (n_boot + 1)),
        "p_bound": bool(np.count_nonzero(draws <= 0) == 0),  # at the resample floor: only p <= p_value is known
        "n_boot": int(n_boot),
        "seed": int(seed),
        "test": test,
    }


def hierarchical_bootstrap(
    reference: Sequence[RunScores],
    other: Sequence[RunScores],
    metric: str,
    n_boot: int = 1000,
    seed: int = 0,
    weights: np.ndarray | None = None,
    *,
    resample_seeds: bool = True,
) -> dict:
    """Bootstrap of (seed-mean of reference) - (seed-mean of other) over test images and seeds.

    Each resample draws the test images with replacement (one draw for both methods: paired) and, independently
    for each method, its runs with replacement. The draws come from ``numpy.random.default_rng(seed)``: the image
    counts first (unless ``weights`` is given), then the reference's seeds, then the other's.

    Args:
        reference: Runs (seeds) of the method expected to be better.
        other: Runs of the method compared with it.
        metric: ``macro_f1``, ``mAP`` or ``accuracy``.
        n_boot: Resamples (ignored when ``weights`` is given).
        seed: Seed of the generator.
        weights: Optional [n_boot, N] image counts to use instead of drawing them.
        resample_seeds: ``False`` keeps every run once (the image-only paired bootstrap).

    Returns:
        ``diff`` (observed difference of seed means on the full test set), ``ci95_low``/``ci95_high``
        (percentiles of the resampled differences), ``p_value`` (one-sided, of "reference is better":
        ``(1 + #(draws <= 0)) / (n_boot + 1)``), ``n_boot``, ``seed`` and ``test``.

    Raises:
        ValueError: unknown metric, or runs not scored on the same test images and labels.
    """
    _check_metric(metric)
    _check_same_test_set(reference, "the bootstrap")
    _check_same_test_set(other, "the bootstrap")
    n = _check_same_test_set([*reference, *other], "the bootstrap")
    rng = np.random.default_rng(seed)
    res = _Resamples(image_weights(n, n_boot, rng) if weights is None else weights, n)
    n_boot = res.n_boot
    means = []
    for runs in (reference, other):
        means.append(_seed_means(runs, metric, res, _seed_counts(len(runs), n_boot, rng) if resample_seeds else None))
    observed = _observed(reference, metric) - _observed(other, metric)
    return _result(observed, means[0] - means[1], n_boot, seed, HIERARCHICAL_TEST if resample_seeds else IMAGE_TEST)


def paired_bootstrap(
    best: Sequence[RunScores], other: Sequence[RunScores], metric: str, n_boot: int = 1000, seed: int = 0
) -> dict:
    """Image-only paired bootstrap (every run kept once per resample): :func:`hierarchical_bootstrap` with
    ``resample_seeds=False``. Its image draws are those of the former per-resample loop with the same seed."""
    return hierarchical_bootstrap(best, other, metric, n_boot, seed, resample_seeds=False)


def compare_to_reference(
    methods: Mapping[str, Sequence[RunScores]],
    reference: str,
    metrics: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, dict]]:
    """:func:`hierarchical_bootstrap` of the reference against every other method, for each metric.

    One generator ``default_rng(seed)`` draws the image counts once for all comparisons, then the seed counts of
    every method in sorted name order (the reference's seed draw is shared by its comparisons). Each run's metric
    draws are computed once. With two methods whose names sort reference first, the result equals
    :func:`hierarchical_bootstrap` with the same seed.

    Returns:
        ``{method: {metric: result}}`` for every method but the reference; each result as
        :func:`hierarchical_bootstrap`'s plus ``p_holm``, the Holm-Bonferroni adjusted p over the compared
        methods (per metric).

    Raises:
        ValueError: unknown reference or metric, a method without runs, or runs on different test sets.
    """
    if reference not in methods:
        raise ValueError(f"reference {reference!r} is not among the methods {sorted(methods)}")
    for metric in metrics:
        _check_metric(metric)
    names = sorted(methods)
    for name in names:
        _check_same_test_set(methods[name], f"method {name!r}")
    n = _check_same_test_set([methods[name][0] for name in names], "compare_to_reference")
    rng = np.random.default_rng(seed)
    res = _Resamples(image_weights(n, n_boot, rng), n)
    seed_counts = {name: _seed_counts(len(methods[name]), n_boot, rng) for name in names}
    others = [name for name in names if name != reference]
    out: dict[str, dict[str, dict]] = {name: {} for name in others}
    for metric in metrics:
        resampled = {name: _seed_means(methods[name], metric, res, seed_counts[name]) for name in names}
        observed = {name: _observed(methods[name], metric) for name in names}
        for name in others:
            diff = observed[reference] - observed[name]
            out[name][metric] = _result(diff, resampled[reference] - resampled[name], n_boot, seed, HIERARCHICAL_TEST)
        adjusted, bounds = holm_bounds([out[name][metric]["p_value"] for name in others],
                                       [out[name][metric]["p_bound"] for name in others])
        for name, p, bound in zip(others, adjusted, bounds):
            out[name][metric]["p_holm"], out[name][metric]["p_holm_bound"] = p, bound
    return out


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in input order: the ``i``-th smallest of ``m`` becomes
    ``max over j <= i of min(1, (m - j + 1) p_(j))``. NaNs stay NaN and do not count in ``m``."""
    return holm_bounds(pvalues, [False] * len(pvalues))[0]


def holm_bounds(pvalues: Sequence[float], bounds: Sequence[bool]) -> tuple[list[float], list[bool]]:
    """:func:`holm` for p-values of which some are only upper bounds (a bootstrap p at its resample floor).

    An adjusted p is a bound when the term that sets it, ``(m - j + 1) p_(j)`` for the maximising ``j``, comes
    from a bound (and is below 1: a p of 1 is exact whatever its inputs).

    Returns:
        ``(adjusted, adjusted_is_bound)`` in input order.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out, is_bound = np.full(p.shape, np.nan), [False] * len(p)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    running, running_bound = -np.inf, False
    for rank, index in enumerate(order):
        term = min(1.0, (order.size - rank) * p[index])
        if term > running:
            running, running_bound = term, bool(bounds[index]) and term < 1.0
        out[index], is_bound[index] = running, running_bound
    return [float(x) for x in out], is_bound


def format_p(p: float | None, bound: bool = False) -> str:
    """A p-value for a table: ``"<= 0.006"`` when ``p`` is only an upper bound (a bootstrap at its resample floor,
    after Holm's correction too; rounded up to 3 decimals), ``"< 0.001"`` below 0.001, else 3 decimals
    (``"0.012"``); NaN or None: ``"-"``."""
    if p is None or math.isnan(p):
        return "-"
    if bound:
        return f"<= {math.ceil(p * 1000 - 1e-9) / 1000:.3f}" if p >= 0.001 else "< 0.001"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def at_floor(p: float, n_boot: int) -> bool:
    """A bootstrap p of ``(1 + 0) / (n_boot + 1)``: no resample went the other way, so it only bounds the p-value."""
    return bool(p <= (1.0 + 1e-9) / (n_boot + 1))
