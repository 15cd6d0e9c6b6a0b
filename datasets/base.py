"""What every dataset adapter hands to the harness.

An adapter turns files on disk (or a procedural generator) into a :class:`DatasetData`: the task type, the
classes with their readable names, sentences and hierarchy, and per split the decoded images at the requested
resolution plus their labels. Images are uint8 arrays so that no epoch decodes a file; the manifest hash is the
dataset version recorded in every result.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from bench.errors import BenchError

TaskType = Literal["multilabel", "multiclass"]
SPLITS = ("train", "val", "test")


class DatasetConfig(BaseModel):
    """Base of every adapter's config: unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


@dataclass(frozen=True)
class ClassInfo:
    """One class: its key (annotation id), readable name, one sentence, and its ancestors (coarse first)."""

    key: str
    name: str
    sentence: str
    hierarchy: tuple[str, ...] = ()


@dataclass
class Split:
    """Decoded images ``uint8 [N, H, W, 3]``, labels (``float32 [N, C]`` multi-hot or ``int64 [N]``), ids."""

    images: np.ndarray
    labels: np.ndarray
    ids: list[str]

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 [N, H, W, 3], got {self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels) or len(self.ids) != len(self.labels):
            raise ValueError(
                f"split sizes disagree: {len(self.images)} images, {len(self.labels)} labels, {len(self.ids)} ids"
            )

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class DatasetData:
    """A loaded dataset: everything a method and the engine need, nothing they must parse again."""

    name: str
    task: TaskType
    classes: list[ClassInfo]
    levels: list[str]
    splits: dict[str, Split]
    manifest_sha256: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class DatasetAdapter(ABC):
    """Registered in :mod:`bench.registry`; built with its validated config and the resolved paths."""

    name: ClassVar[str]
    task: ClassVar[TaskType]
    Config: ClassVar[type[DatasetConfig]] = DatasetConfig
    # the score tables rank by and the leaderboard tracks (None: macro F1 for multi-label, accuracy for single-label)
    main_metric: ClassVar[str | None] = None

    def __init__(self, config: DatasetConfig, root: Path | None, cache_dir: Path) -> None:
        self.config = config
        self.root = root
        self.cache_dir = cache_dir

    @abstractmethod
    def load(self, image_size: int) -> DatasetData:
        """Return every split decoded and resized (squashed) to ``image_size`` x ``image_size``."""


class DatasetError(BenchError):
    """A dataset's files are absent, malformed or incomplete (the message names the file or key)."""


class DatasetNotFoundError(DatasetError):
    """No data root configured, or the root lacks the annotation files."""


class SplitIncompleteError(DatasetError):
    """A val or test image is missing or corrupt: the evaluation splits are never silently reduced."""
