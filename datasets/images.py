"""Image files on disk -> manifest -> decoded, memory-mapped cache; shared by every file-based dataset adapter.

An adapter only says what its annotation files list (a :class:`Listing`: per split the image paths relative to the
data root, their labels and ids) and describes its classes; :class:`ImageFileDataset` does the rest.

**Missing and corrupt images.** Train images that are missing or fail to decode are skipped and counted
(``DatasetData.info["skipped"]``); a missing or corrupt val or test image raises :class:`SplitIncompleteError`
(never dropped silently).

The manifest lives in :mod:`bench.datasets.manifest`, the decoded cache in :mod:`bench.datasets.cache`; their names
are re-exported here for the code and tests that import them from this module.
"""

from __future__ import annotations

import hashlib
import json
from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from bench.io import atomic_write_bytes

from .base import ClassInfo, DatasetAdapter, DatasetConfig, DatasetData, DatasetError, DatasetNotFoundError, Split, SplitIncompleteError

from .cache import CachedImages, Materialized, cache_dir_name, materialize, open_cached_images  # noqa: F401
from .manifest import (  # noqa: F401  (re-exported: adapters and tests import them from here)
    CACHE_FORMAT,
    EXAMPLES,
    MANIFEST_FORMAT,
    RESAMPLE,
    STATUSES,
    Entry,
    Listing,
    Manifest,
    Resample,
    check_relative,
    decode_image,
    default_workers,
    manifest_file,
    new_manifest,
    reconcile,
    root_tag,
    scan_file,
    verify_files,
)

# --------------------------------------------------------------------------------------------------------------
# The adapter base for datasets made of image files
# --------------------------------------------------------------------------------------------------------------


class ImageDatasetConfig(DatasetConfig):
    """Settings shared by file-based datasets; both change the decoded pixels, so both key the cache."""

    resample: Resample = "bicubic"
    draft: bool = Field(default=True, description="JPEG draft mode (DCT-domain downscaling) before the resize")


def read_metadata(name: str) -> dict[str, Any]:
    """A metadata file shipped with the project: ``datasets/metadata/<name>.json``."""
    path = Path(__file__).resolve().parent / "metadata" / f"{name}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: cannot read the dataset metadata shipped with bench: {err}") from None


class ImageFileDataset(DatasetAdapter):
    """An adapter over image files: subclasses provide :meth:`listing`, :meth:`classes` and the help texts."""

    levels: ClassVar[list[str]] = []
    layout_help: ClassVar[str] = ""
    source_help: ClassVar[str] = ""
    config: ImageDatasetConfig

    def __init__(self, config: DatasetConfig, root: Path | None, cache_dir: Path) -> None:
        super().__init__(config, root, cache_dir)
        self.workers: int | None = None  # pool size for decoding (None: BENCH_DATA_WORKERS or os.cpu_count())
        self.progress: Callable[[int], None] | None = None
        self.progress_total: Callable[[int], None] | None = None

    # -- what subclasses provide ---------------------------------------------------------------------------------
    @abstractmethod
    def listing(self) -> Listing:
        """Parse the annotation / split files into a :class:`Listing` (no image is opened)."""

    @abstractmethod
    def classes(self) -> list[ClassInfo]:
        """The classes in label order."""

    # -- paths and messages ----------------------------------------------------------------------------------------
    @property
    def work_dir(self) -> Path:
        return Path(self.cache_dir) / self.name

    def not_found(self, detail: str) -> DatasetNotFoundError:
        """The one message for a dataset that is not there: what is wrong, the layout, the source, the key."""
        return DatasetNotFoundError(
            f"dataset {self.name!r} not found: {detail}.\n"
            f"Expected layout:\n{self.layout_help}\n"
            f"Where the files come from: {self.source_help}\n"
            f"Then point bench at it: set paths.data.{self.name} in bench.toml, i.e. "
            f"[paths.data] {self.name} = \"/path/to/{self.name}\", "
            f"or pass --data-root /path/to/{self.name}."
        )

    def require_root(self) -> Path:
        if self.root is None:
            raise self.not_found("no data root is configured")
        root = Path(self.root)
        if not root.is_dir():
            raise self.not_found(f"{root} is not a folder")
        return root

    def split_file_locations(self, filename: str) -> list[Path]:
        """Where a generated split file lives: in the data root (``bench_splits/``), else in the cache."""
        root = self.require_root()
        return [root / "bench_splits" / filename, self.work_dir / f"splits-{root_tag(root)}" / filename]

    def read_or_write_split_file(self, filename: str, make: Callable[[], str]) -> tuple[Path, str, bool]:
        """Return ``(path, text, created)``: the existing split file, or ``make()`` written to the first writable
        location (written once; never rewritten while it exists)."""
        locations = self.split_file_locations(filename)
        for path in locations:
            if path.is_file():
                return path, path.read_text(encoding="utf-8"), False
        text = make()
        errors = []
        for path in locations:
            try:
                atomic_write_bytes(path, text.encode("utf-8"))
                return path, text, True
            except OSError as err:
                errors.append(f"{path}: {err}")
        raise DatasetError(f"{self.name}: cannot write the split file ({'; '.join(errors)})")

    # -- manifest and cache ----------------------------------------------------------------------------------------
    def class_keys(self) -> list[str]:
        return [c.key for c in self.classes()]

    def manifest_path(self, listing: Listing) -> Path:
        """Where ``verify`` writes the manifest of the root ``listing`` reads (one per root, in the cache)."""
        return manifest_file(self.work_dir, listing.root)

    def verify(self) -> tuple[Manifest, Path]:
        """``bench data verify``: full decode + sha256 of every listed image; writes and returns the manifest."""
        listing = self.listing()
        path = self.manifest_path(listing)
        if self.progress_total:
            self.progress_total(sum(len(p) for p in listing.paths.values()))
        manifest = verify_files(self.name, listing, self.class_keys(), path, workers=self.workers, progress=self.progress)
        return manifest, path

    def materialize(self, image_size: int, listing: Listing | None = None) -> tuple[Listing, Materialized]:
        listing = listing or self.listing()
        m = materialize(
            self.name, listing, self.class_keys(), self.work_dir, image_size,
            resample=self.config.resample, draft=self.config.draft, workers=self.workers,
            progress=self.progress, progress_total=self.progress_total,
        )
        return listing, m

    def load(self, image_size: int) -> DatasetData:
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        listing, m = self.materialize(image_size)
        splits = {}
        skipped: dict[str, dict[str, int]] = {}
        skipped_examples: dict[str, list[str]] = {}
        for split in listing.splits:
            entries = m.manifest.entries[split]
            ok = np.array([e.status == "ok" for e in entries], dtype=bool)
            labels = np.asarray(listing.labels[split])[ok]
            ids = [i for i, keep in zip(listing.ids[split], ok, strict=True) if keep]
            splits[split] = Split(m.arrays[split], labels, ids)
            bad = [e for e in entries if e.status != "ok"]  # only ever non-empty in train (val/test raise)
            if split == "train" or bad:
                skipped[split] = {"missing": sum(e.status == "missing" for e in bad), "corrupt": sum(e.status == "corrupt" for e in bad)}
            if bad:
                skipped_examples[split] = [f"{e.path} ({e.status})" for e in bad[:EXAMPLES]]
        classes = self.classes()
        info = {
            "root": str(Path(listing.root).resolve()),
            "manifest_path": str(m.manifest_path),
            "counts": m.manifest.counts(),
            "skipped": skipped,
            "skipped_examples": skipped_examples,
            "image_size": image_size,
            "resample": self.config.resample,
            "draft": self.config.draft,
            "cache": str(m.cache_path),
            "from_cache": m.from_cache,
            **listing.info,
        }
        return DatasetData(
            name=self.name,
            task=self.task,
            classes=classes,
            levels=list(self.levels),
            splits=splits,
            manifest_sha256=m.manifest.sha256(),
            info=info,
        )


def stratified_assignment(
    items: list[tuple[str, int]], fractions: dict[str, float], seed: int, key: Callable[[str], str] = lambda p: p
) -> dict[str, str]:
    """Seeded stratified split of ``(path, class index)`` items: ``{path: split}``.

    Within each class the items are ordered by ``sha256(f"{seed}/{key(path)}")`` (independent of file-system order,
    numpy versions and platform) and the splits take ``round(fraction * n)`` items in the order given (the first
    split takes the remainder). Deterministic: the same files and seed give the same assignment.
    """
    names = list(fractions)
    by_class: dict[int, list[str]] = {}
    for path, label in items:
        by_class.setdefault(label, []).append(path)
    out: dict[str, str] = {}
    for label in sorted(by_class):
        paths = sorted(by_class[label], key=lambda p: (hashlib.sha256(f"{seed}/{key(p)}".encode()).hexdigest(), p))
        n = len(paths)
        counts = {s: int(round(fractions[s] * n)) for s in names[1:]}
        start = 0
        for s in names[1:]:
            for p in paths[start : start + counts[s]]:
                out[p] = s
            start += counts[s]
        for p in paths[start:]:
            out[p] = names[0]
    return out


__all__ = [
    "DatasetError", "DatasetNotFoundError", "SplitIncompleteError", "Listing", "Entry", "Manifest",
    "ImageDatasetConfig", "ImageFileDataset", "CachedImages", "open_cached_images", "decode_image", "scan_file", "verify_files", "materialize",
    "stratified_assignment", "read_metadata", "atomic_write_bytes", "root_tag", "default_workers",
]
