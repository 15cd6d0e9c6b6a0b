"""The official code's training and eval steps beside the project's, for speed measurements and exactness tests.

``benchmarks/throughput.py`` times both paths in one run and ``tests/test_throughput_exactness.py`` checks that
they compute the same thing. The **reference path** mirrors the official IntCLIP/DualCoOp code (a fork of
DualCoOp's; ``utils/trainers.py::train_coop``):

- the text tower sees all 77 token positions, and its weights keep ``requires_grad=True`` (never optimised, but
  their gradients are computed every step, as in the official code);
- text features are recomputed for every batch, at eval too;
- fp16 autocast on CUDA (no loss scaling, as ``train_coop``), NCHW tensors, a plain for-loop SGD;
- the loss is read back (``loss.item()``) after every step, as the official loop logs it.

Query2Label's reference is its official loop: fp16 autocast with a GradScaler, a for-loop AdamW and a
tensor-by-tensor EMA.

The **project path** is what ``bench run`` executes: :func:`bench.train.engine.train_step` on a method built with its
defaults (text tower truncated at the longest prompt's EOT and frozen, constant text features computed once per
eval pass, frozen branches under ``no_grad``, the run's precision on CUDA (bf16 autocast where the GPU has it;
``intclip-official``'s preset: fp16 without loss scaling, as the released code), channels_last and a fused
optimizer on CUDA, no host synchronisation between steps).

Both trainers take an autocast ``dtype`` and :func:`set_memory_format` switches either path's layout, so a
precision comparison (fp16 / bf16 / bf16 + channels_last) runs the same step under each setting. Timing:
:func:`interleaved` runs the paths in alternating rounds on one machine and keeps every round (median, spread).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bench.datasets.base import ClassInfo, DatasetData
from bench.train.engine import RunContext, autocast, precision, train_step
from bench.methods.base import Method

# What the reference path changes in a method's config (the official code's choices).
_PLAIN = {"memory_format": "contiguous", "optimizer_impl": "for-loop", "compile": "off"}
REFERENCE_SETTINGS: dict[str, dict[str, Any]] = {
    "intclip": {"truncate_text": False, **_PLAIN},
    "dualcoop": {"truncate_text": False, **_PLAIN},
    "query2label": dict(_PLAIN),
}


def method_family(method: Method) -> str:
    for family in REFERENCE_SETTINGS:
        if method.name == family or method.name.startswith(family + ":") or method.name == family + "-official":
            return family
    raise ValueError(f"no reference path for method {method.name!r} (known: {', '.join(REFERENCE_SETTINGS)})")


def intentonomy_task() -> DatasetData:
    """Intentonomy's 28 classes (names, HCI sentences, hierarchy) without images: what the models are built for."""
    from bench.datasets.intentonomy import class_infos

    classes, _ = class_infos()
    return DatasetData("intentonomy", "multilabel", classes, ["coarse", "middle", "fine"], {}, "0" * 64)


def synthetic_task(num_classes: int) -> DatasetData:
    classes = [ClassInfo(f"c{i}", f"class {i}", f"an intention numbered {i} in a scene", ("coarse", "middle")) for i in range(num_classes)]
    return DatasetData("placeholder", "multilabel", classes, ["coarse", "middle", "fine"], {}, "0" * 64)  # type: ignore[arg-type]


def build_pair(
    name: str,
    backbone: str,
    data: DatasetData,
    device: torch.device,
    config: dict[str, Any] | None = None,
    reference_overrides: dict[str, Any] | None = None,
    seed: int = 0,
) -> tuple[Method, Method]:
    """(reference, project): the method ``name`` built twice from one set of random weights, the first with the
    official code's settings (:data:`REFERENCE_SETTINGS`), the second with the project's defaults."""
    from bench.backbones.loader import load_backbone
    from bench.registry import BACKBONES, METHODS

    cls = METHODS.get(name)
    config = dict(config or {})
    spec = BACKBONES.get(backbone)

    def build(overrides: dict[str, Any]) -> Method:
        torch.manual_seed(seed)
        bb = load_backbone(spec, "none", device="cpu")
        return cls(cls.Config(**{**config, **overrides}), bb, data, device)

    project = build({})
    reference_cfg = {**REFERENCE_SETTINGS[method_family(project)], **(reference_overrides or {})}
    reference = build(reference_cfg)
    copy_weights(reference, project)  # identical weights, whatever the RNG did
    return reference, project


def copy_weights(dst: Method, src: Method) -> None:
    """Every weight (and Query2Label's EMA) of ``src`` into ``dst``, each keeping its own memory format."""
    dst.model.load_state_dict(src.model.state_dict())
    if hasattr(src, "_ema"):
        dst._ema = {k: v.clone() for k, v in src._ema.items()}


# -- the reference path ----------------------------------------------------------------------------------------
def text_tower_parameters(method: Method) -> list[torch.nn.Parameter]:
    """The CLIP text tower's weights that the official code leaves with ``requires_grad=True``."""
    clip = method.net.clip if hasattr(method, "net") else method.clip
    params = [*clip.transformer.parameters(), *clip.ln_final.parameters(), clip.positional_embedding]
    projection = clip.text_projection
    params += list(projection.parameters()) if isinstance(projection, torch.nn.Module) else [projection]
    return params


def reference_autocast(device: torch.device, dtype: torch.dtype | None = torch.float16) -> contextlib.AbstractContextManager:
    """The official code's precision: fp16 autocast on CUDA (fp32 on CPU, where it has none). ``dtype`` sets
    another autocast dtype for a precision comparison (None: fp32)."""
    if device.type != "cuda" or dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


_AUGMENT_ATTRS = ("_augment", "_randaugment")  # the prompt methods' Cutout + RandAugment, Query2Label's RandAugment


def training_augmentation(method: Method) -> Any:
    """The augmentation ``method.prepare`` applies to training batches (None: none)."""
    return next((getattr(method, a) for a in _AUGMENT_ATTRS if getattr(method, a, None) is not None), None)


@contextlib.contextmanager
def augmentation_off(method: Method):
    """``method.prepare`` without the training augmentation (normalisation and layout only), e.g. to give two
    paths one identical input."""
    saved = {a: getattr(method, a) for a in _AUGMENT_ATTRS if hasattr(method, a)}
    for a in saved:
        setattr(method, a, None)
    try:
        yield method
    finally:
        for a, value in saved.items():
            setattr(method, a, value)


def plain_input(method: Method, images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> ``method``'s normalised input in its memory format, never augmented."""
    with augmentation_off(method):
        return method.prepare(images)


def set_memory_format(method: Method, channels_last: bool) -> None:
    """Switch ``method`` (weights and the layout ``prepare`` gives) to channels_last or back to contiguous NCHW."""
    fmt = "channels_last" if channels_last else "contiguous"
    method.config = method.config.model_copy(update={"memory_format": fmt})
    method.model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def as_layout(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """The same values in the other memory format (a copy only when it differs)."""
    return images.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def reference_logits(method: Method, images: torch.Tensor) -> Any:
    """The official forward: text features recomputed from the prompts for this batch (77 positions)."""
    family = method_family(method)
    if family == "intclip":
        return method.net(images)
    if family == "dualcoop":
        return method.logits(images, method.text_features())
    return method.model(images)


def reference_scores(method: Method, images: torch.Tensor, dtype: torch.dtype | None = torch.float16) -> torch.Tensor:
    with torch.no_grad(), reference_autocast(images.device, dtype):
        out = reference_logits(method, images)
    if method_family(method) == "query2label":
        return torch.sigmoid(out.float())
    return torch.sigmoid(out[0].float() - out[1].float())


class ReferenceTrainer:
    """The official training step for ``method`` (built with the reference settings). ``dtype``: the autocast
    dtype on CUDA (default fp16, the official code's; None: fp32)."""

    def __init__(self, method: Method, device: torch.device, dtype: torch.dtype | None = torch.float16) -> None:
        self.method, self.device, self.dtype = method, device, dtype
        self.family = method_family(method)
        self.optimizer, self.scheduler = method.configure_optimizers(steps_per_epoch=10_000)
        if self.family in ("intclip", "dualcoop"):  # the official code never freezes the text tower
            for p in text_tower_parameters(method):
                p.requires_grad_(True)
        fp16 = dtype == torch.float16 and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.family == "query2label" and fp16)
        method.train(True)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        m = self.method
        with reference_autocast(self.device, self.dtype):
            loss = m.training_loss(images, labels)  # with the reference config: 77 positions, text recomputed
        self.optimizer.zero_grad()
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.family == "query2label":
            if self.scheduler is not None:
                self.scheduler.step()
            if m.config.ema:  # the official ModelEma: one tensor at a time
                params = m.learnable_parameters()
                with torch.no_grad():
                    for n, shadow in m._ema.items():
                        shadow.mul_(m.config.ema_decay).add_(params[n].detach().float(), alpha=1 - m.config.ema_decay)
        return loss.item()  # the official loop logs every step's loss


class ProjectTrainer:
    """The engine's training step for ``method`` (built with the project's defaults), at the precision ``bench run``
    gives it (:func:`bench.train.engine.precision` of the method's config: bf16 where the GPU has it, fp16 without
    loss scaling for ``intclip-official``). ``dtype`` forces an autocast dtype instead (a precision comparison;
    a GradScaler for fp16 unless the config turns loss scaling off)."""

    def __init__(self, method: Method, device: torch.device, amp: bool = True, dtype: torch.dtype | str | None = "config") -> None:
        self.method = method
        auto_dtype, scaling = precision(device, amp, method.config)
        if dtype != "config":
            auto_dtype = dtype if (amp and device.type == "cuda") else None
            rule = getattr(method.config, "loss_scaling", "auto")
            scaling = (auto_dtype == torch.float16) if rule == "auto" else (rule == "on" and auto_dtype is not None)
        self.dtype = auto_dtype
        self.ctx = RunContext(run_dir=None, seed=0, device=device, amp=amp, log=lambda *_: None, autocast_dtype=auto_dtype)  # type: ignore[arg-type]
        self.optimizer, self.scheduler = method.configure_optimizers(steps_per_epoch=10_000)
        self.scaler = torch.amp.GradScaler("cuda", enabled=bool(scaling) and device.type == "cuda")
        method.train(True)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = train_step(self.method, images, labels, self.optimizer, self.scaler, self.ctx)
        if self.scheduler is not None and self.method.scheduler_interval == "step":
            self.scheduler.step()
        return loss


def project_logits(method: Method, images: torch.Tensor) -> Any:
    """The project's eval forward with the text features cached by ``method.start_eval()``."""
    if method_family(method) in ("intclip", "dualcoop"):
        return method.logits(images, method._eval_text)
    return method._forward(images)


def project_dtype(method: Method, device: torch.device, amp: bool = True) -> torch.dtype | None:
    """The autocast dtype ``bench run`` gives ``method`` on ``device`` (None: fp32)."""
    return precision(device, amp, method.config)[0]


def project_scores(method: Method, images: torch.Tensor, amp: bool = True, dtype: torch.dtype | str | None = "config") -> torch.Tensor:
    """The engine's eval of one batch (call ``method.start_eval()`` once per pass first), at the run's precision
    (``dtype``: another autocast dtype; None: fp32)."""
    if dtype == "config":
        dtype = project_dtype(method, images.device, amp)
    with torch.no_grad(), autocast(images.device, amp and dtype is not None, dtype):
        return method.predict(images)


def text_side_step(method: Method, reference: bool, dtype: torch.dtype | str | None = "config") -> torch.Tensor:
    """One text-side forward and backward (the prompt features of every class, a gradient for the contexts):
    the reference's all 77 positions in fp16 on CUDA, or the project's truncated pass at the run's precision
    (``dtype`` overrides either; None: fp32)."""
    from bench.methods.components import prompt_features

    clip = method.net.clip if hasattr(method, "net") else method.clip
    prompts = method.net.prompts if hasattr(method, "net") else method.prompts
    device = prompts.ctx_pos.device
    if dtype == "config":
        dtype = torch.float16 if reference else project_dtype(method, device)
    ctx = reference_autocast(device, dtype) if reference else autocast(device, dtype is not None, dtype)
    with ctx:
        pos, neg = prompt_features(clip, prompts, truncate=not reference)
    loss = pos.float().square().mean() + neg.float().square().mean()
    loss.backward()
    return loss.detach()


# -- timing ----------------------------------------------------------------------------------------------------
@dataclass
class Timing:
    images_per_s: float
    ms_per_step: float
    peak_mem_gib: float | None
    steps: int


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(step: Callable[[], Any], batch: int, device: torch.device, steps: int, warmup: int) -> Timing:
    """Time ``steps`` calls of ``step`` after ``warmup`` calls (the GPU drained before and after)."""
    for _ in range(warmup):
        step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return Timing(steps * batch / seconds, 1000 * seconds / steps, peak, steps)


@dataclass
class Rounds:
    """One path's share of an interleaved measurement (:func:`interleaved`)."""

    images_per_s: float  # median over the rounds, by ``clock``
    ms_per_step: float  # median over the rounds, by ``clock``
    peak_mem_gib: float | None  # the most allocated during its timed rounds (CUDA only)
    steps: int  # timed steps per round
    rounds: list[float]  # images/s of every round, in order, by ``clock``
    first_call_s: float  # the first (untimed) call alone, wall clock: compilation, autotuning, allocation
    warmup_s: float  # every untimed call, the first included, wall clock
    clock: str = "wall"  # "wall" or "cpu" (this process's CPU time)
    wall_rounds: list[float] | None = None  # images/s of every round by the wall clock (always kept)


def interleaved(
    paths: dict[str, Callable[[], Any]], batch: int, device: torch.device, steps: int, warmup: int, rounds: int,
    clock: str = "wall",
) -> dict[str, Rounds]:
    """Time several paths against each other on a shared (noisy) machine: each path gets ``warmup`` untimed calls
    (at least one), then ``rounds`` rounds in which every path runs ``steps`` timed calls, the order reversed
    every other round (ABBA), so a slow spell of the machine falls on every path alike. Per path: the median
    img/s and ms/step over the rounds, every round's img/s (for the spread), the peak memory and the warm-up time.

    ``clock="cpu"`` times by this process's CPU time instead of the wall clock: on a CPU shared with other jobs,
    with one torch thread, it counts the work a step does and not the time it waited for a core (GPU timings
    need the wall clock; the wall-clock rounds are kept either way)."""
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', not {clock!r}")
    if clock == "cpu" and device.type == "cuda":
        raise ValueError("clock='cpu' cannot time a GPU (its work is not this process's CPU time)")
    names = list(paths)
    first: dict[str, float] = {}
    warm: dict[str, float] = {}
    for name in names:
        synchronize(device)
        t0 = time.perf_counter()
        paths[name]()
        synchronize(device)
        first[name] = time.perf_counter() - t0
        for _ in range(max(0, warmup - 1)):
            paths[name]()
        synchronize(device)
        warm[name] = time.perf_counter() - t0
    per_round: dict[str, list[float]] = {n: [] for n in names}
    wall_rounds: dict[str, list[float]] = {n: [] for n in names}
    peaks: dict[str, float | None] = {n: None for n in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            synchronize(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(steps):
                paths[name]()
            synchronize(device)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            wall_rounds[name].append(steps * batch / wall)
            per_round[name].append(steps * batch / (cpu if clock == "cpu" else wall))
            if device.type == "cuda":
                peaks[name] = max(peaks[name] or 0.0, torch.cuda.max_memory_allocated(device) / 2**30)
    out = {}
    for name in names:
        median = statistics.median(per_round[name])
        out[name] = Rounds(median, 1000 * batch / median, peaks[name], steps, per_round[name], first[name], warm[name],
                           clock, wall_rounds[name])
    return out


def ratio(num: Rounds, den: Rounds) -> dict[str, Any]:
    """num / den per round (both timed in the same round, so machine load cancels): median, min and max (by the
    paths' clock), and the median by the wall clock."""
    per_round = [a / b for a, b in zip(num.rounds, den.rounds, strict=True)]
    out = {"median": statistics.median(per_round), "min": min(per_round), "max": max(per_round), "rounds": per_round,
           "clock": num.clock}
    if num.wall_rounds and den.wall_rounds:
        out["median_wall"] = statistics.median(a / b for a, b in zip(num.wall_rounds, den.wall_rounds, strict=True))
    return out


def clone_learnable(method: Method) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().clone() for n, p in method.learnable_parameters().items()}


def max_abs(a: Any) -> float:
    if isinstance(a, (tuple, list)):
        return max(max_abs(x) for x in a)
    return float(a.float().abs().max())


def max_abs_diff(a: Any, b: Any) -> float:
    if isinstance(a, (tuple, list)):
        return max(max_abs_diff(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):  # over the keys of the first
        return max(max_abs_diff(a[k], b[k]) for k in a)
    return float((a.float() - b.float()).abs().max())
