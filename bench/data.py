"""Batch helpers for methods, kept at this path for plugins (``from bench.data import batch_indices``); the
implementation lives in :mod:`bench.train.batches`."""

from bench.train.batches import Preprocessing, batch_indices, prefetch_batches, to_device, to_model_input

__all__ = ["Preprocessing", "batch_indices", "prefetch_batches", "to_device", "to_model_input"]
