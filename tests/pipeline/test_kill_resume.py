"""kill -9 of `bench run` mid-suite, then rerun: finished runs untouched, the interrupted one resumes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"bench run ended early: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.1)
    raise AssertionError("timed out")


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["serial", "ray"])
def test_sigkill_then_rerun_resumes_from_checkpoint(write_config, tmp_path: Path, executor: str):
    cfg = write_config(methods=("zeroshot", "dualcoop"), epochs=12, extra="[ray]\nnum_cpus = 1\n")
    runs = tmp_path / "results" / "runs"
    cmd = [sys.executable, "-m", "bench", "run", "--config", str(cfg), "--no-progress", "--executor", executor]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)

    def checkpoint_epoch() -> int:
        for ckpt in runs.glob("*/checkpoint.pt"):
            try:
                return torch.load(ckpt, weights_only=True)["epoch"]
            except Exception:  # noqa: BLE001 - never a half-written file (atomic rename), but be safe
                return 0
        return 0

    try:
        _wait_for(lambda: len(list(runs.glob("*/result.json"))) == 1 and checkpoint_epoch() >= 2, 240, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    first = next(runs.glob("*/result.json"))
    first_bytes = first.read_bytes()
    assert json.loads(first_bytes)["method"]["name"] == "zeroshot"
    interrupted_at = checkpoint_epoch()
    assert 2 <= interrupted_at < 12

    rerun = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "checkpoint found, resuming" in rerun.stderr
    results = sorted(runs.glob("*/result.json"))
    assert len(results) == 2 and len(list(runs.iterdir())) == 2
    assert first.read_bytes() == first_bytes  # byte-identical: never rewritten
    dualcoop = next(json.loads(p.read_text()) for p in results if p != first)
    assert dualcoop["executor"] == executor and (dualcoop["trial_id"] is not None) == (executor == "ray")
    assert dualcoop["training"]["resumed_from_epoch"] >= interrupted_at
    assert dualcoop["training"]["epochs_run"] == 12 and [h["epoch"] for h in dualcoop["training"]["history"]] == list(range(12))
    assert not list(runs.glob("*/checkpoint.pt"))  # removed once the result landed

    # the resumed run's scores are bit-identical to an uninterrupted run's (a fresh results folder, in this process)
    from bench.store import store
    from bench.config import load_config
    from bench.pipeline.plan import plan_suite
    from bench.pipeline.runner import execute_run

    fresh = load_config(cfg, {"paths.results": str(tmp_path / "uninterrupted")})
    plans, data = plan_suite(fresh)
    plan = next(p for p in plans if p.method == "dualcoop")
    execute_run(plan, data[plan.data], fresh, log=lambda *_: None)
    resumed, uninterrupted = store.read_scores(runs / plan.run_id), store.read_scores(plan.run_dir)
    assert all(np.array_equal(resumed[k], uninterrupted[k]) for k in uninterrupted), "resume changed the scores"
