"""Synthetic intentions: the embedded default dataset (procedural, multilabel, deterministic from a seed).

The scenes, the 12 intention rules and the renderer live in :mod:`bench.datasets.scenes`; this adapter samples
``n_train``/``n_val``/``n_test`` scenes from the seed's split streams, labels and renders them, and caches the
result as one npz per (config, image size).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import NonNegativeInt, PositiveInt

from bench.io import atomic_write

from .base import SPLITS, DatasetAdapter, DatasetConfig, DatasetData, Split
from .scenes import (
    CLASS_KEYS,
    GENERATOR_VERSION,
    INTENTIONS,
    LEVELS,
    class_infos,
    labels_of,
    random_scene,
    render,
    scene_stream,
)


# --------------------------------------------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------------------------------------------


class SyntheticIntentions(DatasetAdapter):
    """The embedded default dataset: rendered once per (config, image size), cached as an npz."""

    name = "synthetic"
    task = "multilabel"

    class Config(DatasetConfig):
        seed: NonNegativeInt = 0
        n_train: PositiveInt = 1000
        n_val: PositiveInt = 250
        n_test: PositiveInt = 400
        render_size: PositiveInt = 96

    config: Config

    def _sizes(self) -> dict[str, int]:
        c = self.config
        return {"train": c.n_train, "val": c.n_val, "test": c.n_test}

    def cache_key(self, image_size: int) -> str:
        payload = {"version": GENERATOR_VERSION, "config": self.config.model_dump(), "image_size": image_size}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def cache_path(self, image_size: int) -> Path:
        return Path(self.cache_dir) / f"synthetic-{self.cache_key(image_size)}.npz"

    def generate(self, image_size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Sample, label and render every split (no cache)."""
        out = {}
        render_size = self.config.render_size
        for split, n in self._sizes().items():
            rng = scene_stream(self.config.seed, split)
            images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
            labels = np.empty((n, len(INTENTIONS)), dtype=np.float32)
            for i in range(n):
                scene = random_scene(rng)
                img = render(scene, render_size)
                if image_size != render_size:
                    img = np.asarray(Image.fromarray(img).resize((image_size, image_size), Image.BICUBIC))
                images[i] = img
                labels[i] = labels_of(scene)
            out[split] = (images, labels)
        return out

    def _read_cache(self, path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {s: (z[f"{s}_images"], z[f"{s}_labels"]) for s in SPLITS}
        except (OSError, KeyError, ValueError, EOFError):
            return None
        sizes = self._sizes()
        if any(len(arrays[s][0]) != sizes[s] or len(arrays[s][1]) != sizes[s] for s in SPLITS):
            return None
        return arrays

    def _write_cache(self, path: Path, arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        flat = {f"{s}_{kind}": a for s, (imgs, labs) in arrays.items() for kind, a in (("images", imgs), ("labels", labs))}
        atomic_write(path, lambda fh: np.savez_compressed(fh, **flat))

    def manifest_sha256(self, arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
        digest = hashlib.sha256()
        digest.update(f"synthetic-intentions/{GENERATOR_VERSION}\n".encode())
        digest.update(json.dumps(self.config.model_dump(), sort_keys=True).encode())
        for split in SPLITS:
            images, labels = arrays[split]
            digest.update(f"\n{split} {images.shape} {labels.shape}\n".encode())
            digest.update(np.ascontiguousarray(images).tobytes())
            digest.update(np.ascontiguousarray(labels, dtype=np.float32).tobytes())
        return digest.hexdigest()

    def load(self, image_size: int) -> DatasetData:
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        path = self.cache_path(image_size)
        arrays = self._read_cache(path) if path.is_file() else None
        cached = arrays is not None
        if arrays is None:
            arrays = self.generate(image_size)
            self._write_cache(path, arrays)
        splits = {
            s: Split(images, labels, [f"{s}/{i:06d}" for i in range(len(labels))])
            for s, (images, labels) in arrays.items()
        }
        prevalence = {s: dict(zip(CLASS_KEYS, sp.labels.mean(0).round(4).tolist(), strict=True))
                      for s, sp in splits.items()}
        return DatasetData(
            name=self.name,
            task=self.task,
            classes=class_infos(),
            levels=list(LEVELS),
            splits=splits,
            manifest_sha256=self.manifest_sha256(arrays),
            info={
                "generator_version": GENERATOR_VERSION,
                "render_size": self.config.render_size,
                "image_size": image_size,
                "cache": str(path),
                "from_cache": cached,
                "prevalence": prevalence,
            },
        )
