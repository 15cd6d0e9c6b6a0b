"""`intclip-official` against an independent reference of the released IntCLIP code's mathematics.

The reference below is written from the paper and the released code's formulas with plain tensor operations: it
uses the CLIP model's own building blocks (the stem, the bottleneck layers and the text transformer, OpenAI's
definitions) as weight containers, but none of the harness's IntCLIP, DualCoOp or prompt code. It runs the whole
77-token text pass, builds the prompts by overwriting the filler embeddings, pools and fuses the maps with explicit
matrix products, and trains with torch's own SGD over the official parameter groups. Every path is exercised:
BatchNorm running statistics and affine weights far from their defaults, a semantic branch that differs from the
sight branch, and SA's gamma at 0.5 (0 at init would hide the attention).

It runs on two towers: the tiny CLIP (one bottleneck per stage) and a deeper ModifiedResNet whose layer3 has, like
RN101's (1 + 22 blocks), bottlenecks without a downsample path after the first: their identity is the block's input
itself, and the residual add and the last ReLU work in place on the block's output, which the next block keeps as
its identity. Every gradient tensor of both copies of layer3 and layer4 is checked by name: each tensor of the
semantic copy (convolutions and BatchNorm affine weights) against the reference's, to 1e-5 relative; the sight copy,
frozen in the released code, must get no gradient in either.
"""

import copy
import json

import open_clip
import pytest
import torch
import torch.nn.functional as F

from bench.backbones.loader import TINY_CLIP, BackboneSpec, load_backbone
from bench.train.engine import RunContext, train_step
from bench.pipeline.params import placeholder_task
from bench.registry import METHODS

CPU = torch.device("cpu")

# layer3: 3 bottlenecks (the first with the downsample path, as every stage's), layer4: 2; 3x3 maps at 96 px. (Its
# name matches no pattern that tests of `bench ls backbones` list.)
DEEP_RN = "intclip-reference-deep-rn"
DEEP_RN_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 96, "layers": [1, 1, 3, 2], "width": 16, "head_width": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def deep_resnet(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deep-rn-config")
    (folder / f"{DEEP_RN}.json").write_text(json.dumps(DEEP_RN_CONFIG))
    open_clip.add_model_config(folder)
    yield BackboneSpec("deep-rn", DEEP_RN, "none")
    factory = open_clip.factory  # unregister it again (best effort: open_clip keeps its registry private)
    if folder in getattr(factory, "_MODEL_CONFIG_PATHS", []):
        factory._MODEL_CONFIG_PATHS.remove(folder)
    getattr(factory, "_MODEL_CONFIGS", {}).pop(DEEP_RN, None)


def _perturbed_clip(spec=TINY_CLIP):
    torch.manual_seed(0)
    backbone = load_backbone(spec, "none")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in backbone.model.visual.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics and affine weights
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.weight.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return backbone


def _stem(v, x):
    x = v.act1(v.bn1(v.conv1(x)))
    x = v.act2(v.bn2(v.conv2(x)))
    x = v.act3(v.bn3(v.conv3(x)))
    return v.avgpool(x)


def _dense_tokens(attnpool, fmap):
    """The released code's attention-free pooling: [mean, HW spatial] + positional embedding, then v_proj, c_proj."""
    b, c, h, w = fmap.shape
    x = fmap.reshape(b, c, h * w).permute(2, 0, 1)  # [HW, B, C]
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0) + attnpool.positional_embedding[:, None, :]
    x = F.linear(x, attnpool.v_proj.weight, attnpool.v_proj.bias)
    return F.linear(x, attnpool.c_proj.weight, attnpool.c_proj.bias).permute(1, 0, 2)  # [B, 1 + HW, D]


def _text_features(clip, tokens, ctx):
    """Full 77-token pass; the prompt's filler embeddings (positions 1..n_ctx) replaced by the context."""
    x = clip.token_embedding(tokens).clone()
    x[:, 1 : 1 + ctx.shape[1]] = ctx
    x = x + clip.positional_embedding
    x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
    return x[torch.arange(len(tokens)), tokens.argmax(-1)] @ clip.text_projection


def reference_logits(clip, sem3, sem4, sa, ctx_pos, ctx_neg, tokens, images):
    v = clip.visual
    shared = v.layer2(v.layer1(_stem(v, images)))
    sight = _dense_tokens(v.attnpool, v.layer4(v.layer3(shared)))
    semantic = _dense_tokens(v.attnpool, sem4(sem3(shared)))
    b, n, d = sight.shape
    side = int((n - 1) ** 0.5)
    sight_map = sight[:, 1:].transpose(1, 2)  # [B, D, HW]
    sem_map = semantic[:, 1:].transpose(1, 2)
    q = torch.einsum("oc,bcn->bon", sa["query.weight"][:, :, 0, 0], sem_map) + sa["query.bias"][None, :, None]
    k = torch.einsum("oc,bcn->bon", sa["key.weight"][:, :, 0, 0], sem_map) + sa["key.bias"][None, :, None]
    val = torch.einsum("oc,bcn->bon", sa["value.weight"][:, :, 0, 0], sight_map) + sa["value.bias"][None, :, None]
    attention = torch.softmax(torch.bmm(q.transpose(1, 2), k), dim=-1)  # over keys, no scaling
    fused = sa["gamma"] * torch.bmm(val, attention.transpose(1, 2)) + (sight_map + sem_map) / 2
    tokens_img = torch.cat([semantic[:, 1:2], fused.transpose(1, 2)], dim=1)  # the top-left token in front
    assert tokens_img.shape == (b, 1 + side * side, d)
    f = F.normalize(tokens_img, dim=-1)
    t_pos = F.normalize(_text_features(clip, tokens, ctx_pos), dim=-1)
    t_neg = F.normalize(_text_features(clip, tokens, ctx_neg), dim=-1)
    s_pos, s_neg = 20 * f @ t_pos.T, 20 * f @ t_neg.T  # [B, R, C]
    w = torch.softmax(s_pos, dim=1)
    return 5 * (w * s_pos).sum(1), 5 * (w * s_neg).sum(1)


def reference_loss(logit_pos, logit_neg, y):
    p = torch.softmax(torch.stack([logit_neg, logit_pos], -1), -1)[..., 1]
    xs_neg = (1 - p + 0.05).clamp(max=1)
    loss = y * torch.log(p.clamp(min=1e-6)) + (1 - y) * torch.log(xs_neg.clamp(min=1e-6))
    with torch.no_grad():
        pt = p * y + xs_neg * (1 - y)
        weight = (1 - pt) ** (1.0 * y + 2.0 * (1 - y))
    return -0.03 * (loss * weight).sum()


@pytest.mark.slow
@pytest.mark.parametrize("tower", ["tiny-clip", "deep-resnet"])
def test_intclip_official_equals_an_independent_reference_of_the_released_code(tmp_path, request, tower):
    spec = TINY_CLIP if tower == "tiny-clip" else request.getfixturevalue("deep_resnet")
    backbone = _perturbed_clip(spec)
    data = placeholder_task(5)
    config = METHODS.get("intclip-official").Config(n_ctx=4, augment="none", preprocessing="official", class_text="hci")
    method = METHODS.get("intclip-official")(config, backbone, data, CPU)
    net = method.net
    with torch.no_grad():  # SA active, and a semantic branch that differs from the sight branch
        net.fusion.gamma.fill_(0.5)
        for p in net.semantic.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    method.train(True)

    # the reference's own copies of every weight, in float64: what it computes is the exact math, and the comparison
    # measures only the harness's float32 rounding
    clip = copy.deepcopy(backbone.model).double()
    sem3, sem4 = copy.deepcopy(net.semantic[0]).double(), copy.deepcopy(net.semantic[1]).double()
    sa = {k: v.detach().double().clone().requires_grad_(True) for k, v in net.fusion.state_dict().items()}
    ctx_pos = net.prompts.ctx_pos.detach().double().clone().requires_grad_(True)
    ctx_neg = net.prompts.ctx_neg.detach().double().clone().requires_grad_(True)
    for m in (clip, sem3, sem4):
        m.eval()  # the released code keeps every BatchNorm in eval mode
    tokens = net.prompts.tokens
    ref_semantic = torch.nn.Sequential(sem3, sem4)  # named as net.semantic: 0.* the layer3 copy, 1.* the layer4 copy
    ref_visual = list(ref_semantic.parameters())
    for p in clip.parameters():
        p.requires_grad_(False)
    if tower == "deep-resnet":  # the structure this tower is here for
        assert len(net.semantic[0]) == 3 and all(block.downsample is None for block in net.semantic[0][1:])

    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (2, 96, 96, 3), dtype=torch.uint8, generator=g)
    labels = (torch.rand(2, 5, generator=g) < 0.4).float()
    x = images.permute(0, 3, 1, 2).float() / 255  # the released code: ToTensor, no normalisation
    torch.testing.assert_close(method.prepare(images), x)

    # logits, loss and gradients
    x64, labels64 = x.double(), labels.double()
    lp_ref, ln_ref = reference_logits(clip, sem3, sem4, sa, ctx_pos, ctx_neg, tokens, x64)
    lp, ln = net(x)
    assert _relative(lp.double(), lp_ref) < 1e-5 and _relative(ln.double(), ln_ref) < 1e-5
    ref_loss = reference_loss(lp_ref, ln_ref, labels64)
    loss = method.training_loss(x, labels)
    assert abs(loss.item() - ref_loss.item()) / abs(ref_loss.item()) < 1e-5
    ref_loss.backward()
    loss.backward()
    # what trains is what the released code trains: the prompts, SA and every tensor of the semantic copies
    semantic, theirs_semantic = dict(net.semantic.named_parameters()), dict(ref_semantic.named_parameters())
    assert semantic.keys() == theirs_semantic.keys()
    names = ["prompts.ctx_pos", "prompts.ctx_neg", *(f"fusion.{k}" for k in sa), *(f"semantic.{n}" for n in semantic)]
    trained = {n for n, p in net.named_parameters() if p.grad is not None}
    assert trained == {n for n, p in net.named_parameters() if p.requires_grad} == set(names)
    # the sight copy (the tower's own layer3 and layer4) is frozen in both and gets no gradient in either; it
    # shares no tensor with the semantic copy
    sight = dict(net.sight.named_parameters())
    assert sight.keys() == semantic.keys()
    for n, p in sight.items():
        assert not p.requires_grad and p.grad is None, n
        assert p.data_ptr() != semantic[n].data_ptr() and not torch.equal(p, semantic[n]), n
    for layer in (clip.visual.layer3, clip.visual.layer4):
        assert all(p.grad is None for p in layer.parameters())
    pairs = [(net.prompts.ctx_pos, ctx_pos), (net.prompts.ctx_neg, ctx_neg)]
    pairs += [(net.fusion.state_dict(keep_vars=True)[k], sa[k]) for k in sa]
    pairs += [(semantic[n], theirs_semantic[n]) for n in semantic]
    errors = {}
    for name, (ours, theirs) in zip(names, pairs, strict=True):
        if theirs.grad.norm() < 1e-15:  # SA's key bias: softmax over keys cancels it, its exact gradient is 0
            assert ours.grad.norm() < 1e-7, name
            continue
        errors[name] = _relative(ours.grad.double(), theirs.grad)
    assert len(errors) == len(pairs) - 1  # every tensor but SA's key bias
    worst = sorted(errors.items(), key=lambda kv: -kv[1])[:5]
    assert max(errors.values()) < 1e-5, worst

    # two SGD steps with the official groups (4e-4 prompts; 4e-5 semantic layers and SA), momentum 0.9, wd 5e-4
    method.model.zero_grad(set_to_none=True)
    for p in [ctx_pos, ctx_neg, *sa.values(), *ref_visual]:
        p.grad = None
    optimizer, _ = method.configure_optimizers(1)
    # the official groups' lrs x 50, so that two steps move the weights well above float32 rounding (weight decay
    # included); the ratio of the groups is the official one
    scale = 50
    ref_opt = torch.optim.SGD(
        [{"params": [ctx_pos, ctx_neg], "lr": 4e-4 * scale}, {"params": [*ref_visual, *sa.values()], "lr": 4e-5 * scale}],
        momentum=0.9, weight_decay=5e-4,
    )
    assert [g["lr"] for g in optimizer.param_groups] == [1e-5, 1e-5]  # epoch 0: Dassl's constant warmup
    assert [g["initial_lr"] for g in optimizer.param_groups] == [4e-4, 4e-5]
    for group in optimizer.param_groups:  # the steps of epoch 1, where the cosine starts at the base lrs
        group["lr"] = group["initial_lr"] * scale
    start = [(ours.detach().double(), theirs.detach().clone()) for ours, theirs in pairs]
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    ctx = RunContext(run_dir=tmp_path, seed=0, device=CPU, log=lambda *_: None)
    for _ in range(2):
        train_step(method, x, labels, optimizer, scaler, ctx)
        ref_opt.zero_grad()
        reference_loss(*reference_logits(clip, sem3, sem4, sa, ctx_pos, ctx_neg, tokens, x64), labels64).backward()
        ref_opt.step()
    for (ours, theirs), (ours0, theirs0) in zip(pairs, start):
        assert _relative(ours.detach().double(), theirs.detach()) < 1e-5
        # the updates themselves (weight decay and momentum included), not only the weights they moved, to the
        # float32 rounding of the weights they were added to
        rounding = 4 * torch.finfo(torch.float32).eps * float(theirs0.abs().max())
        torch.testing.assert_close(ours.detach().double() - ours0, theirs.detach() - theirs0, rtol=1e-3, atol=rounding)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||: the relative error of a whole tensor."""
    return float(((a - b).norm() / b.norm().clamp(min=1e-30)).detach())
