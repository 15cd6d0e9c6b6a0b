"""LabCR (bench.methods.labcr): an independent float64 reference of the released code's mathematics, determinism,
the method contract and exact learnable-parameter counts.

The reference below is written from the released code (ShiQingHongYa/LabCR: models/transformer.py,
models/position_encoding.py, models/query2label.py, models/aslloss.py, models/Losses.py, train.py) with plain tensor
operations and loops: the DETR sine encoding from its cumulative sums, multi-head attention from the packed
in-projection, LayerNorm from its formula, the loss terms as the released code builds them (``multi_sharp``'s
per-positive matrices row by row, the per-image list turned into a constant tensor, the relation matrix's diagonal
dropped entry by entry), the two-GPU run as the mean of two per-GPU losses (DDP's gradient average), and AdamW under
OneCycleLR (with its beta1 cycling) written out step by step. It uses none of the harness's LabCR, Query2Label or
loss code: only the ResNet trunk (a float64 copy of timm's ResNet with torchvision's FrozenBatchNorm2d, the
counterpart of the released torchvision ResNet) as a weight container, like tests/test_intclip_reference.py uses
CLIP's own blocks.
"""

from __future__ import annotations

import copy
import math
import os
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from bench.backbones.loader import load_backbone
from bench.datasets.base import ClassInfo, DatasetData, Split
from bench.methods.labcr import OFFICIAL, LabCR, LabCRConfig, dot_cutout, labcr_loss, target_calibration
from bench.registry import BACKBONES, METHODS
from bench.train.batches import to_model_input
from bench.train.engine import RunContext, run_method, seed_everything, train_step

CPU = torch.device("cpu")
RN_LIKE = SimpleNamespace(
    spec=SimpleNamespace(name="RN101"), model=None, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)
)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the released transforms.Normalize
EPS = 1e-5


def make_data(c: int = 4, sizes=(24, 16, 16), px: int = 96, seed: int = 0, task: str = "multilabel") -> DatasetData:
    rng = np.random.default_rng(seed)

    def split(k: int) -> Split:
        images = rng.integers(0, 255, size=(k, px, px, 3), dtype=np.uint8)
        labels = np.stack([images[..., i % 3].mean((1, 2)) > 127 for i in range(c)], 1).astype(np.float32)
        return Split(images, labels, [str(i) for i in range(k)])

    classes = [ClassInfo(str(i), f"class {i}", f"class {i}") for i in range(c)]
    splits = dict(zip(("train", "val", "test"), (split(k) for k in sizes)))
    return DatasetData("toy", task, classes, ["fine"], splits, "m" * 64)


def placeholder(c: int) -> DatasetData:
    classes = [ClassInfo(f"c{i}", f"class {i}", f"class {i}") for i in range(c)]
    return DatasetData("placeholder", "multilabel", classes, ["fine"], {}, "0" * 64)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tiny_backbone():
    torch.manual_seed(0)  # its random weights do not depend on which tests ran before
    return load_backbone(BACKBONES.get("tiny-clip"), "none")


# -- the reference ---------------------------------------------------------------------------------------------------
def ref_position_encoding(h: int, w: int, d: int) -> torch.Tensor:
    """PositionEmbeddingSine(d / 2, normalize=True) for an h x w map, ``[h * w, d]`` (rows first). The released code
    computes it once, as a float32 buffer, from cumulative sums; so does the reference (then float64)."""
    npf = d // 2
    ones = torch.ones(h, w)
    y, x = ones.cumsum(0), ones.cumsum(1)
    y = y / (y[-1:, :] + 1e-6) * (2 * math.pi)
    x = x / (x[:, -1:] + 1e-6) * (2 * math.pi)
    dim_t = torch.arange(npf, dtype=torch.float32)
    dim_t = 10000 ** (2 * (dim_t // 2) / npf)
    channels = []
    for embed in (y, x):
        for i in range(npf):
            channels.append(torch.sin(embed / dim_t[i]) if i % 2 == 0 else torch.cos(embed / dim_t[i]))
    return torch.stack(channels, -1).reshape(h * w, d).double()


def ref_layer_norm(x: torch.Tensor, p: dict, name: str) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * p[f"{name}.weight"] + p[f"{name}.bias"]


def ref_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, p: dict, name: str, heads: int
) -> torch.Tensor:
    """nn.MultiheadAttention: packed in-projection, per-head softmax(q k^T / sqrt(d_head)) v, out-projection."""
    w, b = p[f"{name}.in_proj_weight"], p[f"{name}.in_proj_bias"]
    d = w.shape[1]
    wq, wk, wv = w[:d], w[d : 2 * d], w[2 * d :]
    bq, bk, bv = b[:d], b[d : 2 * d], b[2 * d :]
    q, k, v = query @ wq.T + bq, key @ wk.T + bk, value @ wv.T + bv  # [B, L, d]
    dh = d // heads
    outs = []
    for i in range(heads):
        part = slice(i * dh, (i + 1) * dh)
        scores = q[..., part] @ k[..., part].transpose(1, 2) / math.sqrt(dh)
        outs.append(torch.softmax(scores, -1) @ v[..., part])
    return torch.cat(outs, -1) @ p[f"{name}.out_proj.weight"].T + p[f"{name}.out_proj.bias"]


def ref_ffn(x: torch.Tensor, p: dict, name: str) -> torch.Tensor:
    hidden = torch.relu(x @ p[f"{name}.linear1.weight"].T + p[f"{name}.linear1.bias"])
    return hidden @ p[f"{name}.linear2.weight"].T + p[f"{name}.linear2.bias"]


def ref_forward(trunk: nn.Module, p: dict, images: torch.Tensor, heads: int = 4, dec_layers: int = 2):
    """The released Qeruy2Label without an input projection: logits ``[B, C]`` and features ``[B, C, d]``."""
    fmap = trunk(images)  # [B, d, h, w]
    bsz, d, h, w = fmap.shape
    src = fmap.flatten(2).transpose(1, 2)  # [B, hw, d]
    pos = ref_position_encoding(h, w, d)[None]
    # encoder (post-norm): q = k = src + pos, v = src
    x = ref_layer_norm(
        src + ref_attention(src + pos, src + pos, src, p, "transformer.encoder.0.self_attn", heads),
        p,
        "transformer.encoder.0.norm1",
    )
    memory = ref_layer_norm(x + ref_ffn(x, p, "transformer.encoder.0"), p, "transformer.encoder.0.norm2")
    # decoder without self-attention: tgt = 0, the query embedding added to the query of every cross-attention
    query_pos = p["query_embed.weight"][None].expand(bsz, -1, -1)
    tgt = torch.zeros_like(query_pos)
    for i in range(dec_layers):
        name = f"transformer.decoder.{i}"
        tgt = ref_layer_norm(
            tgt + ref_attention(tgt + query_pos, memory + pos, memory, p, f"{name}.cross_attn", heads),
            p,
            f"{name}.norm1",
        )
        tgt = ref_layer_norm(tgt + ref_ffn(tgt, p, name), p, f"{name}.norm2")
    features = ref_layer_norm(tgt, p, "transformer.decoder_norm")
    logits = (p["head.weight"][None] * features).sum(-1) + p["head.bias"]  # GroupWiseLinear
    return logits, features


def ref_asl(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """AsymmetricLossOptimized(gamma_neg=2, gamma_pos=0, clip=0, eps=1e-5, focusing weight without grad),
    reduced as sum / B / C * 10."""
    p = torch.sigmoid(z)
    loss = y * torch.log(p.clamp(min=EPS)) + (1 - y) * torch.log((1 - p).clamp(min=EPS))
    with torch.no_grad():
        weight = (1 - p * y - (1 - p) * (1 - y)) ** (0.0 * y + 2.0 * (1 - y))
    return -(loss * weight).sum() / z.shape[0] / z.shape[1] * 10


def ref_cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return -(a * torch.log(b + EPS)).sum(1).mean()


def ref_multi_sharp(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One row per positive label k: [the negative labels' logits in class order, k's logit], softmax-ed."""
    negatives = [z[j] for j in range(len(y)) if y[j] == 0]
    rows = [torch.stack(negatives + [z[k]]) for k in range(len(y)) if y[k] != 0]
    return torch.softmax(torch.stack(rows), 1)


def ref_kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * torch.log(a + EPS) - a * torch.log(b + EPS)).sum(1).mean()


def ref_isd(f1: torch.Tensor, f2: torch.Tensor, tau: float) -> torch.Tensor:
    n = f1.shape[0]
    out = []
    for f in (f1, f2):
        f = f.reshape(n, -1)
        f = f / torch.sqrt((f * f).sum(1, keepdim=True))
        sim = f @ f.T / tau
        rows = [torch.stack([sim[i, j] for j in range(n) if j != i]) for i in range(n)]
        out.append(torch.softmax(torch.stack(rows), 1))
    return ref_kl(out[0], out[1]) + ref_kl(out[1], out[0])


def ref_gpu_loss(
    z1, z2, f1, f2, y, alpha: float, tau: float, trained_single: bool, alpha_single: float
) -> torch.Tensor:
    """train.py's loss on one GPU: ASL on both views + DUDC (alpha) + ISD."""
    per_image = []
    for i in range(y.shape[0]):
        n1, n2 = ref_multi_sharp(z1[i], y[i]), ref_multi_sharp(z2[i], y[i])
        per_image.append(ref_cross(n1, n2) + ref_cross(n2, n1))
    if trained_single:  # the paper's Eq.: differentiable
        single = torch.stack(per_image).mean()
    else:  # the released code: torch.Tensor(list) copies the values out of the graph
        single = torch.tensor([float(v.detach()) for v in per_image], dtype=torch.float64).mean()
    p1, p2 = torch.sigmoid(z1), torch.sigmoid(z2)
    multi = ref_cross(p1, p2) + ref_cross(p2, p1)
    dudc = multi * alpha + alpha_single * single
    return ref_asl(z1, y) + ref_asl(z2, y) + dudc + ref_isd(f1, f2, tau)


def ref_loss(
    logits,
    features,
    y,
    gpus: int,
    alpha: float = 0.4,
    tau: float = 0.4,
    trained_single: bool = False,
    alpha_single: float | None = None,
) -> torch.Tensor:
    """Both views stacked as [view 1 of every image; view 2]; each GPU takes its consecutive share of the images;
    DDP averages the GPUs' gradients, i.e. differentiates the mean of their losses."""
    b = y.shape[0]
    per_gpu = b // gpus
    losses = []
    for g in range(gpus):
        s = slice(g * per_gpu, (g + 1) * per_gpu)
        t = slice(b + g * per_gpu, b + (g + 1) * per_gpu)
        weight = 1 - alpha if alpha_single is None else alpha_single
        losses.append(
            ref_gpu_loss(logits[s], logits[t], features[s], features[t], y[s], alpha, tau, trained_single, weight)
        )
    return sum(losses) / gpus


def ref_one_cycle(step: int, total: int, max_lr: float, pct_start: float = 0.2) -> tuple[float, float]:
    """OneCycleLR (cos annealing, div_factor 25, final_div_factor 1e4, beta1 cycled 0.95 -> 0.85 -> 0.95): the
    (lr, beta1) the optimizer uses at its ``step``-th update (0-based)."""

    def cos(start: float, end: float, pct: float) -> float:
        return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)

    initial, final = max_lr / 25, max_lr / 25 / 1e4
    warm_end = pct_start * total - 1
    if step <= warm_end:
        pct = step / warm_end
        return cos(initial, max_lr, pct), cos(0.95, 0.85, pct)
    pct = (step - warm_end) / (total - 1 - warm_end)
    return cos(max_lr, final, pct), cos(0.85, 0.95, pct)


def ref_adamw_step(
    params: dict, state: dict, lr: float, beta1: float, wd: float, beta2: float = 0.999, eps: float = 1e-8
):
    with torch.no_grad():
        for n, p in params.items():
            s = state.setdefault(n, {"m": torch.zeros_like(p), "v": torch.zeros_like(p), "k": 0})
            s["k"] += 1
            g = p.grad
            p.mul_(1 - lr * wd)
            s["m"] = beta1 * s["m"] + (1 - beta1) * g
            s["v"] = beta2 * s["v"] + (1 - beta2) * g * g
            denom = torch.sqrt(s["v"]) / math.sqrt(1 - beta2 ** s["k"]) + eps
            p.sub_(lr / (1 - beta1 ** s["k"]) * s["m"] / denom)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||: the relative error of a whole tensor."""
    return float(((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30)).detach())


# -- (a) the module against the reference ----------------------------------------------------------------------------
REF_CONFIG = {
    "trunk": "clip",  # the tiny CLIP's ResNet (frozen BN, layer2..4 trained); its width 512 = hidden_dim: no
    "hidden_dim": 512,  # input projection, as released
    "dim_feedforward": 64,
    "nheads": 4,
    "dropout": 0.0,  # dropout would make the two computations differ
    "relation_group_size": 3,  # the 6 images as two GPUs of 3
    "augment": False,
    "lr": 1e-3,  # lr and weight decay larger than the released 1e-4 / 1e-2, so both show in two steps
    "weight_decay": 0.5,
    "epochs": 2,
    "ema_decay": 0.5,  # the released 0.9997 would hide the two updates in the EMA
}
# 6 images (two GPUs of 3); labels with 1..5 positives (every image has one, as in Intentonomy)
LABELS = [[1, 0, 0, 0, 0], [0, 1, 1, 0, 0], [1, 1, 1, 1, 0], [0, 0, 0, 0, 1], [1, 1, 1, 1, 1], [0, 1, 0, 1, 0]]


def _method_and_reference(backbone, single_term: str = "constant"):
    """The method on the random tiny CLIP's trunk, the reference's own float64 copy of every weight, and a batch of
    both views (random images: the views are what prepare() would give). Random convolutions shrink activations
    layer by layer, so each frozen BatchNorm first gets the statistics of its input on this batch (features of unit
    size that differ between images) and a scale and shift far from identity."""
    from torchvision.ops import FrozenBatchNorm2d

    torch.manual_seed(0)
    method = LabCR(LabCRConfig(**REF_CONFIG, single_term=single_term), backbone, placeholder(5), CPU)
    assert not method.resolved["input_proj"]
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (12, 64, 64, 3), dtype=torch.uint8, generator=g)  # 2 x 2 maps
    views = to_model_input(images, IMAGENET_MEAN, IMAGENET_STD)

    def calibrate(bn: nn.Module, args: tuple) -> None:
        with torch.no_grad():
            bn.running_mean.copy_(args[0].mean((0, 2, 3)))
            var = args[0].var((0, 2, 3))
            bn.running_var.copy_(var.clamp(min=0.1 * float(var.mean())))  # no channel scaled up from ~0 (dead units)
            bn.weight.uniform_(0.5, 1.5, generator=g)
            bn.bias.uniform_(-0.2, 0.2, generator=g)

    hooks = [
        m.register_forward_pre_hook(calibrate)
        for m in method.model.trunk.modules()
        if isinstance(m, FrozenBatchNorm2d)
    ]
    assert hooks
    with torch.no_grad():
        method.model.trunk(views)
    for hook in hooks:
        hook.remove()
    method.train(True)
    trunk = copy.deepcopy(method.model.trunk).double()
    ref_params = {f"trunk.{n}": p for n, p in trunk.named_parameters() if p.requires_grad}
    ref_params |= {
        n: p.detach().double().clone().requires_grad_(True)
        for n, p in method.model.named_parameters()
        if not n.startswith("trunk.")
    }
    return method, trunk, ref_params, views, torch.tensor(LABELS, dtype=torch.float32)


@pytest.mark.parametrize("single_term", ["constant", "trained"])
def test_logits_loss_and_gradients_equal_an_independent_float64_reference(tiny_backbone, single_term):
    method, trunk, ref_params, views, labels = _method_and_reference(tiny_backbone, single_term)
    learnable = method.learnable_parameters()
    assert set(learnable) == set(ref_params)  # the released optimizer's set: layer2..4 convs + everything after
    logits_ref, features_ref = ref_forward(trunk, ref_params, views.double())
    assert relative(method.model(views), logits_ref) < 1e-5
    loss_ref = ref_loss(logits_ref, features_ref, labels.double(), gpus=2, trained_single=single_term == "trained")
    loss = method.training_loss(views, labels)
    assert abs(loss.item() - loss_ref.item()) / abs(loss_ref.item()) < 1e-5
    loss_ref.backward()
    loss.backward()
    errors = {n: relative(p.grad, ref_params[n].grad) for n, p in learnable.items()}
    worst = sorted(errors.items(), key=lambda kv: -kv[1])[:5]
    assert max(errors.values()) < 1e-5, worst
    assert all(
        p.grad is None for n, p in method.model.named_parameters() if n.startswith(("trunk.stem.", "trunk.layer1."))
    )


def test_two_adamw_onecycle_steps_equal_the_reference(tiny_backbone, tmp_path):
    """Adam divides every gradient element by its own magnitude, so float32 rounding of gradients that are zero in
    exact arithmetic (the attention's key bias: the softmax over keys cancels it) or tiny becomes an O(lr) step: the
    steps are compared with the module in float64, which compares the optimizer, its schedule and the EMA."""
    method, trunk, ref_params, views, labels = _method_and_reference(tiny_backbone)
    method.model.double()
    views64, labels64 = views.double(), labels.double()
    learnable = method.learnable_parameters()
    logits_ref, _ = ref_forward(trunk, ref_params, views64)
    assert relative(method.model(views64), logits_ref) < 1e-10  # in float64 only the rounding of float64 is left
    steps_per_epoch = 5
    total = REF_CONFIG["epochs"] * steps_per_epoch
    optimizer, scheduler = method.configure_optimizers(steps_per_epoch)
    start = {n: (p.detach().clone(), ref_params[n].detach().clone()) for n, p in learnable.items()}
    ctx = RunContext(run_dir=tmp_path, seed=0, device=CPU, log=lambda *_: None)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    state: dict = {}
    moved = []
    for step in range(2):
        lr, beta1 = ref_one_cycle(step, total, REF_CONFIG["lr"])
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-12)
        assert optimizer.param_groups[0]["betas"][0] == pytest.approx(beta1, rel=1e-12)
        train_step(method, views64, labels64, optimizer, scaler, ctx)  # the engine's step (the EMA updates after it)
        moved.append({n: p.detach().clone() for n, p in learnable.items()})
        scheduler.step()  # per batch, as the engine steps it (scheduler_interval = "step")
        for p in ref_params.values():
            p.grad = None
        ref_loss(*ref_forward(trunk, ref_params, views64), labels64, gpus=2).backward()
        ref_adamw_step(ref_params, state, lr, beta1, REF_CONFIG["weight_decay"])
    for n, p in learnable.items():
        ours0, theirs0 = start[n]
        assert relative(p.detach(), ref_params[n].detach()) < 1e-9, n
        # the updates themselves (weight decay, both lrs and betas), not only the weights they moved
        assert relative(p.detach() - ours0, ref_params[n].detach() - theirs0) < 1e-6, n
    # the EMA after two updates: d^2 w0 + d (1 - d) w1 + (1 - d) w2, with d = 0.5
    assert method._ema_updates == 2
    for n in learnable:
        want = 0.25 * start[n][0] + 0.25 * moved[0][n] + 0.5 * moved[1][n]
        assert relative(method._ema[n], want) < 1e-6, n


def test_the_released_per_target_term_adds_to_the_value_but_not_to_the_gradients():
    """single_term = "constant" (the released torch.Tensor(list)): the loss value includes the per-target term, its
    gradients are those of the loss without it; "trained" (the paper's Eq.) differentiates it. In float64."""
    g = torch.Generator().manual_seed(2)
    z = torch.randn(8, 5, generator=g, dtype=torch.float64)
    h = torch.randn(8, 5, 6, generator=g, dtype=torch.float64)
    y = torch.tensor(LABELS + [[0, 0, 1, 1, 1], [1, 0, 1, 0, 1]], dtype=torch.float64)
    values, grads = {}, {}
    for mode in ("constant", "trained"):
        logits, features = z.clone().requires_grad_(True), h.clone().requires_grad_(True)
        loss = labcr_loss(logits[:4], logits[4:], features[:4], features[4:], y[:4], LabCRConfig(single_term=mode))
        loss.backward()
        values[mode], grads[mode] = loss.item(), (logits.grad, features.grad)
    ref = {}
    for key, kwargs in {"with": {}, "without": {"alpha_single": 0.0}, "trained": {"trained_single": True}}.items():
        logits, features = z.clone().requires_grad_(True), h.clone().requires_grad_(True)
        loss = ref_loss(logits, features, y[:4], gpus=1, **kwargs)
        loss.backward()
        ref[key] = loss.item(), (logits.grad, features.grad)
    assert (
        values["constant"] == pytest.approx(ref["with"][0], rel=1e-12) == pytest.approx(values["trained"], rel=1e-12)
    )
    assert values["constant"] > ref["without"][0] + 0.1  # the term is there, in the value
    for ours, theirs in zip(grads["constant"], ref["without"][1]):
        assert relative(ours, theirs) < 1e-12
    for ours, theirs in zip(grads["trained"], ref["trained"][1]):
        assert relative(ours, theirs) < 1e-12
    assert relative(grads["trained"][0], grads["constant"][0]) > 1e-2


# -- the loss terms by hand ------------------------------------------------------------------------------------------
def test_per_target_calibration_by_hand_and_images_without_a_positive():
    z1 = torch.tensor([[1.0, 0.0, 2.0], [0.5, -1.0, 0.0]])
    z2 = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 3.0]])
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])  # image 2 has no positive label: left out (released: NaN)

    def ce(p, q):
        return -sum(pi * math.log(qi + EPS) for pi, qi in zip(p, q))

    def softmax(v):
        e = [math.exp(x) for x in v]
        return [x / sum(e) for x in e]

    # image 1, positive 0: softmax over {1 (negative), 0}; positive 2: over {1, 2}
    rows = [(softmax([0.0, 1.0]), softmax([1.0, 0.0])), (softmax([0.0, 2.0]), softmax([1.0, 1.0]))]
    want = sum(ce(a, b) + ce(b, a) for a, b in rows) / 2
    assert target_calibration(z1, z2, y, EPS).item() == pytest.approx(want, rel=1e-6)
    assert target_calibration(z1, z2, torch.zeros(2, 3), EPS).item() == 0.0  # no positive anywhere: 0, not NaN


def test_dot_cutout_paints_one_clipped_3x3_square_per_image():
    images = torch.full((3, 3, 8, 8), 7, dtype=torch.uint8)
    torch.manual_seed(4)
    out = dot_cutout(images)
    torch.manual_seed(4)  # the same draws: centres (rows, then columns), then colours
    cy, cx, colour = torch.randint(8, (3,)), torch.randint(8, (3,)), torch.randint(256, (3, 3), dtype=torch.uint8)
    for i in range(3):
        want = images[i].clone()
        r0, r1, c0, c1 = (
            max(int(cy[i]) - 1, 0),
            min(int(cy[i]) + 1, 7),
            max(int(cx[i]) - 1, 0),
            min(int(cx[i]) + 1, 7),
        )
        want[:, r0 : r1 + 1, c0 : c1 + 1] = colour[i][:, None, None]
        assert torch.equal(out[i], want), i


# -- (b) determinism -------------------------------------------------------------------------------------------------
SMALL = {"hidden_dim": 32, "dim_feedforward": 64, "epochs": 1, "batch_size": 8, "relation_group_size": 4}


def _run(backbone, seed: int, tmp_path, name: str):
    data = make_data(px=64)
    seed_everything(seed)  # as the runner: seeded before anything random is built
    method = LabCR(LabCRConfig(**SMALL), backbone, data, CPU)
    ctx = RunContext(run_dir=tmp_path / name, seed=seed, device=CPU, log=lambda *_: None)
    outcome = run_method(method, data, ctx)
    return outcome, method.state_dict()


def test_two_builds_with_one_seed_give_identical_weights_and_scores(tiny_backbone, tmp_path):
    a, state_a = _run(tiny_backbone, 0, tmp_path, "a")
    torch.rand(17)  # unrelated random work in between must not matter
    np.random.rand(3)
    b, state_b = _run(tiny_backbone, 0, tmp_path, "b")
    c, state_c = _run(tiny_backbone, 1, tmp_path, "c")
    for x, y in ((a.val_scores, b.val_scores), (a.test_scores, b.test_scores), (a.val_logits, b.val_logits)):
        assert np.array_equal(x, y)
    for key in ("params", "ema"):
        assert state_a[key].keys() == state_b[key].keys()
        assert all(torch.equal(state_a[key][n], state_b[key][n]) for n in state_a[key])
    assert not np.array_equal(a.val_logits, c.val_logits)  # another seed: other weights, other scores
    assert not all(torch.equal(state_a["params"][n], state_c["params"][n]) for n in state_a["params"])


# -- (c) the method contract -----------------------------------------------------------------------------------------
def test_registry_config_defaults_and_validation():
    assert METHODS.get("labcr") is LabCR and "labcr" in METHODS.names()
    assert (LabCR.family, LabCR.display_name, LabCR.scheduler_interval, LabCR.trainer) == (
        "Intention methods",
        "LabCR",
        "step",
        "engine",
    )
    cfg = LabCRConfig()
    assert cfg.preset == "official" and all(getattr(cfg, k) == v for k, v in OFFICIAL.items())
    assert (cfg.hidden_dim, cfg.dim_feedforward, cfg.dropout, cfg.epochs, cfg.batch_size, cfg.lr) == (
        2048,
        8192,
        0.3,
        30,
        64,
        1e-4,
    )
    assert (cfg.alpha, cfg.tau, cfg.asl_scale, cfg.asl_eps, cfg.relation_group_size, cfg.autocast) == (
        0.4,
        0.4,
        10.0,
        1e-5,
        32,
        "fp16",
    )
    assert cfg.timm_model == "resnet101.tv_in1k" and cfg.frozen_bn == "buffers" and cfg.early_stop_patience is None
    assert LabCRConfig(alpha=0.7).alpha == 0.7  # explicit keys win over the preset
    for bad, match in (
        ({"alpha": 1.5}, "alpha"),
        ({"relation_group_size": 1}, "relation_group_size"),
        ({"tau": 0}, "tau"),
        ({"preprocessing": "bogus"}, "preprocessing"),
        ({"alfa": 0.4}, "alfa"),
        ({"preset": "paper"}, "unknown preset"),
    ):
        with pytest.raises(ValidationError, match=match):
            LabCRConfig(**bad)


def test_learnable_parameters_are_what_the_optimizer_updates(tiny_backbone):
    torch.manual_seed(0)
    method = LabCR(LabCRConfig(**SMALL), tiny_backbone, make_data(), CPU)
    optimizer, scheduler = method.configure_optimizers(steps_per_epoch=3)
    learnable = method.learnable_parameters()
    assert set(learnable) == {n for n, p in method.model.named_parameters() if p.requires_grad}
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in learnable.values()}
    assert isinstance(optimizer, torch.optim.AdamW) and len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert (group["weight_decay"], group["eps"], group["betas"][1]) == (1e-2, 1e-8, 0.999)
    assert isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR) and scheduler.total_steps == 3
    assert not any(n.startswith(("trunk.stem.", "trunk.layer1.")) for n in learnable)
    assert method.param_counts()["learnable"] == sum(p.numel() for p in learnable.values())


def test_prepare_gives_two_views_while_training_and_one_input_in_eval(tiny_backbone):
    torch.manual_seed(0)
    method = LabCR(LabCRConfig(**SMALL), tiny_backbone, make_data(), CPU)
    batch = torch.from_numpy(make_data().splits["val"].images[:5])
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    plain = (batch.permute(0, 3, 1, 2).float() / 255 - mean) / std  # Resize done at decode; ToTensor; Normalize
    method.model.eval()
    assert method.resolved["preprocessing"] == "official"
    assert torch.allclose(method.prepare(batch), plain, atol=1e-6)
    method.train(True)
    torch.manual_seed(3)
    views = method.prepare(batch)
    torch.manual_seed(3)
    assert torch.equal(method.prepare(batch), views)  # augmentation draws from torch's seeded generator
    assert views.shape == (10, 3, 96, 96)
    assert not torch.equal(views[:5], views[5:]) and not torch.equal(views[:5], plain)  # independent draws per view
    # cutout alone (no RandAugment operation): each view differs from the image in one 3 x 3 square of one colour
    cut = LabCR(LabCRConfig(**SMALL, randaugment_ops=0), tiny_backbone, make_data(), CPU)
    cut.train(True)
    for view in cut.prepare(batch).split(5):
        changed = (view - plain).abs().amax(1) > 1e-6  # [B, H, W]
        for img in changed:
            rows, cols = img.nonzero(as_tuple=True)
            assert len(rows) <= 9 and int(rows.max() - rows.min()) <= 2 and int(cols.max() - cols.min()) <= 2
    off = LabCR(LabCRConfig(**SMALL, augment=False), tiny_backbone, make_data(), CPU)
    off.train(True)
    assert torch.allclose(off.prepare(batch), torch.cat([plain, plain]), atol=1e-6)
    clip_input = LabCR(LabCRConfig(**SMALL, preprocessing="clip"), tiny_backbone, make_data(), CPU)
    clip_input.model.eval()
    assert torch.equal(
        clip_input.prepare(batch), to_model_input(batch, tiny_backbone.mean, tiny_backbone.std, "clip")
    )


def test_training_loss_needs_both_views_and_predicts_probabilities(tiny_backbone):
    torch.manual_seed(0)
    data = make_data()
    method = LabCR(LabCRConfig(**SMALL), tiny_backbone, data, CPU)
    batch, labels = (
        torch.from_numpy(data.splits["train"].images[:6]),
        torch.from_numpy(data.splits["train"].labels[:6]),
    )
    method.train(True)
    loss = method.training_loss(method.prepare(batch), labels)
    assert loss.ndim == 0 and torch.isfinite(loss)
    method.model.eval()
    with pytest.raises(ValueError, match="two views per image"):
        method.training_loss(method.prepare(batch), labels)
    probs, logits = method.predict(method.prepare(batch)), method.predict_logits(method.prepare(batch))
    assert probs.shape == (6, 4) and probs.dtype == torch.float32 and bool(((probs >= 0) & (probs <= 1)).all())
    assert logits.dtype == torch.float64 and torch.allclose(torch.sigmoid(logits).float(), probs)
    # single-label data: class indices become one-hot targets
    single = make_data(task="multiclass")
    multiclass = LabCR(LabCRConfig(**SMALL), tiny_backbone, single, CPU)
    multiclass.train(True)
    assert torch.isfinite(multiclass.training_loss(multiclass.prepare(batch), torch.tensor([0, 1, 2, 3, 0, 1])))


# -- (d) exact learnable-parameter counts ----------------------------------------------------------------------------
def test_learnable_parameter_count_of_a_small_config_by_hand():
    torch.manual_seed(0)
    config = {**REF_CONFIG, "trunk": "timm", "timm_model": "resnet18", "timm_pretrained": False}
    method = LabCR(LabCRConfig(**config), RN_LIKE, placeholder(5), CPU)
    assert not method.resolved["input_proj"]  # resnet18's width 512 = hidden_dim

    def conv(cin: int, cout: int, k: int) -> int:  # ResNet convolutions have no bias
        return cin * cout * k * k

    # resnet18 layer2..4: per stage a first block (3x3 stride 2, 3x3, 1x1 downsample) and a second block (two 3x3)
    stages = sum(
        conv(ci, co, 3) + conv(co, co, 3) + conv(ci, co, 1) + 2 * conv(co, co, 3)
        for ci, co in ((64, 128), (128, 256), (256, 512))
    )
    d, f, c = 512, 64, 5
    layer = (4 * d * d + 4 * d) + (d * f + f + f * d + d) + 2 * 2 * d  # attention, FFN, two LayerNorms
    want = stages + 3 * layer + 2 * d + c * d + (c * d + c)  # 1 encoder + 2 decoder layers, final LN, queries, head
    assert stages == 11_010_048 and want == 14_372_549
    assert method.param_counts()["learnable"] == want


def test_learnable_parameter_count_rn101_28_classes_equals_the_released_optimizer():
    method = LabCR(LabCRConfig(timm_pretrained=False), RN_LIKE, placeholder(28), CPU)
    assert method.resolved["trunk"] == "timm" and not method.resolved["input_proj"]
    d, f, c = 2048, 8192, 28
    layer = 4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d
    assert method.param_counts() == {
        "learnable": 42_172_416 + 3 * layer + 2 * d + c * d + c * d + c,
        "total": 193_588_444,
    }
    assert method.param_counts()["learnable"] == 193_366_044
