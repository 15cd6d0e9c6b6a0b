"""Faithful to OpenAI CLIP and the released code: QuickGELU on OpenAI-named backbones, the official precision,
backbone-specific method settings."""

import pytest
import torch

from bench.backbones import RN50, RN101, TINY_CLIP, VIT_B_32, activation, architecture, load_backbone
from bench.config import load_config
from bench.engine import precision
from bench.registry import METHODS


@pytest.mark.parametrize("pretrained", ["none", "openai", "yfcc15m", "/weights/RN101.pt"])
def test_openai_named_backbones_are_built_with_quickgelu_whatever_the_weights(pretrained):
    assert architecture(RN101, pretrained) == "RN101-quickgelu"


def test_open_clip_tags_trained_with_gelu_keep_their_own_architecture():
    assert architecture(VIT_B_32, "laion2b_s34b_b79k") == "ViT-B-32"
    assert architecture(VIT_B_32, "openai") == "ViT-B-32-quickgelu"
    assert architecture(TINY_CLIP, None) == "bench-tiny-clip"  # the project's own model, pretrained with GELU


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
