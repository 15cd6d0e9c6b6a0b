"""PIP-Net (methods/pipnet.py) against an independent float64 re-derivation of the released code's mathematics
(github.com/CodeMonsterPHD/PIP-Net), plus determinism, exact resume, the method contract and exact parameter counts.

The reference below is written from the released code's formulas (lib/models/network.py, lib/core/function_id.py,
lib/core/build_prototype.py, lib/utils/utils.py, lib/criterion/diversity_loss.py, tools/main.py) with plain tensor
and NumPy operations. It uses the trunk only as a container of weights (a float64 copy), torchvision's transforms
for the per-image augmentation, scikit-learn's KMeans and SciPy's linear_sum_assignment as the released code calls
them, and none of the module's functions. The prototype updates outside the gradient (the k-means build, the
feature bank, the matched momentum merge, the Adam diversity steps) are re-derived too.
"""

import copy
import json
import os
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from bench.datasets.base import ClassInfo, DatasetData, Split
from bench.methods.pipnet import PIPNet, PIPNetConfig, cluster_class, soft_target_loss, softmax_log_odds
from PIL import Image
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from torchvision import transforms as T

from bench.backbones.loader import TINY_CLIP, load_backbone
from bench.registry import METHODS
from bench.train.engine import CHECKPOINT, RunContext, run_method, train_step

CPU = torch.device("cpu")
PX = 64
STAGES = {"stem": 1 / 10, "layer1": 1 / 8, "layer2": 1 / 6, "layer3": 1 / 4, "layer4": 1 / 2}  # tools/main.py


def make_data(c=3, sizes=(24, 8, 8), soft=False, task="multilabel", seed=0, px=PX) -> DatasetData:
    """Random images; every class positive in a third of the images or more; the last train image has no label; with
    ``soft``, train labels are the fractions of 3 annotators (1/3 rows are left out of the prototypes)."""
    rng = np.random.default_rng(seed)

    def split(n: int, train: bool) -> Split:
        images = rng.integers(0, 256, (n, px, px, 3), dtype=np.uint8)
        if task == "multiclass":
            return Split(images, (np.arange(n) % c).astype(np.int64), [str(i) for i in range(n)])
        labels = ((np.arange(n)[:, None] % c == np.arange(c)) | (rng.random((n, c)) < 0.3)).astype(np.float32)
        if train and soft:
            labels *= rng.choice(np.array([1 / 3, 2 / 3, 1.0], dtype=np.float32), size=labels.shape)
        if train:
            labels[-1] = 0
        return Split(images, labels, [str(i) for i in range(n)])

    classes = [ClassInfo(f"c{i}", f"class {i}", f"class {i}") for i in range(c)]
    splits = {"train": split(sizes[0], True), "val": split(sizes[1], False), "test": split(sizes[2], False)}
    return DatasetData("toy", task, classes, ["fine"], splits, "m" * 64)


@pytest.fixture(scope="module")
def tiny_backbone():
    return load_backbone(TINY_CLIP, "none")


def build(backbone, data, seed=0, **kw) -> PIPNet:
    torch.manual_seed(seed)
    return PIPNet(PIPNetConfig(**{"components": 2, "batch_size": 8, **kw}), backbone, data, CPU)


def perturb_batchnorm(module: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # statistics and affine weights far from their defaults
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.weight.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30))


# -- the reference (float64) -----------------------------------------------------------------------------------------
def ref_input(images: np.ndarray, mean, std) -> torch.Tensor:
    x = torch.from_numpy(images).double().permute(0, 3, 1, 2) / 255
    return (x - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)


def ref_features(trunk64, x64):
    return F.adaptive_avg_pool2d(trunk64(x64), 1).flatten(1)  # ResNet.forward: avgpool of layer4


def ref_logits(features, prototypes, c, temperature=0.15):
    """network.py: x / sum(x); cosine with every prototype; view [B, C, K]; max over K; / T."""
    x = features / features.sum(dim=1, keepdim=True)
    cos = F.cosine_similarity(x[:, None, :], prototypes[None, :, :], dim=-1)
    return cos.view(len(x), c, -1).max(dim=2).values / temperature


def ref_loss(z, y):
    """function_id.py: -mean(sum(softprob / softprob.sum() * log_softmax(pre))); an unlabelled row adds 0."""
    total = y.sum(dim=1, keepdim=True)
    t = torch.where(total > 0, y / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(y))
    return -(t * torch.log_softmax(z, dim=1)).sum(dim=1).mean()


def ref_pass(trunk64, images, mean, std, rotation=5.0, flip=0.5, padding=10):
    """get_all_fea: every train image through the train transform (image by image), the model in eval mode."""
    steps = T.Compose([T.RandomRotation(rotation), T.RandomHorizontalFlip(flip), T.RandomCrop((PX, PX), padding=padding)])
    out = []
    for image in images:
        augmented = steps(torch.from_numpy(image).permute(2, 0, 1)).permute(1, 2, 0).numpy()[None]
        out.append(ref_features(trunk64, ref_input(augmented, mean, std))[0])
    return torch.stack(out)


def ref_cluster(passes, labels64, k):
    """get_all_fea's per-class rows (label x feature, labels of 1/3 left out), then cluster_by_cosine: filter 20% by
    cosine to the mean, divide by the row sums, KMeans (NumPy's global generator, 10 inits)."""
    centres = []
    for c in range(labels64.shape[1]):
        rows = np.stack([labels64[i, c] * f[i] for f in passes for i in range(len(f))
                         if labels64[i, c] != 0 and abs(labels64[i, c] - 1 / 3) > 1e-9])
        mean = rows.mean(axis=0)
        similarity = rows @ mean / (np.linalg.norm(rows, axis=1) * np.linalg.norm(mean))
        rows = rows[np.argsort(similarity, kind="stable")[int(0.2 * len(rows)) :]]
        rows = rows / rows.sum(axis=1, keepdims=True)
        assert len(rows) >= k
        centres.append(KMeans(n_clusters=k, n_init=10).fit(rows).cluster_centers_)
    return np.concatenate(centres)


def ref_merge(old, new, k, maximize=False, rate=0.999):
    """ele_sum: linear_sum_assignment on the cosine matrix (minimised in the released code), 0.999 old + 0.001 new."""
    out = np.empty_like(old)
    for s in range(0, len(old), k):
        o, n = old[s : s + k], new[s : s + k]
        cd = (o @ n.T) / np.outer(np.linalg.norm(o, axis=1), np.linalg.norm(n, axis=1))
        rows, cols = linear_sum_assignment(-cd if maximize else cd)
        for r, col in zip(rows, cols):
            out[s + r] = rate * o[r] + (1 - rate) * n[col]
    return out


def ref_diversity_grad(prototypes, c):
    p = torch.from_numpy(prototypes).requires_grad_(True)
    means = torch.stack([chunk.mean(dim=0) for chunk in p.chunk(c, dim=0)])
    cos = F.cosine_similarity(means[:, None, :], means[None, :, :], dim=-1)
    cos.pow(2).sum().sqrt().backward()
    return p.grad.numpy()


class RefAdam:
    """Adam by hand (lr 1e-3, betas 0.9 / 0.999, eps 1e-8, bias-corrected), one parameter."""

    def __init__(self, lr=1e-3):
        self.lr, self.m, self.v, self.t = lr, 0.0, 0.0, 0

    def step(self, p, g):
        self.t += 1
        self.m = 0.9 * self.m + 0.1 * g
        self.v = 0.999 * self.v + 0.001 * g * g
        m_hat, v_hat = self.m / (1 - 0.9**self.t), self.v / (1 - 0.999**self.t)
        return p - self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)


# -- (a) the reference checks ----------------------------------------------------------------------------------------
def test_logits_loss_gradients_and_two_sgd_steps_equal_the_reference(tiny_backbone, tmp_path):
    data = make_data(soft=True)
    method = build(tiny_backbone, data)
    perturb_batchnorm(method.model.trunk)
    c, k, d = 3, 2, method.model.trunk.num_channels
    prototypes = torch.rand(c * k, d, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) / d
    method.load_state_dict({**method.state_dict(), "model.prototypes": prototypes, "model.ready": torch.tensor(True)})
    trunk64 = copy.deepcopy(method.model.trunk).double()
    images, labels = data.splits["train"].images[-4:], torch.from_numpy(data.splits["train"].labels[-4:])
    labels64 = torch.round(labels.double() * 3) / 3  # the exact annotator fractions the float32 labels stand for
    assert (labels64.sum(1) == 0).any() and ((labels64 - 1 / 3).abs() < 1e-6).any()  # an unlabelled row, a 1/3 label
    x64 = ref_input(images, tiny_backbone.mean, tiny_backbone.std)
    x = method.prepare(images)  # eval mode: no augmentation; the tiny CLIP's own normalisation
    torch.testing.assert_close(x, x64.float())

    # eval: logits (the log-odds of the released code's softmax scores)
    trunk64.eval()
    z_ref = ref_logits(ref_features(trunk64, x64), prototypes, c)
    p_ref = torch.softmax(z_ref, dim=1)
    assert relative(method.predict_logits(x), torch.log(p_ref) - torch.log1p(-p_ref)) < 1e-5
    assert relative(method.predict(x), p_ref) < 1e-5

    # train mode (BatchNorm on batch statistics): loss and every gradient; the prototypes get none
    method.train(True)
    trunk64.train()
    loss_ref = ref_loss(ref_logits(ref_features(trunk64, x64), prototypes, c), labels64)
    loss = method.training_loss(x, labels)
    assert abs(loss.item() - loss_ref.item()) / abs(loss_ref.item()) < 1e-5
    loss_ref.backward()
    loss.backward()
    ours, theirs = dict(method.model.trunk.named_parameters()), dict(trunk64.named_parameters())
    assert ours.keys() == theirs.keys() and method.model.prototypes.grad is None
    errors = {n: relative(ours[n].grad, theirs[n].grad) for n in ours}
    assert max(errors.values()) < 1e-5, sorted(errors.items(), key=lambda kv: -kv[1])[:5]

    # two SGD steps: the released groups (lr 1e-3 x 1/10, 1/8, 1/6, 1/4, 1/2), momentum 0.9, no weight decay
    optimizer, _ = method.configure_optimizers(steps_per_epoch=1)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-4, 1.25e-4, 1e-3 / 6, 2.5e-4, 5e-4, 1e-3])
    scale = 50  # so that two steps move the weights well above float32 rounding; the groups' ratios are the released
    for group in optimizer.sgd.param_groups:
        group["lr"] *= scale
    start = {n: (ours[n].detach().double().clone(), theirs[n].detach().clone()) for n in ours}
    momentum = {n: torch.zeros_like(p) for n, p in theirs.items()}
    ctx = RunContext(run_dir=tmp_path, seed=0, device=CPU, log=lambda *_: None)
    for _ in range(2):
        train_step(method, x, labels, optimizer, torch.amp.GradScaler("cuda", enabled=False), ctx)
        for p in theirs.values():
            p.grad = None
        ref_loss(ref_logits(ref_features(trunk64, x64), prototypes, c), labels64).backward()
        with torch.no_grad():
            for n, p in theirs.items():
                momentum[n] = 0.9 * momentum[n] + p.grad
                p -= 1e-3 * STAGES[n.split(".")[0]] * scale * momentum[n]
    for n in ours:
        assert relative(ours[n].detach(), theirs[n].detach()) < 1e-5, n
        rounding = 4 * torch.finfo(torch.float32).eps * float(start[n][1].abs().max())
        torch.testing.assert_close(ours[n].detach().double() - start[n][0], theirs[n].detach() - start[n][1], rtol=1e-3, atol=rounding)
    buffers, ref_buffers = dict(method.model.trunk.named_buffers()), dict(trunk64.named_buffers())
    for n, b in buffers.items():  # 4 train-mode forwards each: the same running statistics
        assert relative(b, ref_buffers[n]) < 1e-5 if b.is_floating_point() else torch.equal(b, ref_buffers[n]), n
    assert torch.equal(method.model.prototypes.detach(), prototypes)  # SGD never touches them


@pytest.mark.parametrize("variant", [
    {},  # the released code: accumulated feature bank, minimised matching, the diversity step after epoch 0 only
    {"feature_bank": "current", "matching": "max-cosine", "diversity_steps": "every"},
])
def test_prototype_build_and_updates_equal_the_reference(tiny_backbone, variant):
    data = make_data(sizes=(16, 2, 2), soft=True)
    method = build(tiny_backbone, data, **variant)
    perturb_batchnorm(method.model.trunk)
    c, k = 3, 2
    trunk64 = copy.deepcopy(method.model.trunk).double().eval()
    images, labels64 = data.splits["train"].images, np.round(data.splits["train"].labels.astype(np.float64) * 3) / 3
    optimizer, schedule = method.configure_optimizers(steps_per_epoch=1)

    torch.manual_seed(11)
    np.random.seed(12)
    method.train(True)  # builds the prototypes (augmented pass, eval mode)
    assert method.model.training
    built = method.model.prototypes.detach().clone()
    schedule.step()  # after epoch 0: the diversity step
    after0 = method.model.prototypes.detach().clone()
    schedule.step()  # after epoch 1: a new pass, clustering, the matched merge (and a second diversity step)
    after1 = method.model.prototypes.detach().clone()

    torch.manual_seed(11)
    np.random.seed(12)
    with torch.no_grad():
        first = ref_pass(trunk64, images, tiny_backbone.mean, tiny_backbone.std).numpy()
    assert relative(built, torch.from_numpy(ref_cluster([first], labels64, k))) < 1e-5
    # each update from the prototypes it was given (a gradient of the diversity loss cancels down to ~1e-6 in places,
    # where Adam's g / (|g| + eps) would magnify the float32 features' rounding in a chained comparison)
    adam = RefAdam()
    want0 = adam.step(built.numpy(), ref_diversity_grad(built.numpy(), c))  # Adam's first step: lr g / (|g| + eps)
    assert relative(after0, torch.from_numpy(want0)) < 1e-5
    assert relative(after0 - built, torch.from_numpy(want0) - built) < 1e-5
    with torch.no_grad():
        second = ref_pass(trunk64, images, tiny_backbone.mean, tiny_backbone.std).numpy()
    passes = [first, second] if variant.get("feature_bank", "accumulate") == "accumulate" else [second]
    want1 = ref_merge(after0.numpy(), ref_cluster(passes, labels64, k), k, maximize=variant.get("matching") == "max-cosine")
    if variant.get("diversity_steps") == "every":
        want1 = adam.step(want1, ref_diversity_grad(want1, c))  # Adam's second step, its moments carried over
    assert relative(after1, torch.from_numpy(want1)) < 1e-5
    assert relative(after1 - after0, torch.from_numpy(want1) - after0) < 1e-5
    assert [g["lr"] for g in optimizer.param_groups][-1] == 1e-3 and schedule.sgd.last_epoch == 2


def test_train_augmentation_is_the_released_pil_pipeline(tiny_backbone):
    """RandomRotation(5), RandomHorizontalFlip, RandomCrop(padding 10) with the released (PIL) pipeline's draws: exact
    without the rotation; with it, PIL's and torchvision's tensor rotation round a few edge pixels differently."""
    data = make_data()
    images = data.splits["train"].images[:8]
    mean, std = torch.tensor(tiny_backbone.mean).view(3, 1, 1), torch.tensor(tiny_backbone.std).view(3, 1, 1)
    for rotation, most in ((0.0, 1.0), (5.0, 0.995)):
        method = build(tiny_backbone, data, rotation=rotation)
        method.model.train(True)  # train mode without building prototypes: prepare() augments
        torch.manual_seed(7)
        ours = method.prepare(images)
        torch.manual_seed(7)
        pil = T.Compose([T.RandomRotation(rotation), T.RandomHorizontalFlip(0.5), T.RandomCrop(PX, padding=10), T.PILToTensor()])
        theirs = torch.stack([(pil(Image.fromarray(img)).float() / 255 - mean) / std for img in images])
        same = (ours - theirs).abs().amax(dim=1) < 1e-6
        assert same.float().mean() >= most, (rotation, same.float().mean())
        assert not torch.allclose(ours, ref_input(images, tiny_backbone.mean, tiny_backbone.std).float())


# -- (b) determinism and exact resume --------------------------------------------------------------------------------
def run(backbone, data, path, seed=0, report=None, **kw):
    ctx = RunContext(run_dir=path, seed=seed, device=CPU, eval_batch_size=8, log=lambda *_: None, report=report)
    method = build(backbone, data, seed=123, epochs=2, **kw)
    return method, run_method(method, data, ctx)


def test_two_fresh_builds_with_one_seed_and_a_resumed_run_give_identical_weights_and_scores(tiny_backbone, tmp_path):
    data = make_data(sizes=(16, 8, 8), px=32)
    a, out_a = run(tiny_backbone, data, tmp_path / "a")
    b, out_b = run(tiny_backbone, data, tmp_path / "b")

    class Stop(Exception):
        pass

    def stop_after_epoch_0(record):
        if record["epoch"] == 0:
            raise Stop

    with pytest.raises(Stop):
        run(tiny_backbone, data, tmp_path / "cut", report=stop_after_epoch_0)
    saved = torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=True)
    assert "bank.0" in saved["method"] and "bank.1" not in saved["method"]  # the build's pass (epoch 0 adds none)
    assert saved["optimizer"]["adam"]["state"]  # the diversity step's Adam moments
    c, out_c = run(tiny_backbone, data, tmp_path / "cut")  # epoch 1 clusters the saved pass with its own
    assert out_c.resumed_from_epoch == 1
    for out in (out_b, out_c):
        for key in ("val_scores", "test_scores", "val_logits", "test_logits"):
            assert np.array_equal(getattr(out, key), getattr(out_a, key)), key
        assert [h["train_loss"] for h in out.history] == [h["train_loss"] for h in out_a.history]
    for m in (b, c):
        sa, sm = a.state_dict(), m.state_dict()
        assert sa.keys() == sm.keys() and all(torch.equal(sa[n], sm[n]) for n in sa)
    assert not any(n.startswith("bank.") for n in a.state_dict())  # the selected state predicts; no bank in weights.pt
    assert out_a.history[0]["lr"] == pytest.approx([1e-4, 1.25e-4, 1e-3 / 6, 2.5e-4, 5e-4, 1e-3])


# -- (c) the method contract -----------------------------------------------------------------------------------------
def test_contract_optimiser_states_and_scores(tiny_backbone):
    data = make_data(sizes=(12, 8, 8))
    method = build(tiny_backbone, data, components=6)
    learnable = method.learnable_parameters()
    optimizer, _ = method.configure_optimizers(steps_per_epoch=2)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in learnable.values()}
    assert [g["name"] for g in optimizer.param_groups] == ["stem", "layer1", "layer2", "layer3", "layer4", "prototypes"]
    assert optimizer.adam.param_groups[0]["params"] == [method.model.prototypes]
    assert method.param_counts()["learnable"] == method.param_counts()["total"] == sum(p.numel() for p in learnable.values())
    images = data.splits["val"].images[:4]
    with pytest.raises(RuntimeError, match="prototypes are not built yet"):
        method.predict_logits(method.prepare(images))
    method.train(True)  # 6 positives per class, 5 rows after the filter: fewer than K = 6, so the rows repeat
    method.train(False)
    prototypes = method.model.prototypes.detach()
    assert torch.equal(prototypes[5], prototypes[0]) and not torch.equal(prototypes[1], prototypes[0])
    other = build(tiny_backbone, data, seed=5, components=6)
    other.load_state_dict(method.variant_state("default"))
    x = method.prepare(images)
    assert torch.equal(other.predict_logits(x), method.predict_logits(x))
    with pytest.raises(KeyError, match="lacks"):
        other.load_state_dict({"model.prototypes": method.model.prototypes})
    no_train = DatasetData("toy", "multilabel", data.classes, ["fine"], {}, "m" * 64)
    with pytest.raises(ValueError, match="built from the train split"):
        build(tiny_backbone, no_train).train(True)


def test_scores_loss_and_fallbacks_by_hand():
    z = torch.tensor([[2.0, -1.0, 0.5], [700.0, -700.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(torch.sigmoid(softmax_log_odds(z)), torch.softmax(z, dim=1), rtol=1e-12, atol=1e-300)
    assert softmax_log_odds(z)[0, 0].item() == pytest.approx(2.0 - np.log(np.exp(-1.0) + np.exp(0.5)), rel=1e-12)
    logits, y = torch.tensor([[1.0, 0.0], [0.0, 3.0]]), torch.tensor([[2 / 3, 1 / 3], [0.0, 0.0]])
    want = -(2 / 3 * np.log(np.exp(1) / (np.exp(1) + 1)) + 1 / 3 * np.log(1 / (np.exp(1) + 1))) / 2  # row 2 adds 0
    assert soft_target_loss(logits, y).item() == pytest.approx(want, rel=1e-6)  # float32 log-softmax
    rows = torch.tensor([[1.0, 3.0], [2.0, 2.0], [4.0, 0.0]], dtype=torch.float64)
    centres = cluster_class(rows, components=4, discard_rate=0.2, n_init=10)  # int(0.2 * 3) = 0 dropped; 3 < 4
    normalised = rows / rows.sum(1, keepdim=True)
    order = torch.sort(F.cosine_similarity(rows, rows.mean(0, keepdim=True)), stable=True).indices
    assert torch.equal(centres, normalised[order][[0, 1, 2, 0]])


def test_multiclass_class_indices_become_one_hot_and_scores_are_the_softmax(tiny_backbone):
    data = make_data(c=3, sizes=(12, 6, 6), task="multiclass", px=32)
    method = build(tiny_backbone, data)
    method.train(True)  # the prototypes from one-hot rows of the class indices
    method.train(False)
    x, labels = method.prepare(data.splits["val"].images), torch.from_numpy(data.splits["val"].labels)
    z = method.predict_logits(x)  # multiclass: the logits themselves, and the engine's softmax is the released score
    assert torch.allclose(method.predict(x).double(), torch.softmax(z, dim=1), atol=1e-7)
    assert method.training_loss(x, labels).item() == pytest.approx(F.cross_entropy(z, labels).item(), rel=1e-5)


def test_config_presets_and_validation():
    official = PIPNetConfig()
    assert official.preset == "official" and official.autocast == "off"
    assert (official.epochs, official.batch_size, official.lr, official.lr_prototype, official.momentum) == (40, 64, 1e-3, 1e-3, 0.9)
    assert (official.milestones, official.gamma, official.temperature, official.components) == ([20, 30], 0.1, 0.15, 4)
    assert (official.discard_rate, official.prototype_momentum, official.kmeans_n_init) == (0.2, 0.999, 10)
    assert (official.rotation, official.flip, official.crop_padding, official.timm_model) == (5.0, 0.5, 10, "resnet50.tv_in1k")
    assert PIPNetConfig(preset=None).autocast == "auto" and PIPNetConfig(epochs=5).epochs == 5
    with pytest.raises(ValueError, match="milestones must be increasing"):
        PIPNetConfig(milestones=[30, 20])
    assert METHODS.get("pipnet").Config().matching == "min-cosine"


# -- (d) exact parameter counts --------------------------------------------------------------------------------------
def test_exact_parameter_counts_by_hand(tiny_backbone):
    # the tiny CLIP's ModifiedResNet (width 16, one bottleneck per stage, each with its downsample path):
    # stem 3x3 convs 3->8->8->16 + 3 BN = 216 + 576 + 1152 + 2 * (8 + 8 + 16) = 2,008; a bottleneck from c_in with
    # planes p: c_in p + 9 p^2 + 4 p^2 (convs) + 4 p c_in (downsample) + 2 (p + p + 4p + 4p) (BN) = 5 c_in p + 13 p^2 + 20 p
    bottleneck = lambda c_in, p: 5 * c_in * p + 13 * p * p + 20 * p
    trunk = 2008 + bottleneck(16, 16) + bottleneck(64, 32) + bottleneck(128, 64) + bottleneck(256, 128)
    assert trunk == 506_008
    method = build(tiny_backbone, make_data(c=3, sizes=(2, 2, 2)))
    assert method.param_counts() == {"learnable": trunk + 3 * 2 * 512, "total": trunk + 3 * 2 * 512}
    # the released network: torchvision's ResNet-50 without fc (25,557,032 - 2048 x 1000 - 1000 = 23,508,032, by
    # stage as below) + 28 x 4 x 2048 = 229,376 prototypes; what the SGD and the Adam of tools/main.py hold
    rn50 = PIPNet(PIPNetConfig(timm_pretrained=False), SimpleNamespace(spec=SimpleNamespace(name="RN50"), model=None),
                  make_data(c=28, sizes=(2, 2, 2)), CPU)
    optimizer, _ = rn50.configure_optimizers(steps_per_epoch=1)
    counts = {g["name"]: sum(p.numel() for p in g["params"]) for g in optimizer.param_groups}
    assert counts == {"stem": 9_408 + 128, "layer1": 215_808, "layer2": 1_219_584, "layer3": 7_098_368,
                      "layer4": 14_964_736, "prototypes": 28 * 4 * 2048}
    assert rn50.param_counts() == {"learnable": 23_737_408, "total": 23_737_408}
    del rn50, optimizer
    from typer.testing import CliRunner

    from bench.cli.app import app

    res = CliRunner().invoke(app, ["params", "--methods", "pipnet", "--backbone", "RN50", "--num-classes", "28", "--format", "json"])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout[res.stdout.index("[") :])
    assert (row["method"], row["learnable"], row["total"]) == ("pipnet", 23_737_408, 23_737_408)
