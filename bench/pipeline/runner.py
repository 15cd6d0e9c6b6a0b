"""One run, in-process: threads and seed -> backbone -> method -> train/fit (engine) -> evaluate -> record -> store.

Both executors call :func:`execute_run` (the serial loop directly, the Ray executor inside a trial), so a run is the
same computation wherever it runs. A run that fails leaves ``error.json`` beside its checkpoint
(:func:`record_failure`).
"""

from __future__ import annotations

import json
import time
import traceback
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

from bench.store import store
from bench.config import BenchConfig
from bench.io import atomic_write_text
from bench.pipeline.labels import apply_labels, cache_dir
from bench.pipeline.limit import apply_limit, limit_cache_dir
from bench.pipeline.plan import PlannedRun, SuiteOutcome
from bench.protocol import get_protocol
from bench.pipeline.record import build_record
from bench.registry import BACKBONES, DATASETS, create_method
from bench.store.schema import LabelProtocolRecord, LimitRecord, RunResult

if TYPE_CHECKING:
    from rich.progress import Progress


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
    owner_alive: Callable[[], bool] | None = None,
    placement: Any = None,
) -> RunResult:
    """Do one run: load the backbone, build the method, train/fit, evaluate, write the result."""
    import torch

    from bench.train.devices import resolve_device
    from bench.train.engine import set_threads

    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    from bench.train.devices import Placement

    placement = placement or Placement()
    device = resolve_device(cfg.engine.device, placement)  # fails here, naming the node, when CUDA is missing
    # Same thread count under every executor (float reduction order), and every generator seeded before anything
    # random is built (random backbone init, prompt contexts, heads): a run never depends on what ran before it.
    previous_threads = torch.get_num_threads()
    threads = set_threads(cfg.ray.trial_resources(plan.method).cpu)
    try:
        data, limit = apply_limit(plan.identity, data)  # smoke mode: N images per split
        data, labels = apply_labels(plan.identity, plan.method, data, plan.torch_seed)  # a label-efficiency subset
        return _execute(plan, data, cfg, device, threads, executor=executor, trial_id=trial_id, progress=progress,
                        report=report, log=log, started=started, t0=t0, owner_alive=owner_alive, placement=placement,
                        labels=labels, limit=limit)
    finally:
        torch.set_num_threads(previous_threads)  # a caller's (a notebook's, a test's) setting is left as it was



def _execute(plan: PlannedRun, data: Any, cfg: BenchConfig, device: Any, threads: int, **run: Any) -> RunResult:
    """:func:`execute_run` once the thread count is set: seed, build, run, evaluate, record, store."""
    from bench import metrics
    from bench.store import provenance
    from bench.backbones.loader import load_backbone
    import torch

    from bench.train.devices import accelerator_versions
    from bench.train.engine import CHECKPOINT, RunContext, precision, run_method, seed_everything
    from bench.io import atomic_save

    seed_everything(plan.torch_seed)  # before anything random is built
    backbone = load_backbone(BACKBONES.get(plan.backbone), cfg.backbone_pretrained(plan.backbone), cfg.paths.weights, str(device))
    method = create_method(plan.method, cfg.method_config(plan.method), backbone, data, device)
    autocast_dtype, loss_scaling = precision(device, cfg.engine.amp, method.config)
    ctx = RunContext(
        run_dir=plan.run_dir, seed=plan.torch_seed, device=device, protocol=cfg.protocol.name, amp=cfg.engine.amp,
        eval_batch_size=cfg.engine.eval_batch_size, cache_dir=cache_dir(limit_cache_dir(cfg.paths.cache, run["limit"]), run["labels"]),
        deterministic=cfg.engine.deterministic, progress=run["progress"], report=run["report"], log=run["log"], owner_alive=run["owner_alive"],
    )
    t_setup = time.perf_counter()
    try:
        outcome = run_method(method, data, ctx)
    except torch.OutOfMemoryError as err:
        raise _out_of_memory(plan, cfg, method, device, err) from err
    t_trained = time.perf_counter()

    val, test = data.splits["val"], data.splits["test"]
    protocol = get_protocol(cfg.protocol.name)
    selections, threshold = dict(outcome.selections), protocol.threshold
    if threshold is None and data.task == "multilabel":  # the threshold's val selection, with its tie set and margin
        chosen = metrics.threshold_selection(outcome.val_scores, val.labels)
        threshold, selections["threshold"] = chosen.chosen, chosen.to_dict()
    val_m, test_m = metrics.evaluate(
        data.task, outcome.val_scores, val.labels, outcome.test_scores, test.labels, threshold,
        val_ranking=outcome.val_logits, test_ranking=outcome.test_logits,
        official_ap=protocol.official_ap and data.task == "multilabel",
    )
    artifacts = {"scores": store.SCORES}
    state = method.state_dict()
    ctx.check_owner()
    if cfg.engine.keep_best_weights and state:
        atomic_save(state, plan.run_dir / "weights.pt")
        artifacts["weights"] = "weights.pt"
    t0 = run["t0"]
    result = build_record(
        plan, cfg, data=data, method=method, backbone=backbone, outcome=outcome, val_metrics=val_m, test_metrics=test_m,
        selection_split=protocol.selection_split, executor=run["executor"], trial_id=run["trial_id"],
        timing={
            "started_at": run["started"].isoformat(),
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
            "ray_node_id": run["placement"].node_id,
            "ray_gpu_ids": run["placement"].ray_gpu_ids,
            **accelerator_versions(device),
        },
        artifacts=artifacts,
        main_metric=DATASETS.get(plan.dataset).main_metric,
        selections=selections,
    )
    result.label_protocol = None if run["labels"] is None else LabelProtocolRecord(**run["labels"])
    result.limit = None if run["limit"] is None else LimitRecord(**run["limit"])
    scores = {"val_scores": outcome.val_scores, "val_labels": val.labels, "val_logits": outcome.val_logits,
              "test_scores": outcome.test_scores, "test_labels": test.labels, "test_logits": outcome.test_logits}
    ctx.check_owner()
    store.write_result(plan.run_dir, result, scores)
    (plan.run_dir / CHECKPOINT).unlink(missing_ok=True)
    (plan.run_dir / "error.json").unlink(missing_ok=True)
    return result


def _out_of_memory(plan: PlannedRun, cfg: BenchConfig, method: Any, device: Any, err: BaseException) -> Exception:
    from bench.errors import GPUOutOfMemoryError

    share = cfg.ray.trial_resources(plan.method).gpu
    batch = getattr(method.config, "batch_size", None)
    return GPUOutOfMemoryError(
        f"{plan.label}: out of GPU memory on {device} (batch_size {batch}, [ray.resources] gpu = {share} per trial): "
        f"lower methods.{plan.method}.batch_size, or give each trial a larger GPU share (fewer trials per GPU). "
        f"torch: {str(err).splitlines()[0][:200]}"
    )


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
        atomic_write_text(plan.run_dir / "error.json", json.dumps(payload, indent=2))
    except OSError:
        pass
