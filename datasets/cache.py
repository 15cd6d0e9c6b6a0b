"""The decoded, memory-mapped image cache of a file-based dataset, built from its manifest.

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
``BENCH_DATA_WORKERS``; PIL releases the GIL while decoding, resizing and hashing) with PIL draft mode, which lets
libjpeg decode a 3000x2000 JPEG directly at 1/2, 1/4 or 1/8 scale (the largest that stays >= S on both sides):
about 7x faster than a full decode. When the manifest must be (re)computed too, hashing and the draft decode share
one pass: each file is read once.

**Bounded memory.** Each thread decodes into its own one-image buffer and writes it with ``pwrite`` at its row's
offset in the staged ``.npy`` (whose header numpy writes): the pixels reach the file through the page cache, which
is not the process's memory, and the file is never written through a memory map (a map of the whole output made
every written page resident: the build's peak RSS grew by N x S x S x 3 bytes, 2.2 GB for Intentonomy at 224 px).
Tasks are submitted a few per thread ahead, dropped rows are compacted in 32 MB pieces, and every file is fsynced
before the folder is renamed into place: the pixels cost the build a few images per thread at any dataset size
(what still grows with N is the listing and the manifest, about 2 KB an image, as in ``bench data verify``).

**Where the time goes.** Per image, the build does what ``bench data verify`` does (read, sha256, decode) plus the
resize to S x S, a copy and the write. On small files the resize dominates: PIL's bicubic 256 -> 224 px costs 2 to
3 times the JPEG decode of the same 256 px file (over half the build's time; ``benchmarks/data_throughput.py``
prints the split), and it is what defines the cached bytes. On full-size originals (3000 x 2000) draft mode makes
the build cheaper than verify's full decode.

Superseded cache folders are not deleted automatically (another process may still map them); delete
``<cache>/<dataset>/decoded-*`` freely.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench.io import atomic_write_bytes, ensure_free_space

from .base import DatasetError, SplitIncompleteError
from .cache_build import decode_staged, finish_staged
from .manifest import (
    CACHE_FORMAT,
    RESAMPLE,
    Entry,
    Listing,
    Manifest,
    examples,
    manifest_file,
    new_manifest,
    reconcile,
)



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
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
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
        parts.append(f"{desc} of {n} {split} images (e.g. {examples([e.path for e in entries])})")
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
    manifest_path = manifest_file(work_dir, root)
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
    ensure_free_space(work_dir, sum(len(idx) for idx in rows.values()) * size * size * 3, f"{dataset}'s decoded cache")
    stage = Path(work_dir) / f".build-{os.getpid()}-{secrets.token_hex(4)}"
    stage.mkdir()
    try:
        staged = decode_staged(listing, entries, stale, rows, stage, size, resample=resample, draft=draft,
                                workers=workers, progress=progress, progress_total=progress_total)
        manifest = new_manifest(dataset, listing, class_keys, entries)
        manifest.write(manifest_path)  # written before failing, so `verify`-like counts persist and reuse works
        fail_early(entries)
        finish_staged(dataset, root, staged, rows, entries)
        folder = Path(work_dir) / cache_dir_name(manifest.images_sha256(), size, resample, draft)
        meta = _cache_meta(dataset, manifest, entries, size, resample, draft, time.perf_counter() - t0)
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


def _cache_meta(
    dataset: str, manifest: Manifest, entries: dict[str, list[Entry]], size: int, resample: str, draft: bool,
    seconds: float,
) -> dict:
    """The cache folder's ``meta.json``: what was decoded, from which files, how."""
    return {
        "format": CACHE_FORMAT,
        "dataset": dataset,
        "images_sha256": manifest.images_sha256(),
        "manifest_sha256": manifest.sha256(),
        "image_size": size,
        "resample": resample,
        "draft": draft,
        "counts": {s: sum(e.status == "ok" for e in entries[s]) for s in entries},
        "paths": {s: [e.path for e in entries[s] if e.status == "ok"] for s in entries},
        "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 3),
    }
