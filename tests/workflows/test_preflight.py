"""Pre-flight (bench.workflows.preflight): what would fail every trial is found before anything is scheduled, one
line per problem with its fix; and a trial that fails under Ray shows one line, not Ray's traceback."""

import json
from pathlib import Path

import pytest
from bench.config import load_config
from bench.errors import BenchError
from bench.workflows import preflight
from bench.workflows.weights import weights_status
from tests.conftest import bench_cli

UNCACHED = ("ViT-B-16", "laion2b_s34b_b88k")  # an open_clip tag no test machine has (no weights are downloaded)
ANSI = "\x1b["


@pytest.fixture
def no_ray(monkeypatch):
    """Every way Ray could start in this process raises: a pre-flight failure must never reach it."""
    ray = pytest.importorskip("ray")
    calls = []

    def refuse(*args, **kwargs):
        calls.append((args, kwargs))
        raise AssertionError("ray.init called: a trial was about to be scheduled")

    monkeypatch.setattr(ray, "init", refuse)
    return calls


def _bench(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """``bench ARGS`` in this process through :func:`bench.cli.app.main` (a BenchError: exit 2 and its message)."""
    from bench.cli.app import main

    monkeypatch.setattr("sys.argv", ["bench", *args])
    with pytest.raises(SystemExit) as done:
        main()
    out = capsys.readouterr()
    return done.value.code, out.out + out.err


def _run_dirs(results: Path) -> list[Path]:
    return [p for p in (results / "runs").glob("*")] if (results / "runs").is_dir() else []


def test_missing_weights_exit_2_with_the_fix_named_and_nothing_started(write_config, tmp_path, monkeypatch, capsys, no_ray):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    cfg_path = write_config(methods=("zeroshot", "linear-probe"), seeds=(0,))
    cfg = load_config(cfg_path, {"suite.backbone": UNCACHED[0], f"backbones.{UNCACHED[0]}.pretrained": UNCACHED[1]})
    if weights_status(cfg, UNCACHED[0]).present:
        pytest.skip(f"{UNCACHED} is cached on this machine")
    code, output = _bench(["run", "--config", str(cfg_path), "--executor", "ray", "--no-progress",
                           "--backbone", UNCACHED[0], "--pretrained", UNCACHED[1]], monkeypatch, capsys)
    assert code == 2, output
    text = " ".join(output.split())  # (a console that is not a terminal wraps at 80 columns)
    assert "pre-flight: 1 problem(s) before any run started:" in text
    assert "weights ViT-B-16 (laion2b_s34b_b88k): open_clip tag 'laion2b_s34b_b88k' is not cached on this machine" in text
    assert "fix: HF_HUB_OFFLINE=1 is set: unset it and run bench weights fetch ViT-B-16 (online)" in text
    assert "Traceback" not in output and "WeightsNotFoundError" not in output
    assert no_ray == [] and _run_dirs(tmp_path / "results") == []  # no Ray session, no run folder


def test_the_api_raises_the_same_error(write_config, tmp_path, monkeypatch, no_ray):
    import bench

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg_path = write_config(methods=("zeroshot",), seeds=(0,))
    overrides = {f"backbones.{UNCACHED[0]}.pretrained": UNCACHED[1], "paths.results": str(tmp_path / "results")}
    if weights_status(load_config(cfg_path, overrides), UNCACHED[0]).present:
        pytest.skip(f"{UNCACHED} is cached on this machine")
    with pytest.raises(preflight.PreflightError) as caught:
        bench.run(config=cfg_path, backbone=UNCACHED[0], executor="ray", overrides=overrides)
    assert isinstance(caught.value, BenchError) and len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith("weights ViT-B-16 (laion2b_s34b_b88k): ")
    assert no_ray == [] and _run_dirs(tmp_path / "results") == []


def test_cuda_asked_without_cuda_is_one_line_before_scheduling(write_config, tmp_path, monkeypatch, capsys, no_ray):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.chdir(tmp_path)
    cfg = write_config(methods=("label-prior", "dualcoop"), seeds=(0,))
    code, output = _bench(["run", "--config", str(cfg), "--executor", "ray", "--no-progress", "--set", 'engine.device="cuda"'],
                          monkeypatch, capsys)
    assert code == 2, output
    text = " ".join(output.split())
    assert "pre-flight: 1 problem(s)" in text
    assert "device: engine.device = 'cuda' but torch sees no CUDA device on this machine; fix: run on a GPU machine" in text
    assert text.count("engine.device = 'cuda'") == 1 and "Traceback" not in output
    assert no_ray == [] and _run_dirs(tmp_path / "results") == []


def test_cuda_on_an_existing_cluster_is_left_to_the_cluster_check(write_config, monkeypatch):
    """The nodes of a cluster are not this machine: torch here says nothing about them."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_config(write_config(), {"engine.device": "cuda", "suite.executor": "ray"})
    assert preflight.device_problems(cfg, "10.0.0.1:6379") == []
    assert len(preflight.device_problems(cfg, None)) == 1
    assert preflight.device_problems(load_config(write_config(), {"engine.device": "auto"}), None) == []


def test_a_missing_data_root_names_the_dataset_and_its_fix(write_config, tmp_path):
    cfg = load_config(write_config(), {"suite.datasets": ["intentonomy"], "paths.data": {"intentonomy": str(tmp_path / "nowhere")}})
    (line,) = preflight.data_problems(cfg, ["intentonomy", "synthetic"])
    assert line.startswith("data intentonomy: ") and str(tmp_path / "nowhere") in line
    assert "fix: bench data download --dataset intentonomy --root /data/intentonomy" in line


def test_every_problem_is_its_own_line(write_config, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = load_config(write_config(), {"engine.device": "cuda", "suite.backbone": UNCACHED[0],
                                       f"backbones.{UNCACHED[0]}.pretrained": UNCACHED[1],
                                       "paths.weights": str(tmp_path / "weights"),
                                       "suite.datasets": ["intentonomy"], "paths.data": {"intentonomy": str(tmp_path / "no")}})
    if weights_status(cfg, UNCACHED[0]).present:
        pytest.skip(f"{UNCACHED} is cached on this machine")
    with pytest.raises(preflight.PreflightError) as caught:
        preflight.ensure(cfg)
    lines = str(caught.value).splitlines()
    assert len(lines) == 4 and lines[0] == "pre-flight: 3 problem(s) before any run started:"
    assert [line.split()[0] for line in lines[1:]] == ["weights", "device:", "data"]
    assert all("fix: " in line for line in lines[1:])
    assert preflight.problems(cfg, []) == []  # nothing to run: nothing to check


@pytest.mark.slow
def test_a_trial_failing_under_ray_shows_one_line_and_keeps_the_traceback(write_config, tmp_path):
    """Ray is told this machine has a GPU (``ray.num_gpus = 1``) and gives it to the trial; torch sees none, so the
    trial fails with the harness's DeviceUnavailableError inside the Ray worker. Output goes to a pipe (not a terminal)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = write_config(methods=("dualcoop",), seeds=(0,), epochs=1,
                       extra="[ray]\nnum_cpus = 2\nnum_gpus = 1\nmax_failures = 0\n[ray.resources.dualcoop]\ncpu = 1\ngpu = 1\n")
    proc = bench_cli("run", "--config", str(cfg), "--executor", "ray", "--no-progress", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out and ANSI not in out and "Trials did not complete" not in out
    message = "DeviceUnavailableError: Ray gave this trial a GPU on node "
    (line,) = [line for line in out.splitlines() if line.startswith("failed: dualcoop / synthetic / seed 0: ")]
    assert message in line and line.endswith("to train on the CPU")  # whole, on one line
    (error_file,) = (tmp_path / "results" / "runs").glob("*/error.json")
    error = json.loads(error_file.read_text())
    assert error["error"].startswith(message) and error["error"].endswith("to train on the CPU")
    trace = "".join(error["traceback"])
    assert "bench/train/devices.py" in trace and "raise DeviceUnavailableError(" in trace and ANSI not in trace
