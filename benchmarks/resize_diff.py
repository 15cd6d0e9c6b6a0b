"""How far the decoded-image cache's default decode (bicubic resize of a JPEG draft decode) moves the pixels from
the released IntCLIP code's (torchvision ``Resize((S, S))``: PIL bilinear, antialiased, on the fully decoded image),
in uint8 levels, and how long each decode takes.

    python benchmarks/resize_diff.py --root /data/intentonomy/low     # real photos (any folder of JPEGs)
    python benchmarks/resize_diff.py                                  # generated 1600x1067 photo-like JPEGs

The generated images (smooth random fields plus sharp-edged shapes and sensor-like noise, JPEG quality 90) are no
substitute for real photos: run it on the dataset you train on for the figure that applies.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from bench.datasets.images import decode_image


def generated_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h, w = 1067, 1600
        field = np.stack([ndimage.gaussian_filter(rng.normal(size=(h // 8 + 1, w // 8 + 1)), 6) for _ in range(3)], -1)
        field = np.kron(field, np.ones((8, 8, 1)))[:h, :w]
        img = (128 + 400 * field + rng.normal(0, 4, (h, w, 3))).clip(0, 255).astype(np.uint8)
        pil = Image.fromarray(img)
        draw = ImageDraw.Draw(pil)
        for _ in range(12):
            x, y = rng.integers(0, w), rng.integers(0, h)
            r = rng.integers(20, 200)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        path = folder / f"{i:03d}.jpg"
        pil.save(path, quality=90)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="a folder of JPEGs (default: generated ones)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("-n", type=int, default=40, help="images (generated, or the first n of --root)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = sorted(args.root.glob("*.jp*g"))[: args.n] if args.root else generated_jpegs(Path(tmp), args.n)
        diffs, times = [], {"bicubic + draft": 0.0, "bilinear, full decode": 0.0}
        for path in paths:
            data = path.read_bytes()
            t0 = time.perf_counter()
            cached = decode_image(data, args.size, "bicubic", True)[2].astype(np.int16)
            t1 = time.perf_counter()
            official = decode_image(data, args.size, "bilinear", False)[2].astype(np.int16)
            t2 = time.perf_counter()
            times["bicubic + draft"] += t1 - t0
            times["bilinear, full decode"] += t2 - t1
            diffs.append(np.abs(cached - official))
        d = np.stack(diffs)
    source = args.root or "generated photo-like JPEGs (1600x1067, quality 90)"
    print(f"# {len(paths)} images from {source}, resized to {args.size}x{args.size}")
    print(f"mean |diff| (uint8 levels): {d.mean():.2f}; median {np.median(d):.0f}; 99th percentile {np.percentile(d, 99):.0f}; max {d.max()}")
    print(f"per image mean |diff|: min {d.mean(axis=(1, 2, 3)).min():.2f}, max {d.mean(axis=(1, 2, 3)).max():.2f}")
    for name, seconds in times.items():
        print(f"decode {name:22s}: {1000 * seconds / len(paths):6.1f} ms per image")


if __name__ == "__main__":
    main()
