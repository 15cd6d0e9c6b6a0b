"""Every speed optimisation preserves the math (CPU, tiny models): truncated vs full text features, cached vs
recomputed eval text features and linear-probe features, fused/foreach vs for-loop optimizers, channels_last,
batched vs per-image RandAugment, prefetched batches, torch.compile, and a few training steps of the project's
path (bench.train.engine.train_step) against the official code's (bench.tools.reference_step.ReferenceTrainer)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.tools import reference_step as speed
from bench.backbones.loader import load_backbone
from bench.train.batches import batch_indices, prefetch_batches
from bench.datasets.base import ClassInfo, DatasetData, Split
from bench.train.engine import RunContext, predict_split, train_epoch
from bench.errors import TrainingDivergedError
from bench.methods.components import PromptLearner, prompt_features
from bench.registry import BACKBONES, METHODS

CPU = torch.device("cpu")
TEXTS = ["joy", "a much longer sentence about an intention, with many more words in it", "being attractive"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_backbone(BACKBONES.get("tiny-clip"), "none")


def task(texts=TEXTS) -> DatasetData:
    classes = [ClassInfo(f"c{i}", t, t, ("coarse", "middle")) for i, t in enumerate(texts)]
    return DatasetData("toy", "multilabel", classes, ["coarse", "middle", "fine"], {}, "0" * 64)  # type: ignore[arg-type]


def batch(n=4, px=96, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, px, px, 3), dtype=torch.uint8, generator=g)
    labels = (torch.rand(n, c, generator=g) > 0.5).float()
    return images, labels


# -- text side ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_truncated_prompt_features_and_their_gradients_equal_the_full_77_position_pass(tiny):
    clip = tiny.model
    torch.manual_seed(0)
    prompts = PromptLearner(clip, tiny.tokenizer, TEXTS, n_ctx=4)
    assert prompts.text_length < prompts.tokens.shape[1] == 77
    pos_cut, neg_cut = prompt_features(clip, prompts, truncate=True)
    grad_cut = torch.autograd.grad((pos_cut.square().sum() + 3 * neg_cut.sum()), [prompts.ctx_pos, prompts.ctx_neg])
    pos, neg = prompt_features(clip, prompts, truncate=False)
    grad = torch.autograd.grad((pos.square().sum() + 3 * neg.sum()), [prompts.ctx_pos, prompts.ctx_neg])
    torch.testing.assert_close(pos_cut, pos, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(neg_cut, neg, rtol=1e-5, atol=1e-5)
    for a, b in zip(grad_cut, grad, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)

    # independent reference: contexts set to the embedding of the literal "X" tokens make the prompts plain text,
    # whose features open_clip's own encode_text computes over all 77 positions
    with torch.no_grad():
        x_embedding = clip.token_embedding(prompts.tokens[:, 1 : 1 + prompts.n_ctx])
        prompts.ctx_pos.copy_(x_embedding)
        pos_cut, _ = prompt_features(clip, prompts, truncate=True)
        torch.testing.assert_close(pos_cut, clip.encode_text(prompts.tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["intclip", "dualcoop"])
def test_eval_text_features_are_computed_once_per_pass_and_equal_recomputed_ones(name, tmp_path):
    reference, project = speed.build_pair(name, "tiny-clip", task(), CPU, {"n_ctx": 4, "batch_size": 4})
    owner = project.net if name == "intclip" else project
    text_features, calls = owner.text_features, []
    owner.text_features = lambda: calls.append(1) or text_features()  # what start_eval calls
    images, labels = batch(n=12)
    split = Split(images.numpy(), labels.numpy(), [str(i) for i in range(12)])
    ctx = RunContext(run_dir=tmp_path, seed=0, device=CPU, eval_batch_size=4, log=lambda *_: None)
    optimizer, _ = project.configure_optimizers(1)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    for epoch in range(2):
        calls.clear()
        scores = predict_split(project, split, ctx)  # three batches
        if name == "dualcoop":
            assert len(calls) == 1  # one text pass for the whole split
        reference.model.eval()
        expected = torch.cat([speed.reference_scores(reference, reference.prepare(images[i : i + 4])) for i in range(0, 12, 4)])
        np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-5, atol=1e-6)
        train_epoch(project, split, optimizer, scaler, None, ctx, epoch)  # moves the prompts: no stale cache
        reference.load_state_dict(project.state_dict())
    if name == "intclip":
        calls.clear()
        project.model.eval()
        project.start_eval()
        for i in range(3):
            project.predict(project.prepare(images[:4]))
        assert len(calls) == 1


# -- linear probe --------------------------------------------------------------------------------------------------
def test_linear_probe_features_are_cached_once_per_split_and_equal_a_fresh_encode(tiny, tmp_path, monkeypatch):
    from bench.methods.linear_probe import LinearProbe

    probe = LinearProbe(LinearProbe.Config(), tiny, task(), CPU)
    images = batch(n=10)[0].numpy()
    fresh = probe._encode(images, batch_size=4)
    reference = torch.cat([tiny.model.encode_image(probe.prepare(torch.from_numpy(images[i : i + 1]))) for i in range(10)])
    np.testing.assert_allclose(fresh, reference.detach().numpy(), rtol=1e-5, atol=1e-5)  # batching changes nothing

    first = probe.features("train", images, "m" * 64, tmp_path, batch_size=4)
    np.testing.assert_array_equal(first, fresh)
    monkeypatch.setattr(probe, "_encode", lambda *a, **k: pytest.fail("features were encoded twice"))
    np.testing.assert_array_equal(probe.features("train", images, "m" * 64, tmp_path, batch_size=7), fresh)
    assert len(list((tmp_path / "features").glob("*.npy"))) == 1
    with pytest.raises(pytest.fail.Exception):  # another split (or preprocessing, or dataset version) is a new key
        probe.features("val", images, "m" * 64, tmp_path, batch_size=4)


# -- optimizers, memory format -----------------------------------------------------------------------------------
def _fused_supported(kind) -> bool:
    try:
        kind([torch.nn.Parameter(torch.zeros(2))], lr=0.1, fused=True)
        return True
    except (RuntimeError, TypeError, ValueError):
        return False


@pytest.mark.parametrize("kind", [torch.optim.SGD, torch.optim.AdamW])
def test_fused_and_foreach_optimizers_take_the_for_loop_steps(kind):
    impls = [{"foreach": False}, {"foreach": True}] + ([{"fused": True}] if _fused_supported(kind) else [])
    extra = {"momentum": 0.9, "weight_decay": 5e-4} if kind is torch.optim.SGD else {"weight_decay": 1e-2}
    results = []
    for options in impls:
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(*s)) for s in [(5, 3), (7,), (2, 4, 4)]]
        opt = kind([{"params": params[:2], "lr": 0.01}, {"params": params[2:], "lr": 0.001}], lr=0.01, **extra, **options)
        for step in range(4):
            opt.zero_grad()
            sum((p * (step + 1)).sin().sum() for p in params).backward()
            opt.step()
        results.append([p.detach().clone() for p in params])
    assert len(results) >= 2
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_optimizer_impl_and_memory_format_reach_the_optimizer_and_the_weights():
    cls = METHODS.get("intclip")
    bb = load_backbone(BACKBONES.get("tiny-clip"), "none")
    method = cls(cls.Config(n_ctx=4, optimizer_impl="foreach", memory_format="channels_last"), bb, task(), CPU)
    optimizer, _ = method.configure_optimizers(1)
    assert optimizer.defaults["foreach"] is True
    conv = method.net.semantic[-1][0].conv2.weight  # 3x3: the two formats differ
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert method.prepare(batch()[0]).is_contiguous(memory_format=torch.channels_last)
    auto = cls(cls.Config(n_ctx=4), load_backbone(BACKBONES.get("tiny-clip"), "none"), task(), CPU)
    assert not auto.channels_last and auto.optimizer_options() == {}  # auto on CPU: torch's defaults


# -- a few training steps: project path vs the official code's ---------------------------------------------------
FAST = {"memory_format": "channels_last", "optimizer_impl": "foreach"}  # the GPU defaults, forced on the CPU


Q2L = {"hidden_dim": 32, "dim_feedforward": 64, "augment": False, "dropout": 0.0}


@pytest.mark.parametrize(
    "name, config, param_atol",
    [
        # (no training augmentation: the two paths would draw different crops; tests/test_fidelity.py checks it)
        ("intclip-official", {"n_ctx": 4, "augment": "none", **FAST}, 1e-5),
        ("intclip", {"n_ctx": 4, **FAST}, 1e-5),
        ("dualcoop", {"n_ctx": 4, "augment": "none", **FAST}, 1e-5),
        ("query2label", {**Q2L, "optimizer_impl": "foreach"}, 1e-6),
        # AdamW normalises each gradient by its own scale, so weights whose gradient is float noise (exactly zero
        # in exact arithmetic: attention key biases, which the softmax ignores; near zero for others at random
        # init) take lr-sized steps whose sign the summation order (channels_last) decides. They change no
        # output: compared in function space only (losses above, scores below)
        ("query2label", {**Q2L, **FAST}, None),
    ],
)
@pytest.mark.slow
def test_training_steps_of_the_project_path_agree_with_the_official_path(tiny, name, config, param_atol):
    reference, project = speed.build_pair(name, "tiny-clip", task(), CPU, config)
    if name.startswith("intclip"):
        with torch.no_grad():  # SA's gamma starts at 0: give its attention a part in the comparison
            for m in (reference, project):
                m.net.fusion.gamma.fill_(0.5)
    ref_trainer, proj_trainer = speed.ReferenceTrainer(reference, CPU), speed.ProjectTrainer(project, CPU)
    if name.startswith(("intclip", "dualcoop")):  # the reference computes the text tower's weight gradients
        assert all(p.requires_grad for p in speed.text_tower_parameters(reference))
        assert not any(p.requires_grad for p in speed.text_tower_parameters(project))
    for trainer in (ref_trainer, proj_trainer):  # past the warmup: steps large enough to compare
        trainer.scheduler = None
        for group in trainer.optimizer.param_groups:
            group["lr"] = 1e-3 if name == "query2label" else 0.02
    start = speed.clone_learnable(project)
    for seed in range(3):
        images, labels = batch(seed=seed)
        ref_loss = ref_trainer.step(reference.prepare(images), labels)
        proj_loss = proj_trainer.step(project.prepare(images), labels)
        assert proj_loss.item() == pytest.approx(ref_loss, rel=1e-4, abs=1e-6)
    after_ref, after_proj = speed.clone_learnable(reference), speed.clone_learnable(project)
    assert speed.max_abs_diff(after_proj, start) > 1e-4  # the steps moved the weights
    for key in after_proj if param_atol is not None else ():  # (the reference's also has the text tower)
        torch.testing.assert_close(after_proj[key], after_ref[key], rtol=1e-4, atol=param_atol, msg=key)
    if name == "query2label":  # the EMA: tensor by tensor (official) vs one foreach lerp
        assert speed.max_abs_diff(reference._ema, project._ema) < 1e-5
    images = batch(seed=99)[0]
    for m in (reference, project):
        m.model.eval()
    project.start_eval()
    ref_scores = speed.reference_scores(reference, reference.prepare(images))
    torch.testing.assert_close(speed.project_scores(project, project.prepare(images)), ref_scores, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_compiled_forward_takes_the_same_training_step(tiny):
    cls = METHODS.get("dualcoop")
    runs = []
    for mode in ("off", "default"):
        torch.manual_seed(0)
        bb = load_backbone(BACKBONES.get("tiny-clip"), "none")
        method = cls(cls.Config(n_ctx=4, compile=mode, compile_backend="eager"), bb, task(), CPU)
        trainer = speed.ProjectTrainer(method, CPU)
        images, labels = batch()
        losses = [trainer.step(method.prepare(images), labels).item() for _ in range(2)]
        runs.append((losses, speed.clone_learnable(method)))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-6)
    assert speed.max_abs_diff(runs[0][1], runs[1][1]) < 1e-6


# -- data path ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_batched_randaugment_equals_torchvision_per_image_with_the_same_draws(seed):
    from torchvision.transforms import v2

    from bench.methods.augment import BatchedRandAugment

    g = torch.Generator().manual_seed(seed)  # blocky images: every op (incl. equalize, sharpness) has work to do
    images = (torch.rand(24, 3, 8, 8, generator=g) * 255).to(torch.uint8).repeat_interleave(6, 2).repeat_interleave(6, 3)
    images[:, :, :4] = torch.randint(0, 256, (24, 3, 4, 48), dtype=torch.uint8, generator=g)
    torch.manual_seed(seed)
    reference = v2.RandAugment(num_ops=2, magnitude=9)
    expected = torch.stack([reference(img) for img in images])
    after_reference = torch.rand(())
    torch.manual_seed(seed)
    got = BatchedRandAugment(num_ops=2, magnitude=9)(images)
    assert torch.rand(()) == after_reference  # the same random stream consumed
    assert torch.equal(got, expected)
    assert not torch.equal(got, images)


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_prefetched_batches_are_exactly_the_gathered_batches(depth):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (37, 4, 4, 3), dtype=np.uint8)
    labels = rng.random((37, 2)).astype(np.float32)
    order = list(batch_indices(37, 8, shuffle=True, seed=3, epoch=1))
    got = list(prefetch_batches(images, labels, iter(order), depth=depth))
    assert len(got) == len(order)
    for (x, y), idx in zip(got, order, strict=True):
        np.testing.assert_array_equal(x.numpy(), images[idx])
        np.testing.assert_array_equal(y.numpy(), labels[idx])
    stream = prefetch_batches(images, labels, iter(order), depth=depth)
    next(stream)
    stream.close()  # stopping early does not hang on the background thread

    def broken():
        yield order[0]
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(prefetch_batches(images, labels, broken(), depth=depth))


def test_deferred_loss_check_still_stops_at_the_first_nonfinite_step(tiny, tmp_path):
    cls = METHODS.get("dualcoop")
    method = cls(cls.Config(n_ctx=4, batch_size=4), tiny, task(), CPU)
    images, labels = batch(n=24)
    split = Split(images.numpy(), labels.numpy(), [str(i) for i in range(24)])
    optimizer, _ = method.configure_optimizers(1)
    calls = {"n": 0}
    loss_fn = method.training_loss

    def poisoned(x, y):
        calls["n"] += 1
        loss = loss_fn(x, y)
        return loss * float("nan") if calls["n"] == 4 else loss

    method.training_loss = poisoned
    ctx = RunContext(run_dir=tmp_path, seed=0, device=CPU, check_every=5, log=lambda *_: None)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    with pytest.raises(TrainingDivergedError, match=r"dualcoop: loss is nan at epoch 2 \(step 3\)"):
        train_epoch(method, split, optimizer, scaler, None, ctx, epoch=2)
    assert calls["n"] == 5  # found at the check after step 5, reported as the step it happened at


# -- the benchmark's own checks: one identical input for both paths, interleaved timing ---------------------------
def test_both_paths_get_one_identical_input_even_when_training_batches_are_augmented(tiny):
    reference, project = speed.build_pair("dualcoop", "tiny-clip", task(), CPU, {"n_ctx": 4, "memory_format": "channels_last"})
    assert speed.training_augmentation(project) is not None  # Cutout + RandAugment by default
    images = batch(n=6)[0]
    for m in (reference, project):
        m.train(True)
    torch.manual_seed(0)
    drawn = [reference.prepare(images), project.prepare(images)]  # what the old check compared: two draws
    assert (drawn[0] - drawn[1]).abs().max() > 1.0
    x = speed.plain_input(project, images)  # normalised only, the project's layout
    x_ref = speed.as_layout(x, False)
    assert x.is_contiguous(memory_format=torch.channels_last) and x_ref.is_contiguous()
    assert torch.equal(x, x_ref) and torch.equal(x_ref, speed.plain_input(reference, images))
    assert speed.training_augmentation(project) is not None  # put back after use
    for m in (reference, project):
        m.model.eval()
    project.start_eval()
    with torch.no_grad():
        diff = speed.max_abs_diff(speed.reference_logits(reference, x_ref), speed.project_logits(project, x))
    assert diff < 1e-4


def test_interleaved_timing_alternates_the_order_and_takes_ratios_per_round():
    calls: list[str] = []
    paths = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    out = speed.interleaved(paths, batch=4, device=CPU, steps=2, warmup=2, rounds=3)
    assert calls == ["a", "a", "b", "b"] + ["a", "a", "b", "b"] + ["b", "b", "a", "a"] + ["a", "a", "b", "b"]
    assert len(out["a"].rounds) == len(out["a"].wall_rounds) == 3 and out["a"].clock == "wall"
    a = speed.Rounds(0, 0, None, 1, [10.0, 20.0, 30.0], 0, 0)
    b = speed.Rounds(0, 0, None, 1, [20.0, 30.0, 90.0], 0, 0)
    r = speed.ratio(b, a)
    assert r["rounds"] == [2.0, 1.5, 3.0] and (r["median"], r["min"], r["max"]) == (2.0, 1.5, 3.0)
    with pytest.raises(ValueError, match="clock must be"):
        speed.interleaved(paths, 1, CPU, 1, 1, 1, clock="gpu")


def test_memory_format_switch_moves_weights_and_prepared_input(tiny):
    cls = METHODS.get("intclip")
    method = cls(cls.Config(n_ctx=4), load_backbone(BACKBONES.get("tiny-clip"), "none"), task(), CPU)
    conv = method.net.semantic[-1][0].conv2.weight
    assert conv.is_contiguous() and not method.channels_last
    speed.set_memory_format(method, True)
    assert method.channels_last and conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert method.prepare(batch()[0]).is_contiguous(memory_format=torch.channels_last)
    speed.set_memory_format(method, False)
    assert conv.is_contiguous() and method.prepare(batch()[0]).is_contiguous()
