"""Paired bootstrap against hand-computable cases."""

import numpy as np
import pytest

from bench import metrics
from bench.reports.significance import RunScores, paired_bootstrap


def _labels(n=200, c=4, seed=0):
    return (np.random.default_rng(seed).random((n, c)) < 0.3).astype(np.float32)


def test_identical_methods_give_p_one_and_zero_difference():
    y = _labels()
    s = np.random.default_rng(1).random(y.shape).astype(np.float32)
    runs = [RunScores(s, y, 0.5)]
    out = paired_bootstrap(runs, runs, "macro_f1", n_boot=200)
    assert out["diff"] == 0.0 and out["p_value"] == 1.0 and out["ci95_low"] == out["ci95_high"] == 0.0


def test_a_method_right_on_every_image_gives_p_near_zero():
    y = _labels()
    perfect = RunScores(np.where(y > 0, 0.9, 0.1).astype(np.float32), y, 0.5)
    noise = RunScores(np.random.default_rng(2).random(y.shape).astype(np.float32), y, 0.5)
    for metric in ("macro_f1", "mAP"):
        out = paired_bootstrap([perfect], [noise], metric, n_boot=300)
        expected = 1.0 - (metrics.macro_f1(noise.scores, y, 0.5) if metric == "macro_f1" else metrics.mean_average_precision(noise.scores, y))
        assert out["diff"] == pytest.approx(expected)
        assert out["p_value"] < 0.01 and out["ci95_low"] > 0


def test_seed_means_and_accuracy():
    y = np.random.default_rng(3).integers(0, 3, size=90)
    onehot = np.eye(3, dtype=np.float32)[y]
    wrong = np.eye(3, dtype=np.float32)[(y + 1) % 3]
    best = [RunScores(onehot, y), RunScores(onehot, y)]  # accuracy 1 twice
    other = [RunScores(onehot, y), RunScores(wrong, y)]  # accuracy 1 and 0: mean 0.5
    out = paired_bootstrap(best, other, "accuracy", n_boot=100)
    assert out["diff"] == pytest.approx(0.5) and out["p_value"] == 0.0
    with pytest.raises(ValueError, match="same test images"):
        paired_bootstrap(best, [RunScores(onehot[:10], y[:10])], "accuracy")
