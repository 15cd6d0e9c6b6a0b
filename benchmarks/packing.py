"""Packing trials on one GPU: aggregate training throughput of 1, 2 and 4 concurrent trials sharing a device.

With ``[ray.resources.<method>] gpu = 1/k``, Ray runs k trials on one GPU: it gives each the same GPU id and
leaves memory and compute to the processes (the fraction is bookkeeping only). So this benchmark runs k training
processes on one device directly (no Ray needed: the device machine has no Ray wheel), each the project's training
step (``bench.train.engine.train_step`` through ``bench.tools.reference_step.ProjectTrainer``) on random weights and a
random batch already on the device, started together behind a barrier. It prints, per method and k:

  per-trial img/s     each process's own images per second (mean over the k processes)
  aggregate img/s     all images of all processes / (last finish - first start)
  x one trial         aggregate / the k = 1 aggregate (the packing gain; README's fraction follows from it)
  peak GiB / trial    the most GPU memory one process allocated (CUDA only)

  python benchmarks/packing.py                                   # CPU smoke run: tiny-clip, 1 and 2 processes
  python benchmarks/packing.py --device cuda --counts 1,2,4      # RN101, batch 64, the issue's measurement
  python benchmarks/packing.py --device cuda --json packing.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout
    sys.path.insert(0, str(ROOT))


def _trial(rank: int, method_name: str, args: dict[str, Any], barrier, queue) -> None:
    """One packed trial: build, warm up, wait for the others, then time ``steps`` training steps."""
    import torch

    from bench.backbones.loader import load_backbone
    from bench.registry import BACKBONES, METHODS
    from bench.tools import reference_step as speed

    torch.set_num_threads(args["threads"])
    device = torch.device(args["device"])
    torch.manual_seed(rank)
    data = speed.intentonomy_task()
    cls = METHODS.get(method_name)
    method = cls(cls.Config(batch_size=args["batch"]), load_backbone(BACKBONES.get(args["backbone"]), "none", device="cpu"), data, device)
    trainer = speed.ProjectTrainer(method, device)
    size = method.backbone.image_size
    gen = torch.Generator().manual_seed(rank)
    images = torch.randint(0, 256, (args["batch"], size, size, 3), dtype=torch.uint8, generator=gen)
    x = method.prepare(images.to(device))
    y = (torch.rand(args["batch"], len(data.classes), generator=gen) < 0.2).float().to(device)
    for _ in range(args["warmup"]):
        trainer.step(x, y)
    speed.synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    barrier.wait()
    t0 = time.time()
    for _ in range(args["steps"]):
        trainer.step(x, y)
    speed.synchronize(device)
    t1 = time.time()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    queue.put({"rank": rank, "start": t0, "end": t1, "images": args["steps"] * args["batch"], "peak_gib": peak})


def packed(method: str, k: int, args: dict[str, Any]) -> dict[str, Any]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=_trial, args=(r, method, args, barrier, queue)) for r in range(k)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=args["timeout"]) for _ in range(k)]
    for p in procs:
        p.join(60)
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    per_trial = [r["images"] / (r["end"] - r["start"]) for r in results]
    peaks = [r["peak_gib"] for r in results if r["peak_gib"] is not None]
    return {
        "method": method, "trials": k, "gpu_per_trial": 1 / k,
        "per_trial_img_s": sum(per_trial) / k, "aggregate_img_s": sum(r["images"] for r in results) / span,
        "peak_gib_per_trial": max(peaks) if peaks else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", default="dualcoop,intclip")
    parser.add_argument("--counts", default=None, help="trials per device (default: 1,2,4 on CUDA, 1,2 on CPU)")
    parser.add_argument("--backbone", default=None, help="default: RN101 on CUDA, tiny-clip on CPU")
    parser.add_argument("--batch", type=int, default=None, help="default: 64 on CUDA, 16 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per trial (default: 30 on CUDA, 4 on CPU)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per trial")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--json", type=Path, default=None, help="every row, rewritten as each is measured")
    a = parser.parse_args(argv)
    cuda = a.device.startswith("cuda")
    args = {
        "device": a.device, "backbone": a.backbone or ("RN101" if cuda else "tiny-clip"),
        "batch": a.batch or (64 if cuda else 16), "steps": a.steps or (30 if cuda else 4), "warmup": a.warmup,
        "threads": a.threads, "timeout": a.timeout,
    }
    counts = [int(c) for c in (a.counts or ("1,2,4" if cuda else "1,2")).split(",")]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    name = torch.cuda.get_device_name(torch.device(a.device)) if cuda else f"CPU ({os.cpu_count()} cores, {a.threads} thread(s) per trial)"
    print(f"device: {name}; backbone {args['backbone']}, batch {args['batch']}, {args['steps']} timed steps per trial")
    print(f"{'method':<10} {'trials':>6} {'gpu/trial':>9} {'per-trial img/s':>16} {'aggregate img/s':>16} {'x one trial':>11} {'peak GiB/trial':>15}")
    rows = []

    def save(complete: bool = False) -> None:  # after every row: a run cut off by a time limit keeps its rows
        if a.json:
            a.json.parent.mkdir(parents=True, exist_ok=True)
            tmp = a.json.with_name(a.json.name + ".part")
            tmp.write_text(json.dumps({"device": name, "settings": args, "rows": rows, "complete": complete}, indent=2))
            os.replace(tmp, a.json)

    save()
    for method in a.methods.split(","):
        base = None
        for k in counts:
            row = packed(method, k, args)
            base = base or row["aggregate_img_s"]
            row["speedup_vs_one"] = row["aggregate_img_s"] / base
            rows.append(row)
            peak = "-" if row["peak_gib_per_trial"] is None else f"{row['peak_gib_per_trial']:.2f}"
            print(f"{method:<10} {k:>6} {row['gpu_per_trial']:>9.2f} {row['per_trial_img_s']:>16.1f} "
                  f"{row['aggregate_img_s']:>16.1f} {row['speedup_vs_one']:>11.2f} {peak:>15}", flush=True)
            save()
    save(complete=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
