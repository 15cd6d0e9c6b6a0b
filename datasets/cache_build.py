"""Writing a decoded-image cache's staged ``.npy`` files with bounded memory: each worker thread decodes into its own
one-image buffer and ``pwrite``s it at its row's offset (never through a memory map of the whole file), a few tasks
per thread are in flight, dropped rows are compacted in bounded pieces, and every file is fsynced before
:mod:`bench.datasets.cache` renames the folder into place. A full disk is a :class:`bench.errors.DiskFullError`
naming the file."""

from __future__ import annotations

import errno
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import DiskFullError

from .base import DatasetError
from .manifest import Entry, Listing, default_workers, scan_file

COPY_CHUNK_BYTES = 32 << 20  # the most a compaction of the staged files holds in memory at once
WINDOW_PER_WORKER = 4  # decode tasks submitted ahead per worker thread (bounds the build's memory, keeps it busy)


@dataclass
class Staged:
    """One split's staged ``.npy`` file: ``rows`` rows of ``row_bytes`` after a header of ``offset`` bytes."""

    path: Path
    offset: int
    rows: int
    size: int

    @property
    def row_bytes(self) -> int:
        return self.size * self.size * 3


@contextmanager
def full_disk_names(path: Path) -> Iterator[None]:
    """A full disk (ENOSPC, EDQUOT) while writing ``path`` becomes a :class:`DiskFullError` that names it."""
    try:
        yield
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT) and not isinstance(err, DiskFullError):
            raise DiskFullError(f"No space left on device at {path} (building the decoded cache; its staging folder "
                                "is removed)") from err
        raise


def stage_file(path: Path, rows: int, size: int) -> Staged:
    """Create ``path`` as numpy writes a ``uint8 [rows, size, size, 3]`` .npy (the same header bytes, the data a
    sparse hole to fill) without touching its pages: nothing of it is mapped into this process's memory."""
    with full_disk_names(path):
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(rows, size, size, 3))
    offset = int(arr.offset)
    del arr  # never written through: mapping and unmapping it costs no memory
    return Staged(path, offset, rows, size)


_seek_lock = threading.Lock()  # for platforms without os.pwrite / os.pread (Windows): seek + write under a lock


def pwrite_all(fd: int, data: np.ndarray | memoryview | bytes, offset: int, path: Path) -> None:
    """Write all of ``data`` at ``offset`` (``os.pwrite`` may write less); a full disk names ``path``."""
    view = memoryview(data).cast("B")
    with full_disk_names(path):
        while view.nbytes:
            if hasattr(os, "pwrite"):
                n = os.pwrite(fd, view, offset)
            else:
                with _seek_lock:
                    os.lseek(fd, offset, os.SEEK_SET)
                    n = os.write(fd, view)
            if n <= 0:
                raise OSError(errno.EIO, f"a write at offset {offset} wrote nothing", str(path))
            view, offset = view[n:], offset + n


def pread(fd: int, n: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, n, offset)
    with _seek_lock:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, n)


def fsync(path: Path) -> None:
    """Flush ``path``'s data to disk (a delayed block allocation can still find the disk full here)."""
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        with full_disk_names(path):
            os.fsync(fd)
    finally:
        os.close(fd)


def run_window(
    tasks: Iterable[Callable[[], Any]], workers: int, progress: Callable[[int], None] | None
) -> Iterator[Any]:
    """Run zero-argument tasks on ``workers`` threads, at most ``WINDOW_PER_WORKER * workers`` submitted ahead;
    yield their results in order (``progress(1)`` after each). Tasks are drawn lazily, so memory stays bounded
    whatever their number; an error or Ctrl-C cancels what has not started."""
    if workers <= 1:
        for task in tasks:
            yield task()
            if progress:
                progress(1)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bench-decode")
    pending: deque[Future] = deque()
    try:
        for task in tasks:
            pending.append(pool.submit(task))
            if len(pending) >= WINDOW_PER_WORKER * workers:
                yield pending.popleft().result()
                if progress:
                    progress(1)
        while pending:
            yield pending.popleft().result()
            if progress:
                progress(1)
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def decode_staged(
    listing: Listing,
    entries: dict[str, list[Entry]],
    stale: set[tuple[str, int]],
    rows: dict[str, list[int]],
    stage: Path,
    size: int,
    *,
    resample: str,
    draft: bool,
    workers: int | None,
    progress: Callable[[int], None] | None,
    progress_total: Callable[[int], None] | None,
) -> dict[str, Staged]:
    """Decode the images ``rows`` names into ``stage/<split>.npy`` (row j of a split = its j-th listed row), and
    put each file's new scan into ``entries`` (in place).

    Each worker thread decodes into its own one-image buffer and ``pwrite``s it at its row's offset: the pixels go
    to the page cache through the file, never through a memory map of it, so the build's resident memory is a few
    images per thread whatever the dataset's size (writing through a map of the whole file made every written page
    resident: peak RSS grew by N x S x S x 3 bytes). A failed row stays zero; :func:`finish_staged` drops it."""
    staged = {s: stage_file(stage / f"{s}.npy", len(idx), size) for s, idx in rows.items()}
    fds: dict[str, int] = {}
    local = threading.local()
    root = listing.root

    def decode(split: str, i: int, j: int, previous: Entry | None) -> Entry:
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = np.empty((size, size, 3), dtype=np.uint8)
        entry = scan_file(root, listing.paths[split][i], previous=previous, size=size, resample=resample, draft=draft,
                          out=buf)
        if entry.status == "ok":
            st = staged[split]
            pwrite_all(fds[split], buf, st.offset + j * st.row_bytes, st.path)
        return entry

    def tasks() -> Iterator[Callable[[], Entry]]:
        for split, idx in rows.items():
            for j, i in enumerate(idx):
                prev = None if (split, i) in stale else entries[split][i]
                yield partial(decode, split, i, j, prev)

    where = ((split, i) for split, idx in rows.items() for i in idx)
    if progress_total:
        progress_total(sum(len(idx) for idx in rows.values()))
    results = run_window(tasks(), workers or default_workers(), progress)
    try:
        for s, st in staged.items():
            fds[s] = os.open(st.path, os.O_WRONLY | getattr(os, "O_BINARY", 0))
        for (split, i), entry in zip(where, results, strict=True):
            old = entries[split][i]
            if (split, i) not in stale and entry.status == "ok":
                entry.check = old.check  # a verified entry keeps its provenance
            entries[split][i] = entry
    finally:
        results.close()  # stops the pool (waits for running tasks) before their files are closed
        for fd in fds.values():
            os.close(fd)
    return staged


def finish_staged(
    dataset: str, root: Path, staged: dict[str, Staged], rows: dict[str, list[int]], entries: dict[str, list[Entry]]
) -> None:
    """Drop the rows whose image failed to decode (train only: val/test failures raised before) from the staged
    files, copying the kept rows into a compact file in pieces of at most :data:`COPY_CHUNK_BYTES`, then
    fsync every file so the published cache is on disk before it is renamed into place."""
    for split, idx in rows.items():
        st = staged[split]
        ok = [j for j, i in enumerate(idx) if entries[split][i].status == "ok"]
        if not ok:
            raise DatasetError(f"{dataset}: no usable {split} images under {root} ({len(entries[split])} listed)")
        if len(ok) < len(idx):
            compact_path = st.path.with_name(f"{split}.compact.npy")
            dst = stage_file(compact_path, len(ok), st.size)
            per_chunk = max(1, COPY_CHUNK_BYTES // st.row_bytes)
            binary = getattr(os, "O_BINARY", 0)
            src_fd, dst_fd = os.open(st.path, os.O_RDONLY | binary), os.open(compact_path, os.O_WRONLY | binary)
            try:
                k = 0
                while k < len(ok):  # runs of consecutive kept rows, at most per_chunk rows a copy
                    n = 1
                    while k + n < len(ok) and n < per_chunk and ok[k + n] == ok[k] + n:
                        n += 1
                    data = pread(src_fd, n * st.row_bytes, st.offset + ok[k] * st.row_bytes)
                    if len(data) != n * st.row_bytes:
                        raise OSError(errno.EIO, "short read of a staged cache file", str(st.path))
                    pwrite_all(dst_fd, data, dst.offset + k * dst.row_bytes, compact_path)
                    k += n
            finally:
                os.close(src_fd)
                os.close(dst_fd)
            fsync(compact_path)
            os.replace(compact_path, st.path)
            staged[split] = Staged(st.path, dst.offset, dst.rows, dst.size)
        else:
            fsync(st.path)
