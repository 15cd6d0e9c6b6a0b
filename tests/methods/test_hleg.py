"""HLEG (bench.methods.hleg): an independent float64 reference of the released code's mathematics, the label
hierarchy, determinism, the method contract and exact learnable-parameter counts.

The reference is written from the released code (ShiQingHongYa/HLEG: models/transformer.py, models/query2label.py,
models/position_encoding.py, models/aslloss.py, train.py) in its own sequence-first layout ``[L, B, d]``, with plain
tensor operations: the sine encoding from cumulative sums, multi-head attention from the packed in-projection,
LayerNorm from its formula, each level's target as sigmoid(Linear over the HW tokens) with the released permutes,
the grouped query positions as the released loop (sum of the members, then divide), the levels' labels from
explicit group lists, ASL per image and the Hard-First max, and AdamW under OneCycleLR (beta1 cycling included)
written out step by step. The ResNet trunk is a float64 copy of the CLIP model's own visual tower (BatchNorm in
eval mode, affine weights not trained: the math of the released FrozenBatchNorm2d), a weight container as in
tests/methods/test_intclip_reference.py; none of the harness's HLEG, Query2Label or loss code is used.
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

from bench.backbones.loader import TINY_CLIP, load_backbone
from bench.datasets.base import ClassInfo, DatasetData, Split
from bench.errors import ConfigError
from bench.methods.hleg import (
    HLEG,
    HLEGConfig,
    PixelCutout,
    dataset_levels,
    hci_label_embedding,
    hleg_loss,
    label_levels,
    level_targets,
    released_levels,
)
from bench.registry import METHODS, create_method
from bench.train.engine import RunContext, run_method, train_step

CPU = torch.device("cpu")
RN_LIKE = SimpleNamespace(spec=SimpleNamespace(name="RN101"), model=None, image_size=224, mean=(0.5,) * 3, std=(0.25,) * 3)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# six fine classes under (coarse, middle) ancestors, out of order on purpose
HIERARCHY = [("A", "a1"), ("B", "b1"), ("A", "a1"), ("A", "a2"), ("B", "b1"), ("A", "a2")]
MIDDLE = [[0, 2], [1, 4], [3, 5]]  # the fine members of each middle group, in first-appearance order
COARSE = [[0, 2], [1]]  # the middle groups of each coarse group
SMALL = {"hidden_dim": 32, "dim_feedforward": 64, "epochs": 1, "batch_size": 8}


def classes(hierarchy=HIERARCHY) -> list[ClassInfo]:
    return [ClassInfo(f"f{i}", f"fine {i}", f"an intention numbered {i}", h) for i, h in enumerate(hierarchy)]


def make_data(sizes=(16, 8, 8), px: int = 64, seed: int = 0, hierarchy=HIERARCHY) -> DatasetData:
    rng = np.random.default_rng(seed)
    c = len(hierarchy)

    def split(k: int) -> Split:
        images = rng.integers(0, 255, size=(k, px, px, 3), dtype=np.uint8)
        labels = np.stack([images[..., i % 3].mean((1, 2)) > 127 + 0.3 * i for i in range(c)], 1).astype(np.float32)
        return Split(images, labels, [str(i) for i in range(k)])

    splits = dict(zip(("train", "val", "test"), (split(k) for k in sizes)))
    return DatasetData("toy", "multilabel", classes(hierarchy), ["coarse", "middle", "fine"], splits, "m" * 64)


def placeholder(c: int, hierarchy=("coarse", "middle")) -> DatasetData:
    infos = [ClassInfo(f"c{i}", f"class {i}", f"an intention numbered {i}", hierarchy) for i in range(c)]
    return DatasetData("placeholder", "multilabel", infos, ["fine"], {}, "0" * 64)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tiny_backbone():
    return load_backbone(TINY_CLIP, "none")


def perturbed_backbone():
    """The tiny CLIP with BatchNorm statistics and affine weights far from their defaults (frozen BN must matter)."""
    torch.manual_seed(0)
    backbone = load_backbone(TINY_CLIP, "none")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in backbone.model.visual.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.weight.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return backbone


def build(backbone, seed: int = 0, data: DatasetData | None = None, name: str = "hleg", **kw) -> HLEG:
    torch.manual_seed(seed)
    cls = METHODS.get(name)
    return create_method(name, cls.Config(**{**SMALL, **kw}), backbone, data or make_data(), CPU)


# -- the reference ----------------------------------------------------------------------------------------------------
def ref_stem(v: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = v.act1(v.bn1(v.conv1(x)))
    x = v.act2(v.bn2(v.conv2(x)))
    return v.avgpool(v.act3(v.bn3(v.conv3(x))))


def ref_sine(h: int, w: int, d: int) -> torch.Tensor:
    """PositionEmbeddingSine(d / 2, normalize=True) as the released buffer: ``[h * w, 1, d]``, rows first."""
    npf = d // 2
    y = torch.ones(h, w, dtype=torch.float64).cumsum(0)
    x = torch.ones(h, w, dtype=torch.float64).cumsum(1)
    y, x = y / (y[-1:] + 1e-6) * 2 * math.pi, x / (x[:, -1:] + 1e-6) * 2 * math.pi
    dim_t = 10000.0 ** (2 * (torch.arange(npf, dtype=torch.float64) // 2) / npf)
    out = []
    for embed in (y, x):
        e = embed[..., None] / dim_t
        out.append(torch.stack((e[..., 0::2].sin(), e[..., 1::2].cos()), dim=3).flatten(2))
    return torch.cat(out, -1).reshape(h * w, 1, d)


def ref_norm(x, p, name):
    mu = x.mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + 1e-5) * p[f"{name}.weight"] + p[f"{name}.bias"]


def ref_mha(query, key, value, p, name, heads):
    """nn.MultiheadAttention on sequence-first ``[L, B, d]``."""
    w, b = p[f"{name}.in_proj_weight"], p[f"{name}.in_proj_bias"]
    d = w.shape[1]
    q, k, v = (t @ w[i * d : (i + 1) * d].T + b[i * d : (i + 1) * d] for i, t in enumerate((query, key, value)))
    dh = d // heads
    split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, dh).permute(1, 2, 0, 3)
    att = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(dh), dim=-1)
    out = (att @ split(v)).permute(2, 0, 1, 3).reshape(query.shape[0], query.shape[1], d)
    return out @ p[f"{name}.out_proj.weight"].T + p[f"{name}.out_proj.bias"]


def ref_ffn(x, p, name):
    return torch.relu(x @ p[f"{name}.linear1.weight"].T + p[f"{name}.linear1.bias"]) @ p[f"{name}.linear2.weight"].T + p[f"{name}.linear2.bias"]


def ref_logits(visual, p, x, heads, groups):
    """The released Qeruy2Label forward: per level (fine, middle, coarse) logits ``[B, K]``."""
    fmap = visual.layer4(visual.layer3(visual.layer2(visual.layer1(ref_stem(visual, x)))))
    fmap = torch.nn.functional.conv2d(fmap, p["input_proj.weight"], p["input_proj.bias"])
    bsz, d, h, w = fmap.shape
    src, pos = fmap.flatten(2).permute(2, 0, 1), ref_sine(h, w, d).to(fmap.dtype)  # [HW, B, d], [HW, 1, d]
    x = ref_norm(src + ref_mha(src + pos, src + pos, src, p, "transformer.encoder.0.self_attn", heads), p, "transformer.encoder.0.norm1")
    memory = ref_norm(x + ref_ffn(x, p, "transformer.encoder.0"), p, "transformer.encoder.0.norm2")
    query_pos = p["query_embed.weight"][:, None, :].repeat(1, bsz, 1)
    outs = []
    for level in range(3):
        proj = memory.permute(2, 1, 0) @ p[f"target_proj.{level}.weight"].T + p[f"target_proj.{level}.bias"]  # [d, B, K]
        tgt = torch.sigmoid(proj.permute(2, 1, 0))  # [K, B, d]
        name = f"transformer.decoder.{level}"
        tgt = ref_norm(tgt + ref_mha(tgt + query_pos, memory + pos, memory, p, f"{name}.cross_attn", heads), p, f"{name}.norm1")
        tgt = ref_norm(tgt + ref_ffn(tgt, p, name), p, f"{name}.norm2")
        outs.append(tgt)
        if level < 2:  # the next level's query position: each group's members summed one by one, then divided
            means = []
            for members in groups[level]:
                total = tgt[members[0]]
                for m in members[1:]:
                    total = total + tgt[m]
                means.append(total / len(members))
            query_pos = torch.stack(means)
    logits = []
    for level, out in enumerate(outs):
        hs = ref_norm(out, p, "transformer.decoder_norm").transpose(0, 1)  # [B, K, d]
        logits.append((p[f"heads.{level}.weight"][None] * hs).sum(-1) + p[f"heads.{level}.bias"])
    return logits


def ref_asl_per_image(z, y):
    """AsymmetricLossOptimized(gamma_neg=2, gamma_pos=0, clip=0, eps=1e-5, focusing weight without grad): -sum(dim=1)."""
    p = torch.sigmoid(z)
    loss = y * torch.log(p.clamp(min=1e-5)) + (1 - y) * torch.log((1 - p).clamp(min=1e-5))
    with torch.no_grad():
        weight = (1 - p * y - (1 - p) * (1 - y)) ** (0.0 * y + 2.0 * (1 - y))
    return -(loss * weight).sum(dim=1)


def ref_labels(y, groups):
    """train.py's hierarchical labels: a group is 1 when one of its members is."""
    middle = torch.stack([y[:, m].amax(1) for m in groups[0]], 1)
    return [y, middle, torch.stack([middle[:, m].amax(1) for m in groups[1]], 1)]


def ref_loss(logits, y, groups):
    per = [ref_asl_per_image(z, t) for z, t in zip(logits, ref_labels(y, groups))]
    hardest = torch.stack(per, 1).max(dim=1).values  # compare_loss
    return hardest.sum() / y.shape[0] + 0.1 * per[0].sum() / y.shape[0], torch.stack(per, 1)


def ref_one_cycle(step: int, total: int, max_lr: float, pct: float = 0.2) -> tuple[float, float]:
    """torch's OneCycleLR (cos, div 25, final div 1e4, momentum 0.85..0.95): (lr, beta1) at ``step``."""
    anneal = lambda a, b, t: b + (a - b) / 2 * (math.cos(math.pi * t) + 1)
    initial, end1 = max_lr / 25, pct * total - 1
    if step <= end1:
        return anneal(initial, max_lr, step / end1), anneal(0.95, 0.85, step / end1)
    t = (step - end1) / (total - 1 - end1)
    return anneal(max_lr, initial / 1e4, t), anneal(0.85, 0.95, t)


def ref_adamw(params: dict, state: dict, lr: float, beta1: float, wd: float = 1e-2, beta2: float = 0.999, eps: float = 1e-8):
    with torch.no_grad():
        for name, p in params.items():
            if p.grad is None:
                continue
            s = state.setdefault(name, {"t": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p)})
            s["t"] += 1
            p.mul_(1 - lr * wd)
            s["m"] = beta1 * s["m"] + (1 - beta1) * p.grad
            s["v"] = beta2 * s["v"] + (1 - beta2) * p.grad**2
            denom = (s["v"] / (1 - beta2 ** s["t"])).sqrt() + eps
            p.sub_(lr / (1 - beta1 ** s["t"]) * s["m"] / denom)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).norm() / b.norm().clamp(min=1e-30)).detach())


def peak(t: torch.Tensor) -> float:
    return float(t.abs().max()) if t.numel() else 0.0


def key_bias(name: str, shape: torch.Size) -> torch.Tensor:
    """True on the key part of an attention's packed in-projection bias: softmax over keys cancels it (its exact
    gradient is 0, so Adam's sign-like first steps turn float32 rounding noise into full-size updates there)."""
    mask = torch.zeros(shape, dtype=torch.bool)
    if name.endswith("in_proj_bias"):
        d = shape[0] // 3
        mask[d : 2 * d] = True
    return mask


# -- (a) against the reference ----------------------------------------------------------------------------------------
def reference_setup():
    backbone = perturbed_backbone()
    method = build(backbone, data=make_data(px=96), dropout=0.0, hierarchy="dataset")
    with torch.no_grad():  # levels of comparable loss, so that the hardest level differs between images
        method.model.heads[1].bias.add_(1.5)
        method.model.heads[2].bias.sub_(1.0)
    params = {n: p for n, p in method.model.named_parameters() if p.requires_grad}
    visual = copy.deepcopy(backbone.model.visual).double().eval()
    for p in visual.parameters():
        p.requires_grad_(False)
    ref = {n: p.detach().double().clone().requires_grad_(True) for n, p in params.items() if not n.startswith("trunk.")}
    for n in params:  # the trained trunk tensors: layer2..layer4 convolutions of the reference's own copy
        if n.startswith("trunk."):
            ref[n] = dict(visual.named_parameters())[n.removeprefix("trunk.")].requires_grad_(True)
    assert all(n.startswith(("trunk.layer2.", "trunk.layer3.", "trunk.layer4.")) and p.ndim == 4 for n, p in params.items() if n.startswith("trunk."))
    assert all(torch.equal(params[n].double(), ref[n]) for n in params)
    return method, params, visual, ref


def compare_gradients(params: dict, ref: dict, bound: float) -> None:
    errors = {}
    for n, p in params.items():
        keep = ~key_bias(n, p.shape)
        assert peak(p.grad[~keep]) < 1e-6 and peak(ref[n].grad[~keep]) < 1e-12, n
        errors[n] = relative(p.grad[keep].double(), ref[n].grad[keep])
    assert max(errors.values()) < bound, sorted(errors.items(), key=lambda kv: -kv[1])[:5]


def test_hleg_equals_an_independent_float64_reference_of_the_released_code(tmp_path):
    method, params, visual, ref = reference_setup()
    net, groups = method.model, (MIDDLE, COARSE)
    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (4, 96, 96, 3), dtype=torch.uint8, generator=g)
    labels = torch.tensor([[1, 0, 0, 0, 0, 0], [0, 1, 1, 0, 1, 0], [0, 0, 0, 1, 0, 1], [0, 0, 0, 0, 0, 0]], dtype=torch.float32)
    want = (images.permute(0, 3, 1, 2).float() / 255 - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    x = method.prepare(images)  # eval mode: the released test transform, ToTensor then ImageNet Normalize
    torch.testing.assert_close(x, want)
    method.train(True)
    x64, y64 = x.double(), labels.double()
    ref_out = ref_logits(visual, ref, x64, 4, groups)
    loss_ref, per_level = ref_loss(ref_out, y64, groups)
    assert len(set(per_level.argmax(1).tolist())) >= 2, per_level  # the max routes gradients to several levels
    loss_ref.backward()

    # float32 (how it trains): logits and loss to 1e-5; gradients to 1e-4, because the label embedding's gradient
    # is ill-conditioned in float32 (the released math itself evaluated in float32 is 2e-5 off on it)
    out = net(x)
    assert [o.shape for o in out] == [(4, 6), (4, 3), (4, 2)]
    for ours, theirs in zip(out, ref_out, strict=True):
        assert relative(ours.double(), theirs) < 1e-5
    loss = method.training_loss(x, labels)
    assert abs(loss.item() - loss_ref.item()) / loss_ref.item() < 1e-5
    loss.backward()
    assert {n for n, p in net.named_parameters() if p.grad is not None} == set(params)  # what trains gets a gradient
    compare_gradients(params, ref, 1e-4)

    # the same module in float64 (the loss stays float32 by design): every gradient to 1e-5
    net.zero_grad(set_to_none=True)
    net.double()
    for ours, theirs in zip(net(x64), ref_out, strict=True):
        assert relative(ours, theirs) < 1e-6
    method.training_loss(x64, labels).backward()
    compare_gradients(params, ref, 1e-5)

    # two AdamW steps under OneCycle as the released optimiser (max lr x 50 so that the updates stand far above
    # rounding), against AdamW and OneCycleLR written out
    scale, steps_per_epoch = 50.0, 10  # 10 steps: the first two are the start and the peak of the warm-up
    net.zero_grad(set_to_none=True)
    optimizer, scheduler = method.configure_optimizers(steps_per_epoch)
    total = method.config.epochs * steps_per_epoch
    assert scheduler.total_steps == total and optimizer.param_groups[0]["betas"] == (0.95, 0.999)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(ref_one_cycle(0, total, 1e-4)[0], rel=1e-12)
    assert optimizer.param_groups[0]["weight_decay"] == 1e-2 and optimizer.param_groups[0]["eps"] == 1e-8
    for group in optimizer.param_groups:
        for key in ("max_lr", "initial_lr", "min_lr", "lr"):
            group[key] *= scale
    start = {n: (params[n].detach().clone(), ref[n].detach().clone()) for n in params}
    state: dict = {}
    ctx = RunContext(run_dir=tmp_path, seed=0, device=CPU, log=lambda *_: None)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    for step in range(2):
        lr, beta1 = ref_one_cycle(step, total, 1e-4 * scale)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-12)
        assert optimizer.param_groups[0]["betas"][0] == pytest.approx(beta1, rel=1e-12)
        train_step(method, x64, labels, optimizer, scaler, ctx)
        scheduler.step()
        for p in ref.values():
            p.grad = None
        ref_loss(ref_logits(visual, ref, x64, 4, groups), y64, groups)[0].backward()
        ref_adamw(ref, state, lr, beta1)
    for n, p in params.items():
        keep = ~key_bias(n, p.shape)
        ours, theirs = p.detach()[keep], ref[n].detach()[keep]
        assert relative(ours, theirs) < 1e-5, n
        ours0, theirs0 = (t[keep] for t in start[n])
        assert relative(ours - ours0, theirs - theirs0) < 1e-5, n  # the updates themselves, weight decay included
    assert method._ema_updates == 2


# -- hierarchy, targets, loss, augmentation -------------------------------------------------------------------------
def test_dataset_hierarchy_levels_and_the_released_intentonomy_one():
    levels = dataset_levels(classes())
    assert levels.sizes == (6, 3, 2) and levels.parents == ((0, 1, 0, 2, 1, 2), (0, 1, 0))
    assert levels.groups(0) == MIDDLE and levels.groups(1) == COARSE
    released = released_levels()
    assert released.sizes == (28, 15, 9)
    assert released.groups(0)[4] == [3, 7, 8, 9, 19] and released.groups(1)[4] == [7, 8, 9]
    # the packaged Intentonomy metadata groups the classes as the released code does (as partitions)
    from bench.datasets.intentonomy import class_infos

    infos, _ = class_infos()
    ours = dataset_levels(infos)
    fine_to_coarse = lambda lv: sorted(sorted(k for k in range(28) if lv.parents[1][lv.parents[0][k]] == g) for g in range(9))
    assert sorted(ours.groups(0)) == sorted(released.groups(0)) and fine_to_coarse(ours) == fine_to_coarse(released)
    assert ours.groups(0) != released.groups(0)  # another order: the released one is chosen below
    assert label_levels(infos, "auto").source == "released"  # same partition: the released order
    assert label_levels(placeholder(28).classes, "auto").source == "released"  # no usable hierarchy, 28 classes
    assert label_levels(placeholder(28, ()).classes, "auto").source == "released"
    assert label_levels(placeholder(28).classes, "dataset").sizes == (28, 1, 1)
    assert label_levels(placeholder(5, ()).classes, "auto").sizes == (5,)  # flat: one decoder layer
    assert label_levels(placeholder(5).classes, "auto").sizes == (5, 1, 1)
    assert label_levels(classes(), "auto").source == "dataset"
    with pytest.raises(ConfigError, match="28 classes; the dataset has 6"):
        label_levels(classes(), "released")
    with pytest.raises(ConfigError, match="same number of ancestors"):
        dataset_levels(classes([("A", "a1"), ("B",)]))
    flat = dataset_levels(classes([(), ()]))
    assert flat.sizes == (2,) and flat.parents == ()


def test_level_targets_and_the_hard_first_loss_by_hand():
    levels = dataset_levels(classes())
    parents = [torch.tensor(p)[None] for p in levels.parents]
    y = torch.tensor([[0.0, 0, 1, 0, 0, 0], [0, 1, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0]])
    fine, middle, coarse = level_targets(y, parents, levels.sizes)
    assert torch.equal(fine, y)
    assert middle.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 0]] and coarse.tolist() == [[1, 0], [1, 1], [0, 0]]
    # one image, three levels of one class each: L = -log p (positive) or -log(1 - p) p^2 (negative)
    sig = lambda v: 1 / (1 + math.exp(-v))
    logits = [torch.tensor([[0.5]], requires_grad=True), torch.tensor([[2.0]], requires_grad=True), torch.tensor([[-1.0]], requires_grad=True)]
    targets = [torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]])]
    per = [-math.log(sig(0.5)), -math.log(1 - sig(2.0)) * sig(2.0) ** 2, -math.log(sig(-1.0))]
    loss = hleg_loss(logits, targets)
    assert loss.item() == pytest.approx(max(per) + 0.1 * per[0], rel=1e-6)
    loss.backward()  # the hardest level (middle: 2.13 > 1.31 > 0.47) and the fine term get gradients, coarse none
    assert per.index(max(per)) == 1 and logits[2].grad.item() == 0.0
    assert logits[1].grad.item() == pytest.approx(sig(2.0) ** 3, rel=1e-5)  # focusing weight detached
    assert logits[0].grad.item() == pytest.approx(-0.1 * (1 - sig(0.5)), rel=1e-5)


def test_pixel_cutout_paints_one_clipped_3x3_square_per_image():
    torch.manual_seed(4)
    images = torch.zeros(64, 3, 9, 7, dtype=torch.uint8)
    out = PixelCutout()(images)
    torch.manual_seed(4)  # the same draws: centres (rows, then columns), then colours
    cy, cx, colour = torch.randint(9, (64,)), torch.randint(7, (64,)), torch.randint(256, (64, 3), dtype=torch.uint8)
    for i in range(64):
        rows = range(max(int(cy[i]) - 1, 0), min(int(cy[i]) + 2, 9))
        cols = range(max(int(cx[i]) - 1, 0), min(int(cx[i]) + 2, 7))
        want = torch.zeros(3, 9, 7, dtype=torch.uint8)
        want[:, rows.start : rows.stop, cols.start : cols.stop] = colour[i][:, None, None]
        assert torch.equal(out[i], want), i
    sizes = {int((out[i].sum(0) > 0).sum()) for i in range(64) if colour[i].sum() > 0}
    assert sizes <= {4, 6, 9} and 9 in sizes and len(sizes) > 1  # clipped at the borders


def test_prepare_augments_only_while_training_and_normalises_like_the_released_code(tiny_backbone):
    batch = torch.from_numpy(make_data().splits["val"].images[:6])
    method = build(tiny_backbone)
    assert method.resolved["preprocessing"] == "official" and method.resolved["trunk"] == "clip"
    plain = method.prepare(batch)
    method.train(True)
    torch.manual_seed(3)
    augmented = method.prepare(batch)
    torch.manual_seed(3)
    assert torch.equal(method.prepare(batch), augmented) and not torch.equal(augmented, plain)
    only_cutout = build(tiny_backbone, augment=False)
    only_cutout.train(True)
    changed = (only_cutout.prepare(batch) != plain).any(1).flatten(1).sum(1)
    assert changed.max() <= 9 and changed.min() >= 1  # one <= 3x3 square per image, nothing else
    none = build(tiny_backbone, augment=False, cutout=False)
    none.train(True)
    assert torch.equal(none.prepare(batch), plain)
    clip_norm = build(tiny_backbone, preprocessing="auto")
    assert clip_norm.resolved["preprocessing"] == "clip"
    mean, std = torch.tensor(tiny_backbone.mean)[:, None, None], torch.tensor(tiny_backbone.std)[:, None, None]
    torch.testing.assert_close(clip_norm.prepare(batch), (batch.permute(0, 3, 1, 2).float() / 255 - mean) / std)


def test_scores_are_the_fine_level_of_the_full_forward(tiny_backbone):
    method = build(tiny_backbone)
    images = method.prepare(torch.from_numpy(make_data().splits["test"].images[:5]))
    with torch.no_grad():
        full = method.model(images)
    assert torch.equal(method.predict_logits(images), full[0].double())
    assert method.resolved["level_sizes"] == [6, 3, 2] and method.resolved["feature_map"] == [2, 2]


def test_hci_label_embedding_keeps_the_sentence_cosines(tiny_backbone):
    sentences = [c.sentence for c in classes()]
    torch.manual_seed(0)
    emb = hci_label_embedding(tiny_backbone.model, tiny_backbone.tokenizer, sentences, 128)
    with torch.no_grad():
        text = torch.nn.functional.normalize(tiny_backbone.model.encode_text(tiny_backbone.tokenizer([s + "." for s in sentences])), dim=-1)
    assert emb.shape == (6, 128)
    torch.testing.assert_close(emb.norm(dim=1), torch.full((6,), math.sqrt(128)))
    torch.testing.assert_close(emb @ emb.T / 128, text @ text.T, atol=1e-5, rtol=1e-5)
    hci = build(tiny_backbone, name="hleg:hci", hidden_dim=128, dim_feedforward=128)
    assert hci.config.label_init == "hci" and type(hci).name == "hleg:hci"
    q = hci.model.query_embed.weight.detach()
    torch.testing.assert_close(q @ q.T / 128, text @ text.T, atol=1e-5, rtol=1e-5)
    plain = build(tiny_backbone, hidden_dim=128, dim_feedforward=128)
    assert not torch.allclose(plain.model.query_embed.weight, q)
    # one seed: every other weight is the plain method's (the HCI draws come last), a paired comparison
    other = {n: p for n, p in plain.model.named_parameters() if n != "query_embed.weight"}
    assert other and all(torch.equal(p, other[n]) for n, p in hci.model.named_parameters() if n in other)


def test_single_label_data_with_a_two_level_hierarchy_and_flat_data(tiny_backbone):
    """EmotionROI/FI: class indices and one (polarity) level above the classes; a dataset without ancestors: one
    level, one decoder layer (the loss is then 1.1 x the fine ASL)."""
    polarity = [("negative",), ("positive",), ("negative",), ("positive",)]
    data = make_data(hierarchy=polarity)
    for split in data.splits.values():
        split.labels = split.labels.argmax(1).astype(np.int64)
    data.task = "multiclass"
    method = build(tiny_backbone, data=data, dropout=0.0)
    assert method.resolved["level_sizes"] == [4, 2] and len(method.model.transformer.decoder) == 2
    method.train(True)
    images = method.prepare(torch.from_numpy(data.splits["train"].images[:4]))
    labels = torch.tensor([0, 1, 2, 3])
    logits = method.model(images)
    one_hot = torch.eye(4)
    polarity_targets = torch.tensor([[1.0, 0], [0, 1], [1, 0], [0, 1]])
    torch.testing.assert_close(method.training_loss(images, labels), hleg_loss(logits, [one_hot, polarity_targets]))
    method.model.eval()
    probs = method.predict(images)
    torch.testing.assert_close(probs.sum(1), torch.ones(4))  # softmax over the classes
    flat = build(tiny_backbone, data=make_data(hierarchy=[(), (), ()]), dropout=0.0)
    assert flat.resolved["level_sizes"] == [3] and len(flat.model.transformer.decoder) == 1
    flat.train(True)
    x, y = flat.prepare(torch.from_numpy(make_data(hierarchy=[(), (), ()]).splits["train"].images[:4])), torch.tensor([[1.0, 0, 1]] * 4)
    (z,) = flat.model(x)
    torch.testing.assert_close(flat.training_loss(x, y), 1.1 * hleg_loss([z], [y], fine_weight=0.0))


# -- (b) determinism, (c) the contract --------------------------------------------------------------------------------
def test_two_builds_with_one_seed_give_identical_weights_and_scores(tiny_backbone, tmp_path):
    outs = []
    for run in ("a", "b"):
        torch.rand(7)  # unrelated random work in between
        method = build(tiny_backbone, seed=3)
        state = {n: p.detach().clone() for n, p in method.model.named_parameters()}
        ctx = RunContext(run_dir=tmp_path / run, seed=3, device=CPU, log=lambda *_: None)
        outs.append((state, run_method(method, make_data(), ctx)))
    (sa, a), (sb, b) = outs
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert np.array_equal(a.val_scores, b.val_scores) and np.array_equal(a.test_scores, b.test_scores)
    assert np.array_equal(a.val_logits, b.val_logits)
    other = build(tiny_backbone, seed=4)
    assert not torch.equal(other.model.query_embed.weight, sa["query_embed.weight"])


@pytest.mark.parametrize("name", ["hleg", "hleg:hci"])
def test_the_method_contract(name, tiny_backbone, tmp_path):
    """As tests/test_structure.py holds every registered method to (on a small transformer)."""
    data = make_data()
    a, b = build(tiny_backbone, name=name), build(tiny_backbone, name=name)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa["params"][k], sb["params"][k]) for k in sa["params"])
    learnable = a.learnable_parameters()
    assert set(learnable) == {n for n, p in a.model.named_parameters() if p.requires_grad}
    optimizer, _ = a.configure_optimizers(steps_per_epoch=2)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in learnable.values()}
    assert a.param_counts()["learnable"] == sum(p.numel() for p in learnable.values()) > 0
    assert not any(n.startswith(("trunk.stem.", "trunk.layer1.")) for n in learnable)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in a.model.modules())  # FrozenBatchNorm2d: buffers
    out = run_method(a, data, RunContext(run_dir=tmp_path / "run", seed=0, device=CPU, log=lambda *_: None))
    n_val = len(data.splits["val"])
    assert out.val_scores.shape == (n_val, 6) and out.val_scores.dtype == np.float32
    assert np.isfinite(out.val_logits).all() and out.val_scores.min() >= 0 and out.val_scores.max() <= 1
    np.testing.assert_allclose(out.val_scores, 1 / (1 + np.exp(-out.val_logits)), rtol=1e-5, atol=1e-6)
    assert out.best_variant in ("raw", "ema")
    restored = build(tiny_backbone, seed=9, name=name)
    restored.load_state_dict(a.state_dict())
    for m in (a, restored):
        m.train(False)
        m.model.eval()
    images = data.splits["test"].images[:4]
    torch.testing.assert_close(restored.predict_logits(restored.prepare(images)), a.predict_logits(a.prepare(images)))


def test_config_defaults_are_the_released_train_py_and_bad_values_fail():
    cfg = HLEGConfig()
    assert cfg.preset == "official" and (cfg.hidden_dim, cfg.dim_feedforward, cfg.enc_layers, cfg.nheads, cfg.dropout) == (2048, 8192, 1, 4, 0.1)
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.pct_start, cfg.ema_decay) == (6, 128, 1e-4, 1e-2, 0.2, 0.9997)
    assert (cfg.gamma_neg, cfg.gamma_pos, cfg.asl_clip, cfg.asl_eps, cfg.fine_loss_weight) == (2.0, 0.0, 0.0, 1e-5, 0.1)
    assert (cfg.early_stop_patience, cfg.autocast, cfg.cutout, cfg.augment, cfg.preprocessing) == (None, "fp16", True, True, "official")
    assert (cfg.timm_model, cfg.frozen_bn, cfg.input_proj) == ("resnet101.tv_in1k", "buffers", None)
    assert METHODS.get("hleg:hci").Config().label_init == "hci"
    with pytest.raises(ValidationError):
        HLEGConfig(hierarchy="bogus")
    with pytest.raises(ValidationError, match="nheads"):
        HLEGConfig(hidden_dim=36, nheads=8)
    with pytest.raises(ConfigError, match="dec_layers=2, but the hierarchy has 3 levels"):
        HLEG(HLEGConfig(**SMALL, dec_layers=2), load_backbone(TINY_CLIP, "none"), make_data(), CPU)


# -- (d) exact learnable-parameter counts -----------------------------------------------------------------------------
def test_learnable_parameter_count_of_a_small_config_by_hand():
    method = HLEG(HLEGConfig(trunk="timm", timm_model="resnet18", timm_pretrained=False, hidden_dim=32, dim_feedforward=64),
                  RN_LIKE, make_data(sizes=(2, 2, 2), px=64), CPU)
    assert method.resolved["feature_map"] == [2, 2]  # 64 px / 32: 4 tokens
    trunk = (9 * 64 * 128 + 9 * 128 * 128 + 64 * 128 + 2 * 9 * 128 * 128) + (9 * 128 * 256 + 9 * 256 * 256 + 128 * 256 + 2 * 9 * 256 * 256) \
        + (9 * 256 * 512 + 9 * 512 * 512 + 256 * 512 + 2 * 9 * 512 * 512)  # resnet18 layer2..4 convolutions
    assert trunk == 11_010_048
    d, f = 32, 64
    layer = (4 * d * d + 4 * d) + (2 * d * f + f + d) + 2 * 2 * d  # attention, FFN, two LayerNorms
    expected = trunk + (512 * d + d) + layer + 3 * layer + 2 * d  # + input projection, encoder, 3 decoders, final LN
    expected += (4 * 6 + 6) + (4 * 3 + 3) + (4 * 2 + 2)  # target projections Linear(4, K)
    expected += 6 * d + (6 * d + 6) + (3 * d + 3) + (2 * d + 2)  # label embedding, group-wise heads
    assert expected == 11_061_314
    assert method.param_counts()["learnable"] == expected
    assert method.param_counts()["total"] == expected + 9408 + 4 * 9 * 64 * 64  # + frozen stem conv and layer1


def test_learnable_parameter_count_rn101_28_classes_equals_the_released_optimizer():
    """What the released optimiser updates (its unused decoder template layer, 67,147,776 parameters in the param
    group but never given a gradient, is not built); `bench params` builds the method this way."""
    cls = METHODS.get("hleg")
    method = cls(cls.random_weights_config(cls.Config()), RN_LIKE, placeholder(28), CPU)
    assert method.resolved["hierarchy"] == "released" and method.resolved["level_sizes"] == [28, 15, 9]
    assert method.resolved["feature_map"] == [7, 7] and not method.resolved["input_proj"]
    parts: dict[str, int] = {}
    for name, p in method.learnable_parameters().items():
        key = ".".join(name.split(".")[:2]) if name.startswith(("trunk.", "transformer.", "target_proj.", "heads.")) else name.split(".")[0]
        parts[key] = parts.get(key, 0) + p.numel()
    assert parts == {
        "trunk.layer2": 1_212_416, "trunk.layer3": 26_017_792, "trunk.layer4": 14_942_208,
        "transformer.encoder": 50_358_272,  # d = 2048, F = 8192: 4d^2 + 4d + 2dF + F + d + 4d
        "transformer.decoder": 3 * 50_358_272, "transformer.decoder_norm": 4096,
        "target_proj.0": 49 * 28 + 28, "target_proj.1": 49 * 15 + 15, "target_proj.2": 49 * 9 + 9,
        "query_embed": 28 * 2048,
        "heads.0": 28 * 2049, "heads.1": 15 * 2049, "heads.2": 9 * 2049,
    }
    assert method.param_counts() == {"learnable": 243_776_092, "total": 243_998_492}
    assert 243_776_092 + 67_147_776 == 310_923_868  # the released param group, template included
