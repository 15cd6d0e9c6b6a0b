"""The Ray Tune executor: real local Ray, and an existing cluster started with `ray start` on loopback."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench.config import TrialResources, load_config
from bench.errors import ConfigError


def _bench(*args, cwd: Path, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)


def _records(tmp_path: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (tmp_path / "results" / "runs").glob("*/result.json")]


def test_gpu_fractions_must_divide_one():
    assert TrialResources(gpu=0.25).gpu == 0.25 and TrialResources(gpu=2).gpu == 2
    with pytest.raises(ValueError, match="must divide 1"):
        TrialResources(gpu=0.3)
    cfg = load_config(None, {"ray.resources": {"default": {"cpu": 1}, "intclip": {"cpu": 2, "gpu": 0.5}}})
    assert cfg.ray.trial_resources("intclip:no-sa").gpu == 0.5 and cfg.ray.trial_resources("dualcoop").cpu == 1


def test_local_ray_runs_two_trials_of_two_epochs(write_config, tmp_path: Path):
    cfg = write_config(methods=("dualcoop",), seeds=(0, 1), epochs=2, extra="[ray]\nnum_cpus = 2\n")
    proc = _bench("run", "--config", str(cfg), "--executor", "ray", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = _records(tmp_path)
    assert len(records) == 2 and {r["executor"] for r in records} == {"ray"}
    assert len({r["trial_id"] for r in records}) == 2 and all(r["trial_id"] for r in records)
    assert all(len(r["training"]["history"]) == 2 for r in records)
    experiments = list((tmp_path / "results" / "ray").glob("suite-*"))
    assert experiments, "Tune kept no experiment state under <results>/ray"


@pytest.mark.skipif(shutil.which("ray") is None, reason="the ray CLI is not installed")
def test_existing_cluster_on_loopback(write_config, tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_ADDRESS": ""}
    start = ["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"]
    subprocess.run(start, check=True, capture_output=True, env=env, timeout=120)
    try:
        address = "auto"  # as README says: the cluster `ray start` recorded
        no_storage = write_config(methods=("label-prior",), seeds=(0,))
        proc = _bench("run", "--config", str(no_storage), "--ray-address", address, "--executor", "ray", cwd=tmp_path)
        assert proc.returncode == 2 and "ray.storage_path: required when running on an existing Ray cluster" in proc.stderr
        assert not _records(tmp_path)  # checked before any trial started
        storage = tmp_path / "shared-storage"
        cfg = write_config(methods=("label-prior", "zeroshot"), seeds=(0,), extra=f'[ray]\nstorage_path = "{storage}"\n')
        proc = _bench("run", "--config", str(cfg), "--ray-address", address, "--executor", "ray", "--no-progress", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert {r["method"]["name"] for r in _records(tmp_path)} == {"label-prior", "zeroshot"}
        assert list(storage.glob("suite-*"))
    finally:
        subprocess.run(["ray", "stop", "--force"], capture_output=True, timeout=120)


def test_storage_path_must_be_absolute(tmp_path: Path):
    from bench.ray_executor import storage_path

    cfg = load_config(None, {"ray.storage_path": "relative/dir"})
    with pytest.raises(ConfigError, match="must be an absolute path"):
        storage_path(cfg, None)
