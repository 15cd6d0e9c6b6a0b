"""Significance test speed: the former per-resample loop vs the vectorised bootstrap (bench.reports.significance).

A synthetic store-like set the size of Intentonomy's test split (:func:`synthetic_set`): 7 methods x 3 seeds,
N = 1218 test images, C = 28 classes; float32 probabilities that saturate (many positives exactly 1.0), float64
logit margins as the mAP ranking, a grid threshold per run. Timed in the same run:

  old   the former ``paired_bootstrap`` as ``add_significance`` called it: for each of the 6 methods vs the best
        and each metric (macro F1, mAP), a Python loop over resamples that indexes the arrays and recomputes the
        metric of all 3 + 3 runs; run with ``--old-boot`` resamples and scaled linearly to ``--n-boot``;
  new   ``compare_to_reference(methods, best, ["macro_f1", "mAP"], n_boot)``: one shared image draw, per-run
        metric draws computed once, seeds resampled too (hierarchical), Holm over the 6 comparisons.

It also checks that the new image-only bootstrap (``paired_bootstrap``) gives the old loop's interval on the same
draws (same seed, ``--old-boot`` resamples).

  python benchmarks/significance.py                  # n_boot 1000, old loop with 20 resamples (scaled)
  python benchmarks/significance.py --old-boot 100 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench import metrics  # noqa: E402
from bench.reports import significance as sig  # noqa: E402

N_METHODS, N_SEEDS, N_TEST, N_CLASSES = 7, 3, 1218, 28


def synthetic_set(seed: int = 0) -> dict[str, list[sig.RunScores]]:
    """7 methods x 3 seeds of Intentonomy-shaped test scores: about 1.5 labels per image over 28 classes of
    skewed frequency (at least 10 positives each), an image-class difficulty shared by all methods, method k a
    little stronger than k - 1, seed noise; margins scaled so that float32 probabilities saturate (about 1 in 8
    positives scores exactly 1.0); the F1 threshold picked from the grid (on these scores: timing only)."""
    rng = np.random.default_rng(seed)
    frequency = np.geomspace(1.0, 0.05, N_CLASSES)
    frequency /= frequency.sum()
    y = np.zeros((N_TEST, N_CLASSES), dtype=np.float32)
    y[np.arange(N_TEST), rng.choice(N_CLASSES, N_TEST, p=frequency)] = 1.0
    y[rng.random(y.shape) < 0.5 * frequency] = 1.0
    hard = rng.normal(0.0, 1.0, y.shape)
    methods = {}
    for k in range(N_METHODS):
        runs = []
        for _ in range(N_SEEDS):
            strength = 0.9 + 0.05 * k + 0.04 * rng.normal()
            margin = 10.0 * (strength * (2 * y - 1) + hard + 0.5 * rng.normal(0.0, 1.0, y.shape) - 0.6)
            probs = (1.0 / (1.0 + np.exp(-margin))).astype(np.float32)
            runs.append(sig.RunScores(probs, y, metrics.choose_threshold(probs, y), margin))
        methods[f"method-{k}"] = runs
    return methods


def old_paired_bootstrap(best, other, metric, n_boot, seed=0):
    """The former implementation: a Python loop over resamples, every run's metric recomputed on each."""
    n = len(best[0].labels)
    rng = np.random.default_rng(seed)

    def value(run, index):
        s, y = (run.scores, run.labels) if index is None else (run.scores[index], run.labels[index])
        if metric == "macro_f1":
            return metrics.macro_f1(s, y, 0.5 if run.threshold is None else run.threshold)
        return metrics.mean_average_precision(s, y)

    def diff(index):
        return float(np.mean([value(r, index) for r in best]) - np.mean([value(r, index) for r in other]))

    observed = diff(None)
    draws = np.array([diff(rng.integers(0, n, size=n)) for _ in range(n_boot)])
    low, high = np.percentile(draws, [2.5, 97.5])
    return {"diff": observed, "ci95_low": float(low), "ci95_high": float(high), "p_value": float(np.mean(draws <= 0))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-boot", type=int, default=1000, help="resamples of the new bootstrap (the old is scaled)")
    parser.add_argument("--old-boot", type=int, default=20, help="resamples actually run by the old loop")
    parser.add_argument("--repeat", type=int, default=3, help="timings of the new path (the best is reported)")
    args = parser.parse_args()

    methods = synthetic_set()
    metric_names = ("macro_f1", "mAP")
    best = max(methods, key=lambda m: np.mean([sig.metric_value(r, "macro_f1") for r in methods[m]]))
    others = [m for m in sorted(methods) if m != best]
    y = methods[best][0].labels > 0
    saturated = np.mean([np.mean(r.scores[y] == 1.0) for runs in methods.values() for r in runs])
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}")
    print(f"set: {N_METHODS} methods x {N_SEEDS} seeds, N={N_TEST}, C={N_CLASSES}, {y.sum() / N_TEST:.2f} labels per "
          f"image, {100 * saturated:.1f}% of the positives score exactly 1.0 in float32; reference {best}")
    shape = f"{len(others)} comparisons x {len(metric_names)} metrics"

    # old: the loop as add_significance called it (per comparison and metric; probabilities rank for mAP)
    start = time.perf_counter()
    old = {(m, metric): old_paired_bootstrap(methods[best], methods[m], metric, args.old_boot)
           for m in others for metric in metric_names}
    old_s = time.perf_counter() - start
    old_scaled = old_s * args.n_boot / args.old_boot
    print(f"old loop   : {old_s:8.3f} s for {args.old_boot} resamples x {shape}"
          f" -> {old_scaled:8.1f} s scaled to n_boot={args.n_boot}")

    # the new image-only bootstrap on the old draws (same seed) gives the old interval
    worst = 0.0
    for (m, metric), o in old.items():
        runs = [sig.RunScores(r.scores, r.labels, r.threshold) for r in methods[best]]  # old: probabilities rank
        other = [sig.RunScores(r.scores, r.labels, r.threshold) for r in methods[m]]
        new = sig.paired_bootstrap(runs, other, metric, args.old_boot)
        worst = max(worst, *(abs(new[k] - o[k]) for k in ("diff", "ci95_low", "ci95_high")))
    print(f"agreement  : new image-only bootstrap vs the old loop, same draws: max |diff| of diff/CI {worst:.1e}")

    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        result = sig.compare_to_reference(methods, best, metric_names, n_boot=args.n_boot, seed=0)
        times.append(time.perf_counter() - start)
    new_s = min(times)
    print(f"new vector : {new_s:8.3f} s for n_boot={args.n_boot} x {shape}, seeds resampled too"
          f" (best of {', '.join(f'{t:.3f}' for t in times)} s)")
    print(f"speed-up   : {old_scaled / new_s:8.0f}x (old scaled / new)")
    tracemalloc.start()
    sig.compare_to_reference(methods, best, metric_names, n_boot=args.n_boot, seed=0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"memory     : {peak / 2**20:8.1f} MiB peak allocated by compare_to_reference (the scores excluded)")

    print("\nmethod      " + "".join(f"{m:>34}" for m in metric_names))
    for m in others:
        cells = []
        for metric in metric_names:
            r = result[m][metric]
            ci = f"[{100 * r['ci95_low']:+6.2f}, {100 * r['ci95_high']:+6.2f}]"
            cells.append(f"{100 * r['diff']:+6.2f} {ci} p {sig.format_p(r['p_holm'], args.n_boot):>7}")
        print(f"{m:<12}" + "".join(f"{c:>34}" for c in cells))
    print(f"({best} minus the method in points, 95% interval, Holm-adjusted p; hierarchical, mAP on the margins)")


if __name__ == "__main__":
    main()
