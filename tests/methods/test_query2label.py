"""Query2Label (SPEC 3.3): exact parameter counts, architecture, head, ASL, positional encoding, frozen parts, EMA,
weights handling, and tiny end-to-end runs through the engine (with resume)."""

from __future__ import annotations

import math
import os
import time
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from bench.backbones.loader import load_backbone
from bench.train.batches import to_model_input
from bench.datasets.base import ClassInfo, DatasetData, Split
from bench.train.engine import CHECKPOINT, RunContext, run_method
from bench.errors import WeightsNotFoundError
from bench.methods.query2label import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DecoderLayer,
    EncoderLayer,
    GroupWiseLinear,
    Query2Label,
    Query2LabelConfig,
    asymmetric_loss,
    sine_position_encoding,
)
from bench.registry import BACKBONES, METHODS

CPU = torch.device("cpu")
RN101_LIKE = SimpleNamespace(spec=SimpleNamespace(name="RN101"), model=None, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
TINY = {"hidden_dim": 64, "dim_feedforward": 128}


def make_data(c: int = 3, sizes=(32, 16, 16), px: int = 64, seed: int = 0) -> DatasetData:
    rng = np.random.default_rng(seed)

    def split(k: int) -> Split:
        images = rng.integers(0, 255, size=(k, px, px, 3), dtype=np.uint8)
        labels = np.stack([images[..., i % 3].mean((1, 2)) > 127 for i in range(c)], 1).astype(np.float32)
        return Split(images, labels, [str(i) for i in range(k)])

    classes = [ClassInfo(str(i), f"class {i}", f"class {i}") for i in range(c)]
    splits = dict(zip(("train", "val", "test"), (split(k) for k in sizes)))
    return DatasetData("toy", "multilabel", classes, ["fine"], splits, "m" * 64)


@pytest.fixture(scope="module")
def tiny_backbone():
    return load_backbone(BACKBONES.get("tiny-clip"), "none")


def tiny_method(backbone, seed: int = 0, data: DatasetData | None = None, **kw) -> Query2Label:
    torch.manual_seed(seed)
    return Query2Label(Query2LabelConfig(**{**TINY, **kw}), backbone, data or make_data(), CPU)


def optimizer_ids(method: Query2Label) -> set[int]:
    opt, _ = method.configure_optimizers(steps_per_epoch=10)
    return {id(p) for g in opt.param_groups for p in g["params"]}


@pytest.mark.slow
def test_exact_parameter_counts_rn101_timm_trunk_28_classes():
    data = make_data(c=28, sizes=(2, 2, 2))
    method = Query2Label(Query2LabelConfig(timm_pretrained=False), RN101_LIKE, data, CPU)
    assert method.resolved["trunk"] == "timm" and method.resolved["input_proj"] and method.resolved["trunk_channels"] == 2048
    # default (IntCLIP's table variant, official frozen BN): what the optimizer updates, and every nn.Parameter
    assert method.param_counts() == {"learnable": 82_118_684, "total": 82_341_084}
    parts: dict[str, int] = {}
    for name, p in method.learnable_parameters().items():
        key = ".".join(name.split(".")[:2]) if name.startswith(("trunk.", "transformer.")) else name.split(".")[0]
        parts[key] = parts.get(key, 0) + p.numel()
    assert parts == {
        "trunk.layer2": 1_212_416,
        "trunk.layer3": 26_017_792,
        "trunk.layer4": 14_942_208,  # layer2..4 convolutions: 42,172,416
        "input_proj": 2048 * 1024 + 1024,
        "transformer.encoder": 12_596_224,  # 4d^2 + 4d + 2dF + F + d + 2 * 2d
        "transformer.decoder": 2 * 12_596_224,
        "transformer.decoder_norm": 2 * 1024,
        "query_embed": 28 * 1024,
        "head": 28 * 1024 + 28,
    }
    learnable = method.learnable_parameters()
    requires_grad = {n for n, p in method.model.named_parameters() if p.requires_grad}
    assert set(learnable) == requires_grad
    assert {id(p) for p in learnable.values()} == optimizer_ids(method)
    assert not any(n.startswith(("trunk.stem.", "trunk.layer1.")) for n in learnable)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in method.model.modules())  # FrozenBatchNorm2d: buffers
    del method

    readme = Query2Label(Query2LabelConfig(preset="readme", timm_pretrained=False), RN101_LIKE, data, CPU)
    assert not readme.resolved["input_proj"]  # width 2048 = trunk width: no projection, as the README command
    assert readme.param_counts() == {"learnable": 193_366_044, "total": 193_588_444}
    del readme

    affine = Query2Label(Query2LabelConfig(frozen_bn="eval", timm_pretrained=False), RN101_LIKE, data, CPU)
    # BN affine of layer2..4 (102,400) trains; total holds all 105,344 BN affine params: IntCLIP's printed 82.4M
    assert affine.param_counts() == {"learnable": 82_221_084, "total": 82_446_428}
    learnable = affine.learnable_parameters()
    assert set(learnable) == {n for n, p in affine.model.named_parameters() if p.requires_grad}
    assert {id(p) for p in learnable.values()} == optimizer_ids(affine)


def test_config_presets_and_validation():
    assert (Query2LabelConfig().hidden_dim, Query2LabelConfig().dim_feedforward) == (1024, 4096)
    cfg = Query2LabelConfig()
    assert (cfg.lr, cfg.weight_decay, cfg.pct_start, cfg.ema_decay, cfg.epochs, cfg.batch_size, cfg.early_stop_patience) == (
        1e-4, 1e-2, 0.2, 0.9997, 80, 64, 8,
    )
    assert (cfg.gamma_neg, cfg.gamma_pos, cfg.asl_clip, cfg.asl_eps) == (2.0, 0.0, 0.0, 1e-5)
    assert (cfg.enc_layers, cfg.dec_layers, cfg.nheads, cfg.dropout) == (1, 2, 4, 0.1)
    readme = Query2LabelConfig(preset="readme")
    assert (readme.hidden_dim, readme.dim_feedforward) == (2048, 8192)
    assert Query2LabelConfig(preset="readme", hidden_dim=1024).hidden_dim == 1024  # explicit keys win
    assert METHODS.get("query2label:readme").Config().hidden_dim == 2048
    with pytest.raises(ValidationError, match="nheads"):
        Query2LabelConfig(hidden_dim=1028, nheads=8)
    with pytest.raises(ValidationError, match="multiple of 4"):
        Query2LabelConfig(hidden_dim=66, nheads=2)
    with pytest.raises(ValidationError):
        Query2LabelConfig(preprocessing="bogus")


def test_transformer_structure_and_post_norm(tiny_backbone):
    method = tiny_method(tiny_backbone)
    tr = method.model.transformer
    assert len(tr.encoder) == 1 and len(tr.decoder) == 2
    attns = [m for m in tr.modules() if isinstance(m, nn.MultiheadAttention)]
    assert len(attns) == 3 and all(a.num_heads == 4 and a.dropout == 0.1 for a in attns)
    assert all(m.p == 0.1 for m in tr.modules() if isinstance(m, nn.Dropout))
    for layer in tr.decoder:  # self-attention removed: one (cross-)attention per decoder layer
        assert not hasattr(layer, "self_attn")
        assert sum(isinstance(m, nn.MultiheadAttention) for m in layer.modules()) == 1
    # post-norm: a layer's output is LayerNorm-ed (the norm is the last op), whatever the input scale
    torch.manual_seed(0)
    enc, dec = EncoderLayer(16, 4, 32, 0.1).eval(), DecoderLayer(16, 4, 32, 0.1).eval()
    x, pos = 5 + 10 * torch.randn(2, 6, 16), torch.randn(6, 16)
    for out in (enc(x, pos), dec(3 * torch.randn(2, 4, 16), x, pos, torch.randn(2, 4, 16))):
        assert torch.allclose(out.mean(-1), torch.zeros(()), atol=1e-5)
        assert torch.allclose(out.var(-1, unbiased=False), torch.ones(()), atol=1e-3)
    # the final decoder LayerNorm is applied too
    out = tr(torch.randn(2, 9, 64), torch.randn(9, 64), method.model.query_embed.weight)
    assert out.shape == (2, 3, 64) and torch.allclose(out.mean(-1), torch.zeros(()), atol=1e-5)


def test_group_wise_linear_head_by_hand():
    head = GroupWiseLinear(3, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
        head.bias.copy_(torch.tensor([0.5, -1.0, 0.0]))
    hs = torch.tensor([[[1.0, 1.0], [0.0, 1.0], [2.0, -1.0]]])  # [B=1, C=3, d=2]: row k is class k's query
    assert head(hs).tolist() == [[1 + 2 + 0.5, 0 + 4 - 1, 10 - 6 + 0]]


def test_asymmetric_loss_formula_gradient_and_fp16():
    x = torch.tensor([[0.0, 2.0], [-1.0, 3.0]], requires_grad=True)
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    # positives: log p (gamma_pos 0); negatives: log(1 - p) * p^2 (gamma_neg 2); sum / B / C * 1000
    positives = math.log(sig(0)) + math.log(sig(3))
    negatives = math.log(1 - sig(2)) * sig(2) ** 2 + math.log(1 - sig(-1)) * sig(-1) ** 2
    by_hand = -(positives + negatives)
    loss = asymmetric_loss(x, y)
    assert loss.item() == pytest.approx(by_hand / 2 / 2 * 1000, rel=1e-6)
    # focusing weight detached: d/dx[-log(1 - p) * w] = p * w for a negative (p^3), -(1 - p) for a positive
    loss.backward()
    grad = [[-(1 - sig(0)), sig(2) ** 3], [sig(-1) ** 3, -(1 - sig(3))]]
    assert torch.allclose(x.grad, torch.tensor(grad) * 1000 / 4, rtol=1e-5)
    # clip shifts the negative probability: p_m = min(1 - p + clip, 1)
    pm = min(1 - sig(2) + 0.05, 1.0)
    clipped = asymmetric_loss(torch.tensor([[2.0]]), torch.tensor([[0.0]]), clip=0.05)
    assert clipped.item() == pytest.approx(-math.log(pm) * (1 - pm) ** 2 * 1000, rel=1e-6)
    # fp16 logits (autocast) stay finite, saturated ones included: computed in fp32 with eps 1e-5
    half = torch.tensor([[-60000.0, 60000.0, 0.0, 12.0]], dtype=torch.float16, requires_grad=True)
    out = asymmetric_loss(half, torch.tensor([[1.0, 0.0, 1.0, 0.0]]))
    out.backward()
    assert out.dtype == torch.float32 and torch.isfinite(out) and torch.isfinite(half.grad).all()


def test_sine_position_encoding_by_hand():
    dim, t = 8, 10000.0  # 4 channels per axis: pairs (0,1), (2,3) for rows, (4,5), (6,7) for columns
    pos = sine_position_encoding(2, 2, dim, temperature=t)
    assert pos.shape == (8, 2, 2)
    for r in range(2):
        for c in range(2):
            y = (r + 1) / (2 + 1e-6) * 2 * math.pi
            x = (c + 1) / (2 + 1e-6) * 2 * math.pi
            f = t ** (2 / 4)  # frequency of the second pair: t^(2 * 1 / (dim / 2))
            want = [math.sin(y), math.cos(y), math.sin(y / f), math.cos(y / f)]  # rows
            want += [math.sin(x), math.cos(x), math.sin(x / f), math.cos(x / f)]  # columns
            assert pos[:, r, c].tolist() == pytest.approx(want, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("trunk, frozen_bn", [("clip", "eval"), ("clip", "buffers"), ("timm", "eval")])
def test_training_step_leaves_frozen_parts_and_bn_statistics_alone(tiny_backbone, trunk, frozen_bn):
    extra = {"timm_model": "resnet18", "timm_pretrained": False} if trunk == "timm" else {}
    method = tiny_method(tiny_backbone, trunk=trunk, frozen_bn=frozen_bn, lr=1e-2, **extra)
    assert method.resolved["trunk"] == trunk
    model = method.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bn_stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert bn_stats
    with torch.no_grad():  # give BN non-trivial statistics, so that a train-mode BN would visibly move them
        for k in bn_stats:
            model.state_dict()[k].uniform_(0.5, 1.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt, sched = method.configure_optimizers(steps_per_epoch=4)
    data = make_data()
    method.train(True)
    assert model.training and not any(m.training for m in model.trunk.modules() if isinstance(m, nn.BatchNorm2d))
    images = method.prepare(torch.from_numpy(data.splits["train"].images[:8]))
    loss = method.training_loss(images, torch.from_numpy(data.splits["train"].labels[:8]))
    opt.zero_grad()
    loss.backward()
    opt.step()
    method.after_step()
    sched.step()
    after = model.state_dict()
    for k in bn_stats:
        assert torch.equal(after[k], before[k]), k
    frozen = [k for k in before if k.startswith(("trunk.stem.", "trunk.layer1."))]
    assert frozen and all(torch.equal(after[k], before[k]) for k in frozen)
    for k in ("trunk.layer4", "transformer.encoder", "transformer.decoder", "query_embed", "head", "input_proj"):
        keys = [n for n in method.learnable_parameters() if n.startswith(k)]
        assert keys and any(not torch.equal(after[n], before[n]) for n in keys), k
    bn_affine = [n for n in method.learnable_parameters() if n.endswith(".weight") and after[n].ndim == 1 and "trunk" in n]
    assert bool(bn_affine) == (frozen_bn == "eval")  # BN scale/shift train only as nn.BatchNorm2d in eval mode


@pytest.mark.slow
def test_ema_matches_hand_computation_and_variants_swap(tiny_backbone):
    decay = 0.9
    method = tiny_method(tiny_backbone, ema_decay=decay)
    params = method.learnable_parameters()
    p0 = {n: p.detach().clone() for n, p in params.items()}
    steps = [{n: torch.randn_like(p) for n, p in params.items()} for _ in range(3)]
    for values in steps:  # stand-ins for three optimizer steps
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(values[n])
        method.after_step()
    k = len(steps)
    for n in params:
        want = decay**k * p0[n] + sum((1 - decay) * decay ** (k - 1 - i) * steps[i][n] for i in range(k))
        assert torch.allclose(method._ema[n], want, atol=1e-6), n
    ema = {n: t.clone() for n, t in method._ema.items()}
    raw = steps[-1]
    images = method.prepare(torch.from_numpy(make_data().splits["val"].images[:4]))
    method.model.eval()
    raw_scores = method.predict(images)
    assert method.eval_variants() == ["raw", "ema"]
    method.use_variant("ema")
    assert all(torch.equal(params[n], ema[n]) for n in params)
    assert all(torch.equal(method.state_dict()["params"][n], raw[n]) for n in params)  # raw state even while swapped
    ema_scores = method.predict(images)
    assert not torch.allclose(ema_scores, raw_scores)
    method.use_variant("ema")  # idempotent
    method.use_variant("raw")
    assert all(torch.equal(params[n], raw[n]) for n in params)
    assert torch.equal(method.predict(images), raw_scores)
    # variant_state("ema") makes a fresh method behave as the EMA; the EMA shadow travels with every state
    other = tiny_method(tiny_backbone, seed=1, ema_decay=decay)
    other.load_state_dict(method.variant_state("ema"))
    other.model.eval()
    assert torch.allclose(other.predict(images), ema_scores)
    other.load_state_dict(method.state_dict())
    assert all(torch.equal(other._ema[n], ema[n]) for n in params) and other._ema_updates == 3
    assert torch.equal(other.predict(images), raw_scores)
    with pytest.raises(ValueError, match="unknown weight variant"):
        method.use_variant("default")


def test_auto_trunk_preprocessing_and_augmentation(tiny_backbone):
    method = tiny_method(tiny_backbone)
    assert method.resolved == {
        "trunk": "clip",  # tiny-clip: its own small ModifiedResNet, width taken from layer4 (16 * 32 = 512)
        "trunk_weights": "clip:tiny-clip",
        "trunk_channels": 512,
        "input_proj": True,
        "preprocessing": "clip",
    }
    assert all(p.requires_grad for p in tiny_backbone.model.parameters())  # the backbone object is untouched
    batch = torch.from_numpy(make_data().splits["val"].images[:6])
    method.model.eval()  # eval: no augmentation
    assert torch.equal(method.prepare(batch), to_model_input(batch, tiny_backbone.mean, tiny_backbone.std, "clip"))
    method.train(True)
    torch.manual_seed(3)
    aug = method.prepare(batch)
    torch.manual_seed(3)
    assert torch.equal(method.prepare(batch), aug)  # RandAugment draws from torch's RNG (resumable)
    plain = to_model_input(batch, tiny_backbone.mean, tiny_backbone.std, "clip")
    assert aug.shape == plain.shape and not torch.equal(aug, plain)
    no_aug = tiny_method(tiny_backbone, augment=False)
    no_aug.train(True)
    assert torch.equal(no_aug.prepare(batch), plain)
    imagenet = tiny_method(tiny_backbone, preprocessing="imagenet")
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    want = (batch.permute(0, 3, 1, 2).float() / 255 - mean) / std
    assert torch.allclose(imagenet.prepare(batch), want, atol=1e-6)


def test_timm_weights_from_a_local_checkpoint_or_a_clear_error(tmp_path):
    import timm

    torch.manual_seed(0)
    source = timm.create_model("resnet18", pretrained=False)  # with its fc: the loader drops it
    with torch.no_grad():
        source.bn1.running_mean.uniform_(-1, 1)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    cfg = dict(trunk="timm", timm_model="resnet18", timm_checkpoint=str(path), **TINY)
    method = Query2Label(Query2LabelConfig(**cfg), RN101_LIKE, make_data(), CPU)
    assert method.resolved["trunk_weights"].startswith(f"file:{path}:sha256=")
    assert method.resolved["preprocessing"] == "imagenet" and method.resolved["trunk_channels"] == 512
    trunk = method.model.trunk
    assert torch.equal(trunk.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    assert torch.equal(trunk.stem[1].running_mean, source.bn1.running_mean)  # statistics survive freezing
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        Query2Label(Query2LabelConfig(**{**cfg, "timm_checkpoint": str(tmp_path / "nope.pth")}), RN101_LIKE, make_data(), CPU)


def test_missing_pretrained_timm_weights_fail_fast_offline():
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        pytest.skip("needs HF_HUB_OFFLINE=1")
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache("timm/resnet101.tv_in1k", "model.safetensors"), str):
        pytest.skip("resnet101.tv_in1k weights are cached on this machine")
    t0 = time.perf_counter()
    with pytest.raises(WeightsNotFoundError, match=r"resnet101\.tv_in1k.*timm_checkpoint"):
        Query2Label(Query2LabelConfig(trunk="timm"), RN101_LIKE, make_data(c=2, sizes=(2, 2, 2)), CPU)
    assert time.perf_counter() - t0 < 10


def run_ctx(tmp_path, **kw) -> RunContext:
    return RunContext(run_dir=tmp_path, seed=0, device=CPU, eval_batch_size=16, log=lambda *_: None, **kw)


@pytest.mark.slow
def test_end_to_end_on_the_tiny_backbone_and_exact_resume(tiny_backbone, tmp_path):
    data = make_data()
    cfg = dict(epochs=2, batch_size=16)
    full = run_method(tiny_method(tiny_backbone, **cfg), data, run_ctx(tmp_path / "full"))
    for scores in (full.val_scores, full.test_scores):
        assert scores.shape == (16, 3) and np.isfinite(scores).all() and scores.min() >= 0 and scores.max() <= 1
    assert full.epochs_run == 2 and full.best_variant in ("raw", "ema") and full.best_epoch in (0, 1)
    assert all(set(h["variant_metrics"]) == {"raw", "ema"} for h in full.history)
    lrs = [h["lr"][0] for h in full.history]
    assert lrs[0] != lrs[1]  # OneCycle, stepped per batch

    class Stop(Exception):
        pass

    def stop_after_first(record):
        if record["epoch"] == 0:
            raise Stop

    with pytest.raises(Stop):
        run_method(tiny_method(tiny_backbone, **cfg), data, run_ctx(tmp_path / "cut", report=stop_after_first))
    resumed = run_method(tiny_method(tiny_backbone, seed=7, **cfg), data, run_ctx(tmp_path / "cut"))
    assert resumed.resumed_from_epoch == 1 and resumed.best_variant == full.best_variant
    assert [h["train_loss"] for h in resumed.history] == pytest.approx([h["train_loss"] for h in full.history], abs=1e-6)
    np.testing.assert_allclose(resumed.test_scores, full.test_scores, atol=1e-6)
    # the EMA shadow was restored too: the last checkpoints hold the same raw and EMA weights
    last = [torch.load(tmp_path / run / CHECKPOINT, weights_only=True)["method"] for run in ("full", "cut")]
    assert last[0]["ema_updates"] == last[1]["ema_updates"] == 4
    for key in ("params", "ema"):
        for name, value in last[0][key].items():
            assert torch.allclose(value, last[1][key][name], atol=1e-6), (key, name)


@pytest.mark.slow
def test_bench_params_builds_query2label_offline_with_random_weights():
    """`bench params` never loads weights: with HF_HUB_OFFLINE=1 and no timm cache it still counts Query2Label."""
    import json

    from typer.testing import CliRunner

    from bench.cli.app import app

    res = CliRunner().invoke(app, ["params", "--methods", "query2label", "--backbone", "RN101", "--num-classes", "28", "--format", "json"])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout[res.stdout.index("[") :])
    assert (row["learnable"], row["total"]) == (82_118_684, 82_341_084)
