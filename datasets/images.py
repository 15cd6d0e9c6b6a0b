"""Image files on disk -> manifest -> decoded, memory-mapped cache; shared by every file-based dataset adapter.

An adapter only says what its annotation files list (a :class:`Listing`: per split the image paths relative to the
data root, their labels and ids) and describes its classes; :class:`ImageFileDataset` does the rest.

**Manifest.** One entry per listed image: relative path, bytes, sha256, width, height and status (``ok``,
``missing``, ``corrupt``). Its hash, :meth:`Manifest.sha256`, covers the canonical entry lines (split, path,
bytes, sha256, width, height, status, in split order), the class keys and the label content, and *not* the data
root or any timestamp: it is the dataset version recorded in every result, so the same files and labels under
another root give the same version. The manifest file is ``<cache>/<dataset>/manifest-<root tag>.json`` (one per
data root, the tag is a hash of the resolved root path); it also stores each file's ``mtime_ns`` and which check
produced the entry (``full``: complete decode by ``bench data verify``; ``draft``: decode at the cache
resolution by a cache build).

**Reuse is stat based.** A later load stats every listed file and reuses an entry when its size and mtime are
unchanged; only new or changed files are read, hashed and decoded again. (A file rewritten with the same size and
mtime is therefore not noticed by ``load``; ``bench data verify`` always rereads, rehashes and fully decodes
everything.) Stat-ing 14,455 Intentonomy files takes a fraction of a second; hashing them takes seconds.

**Decoded cache.** ``<cache>/<dataset>/decoded-<S>px-<resample>[-draft]-<images hash[:16]>/`` holds
``{train,val,test}.npy`` (``uint8 [N, S, S, 3]``, squash-resized to S x S as the official IntCLIP code does, read
back with ``np.load(mmap_mode="r")``) and ``meta.json`` (key, manifest hash, paths per split, counts). Only the
``ok`` images are stored, in listing order. The folder name is the cache key: the hash of the manifest's image
entries (:meth:`Manifest.images_sha256`: split assignment, paths, bytes, sha256, sizes, statuses) + the size +
the resize method, so any change to the files or splits, or another size or preset, is a different folder and
gets built, while a label-only change (another train threshold) reuses the pixels. A build writes into
``.build-<pid>-<random>/`` and renames it into place once complete (a rename is atomic, so a partially written
cache is never used; a concurrent builder that loses the race discards its copy; a killed build leaves only a
``.build-*`` folder, which is never read). Building decodes in a thread pool (``os.cpu_count()`` workers, or
``BENCH_DATA_WORKERS``; PIL releases the GIL while decoding, resizing and hashing, and threads write straight into
the memory-mapped output) with PIL draft mode, which lets libjpeg decode a 3000x2000 JPEG directly at 1/2, 1/4 or
1/8 scale (the largest that stays >= S on both sides): about 7x faster than a full decode. When the manifest must
be (re)computed too, hashing and the draft decode share one pass: each file is read once. Superseded cache folders
are not deleted automatically (another process may still map them); delete ``<cache>/<dataset>/decoded-*`` freely.

**Missing and corrupt images.** Train images that are missing or fail to decode are skipped and counted
(``DatasetData.info["skipped"]``); a missing or corrupt val or test image raises :class:`SplitIncompleteError`
(never dropped silently).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from PIL import Image
from pydantic import Field

from bench.errors import BenchError
from bench.io import atomic_write_bytes

from .base import SPLITS, ClassInfo, DatasetAdapter, DatasetConfig, DatasetData, Split

MANIFEST_FORMAT = "bench-manifest/1"
CACHE_FORMAT = "bench-decoded/1"
STATUSES = ("ok", "missing", "corrupt")
RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
}
Resample = Literal["bicubic", "bilinear", "lanczos"]
EXAMPLES = 5  # how many offending paths a message or info record names


class DatasetError(BenchError):
    """A dataset's files are absent, malformed or incomplete (the message names the file or key)."""


class DatasetNotFoundError(DatasetError):
    """No data root configured, or the root lacks the annotation files."""


class SplitIncompleteError(DatasetError):
    """A val or test image is missing or corrupt: the evaluation splits are never silently reduced."""


# --------------------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------------------


def default_workers() -> int:
    """Pool size: ``BENCH_DATA_WORKERS`` if set, else ``os.cpu_count()``."""
    env = os.environ.get("BENCH_DATA_WORKERS")
    if env:
        return max(1, int(env))
    return os.cpu_count() or 1


def root_tag(root: Path) -> str:
    """A short stable tag of a data root's resolved path (names its manifest file)."""
    return hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]


def check_relative(path: str, where: str) -> str:
    """A listed image path must stay under the data root: relative, posix, no ``..``."""
    p = Path(path)
    if not path or p.is_absolute() or ".." in p.parts or "\\" in path:
        raise DatasetError(f"{where}: image path {path!r} must be relative to the data root (no '..', '/' separators)")
    return p.as_posix()


def _examples(paths: Iterable[str]) -> str:
    items = list(paths)
    more = f", ... ({len(items)} in all)" if len(items) > EXAMPLES else ""
    return ", ".join(items[:EXAMPLES]) + more


# --------------------------------------------------------------------------------------------------------------
# What an adapter lists, and the manifest
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Listing:
    """What a dataset's annotation files say: per split the image paths (relative to ``root``), labels, ids."""

    root: Path
    paths: dict[str, list[str]]
    labels: dict[str, np.ndarray]
    ids: dict[str, list[str]]
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split, paths in self.paths.items():
            if not (len(paths) == len(self.labels[split]) == len(self.ids[split])):
                raise ValueError(f"{split}: {len(paths)} paths, {len(self.labels[split])} labels, {len(self.ids[split])} ids")

    @property
    def splits(self) -> list[str]:
        return [s for s in SPLITS if s in self.paths] + [s for s in self.paths if s not in SPLITS]

    def labels_sha256(self) -> str:
        """Digest of every split's label array (dtype, shape, bytes) and ids, in listing order."""
        h = hashlib.sha256()
        for split in self.splits:
            arr = np.ascontiguousarray(self.labels[split])
            h.update(f"{split}\t{arr.dtype.str}\t{arr.shape}\n".encode())
            h.update(arr.tobytes())
            h.update("\n".join(self.ids[split]).encode())
        return h.hexdigest()


@dataclass
class Entry:
    """One manifest line. ``mtime_ns`` and ``check`` serve reuse and provenance; neither enters the hash."""

    path: str
    bytes: int = 0
    sha256: str = ""
    width: int = 0
    height: int = 0
    status: str = "missing"
    mtime_ns: int = 0
    check: str = "stat"

    def canonical(self, split: str) -> str:
        return f"{split}\t{self.path}\t{self.bytes}\t{self.sha256}\t{self.width}\t{self.height}\t{self.status}\n"


@dataclass
class Manifest:
    dataset: str
    class_keys: list[str]
    labels_sha256: str
    entries: dict[str, list[Entry]]
    root: str = ""
    created: str = ""

    def sha256(self) -> str:
        """The dataset version: canonical entries + split assignment + class keys + label content."""
        h = hashlib.sha256()
        h.update(f"{MANIFEST_FORMAT}\n{self.dataset}\nclasses\t{','.join(self.class_keys)}\n".encode())
        h.update(f"labels\t{self.labels_sha256}\n".encode())
        for split, entries in self.entries.items():
            for e in entries:
                h.update(e.canonical(split).encode())
        return h.hexdigest()

    def images_sha256(self) -> str:
        """Digest of the image entries alone (split, path, bytes, sha256, size, status): the decoded cache's key,
        so a label-only change (e.g. another train threshold) reuses the decoded pixels."""
        h = hashlib.sha256()
        h.update(f"{MANIFEST_FORMAT}\nimages\n".encode())
        for split, entries in self.entries.items():
            for e in entries:
                h.update(e.canonical(split).encode())
        return h.hexdigest()

    def counts(self) -> dict[str, dict[str, int]]:
        out = {}
        for split, entries in self.entries.items():
            c = {"images": len(entries), **{s: 0 for s in STATUSES}}
            for e in entries:
                c[e.status] += 1
            out[split] = c
        return out

    def bad(self, split: str) -> list[Entry]:
        return [e for e in self.entries.get(split, []) if e.status != "ok"]

    def to_json(self) -> str:
        payload = {
            "format": MANIFEST_FORMAT,
            "dataset": self.dataset,
            "manifest_sha256": self.sha256(),
            "root": self.root,
            "created": self.created,
            "class_keys": self.class_keys,
            "labels_sha256": self.labels_sha256,
            "counts": self.counts(),
            "fields": ["path", "bytes", "sha256", "width", "height", "status", "mtime_ns", "check"],
            "splits": {
                split: [[e.path, e.bytes, e.sha256, e.width, e.height, e.status, e.mtime_ns, e.check] for e in entries]
                for split, entries in self.entries.items()
            },
        }
        return json.dumps(payload, indent=1)

    @classmethod
    def read(cls, path: Path) -> Manifest | None:
        """The manifest at ``path``, or None when absent, unreadable or of another format (it is then rebuilt)."""
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            if payload.get("format") != MANIFEST_FORMAT:
                return None
            entries = {
                split: [Entry(*row) for row in rows] for split, rows in payload["splits"].items()
            }
            return cls(payload["dataset"], list(payload["class_keys"]), payload["labels_sha256"], entries,
                       payload.get("root", ""), payload.get("created", ""))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, path: Path) -> None:
        atomic_write_bytes(path, self.to_json().encode())


# --------------------------------------------------------------------------------------------------------------
# Reading and decoding one image
# --------------------------------------------------------------------------------------------------------------


def decode_image(data: bytes, size: int | None, resample: str = "bicubic", draft: bool = True) -> tuple[int, int, np.ndarray | None]:
    """Decode an encoded image. Returns ``(width, height, pixels)`` of the original.

    ``size=None`` decodes fully and returns no pixels (the ``verify`` check); otherwise the image is decoded (in
    JPEG draft mode when ``draft``: libjpeg's DCT scaling to the smallest scale still >= ``size`` on both sides),
    converted to RGB and squash-resized to ``uint8 [size, size, 3]``. Raises on undecodable or truncated data.
    Tests monkeypatch this function to prove that a cached load decodes nothing.
    """
    with Image.open(io.BytesIO(data)) as im:
        width, height = im.size
        if size is None:
            im.load()
            return width, height, None
        if draft and im.format == "JPEG":
            im.draft("RGB", (size, size))
        rgb = im.convert("RGB")
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), RESAMPLE[resample])
        return width, height, np.asarray(rgb, dtype=np.uint8)


def scan_file(
    root: Path,
    path: str,
    *,
    previous: Entry | None = None,
    size: int | None = None,
    resample: str = "bicubic",
    draft: bool = True,
    out: np.ndarray | None = None,
) -> Entry:
    """Read, hash (unless ``previous`` vouches for the content) and decode one file; write its pixels into ``out``.

    Missing file -> status ``missing``; unreadable or undecodable -> ``corrupt``. Never raises for bad files.
    """
    full = root / path
    try:
        st = full.stat()
        with open(full, "rb") as fh:
            data = fh.read()
    except (FileNotFoundError, NotADirectoryError):
        return Entry(path, status="missing")
    except OSError:  # a folder, no permission, I/O error
        return Entry(path, status="corrupt", check="read")
    if previous is not None and previous.status == "ok" and previous.bytes == len(data):
        digest = previous.sha256
    else:
        digest = hashlib.sha256(data).hexdigest()
    check = "full" if size is None else "draft"
    try:
        width, height, pixels = decode_image(data, size, resample, draft)
    except MemoryError:  # not the file's fault: never recorded as corrupt
        raise
    except Exception:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError, ... for bad data
        return Entry(path, len(data), digest, 0, 0, "corrupt", st.st_mtime_ns, check)
    if out is not None and pixels is not None:
        out[...] = pixels
    return Entry(path, len(data), digest, width, height, "ok", st.st_mtime_ns, check)


def _run_pool(tasks: list[Callable[[], Any]], workers: int, progress: Callable[[int], None] | None) -> list[Any]:
    """Run zero-argument tasks in a thread pool, in order; ``progress(1)`` after each."""
    if not tasks:
        return []
    if workers <= 1:
        results = []
        for task in tasks:
            results.append(task())
            if progress:
                progress(1)
        return results
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bench-decode")
    futures = [pool.submit(t) for t in tasks]
    try:
        results = []
        for f in futures:
            results.append(f.result())
            if progress:
                progress(1)
        return results
    except BaseException:  # Ctrl-C or an error: drop what has not started instead of decoding it all first
        for f in futures:
            f.cancel()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------------------------------------------
# Manifest computation and the decoded cache
# --------------------------------------------------------------------------------------------------------------


def new_manifest(dataset: str, listing: Listing, class_keys: list[str], entries: dict[str, list[Entry]]) -> Manifest:
    return Manifest(dataset, list(class_keys), listing.labels_sha256(), entries, str(listing.root),
                    datetime.now(timezone.utc).isoformat(timespec="seconds"))


def verify_files(
    dataset: str,
    listing: Listing,
    class_keys: list[str],
    manifest_path: Path,
    *,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Manifest:
    """Reread, rehash and fully decode every listed image; write and return the manifest (``bench data verify``)."""
    root = listing.root
    tasks = [
        (lambda p=p: scan_file(root, p)) for split in listing.splits for p in listing.paths[split]
    ]
    results = iter(_run_pool(tasks, workers or default_workers(), progress))
    entries = {split: [next(results) for _ in listing.paths[split]] for split in listing.splits}
    manifest = new_manifest(dataset, listing, class_keys, entries)
    manifest.write(manifest_path)
    return manifest


def reconcile(listing: Listing, previous: Manifest | None) -> tuple[dict[str, list[Entry]], set[tuple[str, int]]]:
    """Stat every listed file against the previous manifest.

    Returns the entries (reused, or ``missing`` from the stat, or placeholders) and the (split, index) pairs that
    are new or changed and must be read, hashed and decoded.
    """
    old: dict[str, Entry] = {}
    if previous is not None:
        for entries in previous.entries.values():
            for e in entries:
                old[e.path] = e
    entries: dict[str, list[Entry]] = {}
    stale: set[tuple[str, int]] = set()
    for split in listing.splits:
        out = []
        for i, path in enumerate(listing.paths[split]):
            try:
                st = os.stat(listing.root / path)
            except (FileNotFoundError, NotADirectoryError):
                out.append(Entry(path, status="missing"))
                continue
            except OSError:
                st = None
            e = old.get(path)
            if st is not None and e is not None and e.status != "missing" and e.bytes == st.st_size and e.mtime_ns == st.st_mtime_ns:
                out.append(e)
            else:
                out.append(Entry(path, status="missing", check="pending"))
                stale.add((split, i))
        entries[split] = out
    return entries, stale


def cache_dir_name(images_sha256: str, size: int, resample: str, draft: bool) -> str:
    """The cache key as a folder name: size, resize method and the manifest's image-entries hash."""
    return f"decoded-{size}px-{resample}{'-draft' if draft else ''}-{images_sha256[:16]}"


class CachedImages(np.memmap):
    """A read-only memory map of one decoded cache file that pickles as its path, not its bytes.

    Handing a loaded dataset to other processes (Ray trials get it through ``tune.with_parameters``) then costs a
    file name instead of gigabytes of pixels, and every process maps the same page cache. A slice or any other
    view pickles as plain data, like a normal array; fancy indexing returns a plain in-memory ``ndarray``.
    """

    _bench_file: str | None = None
    _bench_shape: tuple[int, ...] = ()
    _bench_ptr: int = 0

    def __getitem__(self, index):  # np.memmap's rule (copies are plain ndarrays), extended to this subclass
        res = super().__getitem__(index)
        if isinstance(res, np.memmap) and res._mmap is None:
            return res.view(type=np.ndarray)
        return res

    def _whole(self) -> bool:
        return self._bench_file is not None and self.shape == self._bench_shape and self.ctypes.data == self._bench_ptr

    def __reduce__(self):
        if self._whole():
            return (open_cached_images, (self._bench_file, self._bench_shape))
        return np.asarray(self).copy().__reduce__()

    def __reduce_ex__(self, protocol):
        if self._whole():
            return self.__reduce__()
        return np.asarray(self).copy().__reduce_ex__(protocol)


def open_cached_images(path: str | Path, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Memory-map a decoded cache file (``uint8 [N, S, S, 3]``) read-only, as :class:`CachedImages`."""
    arr = np.load(path, mmap_mode="r")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise DatasetError(f"{path}: decoded cache has shape {arr.shape}, expected {tuple(shape)}; delete it to rebuild")
    out = arr.view(CachedImages)
    out._bench_file, out._bench_shape, out._bench_ptr = str(path), tuple(arr.shape), out.ctypes.data
    return out


def _open_cache(folder: Path, manifest: Manifest, size: int) -> dict[str, np.ndarray] | None:
    """Memory-map a complete cache folder; None when absent or inconsistent with ``manifest``."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != CACHE_FORMAT or meta.get("images_sha256") != manifest.images_sha256():
            return None
        arrays = {}
        for split, entries in manifest.entries.items():
            n_ok = sum(e.status == "ok" for e in entries)
            if n_ok == 0:
                arrays[split] = np.zeros((0, size, size, 3), dtype=np.uint8)
                continue
            arr = open_cached_images(folder / f"{split}.npy")
            if arr.shape != (n_ok, size, size, 3) or arr.dtype != np.uint8:
                return None
            arrays[split] = arr
        return arrays
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _incomplete_message(dataset: str, root: Path, manifest_counts: dict, bad: dict[str, list[Entry]]) -> str:
    parts = []
    for split, entries in bad.items():
        if not entries:
            continue
        n = manifest_counts[split]["images"]
        kinds = {s: [e.path for e in entries if e.status == s] for s in ("missing", "corrupt")}
        desc = " and ".join(f"{len(v)} {k}" for k, v in kinds.items() if v)
        parts.append(f"{desc} of {n} {split} images (e.g. {_examples([e.path for e in entries])})")
    return (
        f"{dataset}: {'; '.join(parts)} under {root}. Val/test images are never dropped: restore them, then "
        f"`bench data verify --dataset {dataset}` lists every missing or corrupt file."
    )


@dataclass
class Materialized:
    manifest: Manifest
    manifest_path: Path
    arrays: dict[str, np.ndarray]
    cache_path: Path
    from_cache: bool
    rescanned: int
    seconds: float


def materialize(
    dataset: str,
    listing: Listing,
    class_keys: list[str],
    work_dir: Path,
    size: int,
    *,
    resample: str = "bicubic",
    draft: bool = True,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    progress_total: Callable[[int], None] | None = None,
    strict_splits: Iterable[str] = ("val", "test"),
) -> Materialized:
    """Make sure the manifest and the decoded cache for ``size`` exist and are current; memory-map the cache.

    Decodes nothing when the manifest is current by stat and the cache folder exists. ``strict_splits`` are the
    splits in which a missing or corrupt image raises :class:`SplitIncompleteError`; elsewhere it is skipped.
    """
    t0 = time.perf_counter()
    root = listing.root
    if resample not in RESAMPLE:
        raise DatasetError(f"unknown resample {resample!r} (expected one of {', '.join(RESAMPLE)})")
    strict = set(strict_splits)
    manifest_path = Path(work_dir) / f"manifest-{root_tag(root)}.json"
    previous = Manifest.read(manifest_path)
    entries, stale = reconcile(listing, previous)

    def fail_early(ents: dict[str, list[Entry]]) -> None:
        bad = {s: [e for e in ents[s] if e.status != "ok" and e.check != "pending"] for s in ents if s in strict}
        if any(bad.values()):
            counts = {s: {"images": len(ents[s])} for s in ents}
            raise SplitIncompleteError(_incomplete_message(dataset, root, counts, bad))

    fail_early(entries)  # missing val/test files (from the stat) or known-corrupt ones: before any decoding
    if not stale:
        manifest = new_manifest(dataset, listing, class_keys, entries)
        folder = Path(work_dir) / cache_dir_name(manifest.images_sha256(), size, resample, draft)
        arrays = _open_cache(folder, manifest, size)
        if arrays is not None:
            if previous is None or previous.sha256() != manifest.sha256():
                manifest.write(manifest_path)
            return Materialized(manifest, manifest_path, arrays, folder, True, 0, time.perf_counter() - t0)

    # Build: every image with a chance of being ok is decoded into a staging folder (stale ones hashed too).
    rows = {s: [i for i, e in enumerate(entries[s]) if (s, i) in stale or e.status == "ok"] for s in listing.splits}
    for split, idx in rows.items():
        if not idx:
            raise DatasetError(f"{dataset}: no usable {split} images under {root} ({len(entries[split])} listed)")
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    stage = Path(work_dir) / f".build-{os.getpid()}-{secrets.token_hex(4)}"
    stage.mkdir()
    try:
        staged = {
            s: np.lib.format.open_memmap(stage / f"{s}.npy", mode="w+", dtype=np.uint8, shape=(len(idx), size, size, 3))
            for s, idx in rows.items()
        }
        tasks, where = [], []
        for split, idx in rows.items():
            for j, i in enumerate(idx):
                prev = None if (split, i) in stale else entries[split][i]
                tasks.append(
                    lambda p=listing.paths[split][i], prev=prev, out=staged[split][j]: scan_file(
                        root, p, previous=prev, size=size, resample=resample, draft=draft, out=out
                    )
                )
                where.append((split, i))
        if progress_total:
            progress_total(len(tasks))
        for (split, i), entry in zip(where, _run_pool(tasks, workers or default_workers(), progress), strict=True):
            old = entries[split][i]
            if (split, i) not in stale and entry.status == "ok":
                entry.check = old.check  # a verified entry keeps its provenance
            entries[split][i] = entry
        manifest = new_manifest(dataset, listing, class_keys, entries)
        manifest.write(manifest_path)  # written before failing, so `verify`-like counts persist and reuse works
        fail_early(entries)
        for split, idx in rows.items():
            ok = [j for j, i in enumerate(idx) if entries[split][i].status == "ok"]
            if not ok:
                raise DatasetError(f"{dataset}: no usable {split} images under {root} ({len(entries[split])} listed)")
            if len(ok) < len(idx):  # train images that failed to decode: compact the staged array
                src = staged[split]
                dst = np.lib.format.open_memmap(stage / f"{split}.compact.npy", mode="w+", dtype=np.uint8,
                                                shape=(len(ok), size, size, 3))
                for start in range(0, len(ok), 256):
                    dst[start : start + 256] = src[ok[start : start + 256]]
                dst.flush()
                del dst
                staged[split] = None  # type: ignore[assignment]
                del src
                os.replace(stage / f"{split}.compact.npy", stage / f"{split}.npy")
        for arr in staged.values():
            if arr is not None:
                arr.flush()
        staged.clear()
        digest = manifest.images_sha256()
        folder = Path(work_dir) / cache_dir_name(digest, size, resample, draft)
        meta = {
            "format": CACHE_FORMAT,
            "dataset": dataset,
            "images_sha256": digest,
            "manifest_sha256": manifest.sha256(),
            "image_size": size,
            "resample": resample,
            "draft": draft,
            "counts": {s: sum(e.status == "ok" for e in entries[s]) for s in entries},
            "paths": {s: [e.path for e in entries[s] if e.status == "ok"] for s in entries},
            "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "build_seconds": round(time.perf_counter() - t0, 3),
        }
        atomic_write_bytes(stage / "meta.json", json.dumps(meta).encode())
        if _open_cache(folder, manifest, size) is None:
            if folder.exists():  # an inconsistent leftover under the same key: move it out of the way
                shutil.rmtree(folder, ignore_errors=True)
            try:
                os.rename(stage, folder)
            except OSError:  # another process published the same key first: use theirs
                pass
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    arrays = _open_cache(folder, manifest, size)
    if arrays is None:
        raise DatasetError(f"{dataset}: could not publish the decoded cache {folder}")
    return Materialized(manifest, manifest_path, arrays, folder, False, len(stale), time.perf_counter() - t0)


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

    def verify(self) -> tuple[Manifest, Path]:
        """``bench data verify``: full decode + sha256 of every listed image; writes and returns the manifest."""
        listing = self.listing()
        path = self.work_dir / f"manifest-{root_tag(listing.root)}.json"
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
