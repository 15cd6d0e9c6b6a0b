"""Training and eval throughput: the official code's step vs the project's, measured in one run (bench.tools.reference_step).

For each method (default: ``intclip-official``, the released code's model, and ``dualcoop``) and batch size, on
one set of random weights (no real weights needed: throughput only), images already on the device:

  train      reference step (fp16 autocast on CUDA, 77 text positions with the text tower's weight gradients,
             text recomputed, NCHW, for-loop SGD, ``loss.item()`` every step) vs the project's
             (``bench.train.engine.train_step``: bf16 where supported, text truncated at the last EOT and frozen,
             channels_last and fused SGD on CUDA, no host sync between steps);
  eval       reference (text recomputed for every batch, scores copied to the host per batch) vs the project's
             (text features once per pass, scores stay on the device);
  text side  one forward + backward of the prompts through the text tower (reference: 77 positions, weight grads);
  agreement  max |difference| of the two paths' logits and scores on one batch, in fp32 and under each path's
             autocast, and of the learnable weights after the timed training steps (same batches, same count);
  augment    Query2Label's RandAugment of a uint8 batch on the device: per-image loop vs batched (same draws).

Prints img/s, ms/step, peak GPU memory (the most allocated during the phase, both paths' weights included) and the
ratio project/reference. ``--json`` writes every number.

  python benchmarks/throughput.py                              # CPU, small: RN101, batch 4 and 8, 2 steps
  python benchmarks/throughput.py --backbone tiny-clip --batch 32,64 --steps 5
  python benchmarks/throughput.py --device cuda --full         # RN101, batch 64 and 256, 20 steps (+5 warm-up)
  python benchmarks/throughput.py --device cuda --full --compile default   # + the project path under torch.compile
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout
    sys.path.insert(0, str(ROOT))


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores)"


def fmt_mem(gib: float | None) -> str:
    return "      -" if gib is None else f"{gib:7.2f}"


def run_method(name: str, args, device, data) -> dict[str, Any]:
    import gc

    import torch

    from bench.tools import reference_step as speed

    gc.collect()  # the previous method's models are gone before this one's peak memory is measured
    if device.type == "cuda":
        torch.cuda.empty_cache()
    config: dict[str, Any] = {}
    if name.startswith("query2label"):
        config["timm_pretrained"] = False  # random trunk weights: nothing to download
        config["augment"] = False  # the step on batches already on the device (RandAugment is part of loading)
    if args.compile != "off":
        config["compile"] = args.compile
    reference, project = speed.build_pair(name, args.backbone, data, device, config)
    size = args.image_size or project.backbone.image_size
    family = speed.method_family(project)
    out: dict[str, Any] = {"method": name, "backbone": args.backbone, "image_size": size, "batches": {}}
    counts = project.param_counts()
    out["learnable_params"] = counts["learnable"]
    ref_trainer, proj_trainer = speed.ReferenceTrainer(reference, device), speed.ProjectTrainer(project, device)

    gen = torch.Generator().manual_seed(0)
    for b in args.batch:
        images = torch.randint(0, 256, (b, size, size, 3), dtype=torch.uint8, generator=gen)
        labels = (torch.rand(b, data.num_classes, generator=gen) > 0.8).float().to(device)
        x_ref, x_proj = reference.prepare(images), project.prepare(images)  # on the device, each path's layout
        row: dict[str, Any] = {}

        # -- training
        reference.train(True)
        project.train(True)
        def ref_train(x=x_ref, y=labels):
            return ref_trainer.step(x, y)

        def proj_train(x=x_proj, y=labels):
            return proj_trainer.step(x, y)

        row["train_reference"] = speed.measure(ref_train, b, device, args.steps, args.warmup).__dict__
        row["train_project"] = speed.measure(proj_train, b, device, args.steps, args.warmup).__dict__
        after_ref, after_proj = speed.clone_learnable(reference), speed.clone_learnable(project)
        row["weights_max_abs_diff_after_training"] = max(
            float((after_proj[k] - after_ref[k]).abs().max()) for k in after_proj
        )

        # -- eval
        reference.model.eval()
        project.model.eval()

        def ref_eval(x=x_ref):
            return speed.reference_scores(reference, x).cpu()  # the official validate() copies every batch

        def proj_eval(x=x_proj):
            return speed.project_scores(project, x)

        row["eval_reference"] = speed.measure(ref_eval, b, device, args.steps, args.warmup).__dict__
        project.start_eval()  # what predict_split does once per pass
        row["eval_project"] = speed.measure(proj_eval, b, device, args.steps, args.warmup).__dict__

        # -- agreement on one batch (weights synchronised first: the timed steps differ by float noise)
        speed.copy_weights(reference, project)
        project.start_eval()
        with torch.no_grad():
            row["scores_max_abs_diff_amp"] = float((ref_eval().to(device) - proj_eval()).abs().max())
            lr, lp = speed.reference_logits(reference, x_ref), speed.project_logits(project, x_proj)  # fp32
            row["logits_max_abs_diff_fp32"] = speed.max_abs_diff(lr, lp)
            with speed.reference_autocast(device):
                lr_amp = speed.reference_logits(reference, x_ref)
            with speed.autocast(device, True):
                lp_amp = speed.project_logits(project, x_proj)
            row["logits_max_abs_diff_amp"] = speed.max_abs_diff(lr_amp, lp_amp)
            row["logits_max_abs"] = speed.max_abs(lr)
        out["batches"][str(b)] = row
        print_row(name, b, row)

    if family in ("intclip", "dualcoop"):
        reference.train(True)
        project.train(True)
        ref_text = speed.measure(lambda: speed.text_side_step(reference, True), 1, device, args.steps, args.warmup)
        proj_text = speed.measure(lambda: speed.text_side_step(project, False), 1, device, args.steps, args.warmup)
        prompts = project.net.prompts if hasattr(project, "net") else project.prompts
        out["text_side"] = {
            "prompts": 2 * prompts.num_classes,
            "positions_reference": int(prompts.tokens.shape[1]),
            "positions_project": prompts.text_length,
            "reference_ms": ref_text.ms_per_step,
            "project_ms": proj_text.ms_per_step,
            "reference_peak_gib": ref_text.peak_mem_gib,
            "project_peak_gib": proj_text.peak_mem_gib,
        }
        t = out["text_side"]
        print(
            f"{name:<17} text side ({t['prompts']} prompts, {t['positions_reference']} -> {t['positions_project']} "
            f"positions, fwd+bwd): reference {t['reference_ms']:8.1f} ms   project {t['project_ms']:8.1f} ms   "
            f"{t['reference_ms'] / t['project_ms']:5.2f}x"
        )
    return out


def print_row(name: str, b: int, row: dict[str, Any]) -> None:
    for phase in ("train", "eval"):
        r, p = row[f"{phase}_reference"], row[f"{phase}_project"]
        print(
            f"{name:<17} {phase:<5} b={b:<4} reference {r['images_per_s']:9.1f} img/s {r['ms_per_step']:9.1f} ms/step "
            f"mem {fmt_mem(r['peak_mem_gib'])} GiB | project {p['images_per_s']:9.1f} img/s {p['ms_per_step']:9.1f} "
            f"ms/step mem {fmt_mem(p['peak_mem_gib'])} GiB | {p['images_per_s'] / r['images_per_s']:5.2f}x"
        )
    print(
        f"{name:<17} agree b={b:<4} logits max|diff| fp32 {row['logits_max_abs_diff_fp32']:.2e}, "
        f"autocast {row['logits_max_abs_diff_amp']:.2e} (max |logit| {row['logits_max_abs']:.1f}); scores "
        f"{row['scores_max_abs_diff_amp']:.2e}; weights after the timed steps {row['weights_max_abs_diff_after_training']:.2e}"
    )


def run_augment(device, b: int, size: int, steps: int, warmup: int) -> dict[str, Any]:
    """Query2Label's RandAugment on a uint8 batch on the device: torchvision's per-image loop (what the method did
    before) vs the batched version with the same draws (bench.methods.augment)."""
    import torch
    from torchvision.transforms import v2

    from bench.tools import reference_step as speed
    from bench.methods.augment import BatchedRandAugment

    images = torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8).to(device)
    loop, batched = v2.RandAugment(num_ops=2, magnitude=9), BatchedRandAugment(num_ops=2, magnitude=9)
    torch.manual_seed(0)
    r = speed.measure(lambda: torch.stack([loop(img) for img in images]), b, device, steps, warmup)
    torch.manual_seed(0)
    p = speed.measure(lambda: batched(images), b, device, steps, warmup)
    print(f"{'randaugment':<17} b={b:<4} {size} px   per-image loop {r.images_per_s:9.1f} img/s {r.ms_per_step:8.1f} ms | "
          f"batched {p.images_per_s:9.1f} img/s {p.ms_per_step:8.1f} ms | {p.images_per_s / r.images_per_s:5.2f}x")
    return {"batch": b, "image_size": size, "per_image": r.__dict__, "batched": p.__dict__}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    parser.add_argument("--full", action="store_true", help="the GPU settings: RN101, batch 64,256, 20 steps, 5 warm-up")
    parser.add_argument("--methods", default="intclip-official,dualcoop", help="also: intclip, query2label")
    parser.add_argument("--backbone", default="RN101")
    parser.add_argument("--image-size", type=int, default=None, help="default: the backbone's (224 for RN101)")
    parser.add_argument("--batch", default=None, help="comma-separated batch sizes (default 4,8; --full 64,256)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 2; --full 20)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1; --full 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--compile", default="off", choices=["off", "default", "reduce-overhead", "max-autotune"],
                        help="run the project path under torch.compile (reduce-overhead: + CUDA graphs)")
    parser.add_argument("--no-augment", action="store_true", help="skip the RandAugment comparison")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    args = parser.parse_args(argv)

    import torch

    from bench.tools import reference_step as speed
    from bench.train.devices import resolve_device

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.batch = [int(b) for b in (args.batch or ("64,256" if args.full else "4,8")).split(",")]
    args.steps = args.steps or (20 if args.full else 2)
    args.warmup = args.warmup if args.warmup is not None else (5 if args.full else 1)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # both paths (the official code's convolutions get it too)
    data = speed.intentonomy_task()
    started = time.perf_counter()
    header = {
        "device": device_name(device),
        "torch": torch.__version__,
        "bf16": bool(device.type == "cuda" and torch.cuda.is_bf16_supported()),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
    }
    print(f"{header['device']} | torch {torch.__version__} | batches {args.batch} | {args.steps} timed steps after "
          f"{args.warmup} | backbone {args.backbone} (random init) | Intentonomy's 28 classes")
    results = [run_method(name, args, device, data) for name in args.methods.split(",")]
    size = args.image_size or (224 if args.backbone != "tiny-clip" else 96)
    augment = run_augment(device, args.batch[0], size, args.steps, args.warmup) if not args.no_augment else None
    report = {**header, "results": results, "randaugment": augment, "seconds": time.perf_counter() - started}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


if __name__ == "__main__":
    main()
