"""Data throughput: decoding JPEGs every epoch vs. the decoded cache (bench.datasets.images).

Generates ``--n`` 3000x2000 JPEGs at quality 30 (like the Unsplash originals of Intentonomy), then measures, in one
run and on the same files:

  (a)  plain PIL per item: open, full decode, convert to RGB, resize to S x S (what a DataLoader worker of the
       official code does for every image of every epoch), on one core; (a') the same in a pool of ``--workers``
       threads, for a like-for-like comparison with (b);
  (b)  building the decoded cache from scratch with ``bench``'s own code path (manifest: stat + sha256; draft-mode
       decode + resize, ``--workers`` threads, written into the memory-mapped ``uint8 [N, S, S, 3]`` array);
       also the time of a second load that reuses it (stat check + memory map, no decoding);
  (c)  reading shuffled batches (``--batch``) from the memory-mapped cache as torch tensors, as every epoch does.

Usage: ``python benchmarks/data_throughput.py [--n 60] [--size 224] [--workers N] [--batch 64] [--dir DIR]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

W, H = 3000, 2000


def generate(folder: Path, n: int, quality: int, seed: int = 0) -> list[str]:
    """``n`` distinct photo-like 3000x2000 JPEGs (smooth colour fields + texture + grain) at ``quality``."""
    rng = np.random.default_rng(seed)
    (folder / "low").mkdir(parents=True, exist_ok=True)
    coarse = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((W, H), Image.Resampling.BICUBIC), dtype=np.int16)
    texture = np.asarray(Image.fromarray(rng.integers(0, 256, (500, 750), dtype=np.uint8)).resize((W, H)), dtype=np.int16)
    grain = rng.integers(-12, 13, (H, W, 1), dtype=np.int16)
    names = []
    for i in range(n):
        dy, dx = rng.integers(0, H), rng.integers(0, W)
        img = np.roll(base, (int(dy), int(dx)), axis=(0, 1)) + ((texture - 128) // 4)[..., None]
        img = img + grain + rng.integers(-40, 41, 3, dtype=np.int16)
        name = f"low/{i:05d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / name, quality=quality)
        names.append(name)
    return names


def plain_decode(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC))


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60, help="number of generated JPEGs (default 60)")
    parser.add_argument("--size", type=int, default=224, help="cached side S (default 224)")
    parser.add_argument("--quality", type=int, default=30)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=5, help="passes over the cache for (c)")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp folder, removed)")
    args = parser.parse_args(argv)

    import torch

    from bench.datasets.images import Listing, materialize

    work = args.dir or Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    try:
        root, cache = work / "root", work / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        t = time.perf_counter()
        names = generate(root, args.n, args.quality)
        gen_s = time.perf_counter() - t
        mb = sum((root / p).stat().st_size for p in names) / 1e6
        print(f"{args.n} JPEGs {W}x{H} q{args.quality}, {mb / args.n:.2f} MB each (generated in {gen_s:.1f} s); "
              f"S={args.size}, workers={args.workers}, cpu_count={os.cpu_count()}")

        # (a) plain PIL per item, one core; (a') the same with a thread pool
        plain_decode(root / names[0], args.size)  # warm the code path
        t = time.perf_counter()
        for p in names:
            plain_decode(root / p, args.size)
        a = args.n / (time.perf_counter() - t)
        t = time.perf_counter()
        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(lambda p: plain_decode(root / p, args.size), names))
        a_par = args.n / (time.perf_counter() - t)

        # (b) building the cache with bench's own code (manifest + draft decode + memmap), then reusing it
        listing = Listing(root, {"train": names}, {"train": np.zeros(len(names), np.int64)}, {"train": names})
        t = time.perf_counter()
        built = materialize("throughput", listing, ["x"], cache, args.size, workers=args.workers, strict_splits=())
        b = args.n / (time.perf_counter() - t)
        assert not built.from_cache and built.arrays["train"].shape == (args.n, args.size, args.size, 3)
        t = time.perf_counter()
        again = materialize("throughput", listing, ["x"], cache, args.size, workers=args.workers, strict_splits=())
        reuse_s = time.perf_counter() - t
        assert again.from_cache

        # (c) shuffled batches from the memory-mapped cache, as torch tensors
        images = again.arrays["train"]
        seen = 0
        t = time.perf_counter()
        for epoch in range(args.epochs):
            order = np.random.default_rng(epoch).permutation(len(images))
            for start in range(0, len(order), args.batch):
                idx = np.sort(order[start : start + args.batch])
                batch = torch.from_numpy(images[idx])
                seen += batch.shape[0]
        c = seen / (time.perf_counter() - t)
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)

    print(f"(a)  plain PIL decode + resize, per item, 1 core : {a:10.1f} img/s   1.00x")
    print(f"(a') plain PIL decode + resize, {args.workers} threads{' ' * max(0, 10 - len(str(args.workers)))}: {a_par:10.1f} img/s "
          f"{a_par / a:6.2f}x")
    print(f"(b)  build the cache (sha256 + draft decode), {args.workers} thr: {b:7.1f} img/s {b / a:6.2f}x vs (a), "
          f"{b / a_par:.2f}x vs (a')")
    print(f"(c)  read batches of {args.batch} from the cache             : {c:10.1f} img/s {c / a:8.1f}x vs (a), "
          f"{c / b:.1f}x vs (b)")
    print(f"     reuse of the built cache (stat check + memory map): {1000 * reuse_s:.1f} ms for {args.n} images")
    return {"plain": a, "plain_parallel": a_par, "build": b, "read": c, "reuse_s": reuse_s}


if __name__ == "__main__":
    main()
