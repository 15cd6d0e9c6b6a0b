"""From decoded uint8 images to model inputs: batching, prefetching and the two preprocessing presets.

``clip`` scales to [0, 1] and normalises with the backbone's mean/std (the default); ``official`` only scales to
[0, 1], as the official IntCLIP code does. Resizing already happened when the dataset was decoded.

The host side of a batch is only a gather from the memory-mapped decoded cache: :func:`prefetch_batches` does it
(and pins the memory when the model is on a GPU) in a background thread, one or more batches ahead, while the
model works on the previous batch. The uint8 batch goes to the GPU as is (a quarter of the float bytes), without
blocking, and becomes float on the GPU.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Literal

import numpy as np
import torch

Preprocessing = Literal["clip", "official"]


def to_device(batch: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``batch`` on ``device``; a CPU -> GPU copy goes through pinned memory and does not block."""
    if batch.device.type == "cpu" and torch.device(device).type == "cuda":
        if not batch.is_pinned():
            batch = batch.pin_memory()
        return batch.to(device, non_blocking=True)
    return batch.to(device)


@functools.lru_cache(maxsize=32)
def _normalisation(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std as ``[1, 3, 1, 1]`` tensors on ``device``, made once (a fresh tensor from Python numbers on a
    GPU is a blocking copy that would wait for every queued kernel)."""
    return torch.tensor(mean).view(1, 3, 1, 1).to(device), torch.tensor(std).view(1, 3, 1, 1).to(device)


def to_model_input(
    images: torch.Tensor | np.ndarray,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    preset: Preprocessing = "clip",
    device: torch.device | str = "cpu",
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> float32 ``[B, 3, H, W]`` on ``device``, normalised per ``preset``; with
    ``channels_last`` in the NHWC memory format (the same values; what cuDNN's fastest convolutions read)."""
    x = to_device(torch.as_tensor(images), device).permute(0, 3, 1, 2).float().div_(255.0)
    if preset == "clip":
        m, s = _normalisation(tuple(mean), tuple(std), x.device)
        x = x.sub_(m).div_(s)
    elif preset != "official":
        raise ValueError(f"unknown preprocessing preset {preset!r} (expected 'clip' or 'official')")
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def batch_indices(n: int, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0) -> Iterator[np.ndarray]:
    """Index batches over ``n`` items; a shuffled order depends only on (seed, epoch), so a resumed run sees the
    same order as an uninterrupted one."""
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def prefetch_batches(
    images: np.ndarray,
    labels: np.ndarray | None,
    batches: Iterable[np.ndarray],
    *,
    pin: bool = False,
    depth: int = 2,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """``(uint8 images [B, H, W, 3], labels)`` CPU tensors for each index batch, in order, gathered ``depth``
    batches ahead by a background thread (``depth = 0``: in the caller's thread). With ``pin`` the tensors are in
    pinned memory, so the copy to the GPU runs asynchronously. The values are exactly ``images[idx]`` and
    ``labels[idx]``; the thread touches no random number generator."""

    def gather(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = torch.from_numpy(np.ascontiguousarray(images[idx]))
        y = torch.from_numpy(np.ascontiguousarray(labels[idx])) if labels is not None else None
        if pin:
            x = x.pin_memory()
            y = y.pin_memory() if y is not None else None
        return x, y

    if depth <= 0:
        for idx in batches:
            yield gather(idx)
        return

    done = object()
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def worker() -> None:
        try:
            for idx in batches:
                if not put(gather(idx)):
                    return
            put(done)
        except BaseException as err:  # noqa: BLE001  # handed to the consumer, which raises it
            put(err)

    thread = threading.Thread(target=worker, name="bench-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
