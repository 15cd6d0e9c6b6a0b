"""Paired bootstrap over test images, from the stored scores (no retraining, no torch).

Each resample draws test images with replacement, recomputes the metric for every seed's run of both methods on
the same images (macro F1 at each run's own val-chosen threshold, mAP, or accuracy) and compares the means over
seeds. The one-sided p-value of "the best method is better" is the fraction of resamples in which it is not
(difference <= 0); identical methods give p = 1, a method better on every image gives p near 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench import metrics


@dataclass(frozen=True)
class RunScores:
    """One run's test scores, labels and the threshold its protocol applied to test."""

    scores: np.ndarray
    labels: np.ndarray
    threshold: float | None = None


def metric_value(run: RunScores, metric: str, index: np.ndarray | None = None) -> float:
    s, y = (run.scores, run.labels) if index is None else (run.scores[index], run.labels[index])
    if metric == "macro_f1":
        return metrics.macro_f1(s, y, 0.5 if run.threshold is None else run.threshold)
    if metric == "mAP":
        return metrics.mean_average_precision(s, y)
    if metric == "accuracy":
        return metrics.accuracy(s, y)
    raise ValueError(f"bootstrap metric {metric!r}: expected macro_f1, mAP or accuracy")


def paired_bootstrap(
    best: Sequence[RunScores], other: Sequence[RunScores], metric: str, n_boot: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Observed difference of seed-means (best - other), its bootstrap 95% interval and one-sided p-value."""
    n = len(best[0].labels)
    for run in (*best, *other):
        if len(run.labels) != n or not np.array_equal(run.labels, best[0].labels):
            raise ValueError("paired bootstrap needs every run scored on the same test images and labels")
    rng = np.random.default_rng(seed)

    def diff(index: np.ndarray | None) -> float:
        return float(np.mean([metric_value(r, metric, index) for r in best]) - np.mean([metric_value(r, metric, index) for r in other]))

    observed = diff(None)
    draws = np.array([diff(rng.integers(0, n, size=n)) for _ in range(n_boot)])
    low, high = np.percentile(draws, [2.5, 97.5])
    return {"diff": observed, "ci95_low": float(low), "ci95_high": float(high), "p_value": float(np.mean(draws <= 0)), "n_boot": n_boot}
