"""IntCLIP: exact parameter counts, what trains and what stays frozen, the ablation switches, presets."""

import pytest
import torch

from bench.backbones.loader import load_backbone
from bench.errors import UnknownNameError
from bench.methods.intclip import AddFusion, ConcatMLPFusion, SightAssistedAggregation, class_texts
from bench.pipeline.params import count_params, placeholder_task
from bench.registry import BACKBONES, METHODS

CPU = torch.device("cpu")


def build(name="intclip", num_classes=5, backbone="tiny-clip", **overrides):
    cls = METHODS.get(name)
    return cls(cls.Config(**overrides), load_backbone(BACKBONES.get(backbone), "none"), placeholder_task(num_classes), CPU)


@pytest.mark.slow
def test_exact_learnable_counts_rn101_28_classes():
    counts = {r["method"]: r["learnable"] for r in count_params(["intclip", "intclip-official", "dualcoop", "linear-probe", "zeroshot"], "RN101", 28)}
    assert counts == {
        "intclip": 15_751_809,  # semantic layer4 14,964,736 + SA 328,321 + prompts 458,752
        "intclip-official": 41_842_305,  # + the layer3 copy, 26,090,496
        "dualcoop": 458_752,  # 2 x 28 x 16 x 512
        "linear-probe": 14_364,  # (512 + 1) x 28
        "zeroshot": 0,
    }


@pytest.mark.parametrize("name", ["intclip", "intclip-official", "dualcoop", "intclip:fusion-concat-mlp", "intclip:single-all"])
def test_learnable_set_is_the_optimizer_set_is_the_requires_grad_set(name):
    method = build(name)
    optimizer, _ = method.configure_optimizers(steps_per_epoch=1)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    requires_grad = {id(p) for p in method.model.parameters() if p.requires_grad}
    declared = {id(p) for p in method.learnable_parameters().values()}
    assert in_optimizer == requires_grad == declared
    assert method.param_counts()["learnable"] == sum(p.numel() for p in method.learnable_parameters().values())


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module):
    return {k for k, v in module.state_dict().items() if k in before and not torch.equal(before[k], v)}


def test_a_training_step_changes_semantic_sa_and_prompts_only():
    torch.manual_seed(0)
    method = build("intclip")
    net = method.net
    sight, text = _snapshot(net.sight), _snapshot(net.clip.transformer)
    semantic, fusion, prompts = _snapshot(net.semantic), _snapshot(net.fusion), _snapshot(net.prompts)
    shared = _snapshot(net.shared)
    optimizer, _ = method.configure_optimizers(1)
    for g in optimizer.param_groups:
        g["lr"] = 0.05
    images = method.prepare(torch.randint(0, 255, (4, 96, 96, 3), dtype=torch.uint8))
    labels = (torch.rand(4, 5) > 0.5).float()
    for _ in range(2):  # gamma starts at 0, so Q/K/V only receive gradient from the second step on
        method.train(True)
        optimizer.zero_grad()
        method.training_loss(images, labels).backward()
        optimizer.step()
    assert not _changed(sight, net.sight) and not _changed(text, net.clip.transformer) and not _changed(shared, net.shared)
    running = {k for k in semantic if "running" in k or "num_batches" in k}
    assert running and not (_changed(semantic, net.semantic) & running)  # BN statistics frozen
    assert _changed(semantic, net.semantic) - running  # semantic weights moved
    assert _changed(fusion, net.fusion) == set(fusion)  # gamma, query, key, value all moved
    assert _changed(prompts, net.prompts) == {"ctx_pos", "ctx_neg"}
    assert all(not m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_ablation_switches_change_exactly_what_they_name():
    base = build("intclip")
    assert isinstance(base.net.fusion, SightAssistedAggregation) and base.net.sight is not None
    no_sa = build("intclip:no-sa")
    assert isinstance(no_sa.net.fusion, AddFusion)
    sa_params = sum(p.numel() for p in base.net.fusion.parameters())
    assert base.param_counts()["learnable"] - no_sa.param_counts()["learnable"] == sa_params
    assert isinstance(build("intclip:fusion-concat-mlp").net.fusion, ConcatMLPFusion)
    single = build("intclip:no-sie-sa")
    assert single.net.sight is None and single.net.fusion is None
    assert single.param_counts()["learnable"] == sum(p.numel() for p in single.net.prompts.parameters())
    assert build("intclip:dual-none").param_counts()["learnable"] == sa_params + sum(p.numel() for p in base.net.prompts.parameters())
    # HCI: only the class text changes
    names = build("intclip:no-hci")
    assert not torch.equal(names.net.prompts.tokens, base.net.prompts.tokens)
    assert names.param_counts() == base.param_counts()
    consolidated = build("intclip:consolidated")
    assert consolidated.config.class_text == "hierarchy" and consolidated.param_counts() == base.param_counts()
    assert class_texts(placeholder_task(2).classes, "hierarchy") == ["coarse, middle, class 0", "coarse, middle, class 1"]
    assert class_texts(placeholder_task(1).classes, "hci") == ["an intention numbered 0"]


@pytest.mark.slow
def test_global_token_default_and_official_top_left():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 96, 96)
    for name, index in (("intclip", 0), ("intclip:official", 1)):
        method = build(name)
        net = method.net
        with torch.no_grad():
            semantic, _ = net.tokens(net.semantic(net.shared(images)))
            tokens = net.image_tokens(images)
        torch.testing.assert_close(tokens[:, 0], semantic[:, index])
        assert tokens.shape == semantic.shape  # 1 + HW tokens


def test_presets_and_variant_names():
    official = METHODS.get("intclip-official").Config()
    assert (official.lr_prompt, official.lr_visual, official.epochs, official.batch_size) == (4e-4, 4e-5, 60, 64)
    assert official.semantic_layers == ["layer3", "layer4"] and official.preprocessing == "official"
    paper = METHODS.get("intclip").Config()
    assert (paper.lr_prompt, paper.epochs, paper.batch_size, paper.semantic_layers) == (0.002, 50, 32, ["layer4"])
    assert METHODS.get("intclip").Config(preset="official", epochs=3).epochs == 3  # explicit keys win
    method = build("intclip-official")
    lrs = sorted(g["lr"] for g in method.configure_optimizers(1)[0].param_groups)
    assert lrs == pytest.approx([1e-5, 1e-5])  # warmup epoch: both groups at the constant 1e-5
    assert [g["initial_lr"] for g in method.configure_optimizers(1)[0].param_groups] == [4e-4, 4e-5]
    with pytest.raises(UnknownNameError, match=r"did you mean 'intclip:no-sa'"):
        METHODS.get("intclip:no-sb")
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        METHODS.get("intclip").Config(preset="fast")


@pytest.mark.slow
def test_vit_b32_builds_with_cls_and_patch_tokens():
    method = build("intclip", num_classes=28, backbone="ViT-B-32")
    assert method.param_counts()["learnable"] == 22_050_689  # 3 blocks 21,263,616 + SA 328,321 + prompts 458,752
    with torch.no_grad():
        tokens = method.net.image_tokens(torch.randn(1, 3, 224, 224))
    assert tokens.shape == (1, 50, 512)
