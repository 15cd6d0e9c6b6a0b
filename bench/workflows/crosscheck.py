"""The cross-machine promise of the embedded default: a fresh `bench run` compared with the shipped reference.

``bench/assets/default_reference.json`` holds the default suite's table (every method's mean over seeds, val and
test, in percent) as made on one machine, the machine and its torch/BLAS build, and a **tolerance** per number:
what the spread of the same suite across CPU kernels (OpenBLAS core types, ATen's AVX2 vs AVX-512 kernels, MKL's
instruction set, 1 vs 2 intra-op threads) implies, measured by ``benchmarks/cross_machine.py`` (which also writes
the file). :func:`compare` checks a fresh store against it; :func:`selection_stability` checks that the val
selections of the store do not move when their inputs are scaled by ``1 + 1e-7`` noise (the size of a float
kernel's rounding), which is what makes the numbers transferable at all. ``bench crosscheck`` runs both.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import BenchError

REFERENCE = Path(__file__).resolve().parents[1] / "assets" / "default_reference.json"
METRICS = ("macro_f1", "micro_f1", "samples_f1", "mAP")
SPLITS = ("test", "val")


@dataclass(frozen=True)
class Check:
    method: str
    split: str
    metric: str
    reference: float  # percent
    fresh: float | None  # percent; None: the fresh store lacks it
    tolerance: float  # percent points

    @property
    def delta(self) -> float | None:
        return None if self.fresh is None else self.fresh - self.reference

    @property
    def ok(self) -> bool:
        return self.fresh is not None and abs(self.fresh - self.reference) <= self.tolerance + 1e-9


def table_of(results: Path) -> dict[str, dict[str, Any]]:
    """The default suite's table from a store: ``{method: {"n": int, "run_ids": [...], "test": {metric: %}, "val":
    {...}}}`` (one dataset/backbone/protocol group; a store with several is refused)."""
    from bench.reports.render import report_inputs

    _, summary = report_inputs(Path(results), bootstrap=0)
    if summary.empty:
        raise BenchError(f"{results}: no results to compare (run the default suite first: bench run --results {results})")
    groups = summary.groupby(["dataset", "manifest_sha256", "backbone", "protocol"], sort=False)
    if len(groups) != 1:
        raise BenchError(f"{results}: holds {len(groups)} tables; the cross-machine check compares the default suite alone")
    return {
        r["method"]: {
            "n": int(r["n"]),
            "run_ids": sorted(str(r["run_ids"]).split(",")),
            **{s: {m: round(100 * float(r[f"{s}_{m}_mean"]), 6) for m in METRICS} for s in SPLITS},
        }
        for _, r in summary.iterrows()
    }


def load_reference(path: Path = REFERENCE) -> dict[str, Any]:
    try:
        reference = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise BenchError(f"{path}: cannot read the cross-machine reference ({err})") from None
    if not isinstance(reference, dict) or "rows" not in reference:
        raise BenchError(f"{path}: not a cross-machine reference (no 'rows')")
    return reference


def compare(reference: dict[str, Any], fresh: dict[str, dict[str, Any]]) -> tuple[list[Check], list[str]]:
    """Every reference number against the fresh table; and the problems that are not numbers (a method missing, or
    run ids that differ: another code version or config, whose numbers the reference does not cover)."""
    checks, problems = [], []
    for method, row in reference["rows"].items():
        got = fresh.get(method)
        if got is None:
            problems.append(f"{method}: not in the fresh store")
        elif row.get("run_ids") and got["run_ids"] != row["run_ids"]:
            problems.append(f"{method}: run ids differ from the reference's (another code version or config: regenerate "
                            "the reference with python benchmarks/cross_machine.py --write-reference)")
        for split in SPLITS:
            for metric, cell in row[split].items():
                value = None if got is None else got[split].get(metric)
                checks.append(Check(method, split, metric, float(cell["value"]), value, float(cell["tolerance"])))
    for method in sorted(set(fresh) - set(reference["rows"])):
        problems.append(f"{method}: in the fresh store but not in the reference")
    return checks, problems


def _noisy(x: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    return np.asarray(x, dtype=np.float64) * (1.0 + scale * rng.standard_normal(np.shape(x)))


def selection_stability(results: Path, draws: int = 10, scale: float = 1e-7, seed: int = 0) -> list[str]:
    """Perturb what each stored selection was made from by ``1 + scale * N(0, 1)`` (``draws`` times) and redo it:
    the threshold from the stored val scores, the epoch from the history's val metrics, the config of a tuned refit
    from its trials' values. Returns one line per selection that moved (empty: none did)."""
    from bench import metrics
    from bench.store import store
    from bench.selection import epoch_selection

    rng = np.random.default_rng(seed)
    moved = []
    for _, record in store.iter_results(results, verify=False):
        if not hasattr(record, "selections"):
            continue
        label = f"{record.method.name} seed {record.seed}"
        chosen = record.selections
        if "threshold" in chosen:
            scores = store.read_scores(store.runs_dir(results) / record.run_id)
            for _ in range(draws):
                got = metrics.threshold_selection(_noisy(scores["val_scores"], rng, scale), scores["val_labels"]).chosen
                if got != chosen["threshold"].chosen:
                    moved.append(f"{label}: threshold {chosen['threshold'].chosen} -> {got}")
                    break
        history = record.training.history
        if "epoch" in chosen and history:
            variants = list((history[0].get("variant_metrics") or {}).keys()) or [record.training.best_variant or "default"]
            for _ in range(draws):
                noisy = [{**h, "selection_metric": float(_noisy(h["selection_metric"], rng, scale)),
                          **({"variant_metrics": {k: float(_noisy(v, rng, scale)) for k, v in h["variant_metrics"].items()}}
                             if h.get("variant_metrics") else {})} for h in history]
                got = epoch_selection(noisy, variants, chosen["epoch"].tolerance).chosen
                if got != chosen["epoch"].chosen:
                    moved.append(f"{label}: epoch {chosen['epoch'].chosen} -> {got}")
                    break
    return moved


def probe_stability(cfg: Any, draws: int = 10, scale: float = 1e-7, seed: int = 0) -> list[str]:
    """The linear probe's selections (C, then the threshold) redone on its cached frozen features scaled by
    ``1 + scale * N(0, 1)``, ``draws`` times; one line per selection that moved. Runs of the store that are not
    linear probes are ignored."""
    import torch

    from bench import metrics
    from bench.store import store
    from bench.backbones.loader import load_backbone
    from bench.methods.linear_probe import ProbeFit
    from bench.pipeline.plan import plan_suite
    from bench.registry import BACKBONES, create_method

    plans, datasets = plan_suite(cfg)
    rng = np.random.default_rng(seed)
    moved = []
    for plan in plans:
        if plan.method.split(":")[0] != "linear-probe" or not (plan.run_dir / store.RESULT).is_file():
            continue
        record = store.read_result(plan.run_dir)
        data = datasets[plan.dataset]
        backbone = load_backbone(BACKBONES.get(plan.backbone), cfg.backbone_pretrained(plan.backbone), cfg.paths.weights, "cpu")
        method = create_method(plan.method, cfg.method_config(plan.method), backbone, data, torch.device("cpu"))
        feats = {s: method.features(s, data.splits[s].images, data.manifest_sha256, cfg.paths.cache, cfg.engine.eval_batch_size)
                 for s in ("train", "val")}
        y_train, y_val = data.splits["train"].labels, data.splits["val"].labels
        want_c = record.selections["C"].chosen if "C" in record.selections else None
        want_t = record.selections["threshold"].chosen if "threshold" in record.selections else None
        for draw in range(draws):
            fitter = ProbeFit(method.config, data.task, method.num_classes)
            x_val = _noisy(feats["val"], rng, scale)
            weight, bias, info = fitter.fit(_noisy(feats["train"], rng, scale), y_train, x_val, y_val)
            c = info["selections"]["C"]["chosen"]
            if want_c is not None and not math.isclose(c, want_c, rel_tol=1e-12):
                moved.append(f"{plan.method}: C {want_c:.4g} -> {c:.4g} (draw {draw})")
                break
            if want_t is not None and data.task == "multilabel":
                t = metrics.threshold_selection(fitter.scores(x_val, weight, bias), y_val).chosen
                if t != want_t:
                    moved.append(f"{plan.method}: threshold {want_t} -> {t} (draw {draw})")
                    break
    return moved
