"""DualCoOp (Sun, Hu, Saenko, NeurIPS 2022) on a frozen CLIP ResNet (SPEC 3.2).

Only the positive/negative prompt contexts train: 2 x C x n_ctx x width parameters (458,752 for 28 classes on
RN101 with class-specific contexts). Images become 1 + HW dense tokens (no attention), classes are scored by the
class-specific region aggregation head, and the loss is ASL on the (negative, positive) softmax.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from bench.methods.base import Method
from bench.methods.components import (
    PromptLearner,
    PromptScoring,
    PromptTrainingConfig,
    dense_tokens,
    prompt_features,
    region_aggregation,
    resnet_trunk,
    warmup_cosine,
)


class DualCoOpConfig(PromptTrainingConfig):
    presets = {
        # The DualCoOp repository's own defaults (opts.py: loss_w 1.0, class-agnostic contexts; its train transform:
        # Resize, Cutout(0.5), RandAugment).
        "repository": {"lr": 0.002, "epochs": 50, "batch_size": 32, "csc": False, "loss_weight": 1.0, "augment": "cutout-randaugment"},
        # DualCoOp as the released IntCLIP code would train it (its opts.py: loss_w 0.03, class-specific contexts,
        # the same train transform), on which IntCLIP's Table 1 row plausibly rests (the paper does not say).
        "intclip-code": {"lr": 0.002, "epochs": 50, "batch_size": 32, "csc": True, "loss_weight": 0.03, "augment": "cutout-randaugment"},
    }
    search_space = {
        "lr": ("loguniform", 1e-4, 1e-2),
        "weight_decay": ("loguniform", 1e-5, 1e-3),
        "n_ctx": ("choice", [8, 16]),
        "gamma_neg": ("choice", [1.0, 2.0, 4.0]),
    }

    lr: float = Field(default=0.002, gt=0)
    augment: Literal["none", "cutout-randaugment"] = "cutout-randaugment"  # the DualCoOp recipe (SPEC 3.2)
    csc: bool = True  # class-specific contexts (IntCLIP's table); the original DualCoOp default is shared
    class_text: Literal["name", "sentence"] = "name"


class DualCoOp(PromptScoring, Method):
    name = "dualcoop"
    family, display_name = "Multi-label methods", "DualCoOp"
    Config = DualCoOpConfig
    image_towers = ("resnet",)  # dense tokens through the attnpool's v/c projections: any open_clip ModifiedResNet
    clip_text = True
    partial_labels = True  # the ASL ignores unobserved (-1) labels, as the released code's partial-label training

    def __init__(self, config: DualCoOpConfig, backbone, data, device) -> None:
        super().__init__(config, backbone, data, device)
        self.clip = backbone.model.requires_grad_(False)
        texts = [c.name if config.class_text == "name" else c.sentence for c in data.classes]
        self.prompts = PromptLearner(self.clip, backbone.tokenizer, texts, config.n_ctx, config.csc, config.ctx_init_std)
        self.model = nn.ModuleDict({"clip": self.clip, "prompts": self.prompts}).to(device)
        self.setup_augment(config)
        self.apply_memory_format()
        self._image_tokens = self.maybe_compile(self.image_tokens)  # themselves unless `compile` is on
        self._text_features = self.maybe_compile(self.text_features)
        self._eval_text: tuple[torch.Tensor, torch.Tensor] | None = None

    def configure_optimizers(self, steps_per_epoch: int) -> tuple[torch.optim.Optimizer, Any]:
        c = self.config
        optimizer = torch.optim.SGD(
            self.param_groups(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, **self.optimizer_options()
        )
        return optimizer, warmup_cosine(optimizer, c.epochs, c.warmup_epochs, c.warmup_lr)

    def train(self, mode: bool = True) -> None:
        self.clip.eval()  # frozen CLIP: BN statistics never change
        self.prompts.train(mode)
        self._eval_text = None

    @property
    def augmenting(self) -> bool:
        return self.prompts.training

    def text_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        return prompt_features(self.clip, self.prompts, self.config.truncate_text)

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # the image side is frozen: no activations kept
            visual = self.clip.visual
            return dense_tokens(visual.attnpool, resnet_trunk(visual, images))

    def logits(self, images: torch.Tensor, text: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return region_aggregation(self._image_tokens(images), *text)

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.config.loss(*self.logits(images, self._text_features()), labels)
