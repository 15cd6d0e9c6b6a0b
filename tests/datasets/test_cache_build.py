"""Building the decoded cache (bench.datasets.cache): the bytes of every split's ``.npy`` against an independent
decode with PIL saved by ``np.save`` (several sizes, resize filters, draft on/off, image modes, thread counts),
failed train rows compacted away in pieces, partial writes; memory that does not grow with the cache; an
interrupted build or a full disk leaving nothing behind, no file open, and most images never decoded."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.datasets import cache_build as cache_mod
from bench.datasets import manifest as manifest_mod  # scan_file looks decode_image up there
from bench.datasets.images import Listing, materialize

from bench.errors import DiskFullError

FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
           "lanczos": Image.Resampling.LANCZOS}


def _save(path: Path, pixels: np.ndarray, mode: str, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(pixels)
    if mode == "L":
        img = img.convert("L")
    elif mode == "CMYK":
        img = img.convert("CMYK")
    elif mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    elif mode == "RGBA":
        img = img.convert("RGBA")
        img.putalpha(Image.fromarray((pixels[..., 0] // 2 + 64).astype(np.uint8)))
    img.save(path, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))


# (width, height, mode, format): upscaled, downscaled with JPEG draft (400x300 at 48 px decodes at 1/4), grey,
# CMYK, palette and RGBA PNGs, and one already at the cache size for S = 48 (no resize)
KINDS = [(40, 30, "RGB", "JPEG"), (400, 300, "RGB", "JPEG"), (64, 64, "L", "JPEG"), (64, 48, "CMYK", "JPEG"),
         (30, 30, "P", "PNG"), (50, 20, "RGBA", "PNG"), (48, 48, "RGB", "JPEG"), (150, 260, "RGB", "JPEG")]


def make_root(root: Path, counts: dict[str, int], seed: int = 0) -> Listing:
    """Photo-like images of every kind in ``KINDS`` (cycled), ``counts[split]`` per split, and their listing."""
    rng = np.random.default_rng(seed)
    paths: dict[str, list[str]] = {}
    k = 0
    for split, n in counts.items():
        paths[split] = []
        for _ in range(n):
            w, h, mode, fmt = KINDS[k % len(KINDS)]
            coarse = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
            pixels = np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
            pixels = np.clip(pixels + rng.integers(-20, 21, (h, w, 1)), 0, 255).astype(np.uint8)
            rel = f"img/{split}/{k:04d}.{'jpg' if fmt == 'JPEG' else 'png'}"
            _save(root / rel, pixels, mode, fmt)
            paths[split].append(rel)
            k += 1
    labels = {s: np.arange(len(p)) % 3 for s, p in paths.items()}
    return Listing(root, paths, labels, {s: list(p) for s, p in paths.items()})


def pil_reference(path: Path, size: int, resample: str, draft: bool) -> np.ndarray:
    """What the cache must hold for one file, straight from PIL: JPEG draft to the smallest DCT scale still >= size
    on both sides (when ``draft``), RGB, squash-resize to size x size with ``resample``."""
    with Image.open(path) as im:
        if draft and im.format == "JPEG":
            im.draft("RGB", (size, size))
        rgb = im.convert("RGB")
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), FILTERS[resample])
        return np.asarray(rgb, dtype=np.uint8)


def npy_bytes(rows: list[np.ndarray], size: int) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.stack(rows) if rows else np.zeros((0, size, size, 3), np.uint8), allow_pickle=False)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_cache_matches(cache_path: Path, listing: Listing, size: int, resample: str, draft: bool,
                         skip: dict[str, set[str]] | None = None) -> None:
    """Every split's file, byte for byte (header included), is ``np.save`` of the PIL reference of its ok rows."""
    skip = skip or {}
    for split, paths in listing.paths.items():
        kept = [p for p in paths if p not in skip.get(split, set())]
        rows = [pil_reference(listing.root / p, size, resample, draft) for p in kept]
        assert sha((cache_path / f"{split}.npy").read_bytes()) == sha(npy_bytes(rows, size)), split


@pytest.mark.parametrize(
    ("size", "resample", "draft", "workers"),
    [(48, "bicubic", True, 1), (48, "bilinear", False, 3), (32, "lanczos", True, 2), (100, "bicubic", True, 2)],
)
def test_cache_files_equal_np_save_of_independent_pil_decodes(tmp_path, size, resample, draft, workers):
    listing = make_root(tmp_path / "root", {"train": 19, "val": 5, "test": 8})
    built = materialize("t", listing, ["a", "b", "c"], tmp_path / "cache", size, resample=resample, draft=draft,
                        workers=workers, strict_splits=())
    assert not built.from_cache
    assert_cache_matches(built.cache_path, listing, size, resample, draft)
    for split, arr in built.arrays.items():  # and what a run reads back through the memory map
        mid = len(arr) // 2
        expected = pil_reference(listing.root / listing.paths[split][mid], size, resample, draft)
        np.testing.assert_array_equal(arr[mid], expected)
    assert sorted(p.name for p in built.cache_path.iterdir()) == ["meta.json", "test.npy", "train.npy", "val.npy"]


def test_failed_train_rows_are_compacted_away_in_pieces(tmp_path, monkeypatch):
    listing = make_root(tmp_path / "root", {"train": 23, "val": 3, "test": 3})
    train = listing.paths["train"]
    bad = {train[0], train[5], train[6], train[11], train[22]}  # first, a pair, a lone one, last
    for p in sorted(bad):
        data = (listing.root / p).read_bytes()
        (listing.root / p).write_bytes(data[: len(data) // 3] if p != train[11] else b"not an image")
    size = 40
    monkeypatch.setattr(cache_mod, "COPY_CHUNK_BYTES", 3 * size * size * 3)  # at most 3 rows a copy: many pieces
    preads: list[int] = []
    real_pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, off: preads.append(n) or real_pread(fd, n, off))
    built = materialize("t", listing, ["a"], tmp_path / "cache", size, workers=2, strict_splits=("val", "test"))
    assert [e.path for e in built.manifest.entries["train"] if e.status == "corrupt"] == sorted(bad)
    assert built.arrays["train"].shape == (23 - 5, size, size, 3)
    assert_cache_matches(built.cache_path, listing, size, "bicubic", True, skip={"train": bad})
    # kept rows 1-4 | 7-10 | 12-21: runs split at the failures and at 3 rows: 3+1, 3+1, 3+3+3+1 rows
    assert [n // (size * size * 3) for n in preads] == [3, 1, 3, 1, 3, 3, 3, 1]
    assert not list((tmp_path / "cache").glob(".build-*"))


def test_partial_writes_still_write_every_byte(tmp_path, monkeypatch):
    listing = make_root(tmp_path / "root", {"train": 9, "val": 2, "test": 2})
    real_pwrite = os.pwrite
    calls = []

    def short_pwrite(fd, data, offset):  # as a write interrupted by a signal may: at most 1000 bytes a call
        calls.append(offset)
        return real_pwrite(fd, memoryview(data)[:1000], offset)

    monkeypatch.setattr(os, "pwrite", short_pwrite)
    built = materialize("t", listing, ["a"], tmp_path / "cache", 48, workers=2, strict_splits=())
    assert len(calls) >= 13 * (48 * 48 * 3 // 1000)
    assert_cache_matches(built.cache_path, listing, 48, "bicubic", True)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names fsynced files from /proc/self/fd")
def test_every_published_file_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    listing = make_root(tmp_path / "root", {"train": 6, "val": 2, "test": 2})
    bad = listing.paths["train"][2]
    (listing.root / bad).write_bytes(b"broken")  # train is compacted into a new file: that one must be synced
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                        or real_fsync(fd))
    monkeypatch.setattr(os, "rename", lambda a, b: events.append(("rename", str(a))) or real_rename(a, b))
    built = materialize("t", listing, ["a"], tmp_path / "cache", 24, workers=1, strict_splits=())
    published = [i for i, (kind, _) in enumerate(events) if kind == "rename"]
    assert len(published) == 1 and Path(events[published[0]][1]).name.startswith(".build-")
    stage = Path(events[published[0]][1])
    synced = [(i, Path(path)) for i, (kind, path) in enumerate(events) if kind == "fsync" and path.endswith(".npy")]
    assert sorted(path.name for _, path in synced) == ["test.npy", "train.compact.npy", "val.npy"]
    assert all(path.parent == stage and i < published[0] for i, path in synced)
    assert sorted(p.name for p in built.cache_path.glob("*.npy")) == ["test.npy", "train.npy", "val.npy"]


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmHWM from /proc/self/status")
def test_build_peak_memory_does_not_grow_with_the_cache(tmp_path):
    """A fresh process builds a 72 MB cache (480 images at 224 px) after a warm-up build of 16: its peak RSS may
    grow by a few images, not by the cache (writing through a memory map of the whole file made every page
    resident: the old build grew by the full 72 MB)."""
    listing = make_root(tmp_path / "root", {"train": 1})
    src = listing.root / listing.paths["train"][0]
    script = textwrap.dedent(f"""
        import os, shutil, sys
        from pathlib import Path
        import numpy as np
        from bench.datasets.images import Listing, materialize

        def hwm():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024

        root = Path({str(tmp_path / "many")!r})
        (root / "img").mkdir(parents=True)
        names = []
        for i in range(480):
            os.link({str(src)!r}, root / "img" / f"{{i}}.jpg")
            names.append(f"img/{{i}}.jpg")
        def listing(n):
            return Listing(root, {{"train": names[:n]}}, {{"train": np.zeros(n)}}, {{"train": names[:n]}})
        materialize("warm", listing(16), ["a"], Path({str(tmp_path / "warm")!r}), 224, workers=2, strict_splits=())
        before = hwm()
        big = Path({str(tmp_path / "big")!r})
        built = materialize("big", listing(480), ["a"], big, 224, workers=2, strict_splits=())
        assert built.arrays["train"].shape == (480, 224, 224, 3)
        print(hwm() - before, built.arrays["train"].nbytes)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # the bench this test imported
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr
    growth, nbytes = map(int, out.stdout.split())
    assert nbytes == 480 * 224 * 224 * 3
    assert growth < nbytes / 4, f"peak RSS grew by {growth / 2**20:.1f} MiB building a {nbytes / 2**20:.0f} MiB cache"


def _open_files_under(folder: Path) -> list[str]:
    fds = Path("/proc/self/fd")
    out = []
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(folder)):
            out.append(target)
    return out


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="lists open files in /proc/self/fd")
def test_interrupted_build_stops_early_and_leaves_nothing(tmp_path, monkeypatch):
    listing = make_root(tmp_path / "root", {"train": 60, "val": 4, "test": 4})
    cache = tmp_path / "cache"
    real = manifest_mod.decode_image
    lock, calls = threading.Lock(), [0]

    def ctrl_c_on_the_seventh(*args, **kwargs):
        with lock:
            calls[0] += 1
            if calls[0] == 7:
                raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(manifest_mod, "decode_image", ctrl_c_on_the_seventh)
    with pytest.raises(KeyboardInterrupt):
        materialize("t", listing, ["a"], cache, 48, workers=2, strict_splits=())
    assert 7 <= calls[0] <= 7 + cache_mod.WINDOW_PER_WORKER * 2  # the rest was cancelled, not decoded
    assert not list(cache.glob(".build-*")) and not list(cache.glob("decoded-*"))
    assert _open_files_under(cache) == []
    monkeypatch.setattr(manifest_mod, "decode_image", real)
    built = materialize("t", listing, ["a"], cache, 48, workers=2, strict_splits=())
    assert_cache_matches(built.cache_path, listing, 48, "bicubic", True)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="lists open files in /proc/self/fd")
@pytest.mark.parametrize("where", ["pwrite", "fsync"])
def test_full_disk_while_writing_names_the_file_and_leaves_nothing(tmp_path, monkeypatch, where):
    """A full disk during the writes, or at the fsync (a delayed block allocation fails there)."""
    listing = make_root(tmp_path / "root", {"train": 30, "val": 2, "test": 2})
    cache = tmp_path / "cache"
    real = getattr(os, where)
    lock, calls = threading.Lock(), [0]

    def filling(fd, *args):
        with lock:
            calls[0] += 1
            if calls[0] > 5 if where == "pwrite" else os.readlink(f"/proc/self/fd/{fd}").endswith("train.npy"):
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, *args)

    monkeypatch.setattr(os, where, filling)
    with pytest.raises(DiskFullError, match=r"No space left on device at .*/\.build-[^/]+/train\.npy"):
        materialize("t", listing, ["a"], cache, 32, workers=2, strict_splits=())
    assert not list(cache.glob(".build-*")) and not list(cache.glob("decoded-*"))
    assert _open_files_under(cache) == []


def test_window_draws_tasks_lazily_and_keeps_order():
    drawn = [0]
    seen: list[int] = []

    def tasks(n: int):
        for i in range(n):
            drawn[0] += 1
            yield lambda i=i: i * i

    ahead = []
    for r in cache_mod.run_window(tasks(200), 3, seen.append):
        ahead.append(drawn[0] - len(ahead) - 1)  # drawn but not yet handed out when this result arrives
    assert len(seen) == 200 and max(ahead) <= cache_mod.WINDOW_PER_WORKER * 3
    assert list(cache_mod.run_window(tasks(50), 3, None)) == [i * i for i in range(50)]
    assert list(cache_mod.run_window(tasks(5), 1, None)) == [0, 1, 4, 9, 16]

    ran = [0]

    def failing(n: int):
        for i in range(n):
            def task(i=i):
                ran[0] += 1
                if i == 10:
                    raise ValueError("image 10")
                return i
            yield task

    with pytest.raises(ValueError, match="image 10"):
        list(cache_mod.run_window(failing(500), 2, None))
    assert ran[0] <= 11 + cache_mod.WINDOW_PER_WORKER * 2  # the rest was never started
