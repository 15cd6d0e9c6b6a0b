"""`bench tune`: search a method's hyperparameters on val (Optuna TPE + ASHA, run by :mod:`bench.ray.search`),
keep the study and its summary, then refit the best config over the suite's seeds (:mod:`bench.workflows.suite`), each refit
scoring test once. Search trials never score test.
"""

from __future__ import annotations

import json
import re
import shutil
from types import SimpleNamespace
from typing import Any

from rich.console import Console

from bench.store import store
from bench.config import BenchConfig
from bench.errors import ConfigError
from bench.io import atomic_write_text
from bench.pipeline.limit import LimitPlan
from bench.pipeline.plan import backbone_image_size, check_support, input_decode, load_dataset
from bench.protocol import get_protocol
from bench.registry import METHODS
from bench.workflows import preflight
from bench.workflows.suite import run_suite


def run_tune(cfg: BenchConfig, method: str, dataset: str, console: Console, ray_address: str | None = None) -> dict[str, Any]:
    """Search ``method``'s hyperparameters on ``dataset``'s val split, then refit the best over ``suite.seeds``.

    The Optuna study lives in ``<results>/tune/<study>/study.db`` (SQLite: optuna-dashboard opens it); the Tune
    experiment beside it is restored when the command is rerun after a crash; ``summary.json`` records the choice.
    """
    from bench.ray.executor import resolve_address
    from bench.ray.search import search

    if get_protocol(cfg.protocol.name).selects_on_test:
        raise ConfigError(f"protocol.name = {cfg.protocol.name!r} selects on test; bench tune searches on val only")
    cls = METHODS.get(method)
    spec = {**cls.Config.search_space, **{k: tuple(v) for k, v in cfg.tune.search_space.get(method, {}).items()}}
    if not spec:
        raise ConfigError(f"{method} has no search space; set [tune.search_space.{method}] in bench.toml")
    unknown = set(spec) - set(cls.Config.model_fields)
    if unknown:
        raise ConfigError(f"tune.search_space.{method}: {sorted(unknown)} are not keys of {method}'s config")
    check_support(cfg.suite.backbone, [method])  # before any data is decoded or trial started
    preflight.ensure(cfg, [SimpleNamespace(backbone=cfg.suite.backbone, dataset=dataset)], ray_address)
    base = cfg.method_config(method)
    data = load_dataset(cfg, dataset, backbone_image_size(cfg.suite.backbone), input_decode(cfg, method, dataset))
    limit = LimitPlan(cfg.suite)  # smoke mode: the search reads the limited splits, in a study of its own
    limited = limit.identity(dataset, data)  # {} without a limit: the study keeps its name
    data = limit.data(dataset, data)
    identity = {"method": method, "base": base.model_dump(mode="json"), "space": {k: list(v) for k, v in spec.items()},
                "dataset": data.manifest_sha256, "backbone": cfg.suite.backbone, "seed": cfg.tune.seed, "n": cfg.tune.num_samples,
                **limited}
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{method}-{dataset}-{cfg.suite.backbone}")  # hf-hub:org/x: one folder
    study = f"{name}-{store.compute_run_id(identity)[:8]}"
    folder = cfg.paths.results / "tune" / study
    folder.mkdir(parents=True, exist_ok=True)
    summary_path = folder / "summary.json"
    address = resolve_address(cfg, ray_address)
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        console.print(f"study {study} already searched ({summary['num_trials']} trials); refitting what is missing")
    else:
        summary = search(cfg, cls, method, spec, base, data, study, folder, address, console)
        atomic_write_text(summary_path, json.dumps(summary, indent=2))
        # the trials' checkpoints served the search only: the study (study.db) and summary.json keep what it found
        shutil.rmtree(folder / "trials", ignore_errors=True)
    refit = cfg.model_copy(deep=True)
    refit.methods[method] = {**cfg.methods.get(method, {}), **summary["best_params"]}
    refit.suite.methods, refit.suite.datasets = [method], [dataset]
    tuning = {k: summary[k] for k in ("study", "storage", "num_trials", "stopped_early", "best_params", "best_val_selection_metric")
              if k in summary}
    if "selection" in summary:  # the config's val selection (tie set: trial numbers in creation order)
        tuning["selection"] = summary["selection"]
    outcome = run_suite(refit, console, ray_address, extra={"tuning": tuning})
    summary["refit_run_ids"] = [p.run_id for p in outcome.planned]
    summary["refit_failed"] = outcome.failed
    atomic_write_text(summary_path, json.dumps(summary, indent=2))
    return summary
