"""The Ray Tune executor: real local Ray, and an existing cluster started with `ray start` on loopback."""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bench.config import TrialResources, load_config
from bench.errors import ConfigError


def _bench(*args, cwd: Path, timeout=300, env: dict | None = None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
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


def _start_own_head(port: int, temp_dir: str, auth: dict) -> subprocess.Popen:
    """`ray start --head --block` in its own session: the cluster lives exactly as long as that process group, so the
    test stops what it started (and nothing else on the machine) by signalling the group. ``auth`` is the token its
    clients must present (Ray's token authentication, with a token of the test's own)."""
    env = {**os.environ, "RAY_ADDRESS": "", **auth}
    cmd = ["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
           "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    head = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if head.poll() is not None:
            raise AssertionError(f"ray start exited with {head.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return head
        time.sleep(0.5)
    _stop_own_head(head)
    raise AssertionError("the test's Ray head did not come up in 120 s")


def _stop_own_head(head: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 30)):
        try:
            os.killpg(head.pid, sig)  # the group `ray start` leads: its GCS, raylet and workers, nothing else
        except ProcessLookupError:
            return
        try:
            head.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:  # ray start has stopped its processes; take any straggler of the group down too
            try:
                os.killpg(head.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return


@pytest.mark.skipif(shutil.which("ray") is None, reason="the ray CLI is not installed")
def test_existing_cluster_on_loopback(write_config, tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    head = _start_own_head(port, temp_dir, auth)
    try:
        address = f"127.0.0.1:{port}"  # this test's own cluster (`auto` could find another one on a shared host)
        no_storage = write_config(methods=("label-prior",), seeds=(0,))
        proc = _bench("run", "--config", str(no_storage), "--ray-address", address, "--executor", "ray", cwd=tmp_path, env=auth)
        assert proc.returncode == 2 and "ray.storage_path: required when running on an existing Ray cluster" in proc.stderr
        assert not _records(tmp_path)  # checked before any trial started
        storage = tmp_path / "shared-storage"
        cfg = write_config(methods=("label-prior", "zeroshot"), seeds=(0,), extra=f'[ray]\nstorage_path = "{storage}"\n')
        proc = _bench("run", "--config", str(cfg), "--ray-address", address, "--executor", "ray", "--no-progress", cwd=tmp_path, env=auth)
        assert proc.returncode == 0, proc.stderr
        assert {r["method"]["name"] for r in _records(tmp_path)} == {"label-prior", "zeroshot"}
        assert list(storage.glob("suite-*"))
    finally:
        _stop_own_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_storage_path_must_be_absolute(tmp_path: Path):
    from bench.ray_executor import storage_path

    cfg = load_config(None, {"ray.storage_path": "relative/dir"})
    with pytest.raises(ConfigError, match="must be an absolute path"):
        storage_path(cfg, None)
