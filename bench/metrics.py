"""Evaluation metrics for multi-label intention recognition and multi-class benchmarks.

Multi-label protocol (Intentonomy / IntCLIP): a sample is predicted positive for a class when its score is
strictly greater than a threshold picked from :data:`THRESHOLD_GRID` by the best validation macro F1; the test
split is then scored at that same threshold. F1 scores follow scikit-learn's ``f1_score(..., zero_division=0)``
and AP follows ``average_precision_score``; classes without positives count 0 in every mean. Only numpy is used,
vectorised, because the paired bootstrap calls these functions thousands of times.

Scores are compared with a threshold in their own floating dtype (as ``scores > 0.1`` does in numpy), so a
float32 score of ``0.1`` is *not* above the threshold ``0.1``. The building blocks (:func:`macro_f1`,
:func:`mean_average_precision`, :func:`accuracy`, :func:`per_class_average_precision`) skip input validation;
:func:`multilabel_metrics`, :func:`multiclass_metrics` and :func:`evaluate` validate.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from bench.selection import Selection, select, threshold_preference

ArrayLike = Any  # np.ndarray or nested sequences

#: Candidate thresholds 0.05, 0.10, ..., 0.95, rounded to 2 decimals (no float drift).
THRESHOLD_GRID: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 20))

TASKS = ("multilabel", "multiclass")


def _float_scores(scores: ArrayLike) -> np.ndarray:
    """Scores as a floating array, keeping float32/float64 as given."""
    s = np.asarray(scores)
    return s if s.dtype.kind == "f" else s.astype(np.float64)


def _predict(scores: np.ndarray, threshold: ArrayLike) -> np.ndarray:
    """Boolean predictions ``scores > threshold``, compared in the scores' dtype."""
    return scores > np.asarray(threshold, dtype=scores.dtype)


def _f1(pred: np.ndarray, labels: ArrayLike, axis: int | None) -> np.ndarray:
    """F1 = 2TP / (2TP + FP + FN) from confusion counts summed over ``axis`` (``None`` pools everything).

    ``labels`` broadcasts against ``pred``; an undefined F1 (no positives, no predictions) is 0.
    """
    y = np.broadcast_to(np.asarray(labels).astype(bool), pred.shape)
    tp = np.count_nonzero(pred & y, axis=axis)
    denom = np.count_nonzero(pred, axis=axis) + np.count_nonzero(y, axis=axis)
    return np.divide(2.0 * tp, denom, out=np.zeros(np.shape(tp)), where=denom > 0)


def macro_f1(scores: ArrayLike, labels: ArrayLike, threshold: float) -> float:
    """Macro F1 over all classes of ``scores > threshold`` (scores, labels: [N, C])."""
    return float(np.mean(_f1(_predict(_float_scores(scores), threshold), labels, axis=0)))


def threshold_selection(
    val_scores: ArrayLike, val_labels: ArrayLike, grid: Sequence[float] = THRESHOLD_GRID
) -> Selection:
    """The global threshold chosen on val by macro F1 with the tie rule (:mod:`bench.selection`): thresholds
    within the tolerance of the best val macro F1 are tied, and the tied one nearest 0.5 (then the lower) is chosen.

    Args:
        val_scores: Validation scores [N, C].
        val_labels: Binary validation labels [N, C].
        grid: Candidate thresholds.

    Returns:
        The :class:`bench.selection.Selection` (``chosen`` is the threshold, a Python float).
    """
    grid = [float(t) for t in grid]
    s = _float_scores(val_scores)
    pred = _predict(s[None], np.asarray(grid)[:, None, None])  # [T, N, C]
    per_threshold = _f1(pred, val_labels, axis=1).mean(axis=1)  # [T]
    return select(list(zip(grid, per_threshold.tolist())), "threshold", threshold_preference)


def choose_threshold(
    val_scores: ArrayLike, val_labels: ArrayLike, grid: Sequence[float] = THRESHOLD_GRID
) -> float:
    """The threshold :func:`threshold_selection` chooses, as a Python float."""
    return float(threshold_selection(val_scores, val_labels, grid).chosen)


def per_class_average_precision(scores: ArrayLike, labels: ArrayLike) -> np.ndarray:
    """Non-interpolated AP per class, as ``sklearn.metrics.average_precision_score``.

    AP = sum over distinct score thresholds of (R_n - R_{n-1}) * P_n; tied scores form one threshold. Every
    positive inside a tie group therefore gets the precision at the end of its group. Classes without
    positives get 0.

    Args:
        scores: Scores [N, C] (computed in float64).
        labels: Binary labels [N, C].

    Returns:
        float64 array [C].
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    order = np.argsort(-s, axis=0, kind="stable")
    s_sorted = np.take_along_axis(s, order, axis=0)
    y_sorted = np.take_along_axis(y, order, axis=0)
    n = s.shape[0]
    rows = np.arange(n)[:, None]
    is_last = np.ones(s.shape, dtype=bool)  # last row of each group of equal scores
    is_last[:-1] = s_sorted[:-1] != s_sorted[1:]
    group_end = np.where(is_last, rows, n)
    group_end = np.minimum.accumulate(group_end[::-1], axis=0)[::-1]  # end of the group each row is in
    tp = np.cumsum(y_sorted, axis=0)
    precision = np.take_along_axis(tp, group_end, axis=0) / (group_end + 1.0)
    n_pos = y.sum(axis=0)
    total = np.where(y_sorted, precision, 0.0).sum(axis=0)
    return np.divide(total, n_pos, out=np.zeros(s.shape[1]), where=n_pos > 0)


def official_average_precision(scores: ArrayLike, labels: ArrayLike) -> np.ndarray:
    """Per-class AP [C] as the released IntCLIP/DualCoOp code computes it (``utils/helper.py``): images ranked by
    numpy's default (unstable) ``argsort`` reversed, precision taken at every positive's own rank with no tie groups,
    summed and divided by (positives + 1e-8). Tied scores (saturated probabilities) are ordered by the sort, not
    grouped, so this reads higher or lower than :func:`per_class_average_precision`; only the ``intclip-code``
    protocol uses it (to select epochs as that code does), reported beside the standard mAP as ``mAP_official``."""
    s, y = np.asarray(scores), np.asarray(labels)
    out = np.zeros(s.shape[1])
    ranks = np.arange(1, s.shape[0] + 1)
    for k in range(s.shape[1]):
        hits = y[np.argsort(s[:, k])[::-1], k] == 1
        out[k] = np.sum(np.cumsum(hits)[hits] / ranks[hits]) / (hits.sum() + 1e-8)
    return out


def mean_average_precision(scores: ArrayLike, labels: ArrayLike) -> float:
    """Mean over all classes of :func:`per_class_average_precision` (no-positive classes count 0)."""
    return float(np.mean(per_class_average_precision(scores, labels)))


def accuracy(scores: ArrayLike, labels: ArrayLike) -> float:
    """Top-1 accuracy of ``argmax(scores, axis=1)`` (ties go to the lowest class index)."""
    return float(np.mean(np.argmax(scores, axis=1) == np.asarray(labels)))


def _validate(task: str, scores: ArrayLike, labels: ArrayLike, split: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Check shapes and values; return (float scores, labels). ``split`` prefixes argument names in errors."""
    name_s, name_y = (f"{split}_scores", f"{split}_labels") if split else ("scores", "labels")
    s, y = np.asarray(scores), np.asarray(labels)
    if s.ndim != 2 or 0 in s.shape:
        raise ValueError(f"{name_s} must be a non-empty 2-D array [N, C]; got shape {s.shape}")
    if s.dtype.kind not in "biuf":
        raise ValueError(f"{name_s} must be numeric; got dtype {s.dtype}")
    finite = np.isfinite(s)
    if not finite.all():
        at = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise ValueError(f"{name_s} must be finite; found {s[at]} at index {at} ({np.sum(~finite)} in all)")
    if task == "multilabel":
        if y.shape != s.shape:
            raise ValueError(f"{name_y} must have the shape of {name_s} {s.shape}; got {y.shape}")
        if y.dtype.kind not in "biuf" or not np.isin(y, (0, 1)).all():
            raise ValueError(f"{name_y} must be binary 0/1; found values {np.unique(y)[:10]}")
    else:
        if y.shape != s.shape[:1]:
            raise ValueError(f"{name_y} must have shape ({s.shape[0]},) to match {name_s} {s.shape}; got {y.shape}")
        if y.dtype.kind not in "iu":
            raise ValueError(f"{name_y} must be integer class indices; got dtype {y.dtype}")
        if y.min() < 0 or y.max() >= s.shape[1]:
            raise ValueError(f"{name_y} must lie in [0, {s.shape[1]}); got min {y.min()}, max {y.max()}")
    return _float_scores(s), y


def multilabel_metrics(scores: ArrayLike, labels: ArrayLike, threshold: float, ranking: ArrayLike | None = None) -> dict[str, Any]:
    """Multi-label metrics at ``threshold`` and at 0.5.

    Args:
        scores: Scores [N, C] (probabilities: the thresholds apply to them).
        labels: Binary labels [N, C].
        threshold: Decision threshold (prediction is ``score > threshold``).
        ranking: Optional [N, C] scores that rank like ``scores`` without saturating (logits); AP and mAP are
            computed on them when given (a float32 sigmoid is exactly 1.0 for many confident images, and the
            order of such ties would decide AP).

    Returns:
        Dict with ``macro_f1``, ``micro_f1``, ``samples_f1``, ``mAP``, the three F1s at 0.5 (``*_at_0_5``),
        ``threshold``, ``per_class_f1`` (at ``threshold``) and ``per_class_ap``; plain Python floats.
    """
    s, y = _validate("multilabel", scores, labels)
    out: dict[str, Any] = {}
    for suffix, thr in (("", threshold), ("_at_0_5", 0.5)):
        pred = _predict(s, thr)
        per_class = _f1(pred, y, axis=0)
        out[f"macro_f1{suffix}"] = float(np.mean(per_class))
        out[f"micro_f1{suffix}"] = float(_f1(pred, y, axis=None))
        out[f"samples_f1{suffix}"] = float(np.mean(_f1(pred, y, axis=1)))
        if not suffix:
            out["per_class_f1"] = per_class.tolist()
    if ranking is not None:
        r = np.asarray(ranking, dtype=np.float64)
        if r.shape != s.shape or not np.isfinite(r).all():
            raise ValueError(f"ranking must be finite with the shape of scores {s.shape}; got {r.shape}")
    ap = per_class_average_precision(s if ranking is None else ranking, y)
    out.update(mAP=float(np.mean(ap)), per_class_ap=ap.tolist(), threshold=float(threshold))
    return out


def multiclass_metrics(scores: ArrayLike, labels: ArrayLike) -> dict[str, Any]:
    """Single-label metrics from argmax predictions.

    Args:
        scores: Scores [N, C].
        labels: Integer class indices [N].

    Returns:
        Dict with ``accuracy`` (top-1), ``mean_class_accuracy`` (mean per-class recall over the classes present
        in ``labels``, as sklearn's ``balanced_accuracy_score``) and ``per_class_accuracy`` (list [C]; 0.0 for
        classes absent from ``labels``, which are excluded from the mean).
    """
    s, y = _validate("multiclass", scores, labels)
    correct = np.argmax(s, axis=1) == y
    n_class = s.shape[1]
    support = np.bincount(y, minlength=n_class)
    hits = np.bincount(y, weights=correct, minlength=n_class)
    per_class = np.divide(hits, support, out=np.zeros(n_class), where=support > 0)
    return {
        "accuracy": float(np.mean(correct)),
        "mean_class_accuracy": float(np.mean(per_class[support > 0])),
        "per_class_accuracy": per_class.tolist(),
    }


def evaluate(
    task: str,
    val_scores: ArrayLike,
    val_labels: ArrayLike,
    test_scores: ArrayLike,
    test_labels: ArrayLike,
    threshold: float | None = None,
    val_ranking: ArrayLike | None = None,
    test_ranking: ArrayLike | None = None,
    official_ap: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate both splits and compute their metrics.

    Args:
        task: ``"multilabel"`` or ``"multiclass"``.
        val_scores: Validation scores [N, C].
        val_labels: Validation labels, [N, C] binary (multilabel) or [N] int (multiclass).
        test_scores: Test scores [M, C].
        test_labels: Test labels, as ``val_labels``.
        threshold: Multilabel only: fixed threshold; ``None`` picks it on val with :func:`choose_threshold`.
        val_ranking, test_ranking: Multilabel only: unsaturated ranking scores (logits) for AP/mAP.
        official_ap: Multilabel only: also ``mAP_official``, the released code's AP (:func:`official_average_precision`)
            on the probabilities.

    Returns:
        ``(val_metrics, test_metrics)``; for multilabel both at the same threshold.

    Raises:
        ValueError: unknown task, or inputs of wrong shape, non-finite scores, invalid labels.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}; got {task!r}")
    vs, vy = _validate(task, val_scores, val_labels, "val")
    ts, ty = _validate(task, test_scores, test_labels, "test")
    if ts.shape[1] != vs.shape[1]:
        raise ValueError(f"test_scores has {ts.shape[1]} classes but val_scores has {vs.shape[1]}")
    if task == "multiclass":
        return multiclass_metrics(vs, vy), multiclass_metrics(ts, ty)
    if threshold is None:
        threshold = choose_threshold(vs, vy)
    elif not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite; got {threshold}")
    val_m, test_m = multilabel_metrics(vs, vy, threshold, val_ranking), multilabel_metrics(ts, ty, threshold, test_ranking)
    if official_ap:
        val_m["mAP_official"] = float(np.mean(official_average_precision(vs, vy)))
        test_m["mAP_official"] = float(np.mean(official_average_precision(ts, ty)))
    return val_m, test_m
