"""The tests' shared helpers, one place: the repository's paths, offline settings, a tiny suite config (small
synthetic data, few epochs), the ``bench`` subprocess runner, and result stores made by hand (chosen metric values,
real scores for the bootstrap: :func:`make_run`, :func:`build_store`). Tests import them as
``from tests.conftest import ...``; fixtures are found by pytest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench import metrics  # noqa: E402  (after the environment is set)
from bench.store import store  # noqa: E402
from bench.store.schema import MULTILABEL_METRICS, RunResult  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PLUGIN = REPO / "tests" / "plugin"  # a package from elsewhere that adds a method and a dataset by entry points


def bench_cli(*args: str, cwd: Path, timeout: float = 600, env: dict | None = None,
              plugin: bool = False) -> subprocess.CompletedProcess:
    """``python -m bench ARGS`` in ``cwd`` offline (``HF_HUB_OFFLINE=1``), output captured; ``plugin`` puts the toy
    plugin package on the path."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    if plugin:
        env["PYTHONPATH"] = os.pathsep.join([str(PLUGIN), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=timeout)

TINY_TOML = """
[suite]
methods = {methods}
datasets = ["synthetic"]
backbone = "tiny-clip"
seeds = {seeds}
executor = "serial"

[paths]
results = "results"
cache = "{cache}"

[engine]
progress = false

[datasets.synthetic]
n_train = 96
n_val = 48
n_test = 48

[methods.dualcoop]
epochs = {epochs}
batch_size = 32

[methods.linear-probe]
c_grid = [0.01, 1.0, 100.0]
refine_steps = 1
"""


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One cache folder for the whole session, so the synthetic data renders once."""
    return tmp_path_factory.mktemp("bench-cache")


@pytest.fixture
def write_config(tmp_path: Path, shared_cache: Path):
    """Write a tiny bench.toml into tmp_path and return its path."""

    def write(methods=("zeroshot", "dualcoop"), seeds=(0,), epochs=2, extra: str = "") -> Path:
        text = TINY_TOML.format(
            methods=list(methods), seeds=list(seeds), epochs=epochs, cache=shared_cache.as_posix()
        ).replace("'", '"')
        path = tmp_path / "bench.toml"
        path.write_text(text + textwrap.dedent(extra))
        return path

    return write


@pytest.fixture(autouse=True)
def _trust_handpicked_metrics(request, monkeypatch):
    """:func:`make_run`'s ``make_run(test=..., val=...)`` writes metric values that its scores do not give, so a test can
    place the best and second best exactly; reports skip such records as tampered (``store.iter_checked``). Modules
    that build stores that way read them with the hash-only check; tests/store/test_hostile_records.py keeps the full one."""
    module = request.module
    text = Path(module.__file__).read_text()
    if module.__name__.endswith("test_hostile_records") or ("make_run" not in text and "build_store" not in text):
        return
    monkeypatch.setattr(store, "RECOMPUTE_METRICS", False)


# -- result stores made by hand ---------------------------------------------------------------------------------------
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


def build_store(results: Path, methods: Iterable[str], seeds: Iterable[int | None] = (0,),
                **make: object) -> dict[tuple[str, int | None], Path]:
    """One :func:`make_run` per method x seed (``make``: its keyword arguments, the same for every run, or a
    callable ``(method, seed) -> dict`` of them); returns each run's folder."""
    out = {}
    for method in methods:
        for seed in seeds:
            kwargs = make["per_run"](method, seed) if callable(make.get("per_run")) else make  # type: ignore[operator]
            out[(method, seed)] = store.runs_dir(results) / make_run(results, method, seed, **kwargs).run_id
    return out
