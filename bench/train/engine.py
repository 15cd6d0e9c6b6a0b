"""The one training/evaluation engine every gradient method shares.

Per epoch: train over shuffled batches (AMP when CUDA is present), score val, compute the protocol's selection
metric, keep the best learned state, write a checkpoint (atomically) and report the epoch. A run whose folder holds
a checkpoint resumes after its last finished epoch with the same data order. At the end the best state is restored
and val and test are scored once. Under the default ``val-threshold`` protocol the test split is not touched before
that; ``intclip-code`` (the official code's test-set epoch selection) scores test each epoch and says so.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bench.train.checkpoint import CHECKPOINT, checkpoint_bytes, checkpoint_state, read_checkpoint, resume
from bench.train.batches import batch_indices, prefetch_batches, to_device
from bench.datasets.base import DatasetData, Split
from bench.errors import OrphanedRunError, TrainingDivergedError
from bench.io import atomic_save, ensure_free_space
from bench.protocol import Protocol, get_protocol
from bench.train.candidates import BestSoFar

if TYPE_CHECKING:
    from rich.progress import Progress

    from bench.methods.base import Method



@dataclass
class RunContext:
    """Everything about one run that is not the method or the data."""

    run_dir: Path
    seed: int
    device: torch.device
    protocol: str = "val-threshold"
    amp: bool = True
    eval_batch_size: int = 256
    cache_dir: Path | None = None  # shared caches (e.g. frozen features), keyed by their inputs
    score_test: bool = True  # False for search trials: they never look at test
    progress: Progress | None = None
    report: Callable[[dict[str, Any]], None] | None = None  # per-epoch callback (the Ray adapter reports to Tune)
    log: Callable[[str], None] = print
    prefetch: int = 2  # batches gathered ahead by a background thread (0: in the training loop itself)
    check_every: int | None = None  # steps between loss finiteness checks; None: every step on CPU, 25 on a GPU
    cudnn_benchmark: bool = True  # on CUDA, let cuDNN time its algorithms once per shape and keep the fastest
    deterministic: bool = False  # deterministic algorithms on CUDA (see configure_determinism)
    autocast_dtype: torch.dtype | None = None  # set by the engine from the method's config (see precision)
    # asked before every write (checkpoint, record): False when the suite that started the run is gone (Ray trials)
    owner_alive: Callable[[], bool] | None = None

    def check_owner(self) -> None:
        """Raise :class:`OrphanedRunError` when the run's suite is gone, so an orphan never writes to the store."""
        if self.owner_alive is not None and not self.owner_alive():
            raise OrphanedRunError(f"{self.run_dir}: the suite that started this run is gone (its lock was released); "
                                   "stopping without writing")


@dataclass
class FinalScores:
    """A method's scores of val and test after training (test empty for search trials)."""

    val_scores: np.ndarray  # float32 probabilities
    test_scores: np.ndarray
    val_logits: np.ndarray  # float64 logits / log-odds / margins: what ranks (mAP) without saturating
    test_logits: np.ndarray


@dataclass
class Outcome(FinalScores):
    """What a run produced: its final val/test scores and how it got there."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_variant: str | None = None
    epochs_run: int = 0
    resumed_from_epoch: int | None = None
    fit_info: dict[str, Any] = field(default_factory=dict)
    selections: dict[str, dict[str, Any]] = field(default_factory=dict)  # what -> Selection.to_dict() (epoch, C)

    @classmethod
    def of(cls, final: FinalScores, **how: Any) -> Outcome:
        """The outcome with ``final``'s scores and ``how`` (history, best epoch, ...)."""
        return cls(**vars(final), **how)


def seed_everything(seed: int) -> None:
    """Seed every global generator a run touches (Python, NumPy, torch CPU and every CUDA device). Called before
    the backbone is loaded and the method built (initial weights), and again right before training (data order,
    augmentation, dropout), so nothing that ran earlier in the process (another trial in a reused Ray worker, a
    test) changes a run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def set_threads(threads: int) -> int:
    """Use exactly ``threads`` intra-op threads (at least 1). On CPU the order of float reductions in matmuls and
    convolutions depends on the thread count, so both executors give a run the same count: its method's
    ``[ray.resources]`` ``cpu``. Returns the count set."""
    threads = max(1, int(threads))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def configure_determinism(device: torch.device, deterministic: bool, cudnn_benchmark: bool = True) -> None:
    """On CUDA: with ``deterministic``, torch's deterministic algorithms (an error where an op has none), cuDNN's
    deterministic kernels without autotuning, and the cuBLAS workspace setting those need; without it, cuDNN may
    autotune (fastest, run-to-run differences in the last bits). CPU kernels are deterministic for a fixed thread
    count either way, and ``deterministic`` also turns on the checks there."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = cudnn_benchmark and not deterministic


@functools.lru_cache(maxsize=8)
def _amp_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, enabled: bool, dtype: torch.dtype | None = None) -> contextlib.AbstractContextManager:
    """Autocast on CUDA in ``dtype`` (default: bf16 when the GPU supports it, else fp16); nothing on CPU."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype or _amp_dtype(device))


def precision(device: torch.device, amp: bool, config: Any) -> tuple[torch.dtype | None, bool]:
    """``(autocast dtype or None, loss scaling)`` of a run: nothing on CPU or with ``engine.amp = false``; else the
    method config's ``autocast`` (``auto``: bf16 where the GPU has it, else fp16; ``fp16``; ``bf16``; ``off``) and
    ``loss_scaling`` (``auto``: a GradScaler for fp16 only; ``on``; ``off``, as the released IntCLIP code trains)."""
    choice = getattr(config, "autocast", "auto")
    if device.type != "cuda" or not amp or choice == "off":
        return None, False
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(choice) or _amp_dtype(device)
    scaling = getattr(config, "loss_scaling", "auto")
    return dtype, (dtype == torch.float16) if scaling == "auto" else scaling == "on"


def split_batches(split: Split, batches: Iterator[np.ndarray], ctx: RunContext, labels: bool = True):
    """``(uint8 images, labels)`` CPU tensors per index batch, gathered ahead (pinned when training on a GPU)."""
    return prefetch_batches(
        split.images, split.labels if labels else None, batches, pin=ctx.device.type == "cuda", depth=ctx.prefetch
    )


def to_probabilities(logits: np.ndarray, task: str) -> np.ndarray:
    """float32 probabilities in [0, 1] from float64 logits: sigmoid (multilabel) or softmax (multiclass), both
    numerically stable (no overflow for large logits)."""
    from scipy.special import expit, softmax

    probs = softmax(logits, axis=1) if task == "multiclass" else expit(logits)
    return np.clip(probs.astype(np.float32), 0.0, 1.0)


@torch.no_grad()
def score_split(method: Method, split: Split, ctx: RunContext) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities float32 [N, C], logits float64 [N, C])`` for every image of ``split``. The logits rank
    without saturating (mAP/AP use them), the probabilities are what thresholds apply to. Kept on the device until
    the end of the pass, so the GPU never waits for the host in between."""
    method.model.eval()
    method.start_eval()
    out = []
    for images, _ in split_batches(split, batch_indices(len(split), ctx.eval_batch_size), ctx, labels=False):
        with autocast(ctx.device, ctx.amp, ctx.autocast_dtype):
            logits = method.predict_logits(method.prepare(images))
        out.append(logits.double())
    logits = torch.cat(out).cpu().numpy()
    return _checked(method, logits, len(split))


def _checked(method: Method, logits: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, dtype=np.float64)
    if logits.shape != (n, method.num_classes):
        raise ValueError(f"{method.name}: logits of shape {logits.shape}, expected ({n}, {method.num_classes})")
    if not np.isfinite(logits).all():
        raise TrainingDivergedError(f"{method.name}: non-finite scores on {n} images")
    return to_probabilities(logits, method.task), logits


def predict_split(method: Method, split: Split, ctx: RunContext) -> np.ndarray:
    """Probabilities in [0, 1] for every image of ``split``, float32 ``[N, C]`` (see :func:`score_split`)."""
    return score_split(method, split, ctx)[0]


def selection_metric(task: str, scores: np.ndarray, labels: np.ndarray, protocol: str) -> float:
    """The protocol's selection metric (:meth:`bench.protocol.Protocol.selection_metric`)."""
    return get_protocol(protocol).selection_metric(task, scores, labels)


def train_step(
    method: Method, images: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, ctx: RunContext
) -> torch.Tensor:
    """One optimizer step on a prepared batch; returns the loss (on the device: reading it would wait for the GPU)."""
    with autocast(ctx.device, ctx.amp, ctx.autocast_dtype):
        loss = method.training_loss(images, labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    method.after_step()
    return loss.detach()


def train_epoch(
    method: Method,
    split: Split,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    scheduler: Any,
    ctx: RunContext,
    epoch: int,
) -> list[float]:
    """One pass over shuffled batches of ``split``; returns the per-step losses.

    Losses stay on the device and are checked for NaN/inf every ``ctx.check_every`` steps (every step on CPU, where
    reading them costs nothing), so on a GPU the host queues the next steps instead of waiting for each one; a
    non-finite loss stops the run (before the epoch's checkpoint) naming the epoch and step where it appeared."""
    check_every = ctx.check_every or (25 if ctx.device.type == "cuda" else 1)
    method.train(True)
    losses: list[float] = []
    pending: list[torch.Tensor] = []

    def check() -> None:
        values = torch.stack(pending).float().cpu().tolist()
        pending.clear()
        for i, value in enumerate(values):
            if not math.isfinite(value):
                raise TrainingDivergedError(f"{method.name}: loss is {value} at epoch {epoch} (step {len(losses) + i})")
        losses.extend(values)

    batches = batch_indices(len(split), method.config.batch_size, shuffle=True, seed=ctx.seed, epoch=epoch)
    for images, labels in split_batches(split, batches, ctx):
        pending.append(train_step(method, method.prepare(images), to_device(labels, ctx.device), optimizer, scaler, ctx))
        if scheduler is not None and method.scheduler_interval == "step":
            scheduler.step()
        if len(pending) >= check_every:
            check()
    if pending:
        check()
    return losses


def train(method: Method, data: DatasetData, ctx: RunContext) -> Outcome:
    """Train an engine method with per-epoch validation, checkpointing and best-on-val selection."""
    cfg = method.config
    train_split = data.splits["train"]
    protocol = get_protocol(ctx.protocol)
    selection_split = data.splits[protocol.selection_split]
    steps_per_epoch = math.ceil(len(train_split) / cfg.batch_size)
    optimizer, scheduler = method.configure_optimizers(steps_per_epoch)
    _check_optimizer_covers_learnable(method, optimizer)
    scaler = torch.amp.GradScaler("cuda", enabled=precision(ctx.device, ctx.amp, cfg)[1])  # (autocast: run_method)

    start_epoch, history = 0, []
    best = BestSoFar()  # every (epoch, variant) within the tie tolerance of the best val metric, with its state
    resumed_from = None
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = ctx.run_dir / CHECKPOINT
    ensure_free_space(ctx.run_dir, checkpoint_bytes(method), f"{method.name}'s checkpoint (written every epoch)")
    ckpt = read_checkpoint(ckpt_path, method.name, ctx.log, ctx.device) if ckpt_path.is_file() else None
    if ckpt is not None:
        start_epoch, history, stored = resume(ckpt, method, optimizer, scheduler, scaler, ctx.log)
        best = BestSoFar.from_checkpoint(stored)
        resumed_from = start_epoch

    patience = getattr(cfg, "early_stop_patience", None)
    task_id = ctx.progress.add_task(f"  {method.name} epochs", total=cfg.epochs, completed=start_epoch) if ctx.progress else None
    for epoch in range(start_epoch, cfg.epochs):
        if patience is not None and best.candidates and epoch - 1 - best.top_epoch >= patience:
            ctx.log(f"early stop after epoch {epoch} ({patience} epochs without improvement)")
            break
        t0 = time.perf_counter()
        losses = train_epoch(method, train_split, optimizer, scaler, scheduler, ctx, epoch)
        if scheduler is not None and method.scheduler_interval == "epoch":
            scheduler.step()
        variant_metrics = _score_variants(method, data.task, selection_split, protocol, ctx, epoch, best)
        metric = max(variant_metrics.values())
        record = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)),
            "selection_metric": metric,
            **({"variant_metrics": variant_metrics} if len(variant_metrics) > 1 else {}),
            "selection_split": protocol.selection_split,
            "lr": [g["lr"] for g in optimizer.param_groups],
            "seconds": time.perf_counter() - t0,
        }
        history.append(record)
        ctx.check_owner()
        atomic_save(checkpoint_state(epoch + 1, method, optimizer, scheduler, scaler, best.to_checkpoint(), history), ckpt_path)
        if ctx.report:
            ctx.report({**record, "best_metric": best.top, "checkpoint": str(ckpt_path)})
        if ctx.progress is not None:
            ctx.progress.update(task_id, advance=1, description=f"  {method.name} epoch {epoch + 1} val {100 * metric:.2f}")
    if ctx.progress is not None:
        ctx.progress.remove_task(task_id)

    selection, chosen = best.choose(method, history, protocol.tie_tolerance)
    if chosen is not None:
        method.load_state_dict(chosen.state)
    return Outcome.of(
        _final_scores(data, ctx, lambda name: score_split(method, data.splits[name], ctx)),
        history=history,
        best_epoch=None if chosen is None else chosen.epoch,
        best_variant=None if chosen is None else chosen.variant,
        epochs_run=len(history),
        resumed_from_epoch=resumed_from,
        selections={} if selection is None else {"epoch": selection.to_dict()},
    )


def _score_variants(method: Method, task: str, split: Split, protocol: Protocol, ctx: RunContext, epoch: int,
                    best: BestSoFar) -> dict[str, float]:
    """Score every eval variant (e.g. raw and EMA weights) on the selection split, offer each to ``best``, and
    return the variants' metrics."""
    variant_metrics = {}
    for variant in method.eval_variants():
        method.use_variant(variant)
        metric = protocol.selection_metric(task, predict_split(method, split, ctx), split.labels)
        variant_metrics[variant] = metric
        best.add(epoch, variant, metric, method.variant_state(variant), protocol.tie_tolerance)
    method.use_variant(method.eval_variants()[0])
    return variant_metrics


def _check_optimizer_covers_learnable(method: Method, optimizer: torch.optim.Optimizer) -> None:
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    learnable = {id(p) for p in method.learnable_parameters().values()}
    if in_optimizer != learnable:
        raise RuntimeError(
            f"{method.name}: optimizer updates {len(in_optimizer)} tensors but the method declares "
            f"{len(learnable)} learnable ones; learnable counts would be wrong"
        )


def run_method(method: Method, data: DatasetData, ctx: RunContext) -> Outcome:
    """Train (engine), fit, or just evaluate ``method``, then score val and test."""
    seed_everything(ctx.seed)
    configure_determinism(ctx.device, ctx.deterministic, ctx.cudnn_benchmark)
    ctx.autocast_dtype = precision(ctx.device, ctx.amp, method.config)[0]
    if method.trainer == "engine":
        return train(method, data, ctx)
    fit_info = method.fit(data, ctx) if method.trainer == "fit" else {}
    selections = fit_info.pop("selections", {})  # e.g. the probe's C

    def scores(name: str) -> tuple[np.ndarray, np.ndarray]:
        cached = method.split_scores(name, data, ctx)  # e.g. the linear probe's cached frozen features
        if cached is None:
            return score_split(method, data.splits[name], ctx)
        return _checked(method, cached, len(data.splits[name]))

    return Outcome.of(_final_scores(data, ctx, scores), fit_info=fit_info, selections=selections)


def _final_scores(data: DatasetData, ctx: RunContext, scores: Callable) -> FinalScores:
    """Val and test scored once (``scores(split) -> (probabilities, logits)``); test is empty for search trials."""
    val, val_logits = scores("val")
    if not ctx.score_test:
        empty = np.zeros((0, 0), np.float32)
        return FinalScores(val, empty, val_logits, empty.astype(np.float64))
    test, test_logits = scores("test")
    return FinalScores(val, test, val_logits, test_logits)
