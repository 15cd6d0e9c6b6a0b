"""Result stores made by hand for the report tests: chosen metric values, real scores for the bootstrap."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench import metrics
from bench.store import store
from bench.store.schema import MULTILABEL_METRICS, RunResult

N_TEST, N_VAL, N_CLASSES = 60, 40, 5


def labels(task: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(1000 + seed)
    if task == "multiclass":
        return np.arange(n) % N_CLASSES
    y = (rng.random((n, N_CLASSES)) < 0.35).astype(np.float32)
    y[np.arange(n), np.arange(n) % N_CLASSES] = 1.0  # every class has positives
    return y


def scores_of(quality: float, y: np.ndarray, seed: int) -> np.ndarray:
    """Scores that rank positives higher the larger ``quality`` (0: noise, 1: perfect)."""
    rng = np.random.default_rng(seed)
    onehot = np.eye(N_CLASSES, dtype=np.float32)[y] if y.ndim == 1 else y
    return np.clip(0.5 + quality * (onehot - 0.5) + rng.normal(0.0, 0.25, onehot.shape), 0.0, 1.0).astype(np.float32)


def make_run(
    results: Path,
    method: str,
    seed: int,
    *,
    dataset: str = "intentonomy",
    task: str = "multilabel",
    backbone: str = "RN101",
    protocol: str = "val-threshold",
    manifest: str = "a" * 64,
    test: dict[str, float] | None = None,
    val: dict[str, float] | None = None,
    quality: float = 0.5,
    params: tuple[int, int] = (1_000_000, 2_000_000),
    history: list[dict] | None = None,
    config: dict | None = None,
    extra: dict | None = None,
) -> RunResult:
    """Write one complete run; metrics come from real scores of ``quality``, then ``test``/``val`` override
    chosen values (so a test can place the best and second best exactly)."""
    ty, vy = labels(task, N_TEST), labels(task, N_VAL)
    ts, vs = scores_of(quality, ty, seed), scores_of(quality, vy, seed + 1)
    val_m, test_m = metrics.evaluate(task, vs, vy, ts, ty)
    keys = MULTILABEL_METRICS if task == "multilabel" else ("accuracy", "mean_class_accuracy")
    test_metrics = {k: float(test_m[k]) for k in keys} | (test or {})
    val_metrics = {k: float(val_m[k]) for k in keys} | (val or {})
    per_class = (
        {s: {"f1": m["per_class_f1"], "ap": m["per_class_ap"]} for s, m in (("val", val_m), ("test", test_m))}
        if task == "multilabel"
        else {s: {"accuracy": m["per_class_accuracy"]} for s, m in (("val", val_m), ("test", test_m))}
    )
    config = config or {"lr": 0.002}
    identity = {"method": method, "config": config, "dataset": dataset, "manifest": manifest, "seed": seed, "backbone": backbone, "protocol": protocol}
    run_id = store.compute_run_id(identity)
    threshold = val_m.get("threshold") if task == "multilabel" else None
    result = RunResult(
        run_id=run_id,
        executor="serial",
        method={"name": method, "version": "1", "config": config},
        backbone={"name": backbone, "pretrained": "openai", "weights_sha256": "b" * 64, "weights_id": "sha256:" + "b" * 64},
        dataset={
            "name": dataset,
            "task": task,
            "manifest_sha256": manifest,
            "config": {},
            "class_keys": [f"class_{i}" for i in range(N_CLASSES)],
            "split_sizes": {"train": 100, "val": N_VAL, "test": N_TEST},
        },
        seed=seed,
        protocol={"name": protocol, "threshold": threshold, "selection_split": "test" if protocol == "intclip-code" else "val"},
        metrics={"val": val_metrics, "test": test_metrics, "per_class": per_class},
        params={"learnable": params[0], "total": params[1]},
        training={
            "epochs_run": len(history or []),
            "best_epoch": 0,
            "history": history or [{"epoch": e, "train_loss": 1.0 / (e + 1), "selection_metric": 0.2 + 0.02 * e, "selection_split": "val"} for e in range(4)],
        },
        timing={"seconds_total": 1.0},
        env={"git_sha": "c" * 40, "git_dirty": False, "packages": {"torch": "2.14.1"}, "device": "cpu: test"},
        artifacts={"scores": "scores.npz"},
        extra=extra or {},
    )
    store.write_result(store.runs_dir(results) / run_id, result, {"val_scores": vs, "val_labels": vy, "test_scores": ts, "test_labels": ty})
    return result
