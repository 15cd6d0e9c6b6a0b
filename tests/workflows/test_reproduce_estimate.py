"""`bench reproduce --dry-run`'s estimate: GPU-hours from the store's GPU runs only (CPU timings ignored), the GPU
named; the anchor otherwise, named as the H200 it was measured on; decoded-image caches counted apart."""

from __future__ import annotations

from bench.workflows.reproduce import ANCHOR_EVAL, ANCHOR_TRAIN, estimate
from tests.conftest import make_run


def _timed(tmp_path, device: str, seconds: float, seed: int):
    rec = make_run(tmp_path / "results", "dualcoop", seed)
    rec.env["device"] = device
    rec.timing["seconds_train_and_eval"] = seconds
    rec.training.epochs_run = 2
    return rec


def test_cpu_timings_are_ignored_and_gpu_ones_name_their_device(tmp_path):
    sizes = (1000, 100, 200)
    cpu = [_timed(tmp_path, "cpu: AMD EPYC", 9999.0, s) for s in (0, 1)]
    hours, basis = estimate(cpu, "dualcoop", "RN101", sizes, epochs=10, runs=3)
    anchor = 3 * (10 * (1000 / ANCHOR_TRAIN + 100 / ANCHOR_EVAL) + 200 / ANCHOR_EVAL) / 3600
    assert basis == "anchor (H200), upper bound" and abs(hours - anchor) < 1e-12  # the CPU runs moved nothing
    n_train = cpu[0].dataset.split_sizes["train"]
    gpu = [_timed(tmp_path, "cuda:0: NVIDIA H100", 4.0 * n_train, s) for s in (2, 3)]  # 2 s per image per epoch
    hours, basis = estimate(cpu + gpu, "dualcoop", "RN101", sizes, epochs=10, runs=3)
    assert basis == "store: 2 GPU run(s) on cuda:0: NVIDIA H100"
    assert abs(hours - 3 * 10 * 1000 * 2.0 / 3600) < 1e-9
