"""The math shared by the prompt methods and IntCLIP's parts, against hand computations."""

import math

import numpy as np

import pytest
import torch

from bench.backbones.loader import load_backbone
from bench.methods.components import asymmetric_loss, encode_prompts, region_aggregation, warmup_cosine
from bench.methods.intclip import AddFusion, SightAssistedAggregation
from bench.registry import BACKBONES


def test_region_aggregation_matches_the_formula_by_hand():
    # two regions, one class, 2-d features chosen so cosines are exact
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # f_1 = (1, 0), f_2 = (0, 1) after normalisation
    t_pos = torch.tensor([[1.0, 0.0]])
    t_neg = torch.tensor([[0.0, 3.0]])
    lp, ln = region_aggregation(tokens, t_pos, t_neg)
    s_pos = torch.tensor([20.0, 0.0])  # 20 <f_r, t+>
    s_neg = torch.tensor([0.0, 20.0])
    w = torch.softmax(s_pos, 0)
    assert lp.item() == pytest.approx(5 * (w * s_pos).sum().item())
    assert ln.item() == pytest.approx(5 * (w * s_neg).sum().item())
    p = torch.softmax(torch.stack([ln, lp], -1), -1)[..., 1]
    assert p.item() == pytest.approx(torch.sigmoid(lp - ln).item())


def test_asymmetric_loss_matches_its_formula_and_is_fp16_safe():
    lp, ln = torch.tensor([[2.0, -1.0]]), torch.tensor([[0.0, 1.0]])
    y = torch.tensor([[1.0, 0.0]])
    p1 = 1 / (1 + math.exp(-(2.0 - 0.0)))  # positive class, p = sigmoid(l+ - l-)
    p2 = 1 / (1 + math.exp(-(-1.0 - 1.0)))  # negative class
    pos_term = (1 - p1) ** 1 * math.log(p1)
    q = min(1 - p2 + 0.05, 1.0)  # clipped negative probability
    neg_term = (1 - q) ** 2 * math.log(q)
    assert asymmetric_loss(lp, ln, y).item() == pytest.approx(-(pos_term + neg_term), rel=1e-6)
    big = torch.tensor([[60000.0, -60000.0]], dtype=torch.float16)
    out = asymmetric_loss(big, -big, torch.tensor([[0.0, 1.0]]))
    assert out.dtype == torch.float32 and torch.isfinite(out)


def test_sa_at_gamma_zero_is_the_branch_average_and_attends_without_scaling():
    torch.manual_seed(0)
    sa = SightAssistedAggregation(16)
    sight, semantic = torch.randn(2, 16, 3, 3), torch.randn(2, 16, 3, 3)
    torch.testing.assert_close(sa(sight, semantic), AddFusion()(sight, semantic))
    with torch.no_grad():
        sa.gamma.fill_(0.7)
    q = torch.einsum("oc,bcn->bon", sa.query.weight[:, :, 0, 0], semantic.flatten(2)) + sa.query.bias[None, :, None]
    k = torch.einsum("oc,bcn->bon", sa.key.weight[:, :, 0, 0], semantic.flatten(2)) + sa.key.bias[None, :, None]
    v = torch.einsum("oc,bcn->bon", sa.value.weight[:, :, 0, 0], sight.flatten(2)) + sa.value.bias[None, :, None]
    out = torch.zeros_like(v)
    for i in range(9):  # token i attends over keys j with softmax_j(q_i . k_j)
        a = torch.softmax((q[:, :, i : i + 1] * k).sum(1), dim=-1)  # [B, N]
        out[:, :, i] = (v * a[:, None, :]).sum(-1)
    expected = 0.7 * out + (sight.flatten(2) + semantic.flatten(2)) / 2
    torch.testing.assert_close(sa(sight, semantic).flatten(2), expected, rtol=1e-5, atol=1e-5)


def test_truncated_text_tower_equals_the_full_77_token_pass():
    clip = load_backbone(BACKBONES.get("tiny-clip"), "none").model
    tokenizer = load_backbone(BACKBONES.get("tiny-clip"), "none").tokenizer
    tokens = tokenizer(["X X X a short one.", "X X X a much longer prompt with many more words in it."])
    emb = clip.token_embedding(tokens)
    with torch.no_grad():
        full = encode_prompts(clip, emb, tokens, truncate=False)
        cut = encode_prompts(clip, emb, tokens, truncate=True)
        ref = clip.encode_text(tokens)
    torch.testing.assert_close(cut, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full, ref, rtol=1e-5, atol=1e-5)


def _dassl_lrs(base_lrs: list[float], epochs: int, warmup_epochs: int, warmup_lr: float) -> list[list[float]]:
    """What the released code's optimizer sees each epoch: torch's own CosineAnnealingLR(T_max=epochs), driven the way
    Dassl's ConstantWarmupScheduler drives it (warmup recounted): during the warmup epochs every group runs at
    ``warmup_lr`` and the cosine is not stepped; at the first epoch after warmup the lrs are the cosine's current
    (base) lrs; from then on every epoch steps the cosine once."""
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in base_lrs], lr=base_lrs[0])
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, float(epochs))
    out = []
    for epoch in range(epochs):
        if epoch < warmup_epochs:
            lrs = [warmup_lr] * len(base_lrs)
        else:
            if epoch > warmup_epochs:
                opt.step()  # (no gradients: no update; keeps torch's step-order check quiet)
                cosine.step()
            lrs = cosine.get_last_lr()
        for group, lr in zip(opt.param_groups, lrs):
            group["lr"] = lr
        out.append([g["lr"] for g in opt.param_groups])
    return out


def test_warmup_cosine_is_dassls_constant_warmup_around_cosine_annealing():
    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p1], "lr": 4e-4}, {"params": [p2], "lr": 4e-5}], lr=4e-4)
    sched = warmup_cosine(opt, epochs=60, warmup_epochs=1, warmup_lr=1e-5)
    lrs = []
    for _ in range(60):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    reference = _dassl_lrs([4e-4, 4e-5], 60, 1, 1e-5)
    for epoch, (ours, theirs) in enumerate(zip(lrs, reference)):
        assert ours == pytest.approx(theirs, rel=0, abs=1e-9), epoch
    assert lrs[0] == [1e-5, 1e-5]
    # the numbers for the prompt group (base 4e-4)
    assert lrs[1][0] == pytest.approx(4.000e-4, rel=1e-4)
    assert lrs[30][0] == pytest.approx(2.105e-4, rel=1e-3)
    assert lrs[59][0] == pytest.approx(1.096e-6, rel=1e-3)
    closed = [b * 0.5 * (1 + math.cos(math.pi * (e - 1) / 60)) for e in range(1, 60) for b in (4e-4, 4e-5)]
    assert [lr for row in lrs[1:] for lr in row] == pytest.approx(closed, rel=1e-12)


@pytest.mark.slow
def test_linear_probe_cached_feature_scores_equal_a_pass_over_the_images(tmp_path):
    from bench.datasets.synthetic import SyntheticIntentions
    from bench.train.engine import RunContext, predict_split, run_method
    from bench.methods.linear_probe import LinearProbe

    cfg = SyntheticIntentions.Config(n_train=64, n_val=32, n_test=32)
    data = SyntheticIntentions(cfg, None, tmp_path / "data").load(96)
    probe = LinearProbe(LinearProbe.Config(c_grid=[0.1, 10.0], refine_steps=0), load_backbone(BACKBONES.get("tiny-clip")), data, torch.device("cpu"))
    ctx = RunContext(run_dir=tmp_path / "run", seed=0, device=torch.device("cpu"), cache_dir=tmp_path / "cache", log=lambda *_: None)
    out = run_method(probe, data, ctx)
    assert len(list((tmp_path / "cache" / "features").glob("*.npy"))) == 3  # train, val, test encoded once each
    recomputed = predict_split(probe, data.splits["test"], ctx)  # a fresh pass over the images
    np.testing.assert_allclose(out.test_scores, recomputed, atol=1e-5)


def test_prompt_losses_take_single_label_class_indices_as_one_hot_targets():
    """EmotionROI/FI give class indices [B]; IntCLIP and DualCoOp's ASL reads them as one positive per image (it
    raised a shape error before)."""
    from bench.methods.components import PromptTrainingConfig

    torch.manual_seed(0)
    pos, neg = torch.randn(5, 6), torch.randn(5, 6)
    labels = torch.tensor([0, 3, 5, 2, 3])
    config = PromptTrainingConfig()
    one_hot = torch.zeros(5, 6)
    one_hot[torch.arange(5), labels] = 1.0
    assert config.loss(pos, neg, labels).item() == pytest.approx(config.loss(pos, neg, one_hot).item(), abs=0, rel=1e-7)
    expected = config.loss_weight * asymmetric_loss(pos, neg, one_hot, config.gamma_neg, config.gamma_pos, config.asl_clip, config.asl_eps)
    assert config.loss(pos, neg, labels).item() == expected.item()
