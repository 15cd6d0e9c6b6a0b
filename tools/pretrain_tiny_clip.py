"""Pretrain the tiny CLIP (the embedded default backbone) from scratch on synthetic scene captions.

Symmetric InfoNCE on freshly sampled synthetic scenes paired with :func:`bench.tools.sight.caption`, which
describes what is visible (colours, shapes, counts, sizes, layout, background), never the intentions. The scenes
come from the ``pretrain`` random stream, disjoint from the dataset splits; :func:`bench.tools.sight.zero_shot_sight`
measures what the model learnt on a third stream.

Rebuild the shipped weights (900 steps of 128 scenes, about 9 minutes on 2 idle CPU cores)::

    bench pretrain-tiny-clip --out bench/assets/bench-tiny-clip.pt --seed 0
    # same as: python -m bench.tools.pretrain_tiny_clip --out bench/assets/bench-tiny-clip.pt --seed 0

Given the seed, the run is deterministic; bit-exact weights need the same torch build and thread count
(pretraining sets ``torch.set_num_threads(threads)``, 2 by default), as float reductions are ordered differently
otherwise. On a machine busy with other work, ``OMP_WAIT_POLICY=PASSIVE`` avoids OpenMP spin-waiting (it does not
change the result).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.datasets import scenes as syn
from bench.io import atomic_save, atomic_write_text, sha256_file
from bench.backbones.tiny_clip import MODEL_NAME, image_size, load, register, to_input, weights_path
from bench.tools.sight import caption, format_sight, zero_shot_sight

DEFAULT_STEPS = 900
DEFAULT_BATCH_SIZE = 128
DEFAULT_LR = 1.5e-3
DEFAULT_THREADS = 2
DEFAULT_TWINS = 0.375


# Shapes a 96 px CNN confuses most (circle/square, triangle/star, cross/square): a twin swaps within these first.
CONFUSABLE = {"circle": ("square", "cross"), "square": ("circle", "cross"), "triangle": ("star",),
              "star": ("triangle", "cross"), "cross": ("square", "star")}


def shape_twin(scene: Any, rng: np.random.Generator) -> Any:
    """The same scene (colours, sizes, positions, layout, background) with other shapes: a hard negative.

    Each object changes shape with probability 1/2 (at least one always does), mostly to a shape that is easy to
    confuse with it at 96 px (:data:`CONFUSABLE`), else to any other; a same-shape scene stays same-shape.
    """
    def other(shape: str) -> str:
        pool = CONFUSABLE[shape] if rng.random() < 0.7 else [s for s in syn.SHAPES if s != shape]
        return pool[int(rng.integers(len(pool)))]

    if len(scene.shapes) == 1:
        new = other(next(iter(scene.shapes)))
        return replace(scene, objects=tuple(replace(o, shape=new) for o in scene.objects))
    change = rng.random(scene.n) < 0.5
    change[int(rng.integers(scene.n))] = True
    objects = tuple(replace(o, shape=other(o.shape)) if c else o for o, c in zip(scene.objects, change, strict=True))
    return replace(scene, objects=objects)


def sample_batch(
    rng: np.random.Generator, batch_size: int, image_size: int, twins: float = 0.0
) -> tuple[np.ndarray, list[str]]:
    """``batch_size`` fresh scenes from ``rng``: rendered images and one visible-content caption each.

    A fraction ``twins`` of the batch are :func:`shape_twin` s of other scenes in it, so the contrastive loss
    cannot tell those pairs apart by colour, count, layout or background alone and must learn shapes.
    """
    n_twins = min(int(round(batch_size * twins)), batch_size // 2)
    scenes = [syn.random_scene(rng) for _ in range(batch_size - n_twins)]
    scenes += [shape_twin(scenes[i], rng) for i in range(n_twins)]  # scene i and scene -n_twins + i are twins
    images = np.stack([syn.render(scene, image_size) for scene in scenes])
    captions: list[str] = []
    pair_seeds = rng.integers(2**63, size=n_twins)
    for i, scene in enumerate(scenes):
        if i < n_twins or i >= batch_size - n_twins:
            # both members of a twin pair list their objects, with the same template and word choices, so the
            # two captions differ in their shape words only
            seed = pair_seeds[i if i < n_twins else i - (batch_size - n_twins)]
            captions.append(caption(scene, np.random.default_rng(seed), detailed=True))
        else:
            captions.append(caption(scene, rng))
    return images, captions


# --------------------------------------------------------------------------------------------------------------
# Pretraining
# --------------------------------------------------------------------------------------------------------------


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "bn" in name or "ln" in name or "embedding" in name or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def save_fp16(model: torch.nn.Module, out: Path) -> None:
    """Write the state dict with floating tensors in fp16 (the shipped format), atomically."""
    state = {k: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu())
             for k, v in model.state_dict().items()}
    atomic_save(state, out)


def pretrain(
    out: Path,
    *,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lr: float = DEFAULT_LR,
    weight_decay: float = 0.1,
    warmup: int = 60,
    twins: float = DEFAULT_TWINS,
    threads: int = DEFAULT_THREADS,
    eval_n: int = 300,
    eval_every: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Contrastively pretrain the tiny CLIP from scratch and save fp16 weights to ``out``.

    Every step draws ``batch_size`` new scenes from the ``pretrain`` stream of ``seed`` (one data order, no
    augmentation; a fraction ``twins`` of them are shape twins of others, see :func:`sample_batch`), renders
    them at the model's 96 px, captions them, and minimises the symmetric InfoNCE loss with CLIP's learnable
    logit scale (clamped at 100). AdamW, linear warmup then cosine decay. Returns the final loss, timings and
    :func:`zero_shot_sight` of the saved (fp16-rounded) weights. ``eval_every`` > 0 also logs a small zero-shot
    table of the live model every that many steps (it changes neither the data order nor the weights). Runs on
    ``threads`` CPU threads (restored afterwards): bit-exact results need the same thread count and torch build.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _pretrain(Path(out), seed=seed, steps=steps, batch_size=batch_size, lr=lr,
                         weight_decay=weight_decay, warmup=warmup, twins=twins, threads=threads, eval_n=eval_n,
                         eval_every=eval_every, log=log)
    finally:
        torch.set_num_threads(previous_threads)


def _pretrain(out: Path, *, seed: int, steps: int, batch_size: int, lr: float, weight_decay: float, warmup: int,
              twins: float, threads: int, eval_n: int, eval_every: int,
              log: Callable[[str], None]) -> dict[str, Any]:
    import open_clip

    register()
    torch.manual_seed(seed)
    model = open_clip.create_model(MODEL_NAME, pretrained=None)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    size = image_size(model)
    model.train()
    optimizer = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    rng = syn.scene_stream(seed, "pretrain")
    targets = torch.arange(batch_size)
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(steps):
        images, captions = sample_batch(rng, batch_size, size, twins)
        x, t = to_input(images), tokenizer(captions)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        img = F.normalize(model.encode_image(x), dim=-1)
        txt = F.normalize(model.encode_text(t), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T
        loss = 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"tiny CLIP pretraining diverged at step {step} (loss {loss.item()})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            elapsed = time.perf_counter() - start
            log(f"step {step:5d}/{steps}  loss {np.mean(losses[-50:]):.4f}  "
                f"scale {model.logit_scale.exp().item():6.2f}  lr {lr_at(step):.2e}  {elapsed:6.1f}s")
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:
            sight = zero_shot_sight(model, tokenizer, n=100)
            log(f"step {step + 1:5d} zero-shot " + "  ".join(f"{k} {v['accuracy']:.2f}" for k, v in sight.items()))
    train_seconds = time.perf_counter() - start

    save_fp16(model, out)
    shipped, tokenizer = load("cpu", out)  # evaluate exactly what ships: the fp16 file loaded by open_clip
    sight = zero_shot_sight(shipped, tokenizer, n=eval_n)
    log(format_sight(sight))
    result = {
        "model": MODEL_NAME,
        "weights": out.name,
        "sha256": sha256_file(out),
        "bytes": out.stat().st_size,
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "warmup": warmup,
        "twins": twins,
        "threads": threads,
        "final_loss": float(np.mean(losses[-50:])),
        "train_seconds": round(train_seconds, 1),
        "zero_shot": sight,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "python": platform.python_version(),
    }
    record = out.with_name(out.stem + ".train.json")  # provenance: command arguments, versions, results
    atomic_write_text(record, json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench pretrain-tiny-clip", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help=f"weights file to write (default: {weights_path()})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--lr", type=float, default=DEFAULT_LR)
    parser.add_argument("--twins", type=float, default=DEFAULT_TWINS, help="fraction of shape-twin hard negatives")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    parser.add_argument("--eval", action="store_true", help="only print the zero-shot table of existing weights")
    parser.add_argument("--weights", type=Path, default=None, help="weights to evaluate with --eval")
    parser.add_argument("--n", type=int, default=300, help="scenes per attribute for the zero-shot table")
    parser.add_argument("--eval-every", type=int, default=0, help="log a small zero-shot table every N steps")
    args = parser.parse_args(argv)
    if args.eval:
        torch.set_num_threads(args.threads)
        model, tokenizer = load("cpu", args.weights or args.out)
        print(format_sight(zero_shot_sight(model, tokenizer, n=args.n)))
        return 0
    out = args.out or weights_path()
    result = pretrain(out, seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      twins=args.twins, threads=args.threads, eval_n=args.n, eval_every=args.eval_every)
    print(f"wrote {out} ({result['bytes'] / 1e6:.2f} MB, sha256 {result['sha256'][:12]}), "
          f"final loss {result['final_loss']:.4f}, {result['train_seconds']:.0f}s of training")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
