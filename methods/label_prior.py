"""Label prior: every image gets each class's train frequency as its score (multiclass: the class frequencies).

The floor every trained method must clear: it knows the label distribution and nothing about the image.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.methods.base import Method


class LabelPrior(Method):
    name = "label-prior"
    trainer = "fit"
    deterministic = True
    family, display_name = "Reference points", "Label prior"

    def __init__(self, config, backbone, data, device) -> None:
        super().__init__(config, backbone, data, device)
        self.prior: torch.Tensor | None = None

    def learnable_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {}

    def param_counts(self) -> dict[str, int]:
        return {"learnable": self.num_classes, "total": self.num_classes}

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return images  # the images are never looked at

    def fit(self, data, ctx) -> dict[str, Any]:
        labels = data.splits["train"].labels
        if self.task == "multiclass":
            freq = np.bincount(labels.astype(np.int64), minlength=self.num_classes) / len(labels)
        else:
            freq = labels.mean(axis=0)
        self.prior = torch.as_tensor(freq, dtype=torch.float32)
        return {"prior": [round(float(f), 6) for f in freq]}

    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The prior as log-odds (multilabel) or log-frequencies (multiclass), clipped away from 0 and 1 so a class
        never seen in train gets a finite, lowest score."""
        if self.prior is None:
            raise RuntimeError("label-prior: predict() before fit()")
        p = self.prior.double().clamp(1e-6, 1 - 1e-6)
        logits = p.log() if self.task == "multiclass" else p.log() - torch.log1p(-p)
        return logits.expand(images.shape[0], -1).clone()
