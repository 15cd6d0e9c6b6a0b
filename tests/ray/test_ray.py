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
from tests.conftest import bench_cli


def _records(tmp_path: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (tmp_path / "results" / "runs").glob("*/result.json")]


def test_gpu_fractions_must_divide_one():
    assert TrialResources(gpu=0.25).gpu == 0.25 and TrialResources(gpu=2).gpu == 2
    with pytest.raises(ValueError, match="must divide 1"):
        TrialResources(gpu=0.3)
    cfg = load_config(None, {"ray.resources": {"default": {"cpu": 1}, "intclip": {"cpu": 2, "gpu": 0.5}}})
    assert cfg.ray.trial_resources("intclip:no-sa").gpu == 0.5 and cfg.ray.trial_resources("dualcoop").cpu == 1


@pytest.mark.slow
def test_local_ray_runs_two_trials_of_two_epochs(write_config, tmp_path: Path):
    cfg = write_config(methods=("dualcoop",), seeds=(0, 1), epochs=2, extra="[ray]\nnum_cpus = 2\n")
    proc = bench_cli("run", "--config", str(cfg), "--executor", "ray", "--no-progress", cwd=tmp_path)
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


@pytest.mark.slow
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
        proc = bench_cli("run", "--config", str(no_storage), "--ray-address", address, "--executor", "ray", cwd=tmp_path, env=auth)
        assert proc.returncode == 2 and "ray.storage_path: required when running on an existing Ray cluster" in proc.stderr
        assert not _records(tmp_path)  # checked before any trial started
        storage = tmp_path / "shared-storage"
        cfg = write_config(methods=("label-prior", "zeroshot"), seeds=(0,), extra=f'[ray]\nstorage_path = "{storage}"\n')
        proc = bench_cli("run", "--config", str(cfg), "--ray-address", address, "--executor", "ray", "--no-progress", cwd=tmp_path, env=auth)
        assert proc.returncode == 0, proc.stderr
        assert {r["method"]["name"] for r in _records(tmp_path)} == {"label-prior", "zeroshot"}
        assert list(storage.glob("suite-*"))
    finally:
        _stop_own_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_storage_path_must_be_absolute(tmp_path: Path):
    from bench.ray.executor import storage_path

    cfg = load_config(None, {"ray.storage_path": "relative/dir"})
    with pytest.raises(ConfigError, match="must be an absolute path"):
        storage_path(cfg, None)


# -- placement, device policy and pre-flight on a two-node loopback cluster -------------------------------------------
def test_preflight_refuses_a_request_no_node_can_hold(monkeypatch):
    """Was: gpu = 4 on a 2-GPU cluster waited forever. Now it exits 2 before any trial, naming what is missing."""
    import ray

    from bench.ray import executor as ray_executor

    nodes = [{"Alive": True, "Resources": {"CPU": 16.0, "GPU": 2.0, "accel": 1.0}},
             {"Alive": True, "Resources": {"CPU": 64.0}}, {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 8.0}}]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    ok = load_config(None, {"ray.resources": {"dualcoop": {"cpu": 2, "gpu": 0.5, "custom": {"accel": 1}}}})
    ray_executor.preflight(ok, ["dualcoop", "zeroshot"])  # fits: GPU node; zeroshot: default 1 CPU
    for request, missing in (({"gpu": 4}, "GPU 4"), ({"cpu": 32, "gpu": 1}, "CPU 32, GPU 1"), ({"custom": {"tpu": 1}}, "tpu 1")):
        cfg = load_config(None, {"ray.resources": {"dualcoop": request}})
        with pytest.raises(ConfigError, match=rf"\[ray.resources\] dualcoop: each trial asks for .*{missing}.*no node"):
            ray_executor.preflight(cfg, ["dualcoop"])


def test_auto_address_refuses_when_several_clusters_run(monkeypatch):
    """Was: `--ray-address auto` attached to the latest of several clusters (maybe someone else's)."""
    import ray._private.services as services

    from bench.ray.executor import resolve_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(services, "find_gcs_addresses", lambda: frozenset({"127.0.0.1:6379", "127.0.0.1:6380"}))
    with pytest.raises(ConfigError, match=r"2 Ray clusters run on this machine \(127.0.0.1:6379, 127.0.0.1:6380\)"):
        resolve_address(load_config(None), "auto")
    monkeypatch.setattr(services, "find_gcs_addresses", lambda: frozenset({"127.0.0.1:6380"}))
    assert resolve_address(load_config(None), "auto") == "127.0.0.1:6380"
    assert resolve_address(load_config(None), "10.0.0.1:6379") == "10.0.0.1:6379"


def _start_own_worker(address: str, auth: dict, *args: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_ADDRESS": "", **auth}
    cmd = ["ray", "start", f"--address={address}", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _nodes(address: str, auth: dict, want: int, timeout: float = 120) -> list[dict]:
    script = ("import json, ray; ray.init(address=%r, log_to_driver=False); "
              "print(json.dumps([{'id': n['NodeID'], 'resources': n['Resources']} for n in ray.nodes() if n['Alive']]))") % address
    deadline = time.time() + timeout
    while time.time() < deadline:
        proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "RAY_ADDRESS": "", **auth},
                              capture_output=True, text=True, timeout=120)
        nodes = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 and proc.stdout.strip() else []
        if len(nodes) >= want:
            return nodes
        time.sleep(2)
    raise AssertionError(f"the cluster did not reach {want} nodes")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ray") is None, reason="the ray CLI is not installed")
def test_two_node_loopback_cluster_places_gpu_trials_and_applies_the_device_policy(write_config, tmp_path: Path):
    """A head (CPUs only) and a worker that declares 2 GPUs and a custom resource, both on loopback: gpu = 0.5
    trials land on the GPU node, two share one GPU id, and on this CUDA-less machine the device policy fails them
    at once naming the node and the GPU (never a silent CPU run); a CPU trial's record names its node."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    head = _start_own_head(port, temp_dir, auth)
    address = f"127.0.0.1:{port}"
    worker = _start_own_worker(address, auth, "--num-cpus=2", "--num-gpus=2", '--resources={"accel": 2}')
    try:
        nodes = _nodes(address, auth, want=2)
        (gpu_node,) = [n["id"] for n in nodes if n["resources"].get("GPU")]
        storage = tmp_path / "shared-storage"
        cfg = write_config(methods=("label-prior", "dualcoop"), seeds=(0, 1), extra=(
            f'[ray]\nstorage_path = "{storage}"\nmax_failures = 0\n'
            '[ray.resources.dualcoop]\ncpu = 1\ngpu = 0.5\ncustom = {accel = 1}\n'))
        # bench doctor sees both nodes and holds each method's request against them
        proc = bench_cli("doctor", "--config", str(cfg), "--ray-address", address, "--executor", "ray", cwd=tmp_path, env=auth)
        assert "2 alive node(s)" in proc.stdout and "2 CPU/2 GPU" in proc.stdout, proc.stdout + proc.stderr
        assert proc.returncode == 0, proc.stdout  # dualcoop's 0.5 GPU + accel fits the worker; the rest is ok or warn
        proc = bench_cli("doctor", "--config", str(cfg), "--ray-address", address, "--executor", "ray",
                      "--set", "ray.resources.dualcoop.gpu=4", cwd=tmp_path, env=auth)
        assert proc.returncode == 1 and "missing ray     dualcoop: asks for 1 CPU, 4 GPU per trial; no node has that" in proc.stdout
        proc = bench_cli("run", "--config", str(cfg), "--ray-address", address, "--executor", "ray", "--no-progress",
                      cwd=tmp_path, env=auth, timeout=600)
        assert proc.returncode == 1, proc.stderr  # the two GPU trials failed (no CUDA here), the CPU one did not
        (record,) = _records(tmp_path)
        assert record["method"]["name"] == "label-prior" and record["env"]["ray_node_id"] in {n["id"] for n in nodes}
        assert record["env"]["ray_gpu_ids"] == [] and record["env"]["device"].startswith("cpu")
        errors = [json.loads(p.read_text())["error"] for p in (tmp_path / "results" / "runs").glob("*/error.json")]
        assert len(errors) == 2
        for message in errors:
            assert "DeviceUnavailableError" in message and "Ray gave this trial a GPU" in message, message
            assert f"node {gpu_node[:12]}" in message and "torch sees no CUDA device there" in message
        gpu_ids = {m.split("Ray GPU ids ")[1].split(",")[0].split(")")[0] for m in errors}
        assert len(gpu_ids) == 1  # two 0.5 trials share one GPU
    finally:
        _stop_own_head(worker)
        _stop_own_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_the_embedded_cluster_refuses_a_client_without_its_token(tmp_path: Path):
    """README "What listens where": Ray 2.60 listens on every interface and cannot be told otherwise, so what protects
    the embedded cluster is its token authentication; a client that does not present the session's token is refused."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, ray; from bench.config import load_config; from bench.ray import executor as ray_executor; "
                               "ray_executor.init_ray(load_config(None, {'ray.num_cpus': 1}), None); "
                               "print(ray.get_runtime_context().gcs_address, flush=True); sys.stdin.readline()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=tmp_path,
    )
    try:
        address = holder.stdout.readline().strip()
        assert address, "the embedded Ray did not start"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        probe = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address={address!r}); print('joined')"],
                               env=env, capture_output=True, text=True, timeout=120)
        assert probe.returncode != 0 and "joined" not in probe.stdout
        assert "InvalidAuthToken" in probe.stderr or "Unauthenticated" in probe.stderr, probe.stderr[-2000:]
    finally:
        holder.stdin.write("\n")
        holder.stdin.flush()
        try:
            holder.wait(60)
        except subprocess.TimeoutExpired:
            holder.kill()
