"""The released IntCLIP and DualCoOp code's own training and eval steps beside the reference and project paths.

The released code is not part of this repository: point ``--intclip`` / ``--dualcoop`` at a snapshot of it (a
checkout, or the bare git folder the ``fetch`` tool leaves, e.g. ``/work/.mirror/yan9qu+IntCLIP/repo``); its
``clip/``, ``models/`` and ``utils/`` folders are exported into a temp folder at run time and imported from there,
each code in its own process (both name their packages ``clip``, ``models``, ``utils``). Nothing of theirs is
changed; this file only supplies what their ``train.py`` would (no Dassl, yacs or CUDA needed):

- ``cfg``: the values ``train.py`` ends up with (Dassl's defaults, ``utils/build_cfg.py``, the RN101 and dataset
  yaml files, ``opts.py``'s defaults), as a plain attribute tree;
- the weights: their ``load_clip_to_cpu`` downloads OpenAI's RN101; it is replaced by their own
  ``clip.model.build_model_conv_proj`` on the state dict of the project's open_clip RN101 (random weights, the
  same names), so the released model and the project's method hold the SAME weights (prompt contexts, IntCLIP's
  semantic copies and SA copied over too), and their logits are compared on one identical input;
- the optimizer: ``train.py``'s SGD parameter groups; the learning-rate scheduler (Dassl's, stepped once per
  epoch) is torch's cosine schedule, stepped once per ``train_coop`` call.

Timed, interleaved in rounds like ``throughput.py`` (median, spread), on one prepared batch (normalised, not
augmented: their loaders augment in worker processes, off the step):

  released   ``utils/trainers.py::train_coop`` over ``--steps`` batches (their whole loop body: fp16 autocast on
             CUDA, the loss, ``loss.item()``, a training mAP on the host every step) and
             ``utils/validations.py::validate`` over ``--steps`` batches (metrics once per pass, as they run it);
  reference  ``bench.tools.reference_step`` (the re-implementation of that step);
  project    ``bench.train.engine.train_step`` / the engine's eval.

  python benchmarks/released_step.py --intclip /work/.mirror/yan9qu+IntCLIP/repo \\
      --dualcoop /work/.mirror/sunxm2357+DualCoOp/repo --batch 4 --steps 2 --rounds 5 --threads 1
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout
    sys.path.insert(0, str(ROOT))

# The project's method for each released code, and what makes it the same model.
PROJECT_METHOD = {"intclip": ("intclip-official", {}), "dualcoop": ("dualcoop", {"preset": "repository"})}


def tree(**kw: Any) -> types.SimpleNamespace:
    return types.SimpleNamespace(**kw)


def released_cfg(family: str, size: int) -> tuple[types.SimpleNamespace, types.SimpleNamespace]:
    """(cfg, args) as the released ``train.py`` builds them for RN101 (see the module docstring)."""
    intclip = family == "intclip"
    coop = tree(N_CTX_POS=16, N_CTX_NEG=16, CSC=intclip,  # IntCLIP's opts.py: --csc default True; DualCoOp: False
                POSITIVE_PROMPT_INIT="", NEGATIVE_PROMPT_INIT="", ASL_GAMMA_NEG=2.0, ASL_GAMMA_POS=1.0, LS=100.0)
    trainer = tree(COOP_MLC=coop, FINETUNE=False, FINETUNE_BACKBONE=False, FINETUNE_ATTN=False,
                   FINETUNE_LAST_LAYER=intclip)  # IntCLIP's rn101_ep50.yaml: True (layer3/4 copies and SA train)
    optim = tree(LR=4e-4 if intclip else 0.002, MOMENTUM=0.9, WEIGHT_DECAY=5e-4, SGD_DAMPNING=0, SGD_NESTEROV=False,
                 BASE_LR_MULT=0.1, ATTN_LR_MULT=0.1, BACKBONE_LR_MULT=0.1, MAX_EPOCH=60 if intclip else 50)
    cfg = tree(MODEL=tree(BACKBONE=tree(NAME="RN101")), INPUT=tree(SIZE=(size, size)), TRAINER=trainer, OPTIM=optim,
               USE_CUDA=True, DATASET=tree(NAME="intentonomy"))
    args = tree(loss_w=0.03 if intclip else 1.0, single_prompt="pos", print_freq=10**9, val_freq_in_epoch=-1, thre=0.5)
    return cfg, args


def export(src: Path) -> Path:
    """The released code's ``clip``, ``models`` and ``utils`` in a fresh temp folder (from a git folder or a checkout)."""
    dst = Path(tempfile.mkdtemp(prefix="released-code-"))
    atexit.register(shutil.rmtree, dst, True)  # the export lives as long as the worker process
    if (src / "models").is_dir():
        for name in ("clip", "models", "utils"):
            subprocess.run(["cp", "-r", str(src / name), str(dst / name)], check=True)
    else:
        git_dir = src / ".git" if (src / ".git").exists() else src
        archive = subprocess.run(["git", f"--git-dir={git_dir}", "archive", "HEAD", "clip", "models", "utils"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dst)], input=archive, check=True)
    return dst


def quiet():
    """Their code prints (model building, every 100th step, validation's F1): kept off the benchmark's output."""
    return contextlib.redirect_stdout(io.StringIO())


def build_released(family: str, src: Path, project, size: int):
    """The released model (their code) holding the project method's weights, its optimizer, scheduler and loop."""
    import torch

    code = export(src)
    sys.path.insert(0, str(code))
    import clip.model as released_clip  # noqa: E402  (their packages, from the export)
    import models  # noqa: F401  (its __init__ rebinds models.dualcoop to the builder function)

    released_models = sys.modules["models.dualcoop"]
    from utils.trainers import train_coop
    from utils.validations import validate

    net = project.net if hasattr(project, "net") else project
    clip_model = net.clip
    state = {k: v.detach().clone().cpu() for k, v in clip_model.state_dict().items() if k != "attn_mask"}
    cfg, args = released_cfg(family, size)
    released_models.load_clip_to_cpu = lambda cfg: released_clip.build_model_conv_proj(dict(state), cfg)
    texts = [t.rstrip(".") for t in project_texts(project)]  # they append "." themselves
    with quiet():
        model = released_models.dualcoop(cfg, texts)
    model.to(torch.device("cpu")).float()
    copy_project_weights(family, project, model)

    groups = [{"params": model.prompt_params()}]
    if family == "intclip":  # train.py: FINETUNE_LAST_LAYER adds the semantic copies and SA at lr x ATTN_LR_MULT
        for params in (model.intent_params(), model.aggregation_params()):
            groups.append({"params": params, "lr": cfg.OPTIM.LR * cfg.OPTIM.ATTN_LR_MULT})
    optim = torch.optim.SGD(groups, lr=cfg.OPTIM.LR, momentum=cfg.OPTIM.MOMENTUM, weight_decay=cfg.OPTIM.WEIGHT_DECAY,
                            dampening=cfg.OPTIM.SGD_DAMPNING, nesterov=cfg.OPTIM.SGD_NESTEROV)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, cfg.OPTIM.MAX_EPOCH)
    learnable = sum(p.numel() for g in groups for p in g["params"])
    return types.SimpleNamespace(model=model, optim=optim, sched=sched, cfg=cfg, args=args, train_coop=train_coop,
                                 validate=validate, learnable=learnable, code=code)


def project_texts(project) -> list[str]:
    """The class texts the project's prompts were built from (IntCLIP: HCI sentences; DualCoOp: class names)."""
    from bench.methods.intclip import class_texts

    if hasattr(project, "net"):
        return class_texts(TASK.classes, project.config.class_text)
    return [c.name if project.config.class_text == "name" else c.sentence for c in TASK.classes]


def copy_project_weights(family: str, project, model) -> None:
    """What ``build_model_conv_proj`` does not take from the CLIP state dict: the prompt contexts and, for IntCLIP,
    the trained semantic copies of layer3/layer4 and SA (their ``intent_layer3/4``, ``position_aware_aggregation``)."""
    import torch

    net = project.net if hasattr(project, "net") else project
    prompts = net.prompts
    with torch.no_grad():
        learner = model.prompt_learner
        for name in ("ctx_pos", "ctx_neg"):
            src = getattr(prompts, name)
            dst = getattr(learner, name)
            dst.copy_(src.reshape(dst.shape) if src.numel() == dst.numel() else src.expand(*dst.shape))
        if family == "intclip":
            enc = model.image_encoder
            enc.intent_layer3.load_state_dict(net.semantic[0].state_dict())
            enc.intent_layer4.load_state_dict(net.semantic[1].state_dict())
            paa, sa = enc.position_aware_aggregation, net.fusion
            for theirs, ours in (("query_conv", "query"), ("key_conv", "key"), ("value_conv", "value")):
                getattr(paa, theirs).load_state_dict(getattr(sa, ours).state_dict())
            paa.gamma.copy_(sa.gamma)


TASK = None  # Intentonomy's classes (set in worker)


def worker(family: str, src: Path, args) -> dict[str, Any]:
    global TASK
    import torch

    from bench.tools import reference_step as speed

    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    TASK = speed.intentonomy_task()
    name, config = PROJECT_METHOD[family]
    reference, project = speed.build_pair(name, "RN101", TASK, device, config)
    size = project.backbone.image_size
    with torch.no_grad():
        for m in (reference, project):
            # their build_model_conv_proj converts the model to fp16 BEFORE loading the state dict (OpenAI's
            # checkpoints are fp16), then to fp32: the CLIP weights they hold are fp16 values. The random fp32
            # weights (and what was computed from them: the prompts' token embeddings) are rounded to fp16 here,
            # on both of our paths, so all three hold the same numbers.
            for t in [*m.model.parameters(), *m.model.buffers()]:
                if t.is_floating_point():
                    t.copy_(t.half().float())
            if family == "intclip":  # SA's gamma starts at 0 (in both codes): give its attention a part
                m.net.fusion.gamma.fill_(0.5)
    released = build_released(family, src, project, size)
    out: dict[str, Any] = {"family": family, "project_method": name, "project_config": config, "batch": args.batch,
                           "released_code": str(src), "image_size": size, "threads": args.threads,
                           "learnable_params": {"released": released.learnable, "project": project.param_counts()["learnable"]}}

    gen = torch.Generator().manual_seed(0)
    b, n = args.batch, args.steps
    images = torch.randint(0, 256, (b, size, size, 3), dtype=torch.uint8, generator=gen)
    labels = (torch.rand(b, TASK.num_classes, generator=gen) > 0.8).float()
    x = speed.plain_input(project, images)
    x_ref = speed.as_layout(x, False)
    loader = [(x_ref, labels[:, None, :])] * n  # their targets carry a middle axis (target.max(dim=1)[0])

    # -- agreement: the released model vs the project's method, same weights, one identical input (fp32)
    model = released.model
    model.eval()
    project.model.eval()
    project.start_eval()
    with torch.no_grad():
        theirs = model(x_ref)  # [B, 2, C]: negative prompts first
        ours_pos, ours_neg = speed.project_logits(project, x)
    out["agreement"] = {
        "logits_max_abs_diff_fp32": max(float((theirs[:, 1] - ours_pos).abs().max()), float((theirs[:, 0] - ours_neg).abs().max())),
        "logits_max_abs": float(theirs.abs().max()),
    }
    print(f"{family}: released code vs project ({name}), same weights, identical input: logits max|diff| "
          f"{out['agreement']['logits_max_abs_diff_fp32']:.2e} (max |logit| {out['agreement']['logits_max_abs']:.1f})", flush=True)

    # -- training: n steps per call, interleaved rounds
    ref_trainer, proj_trainer = speed.ReferenceTrainer(reference, device), speed.ProjectTrainer(project, device)

    def released_train():
        with quiet():
            released.train_coop(loader, [], model, released.optim, released.sched, released.args, released.cfg, 0)

    def reference_train():
        for _ in range(n):
            ref_trainer.step(x_ref, labels)

    def project_train():
        for _ in range(n):
            proj_trainer.step(x, labels)

    timings = speed.interleaved({"released": released_train, "reference": reference_train, "project": project_train},
                                b * n, device, 1, args.warmup, args.rounds, "cpu" if args.threads == 1 else "wall")
    out["train"] = {k: v.__dict__ for k, v in timings.items()}
    out["train"]["ratios"] = {"project/released": speed.ratio(timings["project"], timings["released"]),
                              "reference/released": speed.ratio(timings["reference"], timings["released"]),
                              "project/reference": speed.ratio(timings["project"], timings["reference"])}
    report("train", family, b, timings, out["train"]["ratios"])

    # -- eval: n batches per pass
    for m in (reference, project):
        m.model.eval()

    def released_eval():
        with quiet():
            released.validate(loader, model, released.args)

    def reference_eval():
        torch.cat([speed.reference_scores(reference, x_ref).cpu() for _ in range(n)])

    def project_eval():
        project.start_eval()  # once per pass
        torch.cat([speed.project_scores(project, x) for _ in range(n)]).cpu()

    timings = speed.interleaved({"released": released_eval, "reference": reference_eval, "project": project_eval},
                                b * n, device, 1, args.warmup, args.rounds, "cpu" if args.threads == 1 else "wall")
    out["eval"] = {k: v.__dict__ for k, v in timings.items()}
    out["eval"]["ratios"] = {"project/released": speed.ratio(timings["project"], timings["released"]),
                             "reference/released": speed.ratio(timings["reference"], timings["released"]),
                             "project/reference": speed.ratio(timings["project"], timings["reference"])}
    report("eval", family, b, timings, out["eval"]["ratios"])
    return out


def report(phase: str, family: str, b: int, timings, ratios) -> None:
    parts = " | ".join(f"{k} {t.images_per_s:7.2f} img/s" for k, t in timings.items())
    rs = " | ".join(f"{k} {r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})" for k, r in ratios.items())
    print(f"{family:<9} {phase:<5} b={b:<3} {parts} || {rs}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intclip", type=Path, help="the released IntCLIP code (yan9qu/IntCLIP): checkout or git folder")
    parser.add_argument("--dualcoop", type=Path, help="the released DualCoOp code (sunxm2357/DualCoOp)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="training steps / eval batches per timed call")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        family = args.worker
        result = worker(family, getattr(args, family), args)
        print("RESULT " + json.dumps(result, default=str), flush=True)
        return 0
    codes = [f for f in ("intclip", "dualcoop") if getattr(args, f)]
    if not codes:
        parser.error("give --intclip and/or --dualcoop (a snapshot of the released code)")
    import torch

    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "torch": torch.__version__,
                               "cpu": f"{os.cpu_count()} cores, {args.threads} torch thread(s)", "results": []}
    for family in codes:
        cmd = [sys.executable, __file__, "--worker", family, f"--{family}", str(getattr(args, family)),
               "--batch", str(args.batch), "--steps", str(args.steps), "--rounds", str(args.rounds),
               "--warmup", str(args.warmup), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        for line in proc.stdout.splitlines():
            if line.startswith("RESULT "):
                results["results"].append(json.loads(line[len("RESULT "):]))
            else:
                print(line, flush=True)
        if proc.returncode != 0:
            print(f"{family}: the released code did not run here:\n{proc.stderr[-4000:]}", flush=True)
            results["results"].append({"family": family, "error": proc.stderr[-4000:]})
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all("error" not in r for r in results["results"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
