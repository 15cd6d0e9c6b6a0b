"""Same command, same numbers: bit-identical scores.npz for DualCoOp, IntCLIP and Query2Label (1 epoch each on the
synthetic dataset) in one process after unrelated random work, in a fresh process, and under the Ray executor with a
worker that ran another trial first. (kill -9 and resume vs an uninterrupted run: tests/test_kill_resume.py.)"""

import pytest
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from bench.store import store
from bench.config import load_config

METHODS = ("dualcoop", "intclip", "query2label")
EXTRA = """
[methods.intclip]
epochs = 1
[methods.query2label]
epochs = 1
hidden_dim = 64
dim_feedforward = 128
[ray]
num_cpus = 1
"""


def _arrays(results: Path) -> dict[str, dict[str, np.ndarray]]:
    return {d.name: store.read_scores(d) for d in sorted((results / "runs").iterdir()) if (d / store.RESULT).is_file()}


def _assert_identical(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys() and len(a) == len(METHODS), what
    for run_id in a:
        assert a[run_id].keys() == b[run_id].keys()
        for key, value in a[run_id].items():
            assert value.dtype == b[run_id][key].dtype and np.array_equal(value, b[run_id][key]), f"{what}: {run_id} {key} differs"


def _run_in_process(cfg_path: Path, results: Path) -> None:
    from bench.pipeline.plan import plan_suite
    from bench.pipeline.runner import execute_run

    cfg = load_config(cfg_path, {"paths.results": str(results)})
    plans, data = plan_suite(cfg)
    for plan in plans:
        torch.rand(17)  # unrelated random work in the same process before every run: must not matter
        np.random.rand(3)
        execute_run(plan, data[plan.data], cfg, log=lambda *_: None)


@pytest.mark.slow
def test_two_builds_with_one_seed_give_the_same_weights_and_scores(write_config, tmp_path: Path):
    cfg = write_config(methods=METHODS, epochs=1, extra=EXTRA)
    _run_in_process(cfg, tmp_path / "a")
    torch.manual_seed(12345)  # a different global state than the first pass
    _run_in_process(cfg, tmp_path / "b")
    a, b = _arrays(tmp_path / "a"), _arrays(tmp_path / "b")
    _assert_identical(a, b, "two builds in one process")
    for run_id in a:
        wa = torch.load(tmp_path / "a" / "runs" / run_id / "weights.pt", weights_only=True)
        wb = torch.load(tmp_path / "b" / "runs" / run_id / "weights.pt", weights_only=True)
        flat_a, flat_b = _flatten(wa), _flatten(wb)
        assert flat_a.keys() == flat_b.keys() and all(torch.equal(flat_a[k], flat_b[k]) for k in flat_a)


def _flatten(state, prefix="") -> dict:
    if isinstance(state, dict):
        return {k: v for key, value in state.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}
    return {prefix: state if isinstance(state, torch.Tensor) else torch.tensor(state)}


@pytest.mark.slow
def test_fresh_process_and_ray_with_a_reused_worker_give_identical_scores(write_config, tmp_path: Path):
    cfg = write_config(methods=METHODS, epochs=1, extra=EXTRA)
    _run_in_process(cfg, tmp_path / "in-process")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ""}
    for executor in ("serial", "ray"):
        cmd = [sys.executable, "-m", "bench", "run", "--config", str(cfg), "--no-progress", "--executor", executor,
               "--results", str(tmp_path / executor)]
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr
    reference = _arrays(tmp_path / "in-process")
    _assert_identical(reference, _arrays(tmp_path / "serial"), "fresh process (serial)")
    _assert_identical(reference, _arrays(tmp_path / "ray"), "ray executor")
    records = [json.loads(p.read_text()) for p in (tmp_path / "ray" / "runs").glob("*/result.json")]
    pids = [r["env"]["pid"] for r in records]
    assert len(set(pids)) < len(pids), f"no Ray worker ran two trials (pids {pids}): worker reuse not exercised"
    assert {r["env"]["torch_threads"] for r in records} == {1}


def test_a_run_with_a_deterministic_method_is_planned_once_and_its_scores_repeat(write_config, tmp_path: Path):
    from bench.pipeline.plan import plan_suite

    cfg = load_config(write_config(methods=("zeroshot", "dualcoop"), seeds=(0, 1, 2)))
    plans, _ = plan_suite(cfg)
    assert sorted((p.method, p.seed) for p in plans) == [("dualcoop", 0), ("dualcoop", 1), ("dualcoop", 2), ("zeroshot", None)]
    random_weights = load_config(write_config(methods=("zeroshot",), seeds=(0, 1), extra='[backbones.tiny-clip]\npretrained = "none"\n'))
    plans, _ = plan_suite(random_weights)
    assert [p.seed for p in plans] == [0, 1]  # random init depends on the seed: one run per seed


def test_deterministic_flag_turns_on_torch_deterministic_algorithms(write_config, tmp_path: Path):
    from bench.train.engine import configure_determinism

    try:
        configure_determinism(torch.device("cpu"), True)
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") in (":4096:8", ":16:8")
    finally:
        configure_determinism(torch.device("cpu"), False)
    assert not torch.are_deterministic_algorithms_enabled()
