"""From decoded uint8 images to model inputs: batching and the two preprocessing presets.

``clip`` scales to [0, 1] and normalises with the backbone's mean/std (the default); ``official`` only scales to
[0, 1], as the official IntCLIP code does. Resizing already happened when the dataset was decoded.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch

Preprocessing = Literal["clip", "official"]


def to_model_input(
    images: torch.Tensor | np.ndarray,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    preset: Preprocessing = "clip",
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> float32 ``[B, 3, H, W]`` on ``device``, normalised per ``preset``."""
    batch = torch.as_tensor(images)
    if batch.device.type == "cpu" and torch.device(device).type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True)
    else:
        batch = batch.to(device)
    x = batch.permute(0, 3, 1, 2).float().div_(255.0)
    if preset == "clip":
        m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
        s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
        x = x.sub_(m).div_(s)
    elif preset != "official":
        raise ValueError(f"unknown preprocessing preset {preset!r} (expected 'clip' or 'official')")
    return x.contiguous()


def batch_indices(n: int, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0) -> Iterator[np.ndarray]:
    """Index batches over ``n`` items; a shuffled order depends only on (seed, epoch), so a resumed run sees the
    same order as an uninterrupted one."""
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]
