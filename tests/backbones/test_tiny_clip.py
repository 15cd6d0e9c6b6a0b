"""The tiny CLIP: its open_clip config, the shipped weights, how they load, and what they know."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import time

import numpy as np
import open_clip
import pytest
import torch
from open_clip.modified_resnet import AttentionPool2d, ModifiedResNet

from bench.backbones import tiny_clip
from bench.datasets import scenes as syn
from bench.tools import pretrain_tiny_clip as program
from bench.tools import sight
from bench.errors import WeightsNotFoundError

VISUAL_PARAMS = 1_331_928  # stem + layer1..4 (one bottleneck each, width 16) + attnpool (512 -> 64)
TEXT_PARAMS = 3_271_232  # token embedding 49408 x 64 + 2 blocks + final LN + projection (logit_scale excluded)
MAX_BYTES = 10_000_000


@pytest.fixture(scope="module")
def random_model():
    tiny_clip.register()
    torch.manual_seed(0)
    return open_clip.create_model(tiny_clip.MODEL_NAME, pretrained=None)


@pytest.fixture(scope="module")
def shipped():
    return tiny_clip.load("cpu")


def test_register_is_idempotent():
    tiny_clip.register()
    tiny_clip.register()
    assert open_clip.list_models().count(tiny_clip.MODEL_NAME) == 1


def test_config_is_a_modified_resnet_clip(random_model):
    visual = random_model.visual
    assert isinstance(visual, ModifiedResNet)
    for name in ("conv1", "conv2", "conv3", "layer1", "layer2", "layer3", "layer4"):
        assert hasattr(visual, name)
    assert [len(getattr(visual, f"layer{i}")) for i in range(1, 5)] == [1, 1, 1, 1]
    pool = visual.attnpool
    assert isinstance(pool, AttentionPool2d)
    assert tuple(pool.positional_embedding.shape) == (3 * 3 + 1, 512)
    assert pool.v_proj.in_features == 512 and pool.c_proj.out_features == 64
    for proj in ("q_proj", "k_proj", "v_proj", "c_proj"):
        assert isinstance(getattr(pool, proj), torch.nn.Linear)
    assert random_model.context_length == 77 and random_model.vocab_size == 49408

    n_visual = sum(p.numel() for p in visual.parameters())
    n_total = sum(p.numel() for p in random_model.parameters())
    assert n_visual == VISUAL_PARAMS
    assert n_total - n_visual - random_model.logit_scale.numel() == TEXT_PARAMS

    with torch.no_grad():
        x = visual.stem(torch.zeros(2, 3, 96, 96))
        for i in range(1, 5):
            x = getattr(visual, f"layer{i}")(x)
        assert tuple(x.shape) == (2, 512, 3, 3)
        assert tuple(random_model.encode_image(torch.zeros(2, 3, 96, 96)).shape) == (2, 64)
        tokens = open_clip.get_tokenizer(tiny_clip.MODEL_NAME)(["a photo of red shapes."])
        assert tuple(tokens.shape) == (1, 77)
        assert tuple(random_model.encode_text(tokens).shape) == (1, 64)


def test_shipped_weights_exist_and_are_small():
    path = tiny_clip.weights_path()
    assert path.is_file(), f"missing {path}: run `bench pretrain-tiny-clip --out {path}`"
    assert path.stat().st_size <= MAX_BYTES


def test_weights_load_through_open_clip(shipped):
    path = tiny_clip.weights_path()
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float16 for v in saved.values() if v.is_floating_point())
    tiny_clip.register()
    model = open_clip.create_model(tiny_clip.MODEL_NAME, pretrained=str(path))
    state = model.state_dict()
    assert set(state) == set(saved)
    for name, param in model.named_parameters():
        assert param.dtype == torch.float32, name
        assert torch.equal(param.detach(), saved[name].float()), name
    for name, buf in model.named_buffers():
        if name in saved:
            assert torch.equal(buf, saved[name].to(buf.dtype)), name

    model, tokenizer = shipped
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert tuple(tokenizer(["a photo of circles."]).shape) == (1, 77)


def test_missing_weights_fail_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError, match="bench pretrain-tiny-clip"):
        tiny_clip.load("cpu", tmp_path / "missing.pt")
    assert time.perf_counter() - start < 1.0


@pytest.mark.slow
def test_shipped_model_knows_sight(shipped):
    model, tokenizer = shipped
    result = sight.zero_shot_sight(model, tokenizer, n=60)
    assert set(result) == {"colour", "shape", "count"}
    assert result["colour"]["chance"] == pytest.approx(1 / 6) and result["colour"]["n"] == 60
    assert result["colour"]["accuracy"] > 0.6
    assert result["count"]["accuracy"] > 0.4
    assert result["shape"]["accuracy"] > 0.4


def test_sight_scenes_are_what_they_claim():
    values = sight.sight_tasks()
    for attribute in ("colour", "shape", "count"):
        scenes, targets = sight.sight_scenes(attribute, 30, seed=3)
        for scene, k in zip(scenes, targets, strict=True):
            if attribute == "colour":
                assert scene.colours == {values["colour"][0][k]}
            elif attribute == "shape":
                assert scene.shapes == {values["shape"][0][k]}
            else:
                assert scene.n == k + 1


def test_shape_twins_differ_only_in_shape():
    rng = np.random.default_rng(0)
    for _ in range(50):
        scene = syn.random_scene(rng)
        twin = program.shape_twin(scene, rng)
        assert twin != scene
        assert [(o.colour, o.size, o.x, o.y) for o in twin.objects] == [
            (o.colour, o.size, o.x, o.y) for o in scene.objects]
        assert (twin.layout, twin.background, twin.bg_colour) == (scene.layout, scene.background, scene.bg_colour)
    images, captions = program.sample_batch(np.random.default_rng(1), 8, 96, twins=0.5)
    assert images.shape == (8, 96, 96, 3) and len(captions) == 8


@pytest.mark.slow
def test_pretrain_is_deterministic(tmp_path):
    kwargs = dict(seed=3, steps=2, batch_size=8, warmup=1, eval_n=6, log=lambda _msg: None)
    threads = torch.get_num_threads()
    first = program.pretrain(tmp_path / "a.pt", **kwargs)
    second = program.pretrain(tmp_path / "b.pt", **kwargs)
    assert torch.get_num_threads() == threads
    assert first["sha256"] == second["sha256"] and first["final_loss"] == second["final_loss"]
    a = torch.load(tmp_path / "a.pt", weights_only=True)
    b = torch.load(tmp_path / "b.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a.train.json").is_file()
    assert set(first["zero_shot"]) == {"colour", "shape", "count"}
    other = program.pretrain(tmp_path / "c.pt", **{**kwargs, "seed": 4})
    assert other["sha256"] != first["sha256"]


@pytest.mark.slow
def test_eval_cli(capsys):
    assert program.main(["--eval", "--n", "12"]) == 0
    out = capsys.readouterr().out
    assert "colour" in out and "shape" in out and "count" in out
