"""The manifest of a file-based dataset: what an adapter lists, each file checked (bytes, sha256, size, status),
and the dataset version every result records.

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
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
from PIL import Image

from bench.io import atomic_write_bytes

from .base import SPLITS, DatasetError


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


def manifest_file(work_dir: Path, root: Path) -> Path:
    """Where the manifest of data root ``root`` lives in a dataset's cache folder (one per root)."""
    return Path(work_dir) / f"manifest-{root_tag(root)}.json"


def check_relative(path: str, where: str) -> str:
    """A listed image path must stay under the data root: relative, posix, no ``..``."""
    p = Path(path)
    if not path or p.is_absolute() or ".." in p.parts or "\\" in path:
        raise DatasetError(f"{where}: image path {path!r} must be relative to the data root (no '..', '/' separators)")
    return p.as_posix()


def examples(paths: Iterable[str]) -> str:
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


def decode_image(data: bytes | BinaryIO | Path, size: int | None, resample: str = "bicubic", draft: bool = True) -> tuple[int, int, np.ndarray | None]:
    """Decode an encoded image (its bytes, an open binary file or a path: read as PIL needs it, never whole).
    Returns ``(width, height, pixels)`` of the original.

    ``size=None`` decodes fully and returns no pixels (the ``verify`` check); otherwise the image is decoded (in
    JPEG draft mode when ``draft``: libjpeg's DCT scaling to the smallest scale still >= ``size`` on both sides),
    converted to RGB and squash-resized to ``uint8 [size, size, 3]``. Raises on undecodable or truncated data, and
    :class:`PIL.Image.DecompressionBombError` for more pixels than ``Image.MAX_IMAGE_PIXELS`` (read from the
    header, before any pixel is decoded: a small file that expands to gigabytes is a bad image, not a crash).
    Tests monkeypatch this function to prove that a cached load decodes nothing.
    """
    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    with Image.open(source) as im:
        width, height = im.size
        limit = Image.MAX_IMAGE_PIXELS
        if limit and width * height > limit:
            raise Image.DecompressionBombError(f"{width}x{height} = {width * height:,} pixels, over the limit of {limit:,}")
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
    check = "full" if size is None else "draft"
    try:
        with open(full, "rb") as fh:  # hashed in chunks, then decoded from the file: never read whole
            st = os.fstat(fh.fileno())
            if previous is not None and previous.status == "ok" and previous.bytes == st.st_size:
                digest = previous.sha256
            else:
                digest = _sha256_of(fh)
                fh.seek(0)
            try:
                width, height, pixels = decode_image(fh, size, resample, draft)
            except MemoryError:  # not the file's fault: never recorded as corrupt
                raise
            except Exception:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError, ... for bad data
                return Entry(path, st.st_size, digest, 0, 0, "corrupt", st.st_mtime_ns, check)
    except (FileNotFoundError, NotADirectoryError):
        return Entry(path, status="missing")
    except OSError:  # a folder, no permission, I/O error
        return Entry(path, status="corrupt", check="read")
    if out is not None and pixels is not None:
        out[...] = pixels
    return Entry(path, st.st_size, digest, width, height, "ok", st.st_mtime_ns, check)


def _sha256_of(fh: BinaryIO, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: fh.read(chunk), b""):
        digest.update(block)
    return digest.hexdigest()


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


