"""The Method interface every method implements (SPEC 2).

A method declares its name, a typed config with defaults from the paper or the official code, the backbones it
supports, which parameters it trains (explicitly: learnable counts come from this set and equal what the
optimizer updates), and how images become per-class scores in [0, 1]. Gradient methods are trained by
:mod:`bench.train.engine` (``trainer = "engine"``); a method fitted another way (the linear probe) implements
:meth:`Method.fit` (``trainer = "fit"``); a method with nothing to train uses ``trainer = "none"``.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from bench.train.batches import Preprocessing, to_model_input

if TYPE_CHECKING:
    from bench.backbones.loader import Backbone
    from bench.datasets.base import DatasetData
    from bench.train.engine import RunContext


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Probabilities from :meth:`Method.predict_logits`' output, computed in the logits' dtype (float64 where the
    engine passes float64): sigmoid for multilabel, softmax over classes for multiclass."""
    return logits.softmax(dim=-1) if task == "multiclass" else torch.sigmoid(logits)


class MethodConfig(BaseModel):
    """Settings every method has; subclasses add theirs. Unknown keys are rejected.

    ``preset`` names a set of defaults from ``presets`` (e.g. the official code's or the paper text's
    hyperparameters); keys given explicitly win over the preset.
    """

    # unknown keys rejected; every float finite (lr = inf or nan fails here, with the dotted key, not in training)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    # What `bench tune` searches: key -> ("loguniform", low, high) | ("uniform", low, high) | ("int", low, high)
    # | ("choice", [values]). Overridable per method in bench.toml.
    search_space: ClassVar[dict[str, tuple]] = {}

    preset: str | None = None
    preprocessing: Preprocessing = "clip"
    # NHWC convolutions (the same math; cuDNN's fast layout). auto: channels_last on CUDA, contiguous elsewhere.
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        name = data.get("preset", cls.model_fields["preset"].default)
        if name is None:
            return data
        if name not in cls.presets:
            raise ValueError(f"unknown preset {name!r} (known: {', '.join(cls.presets) or 'none'})")
        return {**cls.presets[name], **data}


class TrainConfig(MethodConfig):
    """Settings of methods trained by the engine.

    Speed settings (none changes the math; benchmarks/RESULTS.md measures them): ``optimizer_impl`` picks the
    optimizer's kernel (``fused``: one kernel for every parameter; ``foreach``: batched; ``for-loop``: one
    parameter at a time; ``auto``: fused on CUDA, torch's default elsewhere). ``compile`` wraps the method's forward
    in ``torch.compile`` (``reduce-overhead`` adds CUDA graphs); off by default: compiling costs minutes per run.
    """

    epochs: int = Field(default=10, gt=0)
    batch_size: int = Field(default=32, gt=0)
    early_stop_patience: int | None = Field(default=None, gt=0)
    optimizer_impl: Literal["auto", "fused", "foreach", "for-loop"] = "auto"
    compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = "off"
    compile_backend: Literal["inductor", "aot_eager", "eager"] = "inductor"
    # precision on CUDA (engine.amp = true): autocast dtype (auto = bf16 where the GPU has it, else fp16) and loss
    # scaling (auto = a GradScaler for fp16 only); see bench.train.engine.precision
    autocast: Literal["auto", "bf16", "fp16", "off"] = "auto"
    loss_scaling: Literal["auto", "on", "off"] = "auto"


class Method(ABC):
    """Base class: subclasses build ``self.model`` in ``__init__`` and declare what they train."""

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    trainer: ClassVar[Literal["engine", "fit", "none"]] = "engine"
    supported_backbones: ClassVar[tuple[str, ...]] = ("*",)  # backbone name patterns (fnmatch)
    # What the method reads of the CLIP model, checked by tower, not by name (bench.backbones.openclip): the image towers
    # whose features it takes ("resnet": open_clip's ModifiedResNet, "vit": its VisionTransformer pooled on the class
    # token, "other": timm trunks, attentional pooling, ...), and whether it needs the CLIP class's own text
    # transformer with CLIP's tokenizer (prompt learning on token embeddings, EOT = argmax of the tokens)
    image_towers: ClassVar[tuple[str, ...]] = ("resnet", "vit", "other")
    clip_text: ClassVar[bool] = False
    version: ClassVar[str] = "1"  # bump when the method's math changes: it is part of every run id
    # True when the method draws no random numbers of its own (no init, data order, augmentation or dropout): on a
    # fixed backbone its scores do not depend on the seed, so a suite runs it once (seed None), not once per seed
    deterministic: ClassVar[bool] = False
    # how reports show the method: its group in Table 1 and a readable name (None: the registry name)
    family: ClassVar[str] = "Other methods"
    display_name: ClassVar[str | None] = None
    scheduler_interval: ClassVar[Literal["epoch", "step"]] = "epoch"  # when the engine steps the scheduler
    # True when the training loss ignores unobserved labels: the partial-label protocol (suite.label_proportion)
    # gives training labels of -1 (bench.datasets.subsets.UNOBSERVED) where a label is hidden; other methods refuse it
    partial_labels: ClassVar[bool] = False
    VARIANTS: ClassVar[dict[str, dict[str, Any]]] = {}  # named config changes, run as "<name>:<variant>"

    @classmethod
    def variant(cls, variant: str, name: str | None = None, display_name: str | None = None) -> type[Method]:
        """The method with ``VARIANTS[variant]`` as its config defaults, named ``<name>:<variant>`` (displayed as
        ``display_name``, default ``<display name> (<variant>)``)."""
        overrides = cls.VARIANTS[variant]
        fields = {}
        for key, value in overrides.items():
            info = copy.copy(cls.Config.model_fields[key])
            info.default, info.default_factory = value, None
            fields[key] = (info.annotation, info)
        config = create_model(f"{cls.Config.__name__}_{variant.replace('-', '_')}", __base__=cls.Config, **fields)
        attrs = {
            "name": name or f"{cls.name}:{variant}",
            "display_name": display_name or (f"{cls.display_name} ({variant})" if cls.display_name else None),
            "Config": config,
            "__module__": cls.__module__,
            "VARIANTS": {k: v for k, v in cls.VARIANTS.items() if k != variant},
        }
        return type(f"{cls.__name__}_{variant.replace('-', '_')}", (cls,), attrs)

    def __init__(self, config: MethodConfig, backbone: Backbone, data: DatasetData, device: torch.device) -> None:
        self.config = config
        self.backbone = backbone
        self.task = data.task
        self.num_classes = data.num_classes
        self.device = device
        self.model: torch.nn.Module = backbone.model

    # -- what is trained ---------------------------------------------------------------------------------------
    def learnable_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Every parameter the optimizer updates (or the fit learns), by name. Default: those with
        ``requires_grad``; methods whose learned state is not a torch parameter override :meth:`param_counts`."""
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer param groups; must cover exactly :meth:`learnable_parameters`."""
        return [{"params": list(self.learnable_parameters().values())}]

    @classmethod
    def random_weights_config(cls, config: MethodConfig) -> MethodConfig:
        """``config`` changed so that building the method loads no weights of its own (``bench params``); the
        CLIP backbone is random already there. Methods with their own pretrained parts override this."""
        return config

    def param_counts(self) -> dict[str, int]:
        learnable = sum(p.numel() for p in self.learnable_parameters().values())
        total = sum(p.numel() for p in self.model.parameters())
        return {"learnable": learnable, "total": total}

    # -- training (engine methods) -----------------------------------------------------------------------------
    def configure_optimizers(self, steps_per_epoch: int) -> tuple[torch.optim.Optimizer, Any]:
        """Return (optimizer, per-epoch scheduler or None)."""
        raise TypeError(f"{self.name} is trained by the engine but defines no optimizer")

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise TypeError(f"{self.name} is trained by the engine but defines no loss")

    def after_step(self) -> None:
        """Hook run after every optimizer step (e.g. an EMA update)."""

    def eval_variants(self) -> list[str]:
        """Weight variants the engine scores on val each epoch, keeping the best (e.g. ``["raw", "ema"]``)."""
        return ["default"]

    def use_variant(self, variant: str) -> None:
        """Make :meth:`predict` use ``variant``'s weights (called before each variant is scored)."""

    def variant_state(self, variant: str) -> dict[str, Any]:
        """A state that, given to :meth:`load_state_dict`, makes the method behave as ``variant``."""
        return self.state_dict()

    def train(self, mode: bool = True) -> None:
        """Switch to training mode (methods with frozen BN override this to keep it in eval)."""
        self.model.train(mode)

    # -- speed settings (exact: they change how, not what, is computed) ----------------------------------------
    @property
    def channels_last(self) -> bool:
        """Whether images and convolution weights use the NHWC memory format (``memory_format``)."""
        fmt = getattr(self.config, "memory_format", "contiguous")
        return fmt == "channels_last" or (fmt == "auto" and self.device.type == "cuda")

    def apply_memory_format(self, *modules: torch.nn.Module) -> None:
        """Put the 4-D weights of ``modules`` (default: ``self.model``) in the configured memory format."""
        if self.channels_last:
            for module in modules or (self.model,):
                module.to(memory_format=torch.channels_last)

    def optimizer_options(self) -> dict[str, bool]:
        """Keyword arguments for a torch optimizer that select ``optimizer_impl``."""
        impl = getattr(self.config, "optimizer_impl", "auto")
        if impl == "auto":
            return {"fused": True} if self.device.type == "cuda" else {}
        return {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[impl]

    def maybe_compile(self, fn: Any) -> Any:
        """``fn`` (a module or function) wrapped in ``torch.compile`` when ``compile`` is on, else ``fn`` itself.
        The wrapper shares the parameters, so state dicts and the optimizer are unchanged."""
        mode = getattr(self.config, "compile", "off")
        if mode == "off":
            return fn
        backend = getattr(self.config, "compile_backend", "inductor")
        options = {"mode": None if mode == "default" else mode} if backend == "inductor" else {}
        return torch.compile(fn, backend=backend, dynamic=False, **options)

    # -- fitted methods ----------------------------------------------------------------------------------------
    def fit(self, data: DatasetData, ctx: RunContext) -> dict[str, Any]:
        """Fit without the engine; return what the result record should keep (e.g. the chosen C)."""
        raise TypeError(f"{self.name} has trainer={self.trainer!r} and no fit()")

    # -- inference ---------------------------------------------------------------------------------------------
    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, H, W, 3]`` -> normalised float input on the method's device."""
        return to_model_input(
            images, self.backbone.mean, self.backbone.std, self.config.preprocessing, self.device, self.channels_last
        )

    @abstractmethod
    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Per-class real-valued scores ``[B, C]`` for prepared images (called under no_grad, eval mode): log-odds
        (multilabel; the prompt methods' margin logit+ - logit-) or logits (multiclass). They rank without
        saturating: mAP/AP are computed on them, F1 thresholds on :meth:`predict`'s probabilities."""

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Per-class float32 probabilities in [0, 1], ``[B, C]``: sigmoid (multilabel) or softmax (multiclass) of
        :meth:`predict_logits`."""
        return probabilities(self.predict_logits(images), self.task).float()

    def split_scores(self, split: str, data: DatasetData, ctx: RunContext) -> np.ndarray | None:
        """Logits (as :meth:`predict_logits`) of a whole split without a pass over its images, when the method
        can (else None)."""
        return None

    def start_eval(self) -> None:
        """Hook run once before a pass of :meth:`predict` (e.g. to compute constant text features)."""

    # -- state -------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The learned state (what a checkpoint must hold to restore the method)."""
        return {n: p.detach().clone() for n, p in self.learnable_parameters().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        params = self.learnable_parameters()
        missing = set(params) - set(state)
        if missing:
            raise KeyError(f"{self.name}: checkpoint lacks {sorted(missing)[:5]}")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(state[n])
