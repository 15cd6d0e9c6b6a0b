"""Training and eval throughput: the official code's step vs the project's, measured in one run (bench.tools.reference_step).

For each method (default: ``intclip-official``, the released code's model, and ``dualcoop``) and batch size, on
one set of random weights (no real weights needed: throughput only), images already on the device. Every timing
is interleaved: ``--rounds`` rounds of ``--steps`` steps per path, the order reversed every other round, so load
on a shared machine falls on both paths alike; each figure is the median over the rounds and each ratio the median
of the per-round ratios, printed with its min-max spread.

  train          reference step (fp16 autocast on CUDA, 77 text positions with the text tower's weight gradients,
                 text recomputed, NCHW, for-loop SGD, ``loss.item()`` every step) vs the project's
                 (``bench.train.engine.train_step`` at ``bench run``'s precision, text truncated at the last EOT and
                 frozen, channels_last and fused SGD on CUDA, no host sync between steps), both on ONE prepared
                 batch (normalised, never augmented: the same values, each path's memory format);
  train+augment  the same steps with the method's training augmentation inside the step: each path prepares the
                 uint8 batch itself (for the prompt methods the project's on-device Cutout + RandAugment, a fresh
                 draw every step, for both paths; the released code augments with PIL in its loader workers);
  eval           reference (text recomputed for every batch, scores copied to the host per batch) vs the project's
                 (text features once per pass, scores stay on the device), at ``--eval-batch``;
  agreement      max |difference| of the two paths' logits on one identical input (fp32, TF32 off on CUDA; must
                 be within ``--tolerance``, default 1e-4, else the exit code is 1), also on one augmented tensor
                 given to both, under each path's autocast, of the scores, and of the learnable weights after
                 the timed training steps (same batch, same number of steps);
  text side      one forward + backward of the prompts through the text tower (reference: 77 positions, weight
                 grads);
  variants       (``--sections variants``) fp16 / bf16 / bf16 + channels_last for BOTH paths, train and eval;
  compile        (``--compile MODE``) reference vs the project eager vs the project under torch.compile, train
                 and eval; the first (compiling) call of each is reported as the compile time;
  randaugment    Query2Label's RandAugment of a uint8 batch on the device: per-image loop vs batched (same draws).

``--json`` is rewritten after every measurement, so a run cut off by a time limit keeps what it measured.

  python benchmarks/throughput.py                              # CPU, small: RN101, batch 4 and 8
  python benchmarks/throughput.py --backbone tiny-clip --batch 32,64 --steps 5 --rounds 5
  python benchmarks/throughput.py --device cuda --full         # RN101, batch 64 and 256, eval at 100, 5 x 10 steps
  python benchmarks/throughput.py --device cuda --full --sections variants --batch 64
  python benchmarks/throughput.py --device cuda --full --compile default --batch 64 --methods intclip-official
"""

from __future__ import annotations

import argparse
import contextlib
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

SECTIONS = ("main", "variants", "compile", "randaugment")
VARIANTS = ("fp16", "bf16", "bf16-cl")  # autocast dtype, + channels_last


class Report:
    """The run's numbers, written to ``path`` (atomically) every time one is added."""

    def __init__(self, path: Path | None, data: dict[str, Any]) -> None:
        self.path, self.data = path, data
        self.started = time.perf_counter()

    def save(self) -> None:
        self.data["seconds"] = time.perf_counter() - self.started
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".part")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        os.replace(tmp, self.path)


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores)"


def dtype_name(dtype) -> str:
    return "fp32" if dtype is None else str(dtype).replace("torch.", "").replace("float16", "fp16").replace("bfloat16", "bf16")


def fmt_mem(gib: float | None) -> str:
    return "-" if gib is None else f"{gib:.2f}"


def timed_pair(label: str, paths: dict, batch: int, device, args) -> dict[str, Any]:
    """Interleaved timing of ``paths`` (the first is the baseline); prints one line and returns every number."""
    from bench.tools import reference_step as speed

    timings = speed.interleaved(paths, batch, device, args.steps, args.warmup, args.rounds, args.clock)
    names = list(paths)
    base = timings[names[0]]
    out: dict[str, Any] = {name: t.__dict__ for name, t in timings.items()}
    parts = []
    for name in names:
        t = timings[name]
        parts.append(f"{name} {t.images_per_s:8.1f} img/s {t.ms_per_step:8.1f} ms mem {fmt_mem(t.peak_mem_gib)}")
    for name in names[1:]:
        out[f"ratio_{name}"] = speed.ratio(timings[name], base)
    line = f"{label:<34} b={batch:<4} " + " | ".join(parts)
    for name in names[1:]:
        r = out[f"ratio_{name}"]
        line += f" | {name}/{names[0]} {r['median']:5.2f}x ({r['min']:.2f}-{r['max']:.2f})"
        if r["clock"] != "wall":
            line += f" [wall {r['median_wall']:.2f}x]"
    print(line, flush=True)
    return out


@contextlib.contextmanager
def exact_fp32(device):
    """fp32 without TF32 on CUDA (TF32 rounds convolution and matmul inputs to 10 mantissa bits), and cuDNN's
    deterministic kernels instead of the autotuned ones (FFT / Winograd convolutions round more)."""
    import torch

    if device.type != "cuda":
        yield
        return
    b = torch.backends
    saved = b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.benchmark, b.cudnn.deterministic
    b.cudnn.allow_tf32 = b.cuda.matmul.allow_tf32 = b.cudnn.benchmark = False
    b.cudnn.deterministic = True
    try:
        yield
    finally:
        b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.benchmark, b.cudnn.deterministic = saved


def agreement(reference, project, images, device, tolerance: float) -> dict[str, Any]:
    """Both paths' logits on one identical input (and on one augmented tensor given to both), weights equal."""
    import torch

    from bench.tools import reference_step as speed

    speed.copy_weights(reference, project)
    x = speed.plain_input(project, images)  # normalised, not augmented, the project's layout
    x_ref = speed.as_layout(x, False)  # the same values in the reference's NCHW
    out: dict[str, Any] = {"inputs_identical": bool(torch.equal(x, x_ref))}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(1234)
        project.train(True)
        x_aug = project.prepare(images)  # one augmented draw (if the method augments), given to both paths
    for m in (reference, project):
        m.model.eval()
    project.start_eval()
    with torch.no_grad(), exact_fp32(device):
        lr, lp = speed.reference_logits(reference, x_ref), speed.project_logits(project, x)
        out["logits_max_abs_diff_fp32"] = speed.max_abs_diff(lr, lp)
        out["logits_max_abs"] = speed.max_abs(lr)
        lr_aug = speed.reference_logits(reference, speed.as_layout(x_aug, False))
        out["logits_max_abs_diff_fp32_augmented"] = speed.max_abs_diff(lr_aug, speed.project_logits(project, x_aug))
        out["augmented_input_max_abs_change"] = float((x_aug.float() - x.float()).abs().max())
        ref_dtype, proj_dtype = (torch.float16 if device.type == "cuda" else None), speed.project_dtype(project, device)
        with speed.reference_autocast(device, ref_dtype):
            lr_amp = speed.reference_logits(reference, x_ref)
        with speed.autocast(device, proj_dtype is not None, proj_dtype):
            lp_amp = speed.project_logits(project, x)
        out["logits_max_abs_diff_autocast"] = speed.max_abs_diff(lr_amp, lp_amp)
        out["scores_max_abs_diff_autocast"] = float(
            (speed.reference_scores(reference, x_ref, ref_dtype).to(device) - speed.project_scores(project, x)).abs().max()
        )
    out["tolerance"] = tolerance
    out["ok"] = out["logits_max_abs_diff_fp32"] <= tolerance and out["logits_max_abs_diff_fp32_augmented"] <= tolerance
    return out


def run_method(name: str, args, device, data, report: Report, entry: dict[str, Any]) -> None:
    import gc

    import torch

    from bench.tools import reference_step as speed

    gc.collect()  # the previous method's models are gone before this one's peak memory is measured
    if device.type == "cuda":
        torch.cuda.empty_cache()
    config: dict[str, Any] = {}
    if name.startswith("query2label"):
        config["timm_pretrained"] = False  # random trunk weights: nothing to download
    reference, project = speed.build_pair(name, args.backbone, data, device, config)
    size = args.image_size or project.backbone.image_size
    family = speed.method_family(project)
    augments = speed.training_augmentation(project) is not None
    ref_dtype = torch.float16 if device.type == "cuda" else None
    proj_dtype = speed.project_dtype(project, device)
    entry.update({
        "method": name, "backbone": args.backbone, "image_size": size,
        "learnable_params": project.param_counts()["learnable"],
        "reference_precision": dtype_name(ref_dtype), "project_precision": dtype_name(proj_dtype),
        "project_channels_last": project.channels_last, "project_augments": augments,
        "train": {}, "train_augmented": {}, "eval": {}, "agreement": {},
    })
    print(f"{name}: reference {dtype_name(ref_dtype)} NCHW | project {dtype_name(proj_dtype)} "
          f"{'channels_last' if project.channels_last else 'NCHW'}"
          f"{' | training augmentation: ' + type(speed.training_augmentation(project)).__name__ if augments else ''}", flush=True)
    gen = torch.Generator().manual_seed(0)

    for b in args.batch:
        images = torch.randint(0, 256, (b, size, size, 3), dtype=torch.uint8, generator=gen)
        labels = (torch.rand(b, data.num_classes, generator=gen) > 0.8).float().to(device)
        x_proj = speed.plain_input(project, images)  # one prepared batch for both paths
        x_ref = speed.as_layout(x_proj, False)
        assert torch.equal(x_ref, x_proj)

        # -- training on the identical batch (fresh optimizers, equal weights: the weights must stay equal)
        speed.copy_weights(reference, project)
        ref_trainer = speed.ReferenceTrainer(reference, device, ref_dtype)
        proj_trainer = speed.ProjectTrainer(project, device)
        row = timed_pair(f"{name} train", {
            "reference": lambda: ref_trainer.step(x_ref, labels), "project": lambda: proj_trainer.step(x_proj, labels),
        }, b, device, args)
        after_ref, after_proj = speed.clone_learnable(reference), speed.clone_learnable(project)
        row["weights_max_abs_diff_after_training"] = max(float((after_proj[k] - after_ref[k]).abs().max()) for k in after_proj)
        entry["train"][str(b)] = row
        report.save()

        # -- training with the augmentation inside the step (each path prepares the uint8 batch itself)
        if augments and not args.no_train_augment:
            uint8 = images.to(device)
            for m in (reference, project):
                m.train(True)
            row = timed_pair(f"{name} train+augment", {
                "reference": lambda: ref_trainer.step(reference.prepare(uint8), labels),
                "project": lambda: proj_trainer.step(project.prepare(uint8), labels),
            }, b, device, args)
            aug = speed.interleaved({"augment": lambda: project.prepare(uint8)}, b, device, args.steps, 1, args.rounds, args.clock)
            row["augment_alone"] = aug["augment"].__dict__
            print(f"{'':<34} b={b:<4} augmentation + normalisation alone: {aug['augment'].ms_per_step:.1f} ms per batch", flush=True)
            entry["train_augmented"][str(b)] = row
            report.save()

    # -- eval
    for b in args.eval_batch:
        images = torch.randint(0, 256, (b, size, size, 3), dtype=torch.uint8, generator=gen)
        x_proj = speed.plain_input(project, images)
        x_ref = speed.as_layout(x_proj, False)
        for m in (reference, project):
            m.model.eval()
        project.start_eval()  # what predict_split does once per pass
        entry["eval"][str(b)] = timed_pair(f"{name} eval", {
            "reference": lambda: speed.reference_scores(reference, x_ref, ref_dtype).cpu(),  # validate() copies every batch
            "project": lambda: speed.project_scores(project, x_proj),
        }, b, device, args)
        report.save()

    # -- agreement on identical inputs
    images = torch.randint(0, 256, (args.batch[0], size, size, 3), dtype=torch.uint8, generator=gen)
    a = agreement(reference, project, images, device, args.tolerance)
    a["weights_max_abs_diff_after_training"] = entry["train"][str(args.batch[0])]["weights_max_abs_diff_after_training"]
    entry["agreement"] = a
    report.save()
    print(f"{name + ' agreement':<34} identical input: logits max|diff| fp32 {a['logits_max_abs_diff_fp32']:.2e} "
          f"(max |logit| {a['logits_max_abs']:.1f}); same augmented tensor {a['logits_max_abs_diff_fp32_augmented']:.2e} "
          f"(the augmentation moved inputs by up to {a['augmented_input_max_abs_change']:.2f}); autocast "
          f"{a['logits_max_abs_diff_autocast']:.2e}, scores {a['scores_max_abs_diff_autocast']:.2e}; weights after the "
          f"timed steps {a['weights_max_abs_diff_after_training']:.2e} -> {'ok' if a['ok'] else 'FAILED'} "
          f"(tolerance {args.tolerance:g})", flush=True)

    if family in ("intclip", "dualcoop"):
        for m in (reference, project):
            m.train(True)
        prompts = project.net.prompts if hasattr(project, "net") else project.prompts
        t = timed_pair(f"{name} text side (ms = per step)", {
            "reference": lambda: speed.text_side_step(reference, True), "project": lambda: speed.text_side_step(project, False),
        }, 1, device, args)
        t.update({"prompts": 2 * prompts.num_classes, "positions_reference": int(prompts.tokens.shape[1]),
                  "positions_project": prompts.text_length})
        entry["text_side"] = t
        report.save()


def run_variants(name: str, args, device, data, report: Report, entry: dict[str, Any]) -> None:
    """fp16 / bf16 / bf16 + channels_last for both paths (train at the first batch, eval at the first eval batch)."""
    import gc

    import torch

    from bench.tools import reference_step as speed

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    config = {"timm_pretrained": False} if name.startswith("query2label") else {}
    reference, project = speed.build_pair(name, args.backbone, data, device, config)
    size = args.image_size or project.backbone.image_size
    b, eb = args.batch[0], args.eval_batch[0]
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (b, size, size, 3), dtype=torch.uint8, generator=gen)
    eval_images = torch.randint(0, 256, (eb, size, size, 3), dtype=torch.uint8, generator=gen)
    labels = (torch.rand(b, data.num_classes, generator=gen) > 0.8).float().to(device)
    entry.update({"method": name, "backbone": args.backbone, "batch": b, "eval_batch": eb,
                  "autocast_applied": device.type == "cuda", "variants": {}})
    if device.type != "cuda":
        print(f"{name} variants: on a CPU autocast does not apply (fp32 in every variant); the layouts do", flush=True)
    for variant in args.variants:
        dtype = torch.bfloat16 if variant.startswith("bf16") else torch.float16
        if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            entry["variants"][variant] = {"skipped": "no bf16 on this GPU"}
            continue
        channels_last = variant.endswith("-cl")
        for m in (reference, project):
            speed.set_memory_format(m, channels_last)
        speed.copy_weights(reference, project)
        x = speed.as_layout(speed.plain_input(project, images), channels_last)
        ex = speed.as_layout(speed.plain_input(project, eval_images), channels_last)
        ref_trainer = speed.ReferenceTrainer(reference, device, dtype)
        proj_trainer = speed.ProjectTrainer(project, device, dtype=dtype)
        row: dict[str, Any] = {"dtype": dtype_name(dtype), "channels_last": channels_last}
        row["train"] = timed_pair(f"{name} train [{variant}]", {
            "reference": lambda: ref_trainer.step(x, labels), "project": lambda: proj_trainer.step(x, labels),
        }, b, device, args)
        entry["variants"][variant] = row
        report.save()
        for m in (reference, project):
            m.model.eval()
        project.start_eval()
        row["eval"] = timed_pair(f"{name} eval [{variant}]", {
            "reference": lambda: speed.reference_scores(reference, ex, dtype).cpu(),
            "project": lambda: speed.project_scores(project, ex, dtype=dtype),
        }, eb, device, args)
        report.save()


def run_compile(name: str, args, device, data, report: Report, entry: dict[str, Any]) -> None:
    """The reference (eager) vs the project eager vs the project under torch.compile, train and eval."""
    import torch

    from bench.tools import reference_step as speed

    config: dict[str, Any] = {"compile": args.compile_mode, "compile_backend": args.compile_backend}
    if name.startswith("query2label"):
        config["timm_pretrained"] = False
    reference, compiled = speed.build_pair(name, args.backbone, data, device, config)
    eager = speed.build_pair(name, args.backbone, data, device, {k: v for k, v in config.items() if not k.startswith("compile")})[1]
    speed.copy_weights(eager, compiled)
    size = args.image_size or compiled.backbone.image_size
    b, eb = args.batch[0], args.eval_batch[0]
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (b, size, size, 3), dtype=torch.uint8, generator=gen)
    eval_images = torch.randint(0, 256, (eb, size, size, 3), dtype=torch.uint8, generator=gen)
    labels = (torch.rand(b, data.num_classes, generator=gen) > 0.8).float().to(device)
    ref_dtype = torch.float16 if device.type == "cuda" else None
    x = speed.plain_input(compiled, images)
    x_ref = speed.as_layout(x, False)
    entry.update({"method": name, "backbone": args.backbone, "batch": b, "eval_batch": eb, "mode": args.compile_mode,
                  "backend": args.compile_backend})
    trainers = {"reference": speed.ReferenceTrainer(reference, device, ref_dtype),
                "project": speed.ProjectTrainer(eager, device), "compiled": speed.ProjectTrainer(compiled, device)}
    entry["train"] = timed_pair(f"{name} train (compile {args.compile_mode})", {
        "reference": lambda: trainers["reference"].step(x_ref, labels),
        "project": lambda: trainers["project"].step(x, labels),
        "compiled": lambda: trainers["compiled"].step(x, labels),
    }, b, device, args)
    entry["compile_s_train"] = entry["train"]["compiled"]["first_call_s"]
    report.save()
    ex = speed.plain_input(compiled, eval_images)
    ex_ref = speed.as_layout(ex, False)
    for m in (reference, eager, compiled):
        m.model.eval()
    eager.start_eval()
    compiled.start_eval()
    entry["eval"] = timed_pair(f"{name} eval (compile {args.compile_mode})", {
        "reference": lambda: speed.reference_scores(reference, ex_ref, ref_dtype).cpu(),
        "project": lambda: speed.project_scores(eager, ex),
        "compiled": lambda: speed.project_scores(compiled, ex),
    }, eb, device, args)
    entry["compile_s_eval"] = entry["eval"]["compiled"]["first_call_s"]
    with torch.no_grad():
        entry["scores_max_abs_diff_compiled_vs_eager"] = float(
            (speed.project_scores(compiled, ex) - speed.project_scores(eager, ex)).abs().max())
    report.save()
    print(f"{name} compile time (first call, compile + autotune): train {entry['compile_s_train']:.1f} s, eval "
          f"{entry['compile_s_eval']:.1f} s; compiled vs eager scores max|diff| "
          f"{entry['scores_max_abs_diff_compiled_vs_eager']:.1e}", flush=True)


def run_augment(device, b: int, size: int, args) -> dict[str, Any]:
    """Query2Label's RandAugment on a uint8 batch on the device: torchvision's per-image loop (what the method did
    before) vs the batched version with the same draws (bench.methods.augment)."""
    import torch
    from torchvision.transforms import v2

    from bench.methods.augment import BatchedRandAugment

    images = torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8).to(device)
    loop, batched = v2.RandAugment(num_ops=2, magnitude=9), BatchedRandAugment(num_ops=2, magnitude=9)
    torch.manual_seed(0)
    row = timed_pair(f"randaugment ({size} px)", {
        "per_image": lambda: torch.stack([loop(img) for img in images]), "batched": lambda: batched(images),
    }, b, device, args)
    return {"batch": b, "image_size": size, **row}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    parser.add_argument("--full", action="store_true",
                        help="the GPU settings: RN101, batch 64,256, eval batch 100, 5 rounds of 10 steps, 5 warm-up")
    parser.add_argument("--methods", default="intclip-official,dualcoop", help="also: intclip, query2label")
    parser.add_argument("--backbone", default="RN101")
    parser.add_argument("--image-size", type=int, default=None, help="default: the backbone's (224 for RN101)")
    parser.add_argument("--batch", default=None, help="training batch sizes, comma-separated (default 4,8; --full 64,256)")
    parser.add_argument("--eval-batch", default=None, help="eval batch sizes (default: --batch; --full 100)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round and path (default 2; --full 10)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first, at least 1 (default 1; --full 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--clock", default="auto", choices=["auto", "wall", "cpu"],
                        help="what times a round: the wall clock, or this process's CPU time (auto: cpu on a CPU "
                             "with --threads 1, where other jobs on the machine would otherwise count, else wall)")
    parser.add_argument("--sections", default="main,randaugment", help=f"any of {','.join(SECTIONS)}")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="precision variants for --sections variants")
    parser.add_argument("--compile", default=None, choices=["default", "reduce-overhead", "max-autotune"],
                        help="shorthand for --sections compile --compile-mode MODE")
    parser.add_argument("--compile-mode", default="default", choices=["default", "reduce-overhead", "max-autotune"])
    parser.add_argument("--compile-backend", default="inductor", choices=["inductor", "aot_eager", "eager"])
    parser.add_argument("--no-train-augment", action="store_true", help="skip the train+augment timing")
    parser.add_argument("--no-augment", action="store_true", help="skip the RandAugment comparison")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max |logit difference| on identical inputs")
    parser.add_argument("--json", type=Path, default=None, help="every number, rewritten as each is measured")
    args = parser.parse_args(argv)
    if args.compile:
        args.sections, args.compile_mode = "compile", args.compile
    args.sections = [s for s in args.sections.split(",") if s]
    if args.no_augment and "randaugment" in args.sections:
        args.sections.remove("randaugment")
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"--sections: unknown {sorted(unknown)} (known: {', '.join(SECTIONS)})")
    args.variants = [v for v in args.variants.split(",") if v]
    if set(args.variants) - set(VARIANTS):
        parser.error(f"--variants: unknown {sorted(set(args.variants) - set(VARIANTS))} (known: {', '.join(VARIANTS)})")
    args.batch = [int(b) for b in (args.batch or ("64,256" if args.full else "4,8")).split(",")]
    args.eval_batch = [int(b) for b in args.eval_batch.split(",")] if args.eval_batch else ([100] if args.full else args.batch)
    args.steps = args.steps or (10 if args.full else 2)
    args.rounds = args.rounds or 5
    args.warmup = max(1, args.warmup if args.warmup is not None else (5 if args.full else 1))
    return args


def resolve_clock(args, device) -> str:
    if args.clock != "auto":
        if args.clock == "cpu" and device.type == "cuda":
            raise SystemExit("--clock cpu cannot time a GPU")
        return args.clock
    return "cpu" if device.type == "cpu" and args.threads == 1 else "wall"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    import torch

    from bench.tools import reference_step as speed
    from bench.train.devices import resolve_device

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.clock = resolve_clock(args, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # both paths (the official code's convolutions get it too)
    data = speed.intentonomy_task()
    report = Report(args.json, {
        "device": device_name(device),
        "torch": torch.__version__,
        "bf16": bool(device.type == "cuda" and torch.cuda.is_bf16_supported()),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "argv": sys.argv[1:] if argv is None else argv,
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "results": [], "variants": [], "compile": [], "randaugment": None, "agreement_ok": None,
    })
    report.save()
    print(f"{report.data['device']} | torch {torch.__version__} | train batches {args.batch}, eval {args.eval_batch} | "
          f"{args.rounds} interleaved rounds of {args.steps} steps after {args.warmup}, {args.clock} clock | "
          f"{args.backbone} (random init) | "
          f"Intentonomy's 28 classes | sections {','.join(args.sections)}", flush=True)
    methods = args.methods.split(",")
    if "main" in args.sections:
        for name in methods:
            entry: dict[str, Any] = {"method": name}
            report.data["results"].append(entry)
            run_method(name, args, device, data, report, entry)
        oks = [r["agreement"]["ok"] for r in report.data["results"]]
        report.data["agreement_ok"] = all(oks)
        report.save()
    if "variants" in args.sections:
        for name in methods:
            entry = {"method": name}
            report.data["variants"].append(entry)
            run_variants(name, args, device, data, report, entry)
    if "compile" in args.sections:
        for name in methods:
            entry = {"method": name}
            report.data["compile"].append(entry)
            run_compile(name, args, device, data, report, entry)
    if "randaugment" in args.sections:
        size = args.image_size or (224 if args.backbone != "tiny-clip" else 96)
        report.data["randaugment"] = run_augment(device, args.batch[0], size, args)
        report.save()
    report.data["complete"] = True
    report.save()
    print(f"done in {report.data['seconds']:.0f} s", flush=True)
    return report.data


if __name__ == "__main__":
    result = main()
    raise SystemExit(1 if result.get("agreement_ok") is False else 0)
