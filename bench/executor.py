"""Plans a suite (methods x datasets x seeds) and runs it in-process, one run at a time.

The serial executor is the reference every other executor reuses: :func:`plan_suite` resolves configs and run ids,
:func:`execute_run` does one run from backbone loading to the atomically written result. A run whose valid result
exists is skipped; a corrupt result is moved aside and the run redone; a run with a checkpoint resumes from it; a
run that fails leaves ``error.json`` beside its checkpoint and the suite goes on.
"""

from __future__ import annotations

import fnmatch
import json
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import bench
from bench import store
from bench.config import BenchConfig
from bench.errors import ConfigError
from bench.registry import BACKBONES, DATASETS, METHODS
from bench.schema import DatasetRecord, MethodRecord, MetricsRecord, ParamsRecord, ProtocolRecord, RunResult, TrainingRecord


@dataclass
class PlannedRun:
    """One method x dataset x seed with everything that defines it."""

    run_id: str
    method: str
    dataset: str
    seed: int | None  # None: a deterministic method, run once whatever the suite's seeds
    backbone: str
    identity: dict[str, Any]
    run_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in the result (e.g. how a config was tuned)
    data_key: str | None = None  # which decoded copy of the dataset the run reads (see input_decode); None: the dataset

    @property
    def data(self) -> str:
        return self.data_key or self.dataset

    @property
    def label(self) -> str:
        return f"{self.method} / {self.dataset} / " + ("deterministic" if self.seed is None else f"seed {self.seed}")

    @property
    def torch_seed(self) -> int:
        """The seed generators get (a deterministic method draws nothing, but its code runs seeded all the same)."""
        return 0 if self.seed is None else self.seed


@dataclass
class SuiteOutcome:
    planned: list[PlannedRun] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def backbone_image_size(backbone: str) -> int:
    """The input resolution of a backbone, from its open_clip config (no weights loaded)."""
    import open_clip

    from bench.backbones import _run_setup

    spec = BACKBONES.get(backbone)
    _run_setup(spec)
    size = open_clip.get_model_config(spec.model_name)["vision_cfg"]["image_size"]
    return int(size[0] if isinstance(size, (list, tuple)) else size)


# torchvision's Resize((S, S)) on a fully decoded PIL image, as the released IntCLIP / Query2Label code resizes: PIL's
# bilinear resize (antialiased: its filter widens with the downscale factor), no JPEG draft decoding
OFFICIAL_DECODE = {"resample": "bilinear", "draft": False}


def input_decode(cfg: BenchConfig, method: str, dataset: str) -> dict[str, Any]:
    """Dataset settings a method's input needs on top of ``[datasets.<dataset>]``: a method with ``preprocessing =
    "official"`` gets the released code's resize (:data:`OFFICIAL_DECODE`) on file-based datasets."""
    fields = DATASETS.get(dataset).Config.model_fields
    if getattr(cfg.method_config(method), "preprocessing", None) == "official" and set(OFFICIAL_DECODE) <= set(fields):
        return dict(OFFICIAL_DECODE)
    return {}


def data_key(dataset: str, overrides: dict[str, Any]) -> str:
    """Which decoded copy of ``dataset`` a run reads: the dataset name, plus the settings a method changed."""
    return dataset + "".join(f"@{k}={v}" for k, v in sorted(overrides.items()))


def dataset_config(cfg: BenchConfig, name: str, overrides: dict[str, Any] | None = None):
    if not overrides:
        return cfg.dataset_config(name)
    return DATASETS.get(name).Config.model_validate({**cfg.datasets.get(name, {}), **overrides})


def load_dataset(cfg: BenchConfig, name: str, image_size: int, overrides: dict[str, Any] | None = None):
    adapter_cls = DATASETS.get(name)
    adapter = adapter_cls(dataset_config(cfg, name, overrides), cfg.data_root(name), cfg.paths.cache / "datasets")
    return adapter.load(image_size)


def plan_suite(cfg: BenchConfig, datasets: dict[str, Any] | None = None) -> tuple[list[PlannedRun], dict[str, Any]]:
    """Resolve every run of the suite; loads each dataset once (its manifest hash is part of the run id)."""
    suite = cfg.suite
    for method in suite.methods:
        cls = METHODS.get(method)
        if not any(fnmatch.fnmatchcase(suite.backbone, pat) for pat in cls.supported_backbones):
            raise ConfigError(f"method {method!r} does not support backbone {suite.backbone!r} (supports {cls.supported_backbones})")
    datasets = dict(datasets or {})
    size = backbone_image_size(suite.backbone)
    for name in suite.datasets:
        for method in suite.methods:
            overrides = input_decode(cfg, method, name)
            if data_key(name, overrides) not in datasets:
                datasets[data_key(name, overrides)] = load_dataset(cfg, name, size, overrides)
    from bench.backbones import architecture, weights_identity

    spec = BACKBONES.get(suite.backbone)
    weights = weights_identity(spec, cfg.backbone_pretrained(suite.backbone), cfg.paths.weights)
    arch = architecture(spec, cfg.backbone_pretrained(suite.backbone))
    plans = []
    for dataset in suite.datasets:
        for method in suite.methods:
            overrides = input_decode(cfg, method, dataset)
            key = data_key(dataset, overrides)
            data = datasets[key]
            # a method without randomness of its own, on fixed weights, gives the same scores for every seed: one run
            seeds = [None] if METHODS.get(method).deterministic and weights != "none" else suite.seeds
            for seed in seeds:
                identity = {
                    "code": {"bench": bench.__version__, "method": METHODS.get(method).version},
                    "method": {"name": method, "config": cfg.method_config(method).model_dump(mode="json")},
                    "backbone": {
                        "name": suite.backbone,
                        "pretrained": cfg.backbone_pretrained(suite.backbone),
                        "weights": weights,
                        "architecture": arch,
                    },
                    "dataset": {
                        "name": dataset,
                        "config": dataset_config(cfg, dataset, overrides).model_dump(mode="json"),
                        "manifest_sha256": data.manifest_sha256,
                    },
                    "seed": seed,
                    "protocol": cfg.protocol.name,
                }
                run_id = store.compute_run_id(identity)
                plans.append(
                    PlannedRun(
                        run_id, method, dataset, seed, suite.backbone, identity, store.runs_dir(cfg.paths.results) / run_id,
                        data_key=key,
                    )
                )
    return plans, datasets


def execute_run(
    plan: PlannedRun,
    data: Any,
    cfg: BenchConfig,
    *,
    executor: str = "serial",
    trial_id: str | None = None,
    progress: Progress | None = None,
    report: Callable[[dict[str, Any]], None] | None = None,
    log: Callable[[str], None] = print,
) -> RunResult:
    """Do one run: load the backbone, build the method, train/fit, evaluate, write the result."""
    import torch

    from bench.engine import resolve_device, set_threads

    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.engine.device)
    # Same thread count under every executor (float reduction order), and every generator seeded before anything
    # random is built (random backbone init, prompt contexts, heads): a run never depends on what ran before it.
    previous_threads = torch.get_num_threads()
    threads = set_threads(cfg.ray.trial_resources(plan.method).cpu)
    try:
        return _execute(plan, data, cfg, device, threads, executor, trial_id, progress, report, log, started, t0)
    finally:
        torch.set_num_threads(previous_threads)  # a caller's (a notebook's, a test's) setting is left as it was


def _execute(plan, data, cfg, device, threads, executor, trial_id, progress, report, log, started, t0) -> RunResult:
    """:func:`execute_run` once the thread count is set: seed, build, run, record, store."""
    import torch

    from bench import metrics, provenance
    from bench.backbones import load_backbone
    from bench.engine import CHECKPOINT, RunContext, precision, run_method, seed_everything

    seed_everything(plan.torch_seed)
    backbone = load_backbone(
        BACKBONES.get(plan.backbone), cfg.backbone_pretrained(plan.backbone), cfg.paths.weights, str(device)
    )
    method_cls = METHODS.get(plan.method)
    method_cfg = cfg.method_config(plan.method)
    method = method_cls(method_cfg, backbone, data, device)
    autocast_dtype, loss_scaling = precision(device, cfg.engine.amp, method_cfg)
    ctx = RunContext(
        run_dir=plan.run_dir,
        seed=plan.torch_seed,
        device=device,
        protocol=cfg.protocol.name,
        amp=cfg.engine.amp,
        eval_batch_size=cfg.engine.eval_batch_size,
        cache_dir=cfg.paths.cache,
        deterministic=cfg.engine.deterministic,
        progress=progress,
        report=report,
        log=log,
    )
    t_setup = time.perf_counter()
    outcome = run_method(method, data, ctx)
    t_trained = time.perf_counter()

    val, test = data.splits["val"], data.splits["test"]
    threshold = 0.5 if cfg.protocol.name == "intclip-code" else None
    val_m, test_m = metrics.evaluate(
        data.task, outcome.val_scores, val.labels, outcome.test_scores, test.labels, threshold,
        val_ranking=outcome.val_logits, test_ranking=outcome.test_logits,
        official_ap=cfg.protocol.name == "intclip-code" and data.task == "multilabel",
    )
    per_class = {}
    for split, m in (("val", val_m), ("test", test_m)):
        per_class[split] = {k.removeprefix("per_class_"): list(v) for k, v in m.items() if k.startswith("per_class_")}
    scalars = {
        s: {k: float(v) for k, v in m.items() if not k.startswith("per_class_") and k != "threshold"}
        for s, m in (("val", val_m), ("test", test_m))
    }

    artifacts = {"scores": store.SCORES}
    state = method.state_dict()
    if cfg.engine.keep_best_weights and state:
        torch.save(state, plan.run_dir / "weights.pt")
        artifacts["weights"] = "weights.pt"
    result = RunResult(
        run_id=plan.run_id,
        executor=executor,
        trial_id=trial_id,
        method=MethodRecord(
            name=plan.method,
            version=method_cls.version,
            config=method_cfg.model_dump(mode="json"),
            resolved=getattr(method, "resolved", {}),
        ),
        backbone=backbone.describe(),
        dataset=DatasetRecord(
            name=data.name,
            task=data.task,
            manifest_sha256=data.manifest_sha256,
            config=plan.identity["dataset"]["config"],
            class_keys=[c.key for c in data.classes],
            split_sizes={k: len(v) for k, v in data.splits.items()},
            info=data.info,
        ),
        seed=plan.seed,
        protocol=ProtocolRecord(
            name=cfg.protocol.name,
            threshold=val_m.get("threshold"),
            selection_split="test" if cfg.protocol.name == "intclip-code" else "val",
        ),
        metrics=MetricsRecord(val=scalars["val"], test=scalars["test"], per_class=per_class),
        params=ParamsRecord(**method.param_counts()),
        training=TrainingRecord(
            epochs_run=outcome.epochs_run,
            best_epoch=outcome.best_epoch,
            best_variant=outcome.best_variant,
            resumed_from_epoch=outcome.resumed_from_epoch,
            history=outcome.history,
            fit_info=outcome.fit_info,
        ),
        timing={
            "started_at": started.isoformat(),
            "finished_at": datetime.now(timezone.utc).isoformat(),
            "seconds_total": time.perf_counter() - t0,
            "seconds_setup": t_setup - t0,
            "seconds_train_and_eval": t_trained - t_setup,
        },
        env={
            **provenance.environment(str(device)),
            "torch_threads": threads,
            "deterministic_algorithms": cfg.engine.deterministic,
            "autocast_dtype": None if autocast_dtype is None else str(autocast_dtype).removeprefix("torch."),
            "loss_scaling": loss_scaling,
        },
        artifacts=artifacts,
        config_file=cfg.config_file(),
        extra=plan.extra,
    )
    store.write_result(
        plan.run_dir,
        result,
        {
            "val_scores": outcome.val_scores,
            "val_labels": val.labels,
            "val_logits": outcome.val_logits,
            "test_scores": outcome.test_scores,
            "test_labels": test.labels,
            "test_logits": outcome.test_logits,
        },
    )
    (plan.run_dir / CHECKPOINT).unlink(missing_ok=True)
    (plan.run_dir / "error.json").unlink(missing_ok=True)
    return result


def triage(plans: list[PlannedRun], console: Console) -> tuple[SuiteOutcome, list[PlannedRun]]:
    """Split planned runs into complete (skipped) and to-run; corrupt results are moved aside and rerun."""
    outcome = SuiteOutcome(planned=plans)
    todo = []
    for plan in plans:
        status, reason = store.run_status(plan.run_dir)
        if status == "complete":
            outcome.skipped.append(plan.run_id)
            continue
        if status == "newer":  # a newer harness's record: never rerun, never moved
            outcome.skipped.append(plan.run_id)
            console.print(f"[yellow]{plan.label}: {reason}; kept as is[/]")
            continue
        if status == "corrupt":
            moved = store.quarantine(plan.run_dir)
            console.print(f"[yellow]corrupt result for {plan.label}: {reason}; kept as {moved.name}, rerunning[/]")
        elif status == "partial":
            console.print(f"[cyan]{plan.label}: checkpoint found, resuming[/]")
        todo.append(plan)
    return outcome, todo


def record_failure(plan: PlannedRun, err: BaseException | str, outcome: SuiteOutcome) -> None:
    """Keep a failed run's error beside its checkpoint (``error.json``) and in the suite outcome."""
    message = f"{type(err).__name__}: {err}" if isinstance(err, BaseException) else err
    outcome.failed[plan.run_id] = f"{plan.label}: {message}"
    payload = {
        "run_id": plan.run_id,
        "run": plan.label,
        "error": message,
        "traceback": traceback.format_exception(err) if isinstance(err, BaseException) else None,
        "at": datetime.now(timezone.utc).isoformat(),
    }
    try:
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        (plan.run_dir / "error.json").write_text(json.dumps(payload, indent=2))
    except OSError:
        pass


def run_suite(
    cfg: BenchConfig, console: Console | None = None, ray_address: str | None = None, extra: dict[str, Any] | None = None
) -> SuiteOutcome:
    """Run every missing run of the suite (Ray Tune trials, or in-process with ``executor = "serial"``); never
    redo or rewrite a complete one."""
    console = console or Console(stderr=True)
    store.ensure_writable(cfg.paths.results)
    plans, datasets = plan_suite(cfg)
    for plan in plans:
        plan.extra = dict(extra or {})
    outcome, todo = triage(plans, console)
    if not todo:
        console.print(f"all {len(plans)} runs already have results in {cfg.paths.results}; nothing to train")
        return outcome
    console.print(f"{len(plans)} runs planned: {len(outcome.skipped)} done already, {len(todo)} to run ({cfg.suite.executor})")
    if cfg.suite.executor == "ray":
        from bench.ray_executor import run_trials

        run_trials(cfg, todo, datasets, outcome, console, ray_address)
        return outcome
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not cfg.engine.progress, transient=False) as progress:
        suite_task = progress.add_task("suite", total=len(todo))
        for plan in todo:
            progress.update(suite_task, description=f"suite: {plan.label}")
            try:
                execute_run(plan, datasets[plan.data], cfg, progress=progress, log=progress.console.print)
                outcome.completed.append(plan.run_id)
            except Exception as err:  # one failed run must not stop the suite
                record_failure(plan, err, outcome)
                progress.console.print(f"[red]failed {plan.label}: {type(err).__name__}: {err}[/]")
            progress.advance(suite_task)
    return outcome
