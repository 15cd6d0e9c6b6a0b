"""The engine on a toy SGD method: resume equals an uninterrupted run, best-on-val selection, early stop,
NaN handling, and the optimizer/learnable-set check."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from bench.datasets.base import ClassInfo, DatasetData, Split
from bench.train.engine import CHECKPOINT, RunContext, predict_split, run_method
from bench.errors import TrainingDivergedError
from bench.methods.base import Method, TrainConfig


class ToyConfig(TrainConfig):
    lr: float = 0.5
    poison_epoch: int | None = None  # make the loss NaN from this epoch on


class Toy(Method):
    """Logistic regression on 4x4-pooled pixels."""

    name = "toy"
    Config = ToyConfig

    def __init__(self, config, backbone, data, device):
        super().__init__(config, backbone, data, device)
        self.epoch_seen = 0

    def configure_optimizers(self, steps_per_epoch):
        opt = torch.optim.SGD(self.param_groups(), lr=self.config.lr, momentum=0.9)
        return opt, torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.9)

    def forward(self, images):
        return self.model(nn.functional.adaptive_avg_pool2d(images, 4).flatten(1))

    def training_loss(self, images, labels):
        loss = nn.functional.binary_cross_entropy_with_logits(self.forward(images), labels)
        if self.config.poison_epoch is not None and self.model.weight.grad is not None and self.epoch_seen >= self.config.poison_epoch:
            return loss * float("nan")
        return loss

    def train(self, mode=True):
        super().train(mode)
        self.epoch_seen += 1 if mode else 0

    def predict_logits(self, images):
        return self.forward(images)


def toy_data(n=96, c=3, seed=0) -> DatasetData:
    rng = np.random.default_rng(seed)

    def split(k):
        images = rng.integers(0, 255, size=(k, 8, 8, 3), dtype=np.uint8)
        labels = np.stack([images[..., i].mean((1, 2)) > 127 for i in range(c)], 1).astype(np.float32)
        return Split(images, labels, [str(i) for i in range(k)])

    classes = [ClassInfo(str(i), f"class {i}", f"class {i}") for i in range(c)]
    return DatasetData("toy", "multilabel", classes, ["fine"], {"train": split(n), "val": split(48), "test": split(48)}, "m" * 64)


def make(config=None, seed=0):
    torch.manual_seed(seed)
    backbone = SimpleNamespace(model=nn.Linear(48, 3), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return Toy(config or ToyConfig(epochs=4, batch_size=16), backbone, toy_data(), torch.device("cpu"))


def ctx(tmp_path, **kw):
    return RunContext(run_dir=tmp_path, seed=0, device=torch.device("cpu"), eval_batch_size=32, log=lambda *_: None, **kw)


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path):
    full = run_method(make(), toy_data(), ctx(tmp_path / "full"))

    class Stop(Exception):
        pass

    def stop_after_two(record):
        if record["epoch"] == 1:
            raise Stop

    (tmp_path / "cut").mkdir()
    (tmp_path / "full").mkdir(exist_ok=True)
    with pytest.raises(Stop):
        run_method(make(), toy_data(), ctx(tmp_path / "cut", report=stop_after_two))
    assert torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=True)["epoch"] == 2
    resumed = run_method(make(seed=123), toy_data(), ctx(tmp_path / "cut"))  # different init: must be overwritten
    assert resumed.resumed_from_epoch == 2 and full.resumed_from_epoch is None
    assert resumed.epochs_run == full.epochs_run == 4
    assert [h["train_loss"] for h in resumed.history] == pytest.approx([h["train_loss"] for h in full.history], abs=1e-6)
    np.testing.assert_allclose(resumed.test_scores, full.test_scores, atol=1e-6)


def test_best_epoch_is_selected_on_val_and_restored(tmp_path):
    method = make(ToyConfig(epochs=5, batch_size=16))
    reports = []
    out = run_method(method, toy_data(), ctx(tmp_path, report=reports.append))
    metrics = [r["selection_metric"] for r in reports]
    assert out.best_epoch == int(np.argmax(metrics))
    assert all(h["selection_split"] == "val" for h in out.history)
    from bench.train.engine import selection_metric

    # the restored state reproduces the best epoch's val metric
    val = toy_data().splits["val"]
    assert selection_metric("multilabel", out.val_scores, val.labels, "val-threshold") == pytest.approx(max(metrics))


def test_early_stop_and_intclip_code_protocol_use_the_right_split(tmp_path):
    out = run_method(make(ToyConfig(epochs=30, batch_size=16, lr=0.0, early_stop_patience=2)), toy_data(), ctx(tmp_path / "a"))
    assert out.best_epoch == 0 and out.epochs_run == 3  # lr 0: never improves after epoch 0
    out = run_method(make(), toy_data(), ctx(tmp_path / "b", protocol="intclip-code"))
    assert all(h["selection_split"] == "test" for h in out.history)


def test_nan_loss_stops_the_trial_with_a_clear_status(tmp_path):
    with pytest.raises(TrainingDivergedError, match=r"toy: loss is nan at epoch 1"):
        run_method(make(ToyConfig(epochs=3, batch_size=16, poison_epoch=2)), toy_data(), ctx(tmp_path))


def test_optimizer_must_cover_exactly_the_learnable_parameters(tmp_path):
    method = make()
    method.model.bias.requires_grad_(False)  # declared learnable set shrinks, optimizer built from param_groups

    def groups():
        return [{"params": list(method.model.parameters())}]

    method.param_groups = groups
    with pytest.raises(RuntimeError, match="optimizer updates 2 tensors but the method declares 1"):
        run_method(method, toy_data(), ctx(tmp_path))


def test_predict_split_returns_float32_scores_in_unit_range(tmp_path):
    method = make()
    scores = predict_split(method, toy_data().splits["test"], ctx(tmp_path))
    assert scores.dtype == np.float32 and scores.shape == (48, 3) and scores.min() >= 0 and scores.max() <= 1


class _Planted:
    """A pickle that would create a file when unpickled: what a hostile checkpoint in a shared store could hold."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_checkpoint_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save({"epoch": 1, "payload": _Planted(marker)}, run_dir / CHECKPOINT)
    messages: list[str] = []
    c = ctx(run_dir)
    c.log = messages.append
    out = run_method(make(), toy_data(), c)
    assert not marker.exists()  # refused, not executed
    assert out.resumed_from_epoch is None and out.epochs_run == 4  # trained from scratch instead
    moved = list(run_dir.glob(f"{CHECKPOINT}.corrupt-*"))
    assert len(moved) == 1 and any(str(run_dir / CHECKPOINT) in m and "moved aside" in m for m in messages), messages


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_damaged_checkpoint_is_moved_aside_and_the_run_restarts_with_a_message(tmp_path, damage):
    """Was: a PyTorch stream error that named no file, on every rerun. Now: the file is kept aside, named, and the
    run trains from scratch to the same scores as a run that never had a checkpoint."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    reference = run_method(make(), toy_data(), ctx(tmp_path / "clean"))  # leaves its last checkpoint behind
    blob = (tmp_path / "clean" / CHECKPOINT).read_bytes()
    path = run_dir / CHECKPOINT
    path.write_bytes({"truncate": blob[: len(blob) // 2], "garbage": b"\x00not a checkpoint" * 50, "empty": b""}[damage])
    messages: list[str] = []
    c = ctx(run_dir)
    c.log = messages.append
    out = run_method(make(), toy_data(), c)
    assert out.resumed_from_epoch is None
    assert np.array_equal(out.test_scores, reference.test_scores)
    assert any(str(path) in m and "moved aside" in m for m in messages), messages
    assert len(list(run_dir.glob(f"{CHECKPOINT}.corrupt-*"))) == 1
