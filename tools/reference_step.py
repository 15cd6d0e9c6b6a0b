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
eval pass, frozen branches under ``no_grad``, bf16 autocast where the GPU has it, channels_last and a fused
optimizer on CUDA, no host synchronisation between steps).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bench.datasets.base import ClassInfo, DatasetData
from bench.train.engine import RunContext, autocast, train_step
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
    from bench.datasets.intentonomy import _class_infos

    classes, _ = _class_infos()
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


def reference_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """The official code's precision: fp16 autocast on CUDA (fp32 on CPU, where it has none)."""
    return torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else contextlib.nullcontext()


def reference_logits(method: Method, images: torch.Tensor) -> Any:
    """The official forward: text features recomputed from the prompts for this batch (77 positions)."""
    family = method_family(method)
    if family == "intclip":
        return method.net(images)
    if family == "dualcoop":
        return method.logits(images, method.text_features())
    return method.model(images)


def reference_scores(method: Method, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), reference_autocast(images.device):
        out = reference_logits(method, images)
    if method_family(method) == "query2label":
        return torch.sigmoid(out.float())
    return torch.sigmoid(out[0].float() - out[1].float())


class ReferenceTrainer:
    """The official training step for ``method`` (built with the reference settings)."""

    def __init__(self, method: Method, device: torch.device) -> None:
        self.method, self.device = method, device
        self.family = method_family(method)
        self.optimizer, self.scheduler = method.configure_optimizers(steps_per_epoch=10_000)
        if self.family in ("intclip", "dualcoop"):  # the official code never freezes the text tower
            for p in text_tower_parameters(method):
                p.requires_grad_(True)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.family == "query2label" and device.type == "cuda")
        method.train(True)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        m = self.method
        with reference_autocast(self.device):
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
    """The engine's training step for ``method`` (built with the project's defaults)."""

    def __init__(self, method: Method, device: torch.device, amp: bool = True) -> None:
        self.method = method
        self.ctx = RunContext(run_dir=None, seed=0, device=device, amp=amp, log=lambda *_: None)  # type: ignore[arg-type]
        self.optimizer, self.scheduler = method.configure_optimizers(steps_per_epoch=10_000)
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda" and not bf16)
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


def project_scores(method: Method, images: torch.Tensor, amp: bool = True) -> torch.Tensor:
    """The engine's eval of one batch (call ``method.start_eval()`` once per pass first)."""
    with torch.no_grad(), autocast(images.device, amp):
        return method.predict(images)


def text_side_step(method: Method, reference: bool) -> torch.Tensor:
    """One text-side forward and backward (the prompt features of every class, a gradient for the contexts)."""
    from bench.methods.components import prompt_features

    clip = method.net.clip if hasattr(method, "net") else method.clip
    prompts = method.net.prompts if hasattr(method, "net") else method.prompts
    device = prompts.ctx_pos.device
    ctx = reference_autocast(device) if reference else autocast(device, True)
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
