"""Zero-shot CLIP (SPEC 3.5): no training, 0 learnable parameters.

Scores are the cosine similarities of the image embedding with one prompt per class, ``template.format(text)``,
scaled by CLIP's logit scale. Multiclass: softmax over classes. Multilabel: a sigmoid of the scaled similarity
centred on the image's mean over classes (uncentred CLIP logits are all ~20-30 and would saturate the sigmoid;
centring keeps the ranking and puts the scores where a threshold in 0.05..0.95 can separate them).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import field_validator

from bench.methods.base import Method, MethodConfig


class ZeroShotConfig(MethodConfig):
    template: str = "a photo that expresses {}."
    class_text: Literal["name", "sentence"] = "name"

    @field_validator("template")
    @classmethod
    def _one_slot(cls, value: str) -> str:
        """The prompt of each class is ``template.format(text)``: exactly one ``{}`` and no other field."""
        import string

        fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None] if "{" in value or "}" in value else []
        if fields != [""]:
            raise ValueError("must contain exactly one {} (where the class text goes) and no other {field}")
        return value


class ZeroShot(Method):
    name = "zeroshot"
    Config = ZeroShotConfig
    trainer = "none"
    deterministic = True
    family, display_name = "Reference points", "Zero-shot CLIP"

    def __init__(self, config, backbone, data, device) -> None:
        super().__init__(config, backbone, data, device)
        self.model.requires_grad_(False)
        self.apply_memory_format()
        texts = [c.name if config.class_text == "name" else c.sentence for c in data.classes]
        self.prompts = [config.template.format(t) for t in texts]
        self._text_features: torch.Tensor | None = None

    def learnable_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {}

    @torch.no_grad()
    def start_eval(self) -> None:
        if self._text_features is None:
            tokens = self.backbone.tokenizer(self.prompts).to(self.device)
            self._text_features = F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    @torch.no_grad()
    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        self.start_eval()
        image_features = F.normalize(self.model.encode_image(images).float(), dim=-1)
        logits = (self.model.logit_scale.exp().float() * image_features @ self._text_features.T).double()
        if self.task == "multiclass":
            return logits
        return logits - logits.mean(dim=-1, keepdim=True)
