"""One training epoch of an Intentonomy-sized train split end to end, data loading included: JPEG files vs the
decoded cache, measured in one run with the same model and the same training step.

Generates ``--distinct`` photo-like 3000x2000 JPEGs at quality 30 (like Intentonomy's Unsplash originals) in
parallel and hard-links them to ``--n`` file names (12,740 with ``--full``: Intentonomy's train split). Decoding
costs the same for every such file, so reuse changes no decode time; once read, the files are in the page cache in
both paths, as an Intentonomy folder that fits in RAM is after its first epoch. Then, with one method built with
the project's defaults (default ``intclip-official``, the released code's model) and random labels:

  (a) from the JPEG files, as the official code loads them: a torch DataLoader with ``--workers`` processes, each
      image fully decoded and resized to S x S with PIL every epoch, pinned batches, then the engine's step;
  (b) from the decoded cache: ``bench.datasets.images.materialize`` builds it once (timed separately: a one-time
      cost per dataset and size, shared by every run), then ``bench.train.engine.train_epoch``, exactly what
      ``bench run`` executes (memory-mapped batches gathered and pinned ahead by a background thread);
  also the model step alone on a batch already on the device (the bound for both).

``--cache-only`` skips (a) (what the GPU script runs: the cached epoch within its time budget). ``--json`` is
rewritten after every measurement, so a run cut off by a time limit keeps what it measured.

  python benchmarks/epoch.py                          # CPU, small: 256 images, tiny-clip, batch 32
  python benchmarks/epoch.py --device cuda --full     # 12,740 images, RN101, batch 64, 16 loader workers
  python benchmarks/epoch.py --device cuda --full --cache-only --distinct 128
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout
    sys.path.insert(0, str(ROOT))

W, H = 3000, 2000


def generate(root: Path, n: int, distinct: int, quality: int, workers: int, seed: int = 0) -> list[str]:
    """``distinct`` photo-like JPEGs (smooth colour fields + texture + grain, each shifted and tinted differently),
    hard-linked (copied where links fail) to ``n`` names ``low/<i>.jpg``."""
    rng = np.random.default_rng(seed)
    (root / "low").mkdir(parents=True, exist_ok=True)
    (root / "src").mkdir(exist_ok=True)
    coarse = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((W, H), Image.Resampling.BICUBIC), dtype=np.int16)
    texture = (np.asarray(Image.fromarray(rng.integers(0, 256, (500, 750), dtype=np.uint8)).resize((W, H)), dtype=np.int16) - 128) // 4
    params = [(int(rng.integers(0, H)), int(rng.integers(0, W)), rng.integers(-40, 41, 3).astype(np.int16)) for _ in range(distinct)]

    def make(i: int) -> str:
        dy, dx, tint = params[i]
        grain = np.random.default_rng([seed, i]).integers(-12, 13, (H, W, 1), dtype=np.int16)
        img = np.roll(base, (dy, dx), axis=(0, 1)) + texture[..., None] + grain + tint
        path = root / "src" / f"{i:05d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=quality)
        return str(path)

    with ThreadPoolExecutor(workers) as pool:
        sources = list(pool.map(make, range(distinct)))
    names = []
    for i in range(n):
        name = f"low/{i:05d}.jpg"
        target = root / name
        if not target.exists():
            try:
                os.link(sources[i % distinct], target)
            except OSError:
                shutil.copyfile(sources[i % distinct], target)
        names.append(name)
    return names


class JpegFiles:
    """The official pipeline's dataset: open, fully decode, convert to RGB, resize to S x S, every epoch."""

    def __init__(self, root: Path, names: list[str], labels: np.ndarray, size: int) -> None:
        self.root, self.names, self.labels, self.size = root, names, labels, size

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int):
        with Image.open(self.root / self.names[i]) as im:
            pixels = np.array(im.convert("RGB").resize((self.size, self.size), Image.Resampling.BICUBIC))
        return pixels, self.labels[i]


def _one_thread(_: int) -> None:
    import torch

    torch.set_num_threads(1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--full", action="store_true", help="12,740 images (512 distinct), RN101, batch 64, 16 workers")
    parser.add_argument("--n", type=int, default=None, help="train images (default 256; --full 12740)")
    parser.add_argument("--distinct", type=int, default=None, help="distinct JPEG files (default 16; --full 512)")
    parser.add_argument("--method", default="intclip-official")
    parser.add_argument("--backbone", default=None, help="default tiny-clip; --full RN101")
    parser.add_argument("--batch", type=int, default=None, help="default 32; --full 64")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader processes and cache-build threads (default: cores)")
    parser.add_argument("--quality", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads in the main process")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp folder, removed)")
    parser.add_argument("--cache-only", action="store_true", help="skip (a), the epoch from JPEG files")
    parser.add_argument("--json", type=Path, default=None, help="every number, rewritten as each is measured")
    args = parser.parse_args(argv)

    import torch

    from torch.utils.data import DataLoader

    from bench.tools import reference_step as speed
    from bench.backbones.loader import load_backbone
    from bench.datasets.base import Split
    from bench.datasets.images import Listing, materialize
    from bench.train.devices import resolve_device
    from bench.train.engine import train_epoch
    from bench.registry import BACKBONES, METHODS

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.n or (12_740 if args.full else 256)
    distinct = min(args.distinct or (512 if args.full else 16), n)
    backbone = args.backbone or ("RN101" if args.full else "tiny-clip")
    batch = args.batch or (64 if args.full else 32)
    workers = args.workers or os.cpu_count() or 1
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    data = speed.intentonomy_task()
    cls = METHODS.get(args.method)
    torch.manual_seed(0)
    method = cls(cls.Config(batch_size=batch), load_backbone(BACKBONES.get(backbone), "none"), data, device)
    size = method.backbone.image_size
    labels = (np.random.default_rng(1).random((n, data.num_classes)) > 0.85).astype(np.float32)
    trainer = speed.ProjectTrainer(method, device)  # the run's precision (bench.train.engine.precision)
    ctx, optimizer, scaler = trainer.ctx, trainer.optimizer, trainer.scaler

    work = args.dir or Path(tempfile.mkdtemp(prefix="bench-epoch-"))
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    out: dict[str, Any] = {"n": n, "distinct": distinct, "method": args.method, "backbone": backbone,
                           "image_size": size, "batch": batch, "workers": workers, "device": device_name,
                           "cache_only": args.cache_only}

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.json.with_name(args.json.name + ".part")
            tmp.write_text(json.dumps(out, indent=2) + "\n")
            os.replace(tmp, args.json)

    save()
    try:
        root, cache = work / "root", work / "cache"
        t = time.perf_counter()
        names = generate(root, n, distinct, args.quality, workers)
        out["generate_s"] = time.perf_counter() - t
        save()
        mb = sum((root / "src" / f).stat().st_size for f in os.listdir(root / "src")) / 1e6 / distinct
        print(f"{out['device']} | {args.method} on {backbone} (random init) at {size} px, batch {batch} | {n} train images "
              f"= {distinct} distinct {W}x{H} q{args.quality} JPEGs ({mb:.2f} MB each), made in {out['generate_s']:.1f} s")

        # the model alone, data already on the device (also the warm-up: cuDNN autotuning, allocator)
        gen = torch.Generator().manual_seed(0)
        x = method.prepare(torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=gen))
        y = torch.from_numpy(labels[:batch]).to(device)
        steps = max(3, min(20, n // batch))
        model = speed.measure(lambda: trainer.step(x, y), batch, device, steps, warmup=3)
        out["model_only_img_s"] = model.images_per_s
        save()

        # (a) JPEG files through a DataLoader, decoded every epoch
        order = np.random.default_rng([0, 0]).permutation(n)  # the engine's epoch-0 order for seed 0
        loader = DataLoader(
            JpegFiles(root, names, labels, size), batch_size=batch, sampler=order.tolist(), num_workers=workers,
            pin_memory=device.type == "cuda", worker_init_fn=_one_thread, persistent_workers=False,
        )
        method.train(True)
        if not args.cache_only:
            speed.synchronize(device)
            t = time.perf_counter()
            for images, ys in loader:
                trainer.step(method.prepare(images), ys.to(device, non_blocking=True))
            speed.synchronize(device)
            out["jpeg_epoch_s"] = time.perf_counter() - t
            save()

        # (b) the decoded cache: built once, then the engine's own epoch
        listing = Listing(root, {"train": names}, {"train": labels}, {"train": names})
        t = time.perf_counter()
        built = materialize("epoch-benchmark", listing, [c.key for c in data.classes], cache, size, workers=workers, strict_splits=())
        out["cache_build_s"] = time.perf_counter() - t
        save()
        split = Split(built.arrays["train"], labels, names)
        speed.synchronize(device)
        t = time.perf_counter()
        losses = train_epoch(method, split, optimizer, scaler, None, ctx, epoch=0)
        speed.synchronize(device)
        out["cache_epoch_s"] = time.perf_counter() - t
        assert len(losses) == -(-n // batch)
        save()
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)

    a, b = out.get("jpeg_epoch_s"), out["cache_epoch_s"]
    print(f"model step alone (batch on the device)      : {out['model_only_img_s']:9.1f} img/s  ({n / out['model_only_img_s']:7.1f} s per epoch)")
    if a is not None:
        print(f"(a) epoch from JPEG files ({workers} loader procs): {n / a:9.1f} img/s  {a:7.1f} s")
    faster = f"   {a / b:5.1f}x faster than (a)" if a is not None else ""
    print(f"(b) epoch from the decoded cache            : {n / b:9.1f} img/s  {b:7.1f} s{faster}")
    print(f"    one-time cache build (sha256 + draft decode, {workers} threads): {out['cache_build_s']:.1f} s "
          f"({n / out['cache_build_s']:.0f} img/s)")
    out["complete"] = True
    save()
    return out


if __name__ == "__main__":
    main()
