"""Faithful to OpenAI CLIP and the released code: QuickGELU on OpenAI-named backbones, the official precision,
backbone-specific method settings."""

import pytest
import torch

from bench.backbones.loader import RN50, RN101, TINY_CLIP, VIT_B_32, activation, architecture, load_backbone
from bench.config import load_config
from bench.train.engine import precision
from bench.registry import METHODS


@pytest.mark.parametrize("pretrained", ["none", "openai", "yfcc15m", "/weights/RN101.pt"])
def test_openai_named_backbones_are_built_with_quickgelu_whatever_the_weights(pretrained):
    assert architecture(RN101, pretrained) == "RN101-quickgelu"


def test_open_clip_tags_trained_with_gelu_keep_their_own_architecture():
    assert architecture(VIT_B_32, "laion2b_s34b_b79k") == "ViT-B-32"
    assert architecture(VIT_B_32, "openai") == "ViT-B-32-quickgelu"
    assert architecture(TINY_CLIP, None) == "bench-tiny-clip"  # the project's own model, pretrained with GELU


@pytest.mark.slow
def test_the_text_tower_applies_quickgelu_on_rn50():
    torch.manual_seed(0)
    backbone = load_backbone(RN50, "none")
    assert backbone.describe()["activation"] == "quick_gelu" == activation(backbone.model)
    assert backbone.describe()["architecture"] == "RN50-quickgelu"
    mlp = backbone.model.transformer.resblocks[0].mlp
    x = torch.randn(2, 5, mlp.c_fc.in_features)
    hidden = mlp.c_fc(x)
    expected = mlp.c_proj(hidden * torch.sigmoid(1.702 * hidden))  # OpenAI CLIP's QuickGELU
    torch.testing.assert_close(mlp(x), expected, rtol=0, atol=1e-6)
    assert not torch.allclose(mlp(x), mlp.c_proj(torch.nn.functional.gelu(hidden)), atol=1e-4)


def test_official_preset_trains_in_fp16_without_loss_scaling_on_cuda():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    official = METHODS.get("intclip-official").Config()
    assert precision(cuda, True, official) == (torch.float16, False)
    assert precision(cpu, True, official) == (None, False)  # no autocast on CPU
    assert precision(cuda, False, official) == (None, False)  # engine.amp = false
    paper = METHODS.get("intclip").Config(autocast="fp16")
    assert precision(cuda, True, paper) == (torch.float16, True)  # fp16 gets a GradScaler unless told otherwise
    assert precision(cuda, True, METHODS.get("intclip").Config(autocast="bf16")) == (torch.bfloat16, False)


def test_backbone_specific_method_settings_apply_on_that_backbone_only(tmp_path):
    cfg = load_config(None, {"suite.backbone": "tiny-clip"})
    assert cfg.method_config("intclip-official").preprocessing == "clip"  # the tiny CLIP's deviation
    assert cfg.method_config("intclip-official", "RN101").preprocessing == "official"  # the released code's input
    assert load_config(None, {"suite.backbone": "RN101"}).method_config("intclip-official").preprocessing == "official"
    bad = tmp_path / "bench.toml"
    bad.write_text('[backbones.RN101.methods.intclip-official]\nepochs = "many"\n')
    from bench.errors import ConfigError

    with pytest.raises(ConfigError, match=r"backbones.RN101.methods.intclip-official\+methods.intclip-official.epochs"):
        load_config(bad)


def test_batched_cutout_draws_what_pil_cutout_draws_with_the_same_centres_and_colours():
    import numpy as np
    from PIL import Image, ImageDraw

    from bench.methods.augment import BatchedCutout

    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (6, 3, 13, 13), dtype=np.uint8))
    torch.manual_seed(3)
    out = BatchedCutout(0.5)(images)
    torch.manual_seed(3)  # the same draws, in the same order: centres y, centres x, colours
    ys, xs, colours = torch.randint(13, (6,)), torch.randint(13, (6,)), torch.randint(256, (6, 3), dtype=torch.uint8)
    side = int(0.5 * 13 + 0.5)
    for i in range(6):
        pil = Image.fromarray(images[i].permute(1, 2, 0).numpy())
        y, x = int(ys[i]), int(xs[i])
        box = [np.clip(x - side // 2, 0, 13), np.clip(y - side // 2, 0, 13), np.clip(x + side // 2, 0, 13), np.clip(y + side // 2, 0, 13)]
        ImageDraw.Draw(pil).rectangle([int(v) for v in box], fill=tuple(int(c) for c in colours[i]))
        assert np.array_equal(out[i].permute(1, 2, 0).numpy(), np.asarray(pil)), i


@pytest.mark.slow
def test_prompt_methods_augment_training_batches_only():
    from bench.pipeline.params import placeholder_task

    data = placeholder_task(3)
    torch.manual_seed(0)
    backbone = load_backbone(TINY_CLIP, "none")
    method = METHODS.get("dualcoop")(METHODS.get("dualcoop").Config(n_ctx=2), backbone, data, torch.device("cpu"))
    images = torch.randint(0, 256, (4, 96, 96, 3), dtype=torch.uint8)
    method.train(False)
    assert torch.equal(method.prepare(images), method.prepare(images))  # eval: no augmentation
    method.train(True)
    assert not torch.equal(method.prepare(images), method.prepare(images))  # training: a new draw per batch
    plain = METHODS.get("dualcoop")(METHODS.get("dualcoop").Config(n_ctx=2, augment="none"), backbone, data, torch.device("cpu"))
    plain.train(True)
    assert torch.equal(plain.prepare(images), method.train(False) or method.prepare(images))
    assert METHODS.get("intclip-official").Config().augment == "cutout-randaugment"
    assert METHODS.get("dualcoop").Config(preset="repository").loss_weight == 1.0
