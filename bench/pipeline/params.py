"""Parameter counts of methods, built with random backbone weights (nothing is downloaded)."""

from __future__ import annotations

from typing import Any

import torch

from bench.datasets.base import ClassInfo, DatasetData
from bench.registry import BACKBONES, METHODS, create_method


def placeholder_task(num_classes: int, task: str = "multilabel") -> DatasetData:
    """A dataset with ``num_classes`` named classes and no images: enough to build any method."""
    classes = [ClassInfo(f"c{i}", f"class {i}", f"an intention numbered {i}", ("coarse", "middle")) for i in range(num_classes)]
    return DatasetData("placeholder", task, classes, ["coarse", "middle", "fine"], {}, "0" * 64)  # type: ignore[arg-type]


def count_params(methods: list[str], backbone: str, num_classes: int) -> list[dict[str, Any]]:
    """``[{"method", "learnable", "total"}]`` for each method on ``backbone`` with random weights."""
    from bench.backbones.loader import load_backbone

    spec = BACKBONES.get(backbone)
    data = placeholder_task(num_classes)
    rows = []
    for name in methods:
        cls = METHODS.get(name)
        method = create_method(name, cls.random_weights_config(cls.Config()), load_backbone(spec, "none"), data, torch.device("cpu"))
        rows.append({"method": name, "backbone": backbone, "num_classes": num_classes, **method.param_counts()})
    return rows
