"""`bench run` / `report` / `ls` end to end on a tiny suite: result records, skip-if-complete, corrupt results,
failure isolation and the error messages of bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from bench import metrics
from bench.store import store
from bench.cli.app import app
from bench.errors import ConfigError
from bench.registry import METHODS

runner = CliRunner()


def bench(*args: str):
    result = runner.invoke(app, list(args))
    return result


def _results(root: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (root / "results" / "runs").glob("*/result.json")}


@pytest.fixture
def finished_suite(write_config, tmp_path):
    cfg = write_config(methods=("zeroshot", "dualcoop", "linear-probe", "label-prior"), seeds=(0, 1))
    result = bench("run", "--config", str(cfg))
    assert result.exit_code == 0, result.output
    return cfg


@pytest.mark.slow
def test_run_writes_complete_records_consistent_with_their_scores(finished_suite, tmp_path):
    records = _results(tmp_path)
    assert len(records) == 5  # the deterministic methods run once (seed None), DualCoOp once per seed
    assert {(r["method"]["name"], r["seed"]) for r in records.values()} == {
        ("zeroshot", None), ("linear-probe", None), ("label-prior", None), ("dualcoop", 0), ("dualcoop", 1)
    }
    for run_id, r in records.items():
        assert r["schema_version"] == 2 and r["run_id"] == run_id and r["executor"] == "serial"
        assert r["dataset"]["name"] == "synthetic" and len(r["dataset"]["manifest_sha256"]) == 64
        assert r["protocol"] == {"name": "val-threshold", "threshold": r["protocol"]["threshold"], "selection_split": "val"}
        assert r["protocol"]["threshold"] in metrics.THRESHOLD_GRID
        assert {"git_sha", "git_dirty", "packages", "device"} <= set(r["env"])
        assert r["env"]["packages"]["torch"]
        scores = store.read_scores(tmp_path / "results" / "runs" / run_id)
        assert scores["val_scores"].dtype == np.float32 and scores["test_labels"].shape == (48, 12)
        assert scores["test_logits"].dtype == np.float64 and scores["test_logits"].shape == (48, 12)
        val, test = metrics.evaluate(
            "multilabel", scores["val_scores"], scores["val_labels"], scores["test_scores"], scores["test_labels"],
            val_ranking=scores["val_logits"], test_ranking=scores["test_logits"],
        )
        assert val["threshold"] == r["protocol"]["threshold"]
        for key in ("macro_f1", "micro_f1", "samples_f1", "mAP", "macro_f1_at_0_5"):
            assert r["metrics"]["test"][key] == pytest.approx(test[key]) and r["metrics"]["val"][key] == pytest.approx(val[key])
        assert len(r["metrics"]["per_class"]["test"]["f1"]) == 12
    by_method = {r["method"]["name"]: r for r in records.values()}
    assert by_method["zeroshot"]["params"]["learnable"] == 0
    assert by_method["dualcoop"]["method"]["family"] == "Multi-label methods" and by_method["dualcoop"]["method"]["display_name"] == "DualCoOp"
    prior = by_method["label-prior"]
    scores = store.read_scores(tmp_path / "results" / "runs" / prior["run_id"])
    from bench.config import load_config
    from bench.pipeline.plan import load_dataset

    train_labels = load_dataset(load_config(finished_suite), "synthetic", 96).splits["train"].labels
    np.testing.assert_allclose(scores["test_scores"], np.tile(train_labels.mean(0), (48, 1)), atol=1e-6)
    assert by_method["linear-probe"]["params"]["learnable"] == (64 + 1) * 12
    assert by_method["dualcoop"]["params"]["learnable"] == 2 * 12 * 16 * 64
    assert by_method["dualcoop"]["training"]["epochs_run"] == 2 and len(by_method["dualcoop"]["training"]["history"]) == 2


@pytest.mark.slow
def test_second_run_trains_nothing_and_rewrites_nothing(finished_suite, tmp_path):
    before = {p: p.read_bytes() for p in (tmp_path / "results").rglob("result.json")}
    result = bench("run", "--config", str(finished_suite))
    assert result.exit_code == 0
    assert "already have results" in result.output and "nothing to train" in result.output
    assert {p: p.read_bytes() for p in (tmp_path / "results").rglob("result.json")} == before


@pytest.mark.slow
def test_corrupt_result_is_kept_aside_and_rerun(finished_suite, tmp_path):
    run_dir = next((tmp_path / "results" / "runs").iterdir())
    (run_dir / "result.json").write_text("{ truncated")
    result = bench("run", "--config", str(finished_suite))
    assert result.exit_code == 0, result.output
    assert "corrupt result" in result.output and "rerunning" in result.output
    assert list(run_dir.glob("result.json.corrupt-*"))[0].read_text() == "{ truncated"
    store.read_result(run_dir)  # valid again
    assert "1 runs trained, 4 reused" in result.output


@pytest.mark.slow
def test_report_md_and_csv(finished_suite, tmp_path):
    md = bench("report", "--config", str(finished_suite), "--format", "md")
    assert md.exit_code == 0
    assert "| dualcoop |" in md.output and "± " in md.output and "test Macro F1" in md.output
    out = tmp_path / "table.csv"
    assert bench("report", "--config", str(finished_suite), "--format", "csv", "--out", str(out)).exit_code == 0
    table = pd.read_csv(out)
    assert set(table["method"]) == {"zeroshot", "dualcoop", "linear-probe", "label-prior"} and set(table["n"]) == {1, 2}
    records = [r for r in _results(tmp_path).values() if r["method"]["name"] == "dualcoop"]
    values = [r["metrics"]["test"]["macro_f1"] for r in records]
    row = table[table["method"] == "dualcoop"].iloc[0]
    assert row["test_macro_f1_mean"] == pytest.approx(np.mean(values))
    assert row["test_macro_f1_std"] == pytest.approx(np.std(values, ddof=1))
    listing = bench("ls", "runs", "--config", str(finished_suite))
    rows = [line.split() for line in listing.output.splitlines()[1:] if line.strip()]  # under the header, aligned
    assert [r[1] for r in rows] == sorted(r[1] for r in rows) and all(len(r) == 8 for r in rows)
    assert sum(r[5] == "-" for r in rows) == 3 and sorted(r[5] for r in rows if r[5] != "-") == ["0", "1"]
    # the declared reference (intclip, the paper's method) did not run: no p-values, and the report says why
    assert "| ref |" not in md.output and "No p-values: the declared reference intclip has no runs in this table." in md.output
    md = bench("report", "--config", str(finished_suite), "--ref", "dualcoop", "--test", "bootstrap")
    assert md.exit_code == 0, md.output
    assert md.output.count("| ref |") == 1 and "p vs ref (Macro F1)" in md.output
    assert "hierarchical bootstrap" in md.output and "1000 resamples, seed 0" in md.output
    seed_t = bench("report", "--config", str(finished_suite), "--ref", "dualcoop")  # 2 seeds: outside the calibration
    assert seed_t.output.count("n/a (fewer than 3 seeds)") == 3 and "| nan" not in seed_t.output.lower()
    # another config of the same method is a separate row, never averaged with the first
    assert bench("run", "--config", str(finished_suite), "--methods", "dualcoop", "--seeds", "0", "--set", "methods.dualcoop.lr=0.01").exit_code == 0
    assert bench("report", "--config", str(finished_suite), "--format", "csv", "--out", str(out), "--bootstrap", "50",
                 "--ref", "linear-probe", "--test", "bootstrap").exit_code == 0
    table = pd.read_csv(out)
    dual = table[table["method"].str.startswith("dualcoop")]
    assert sorted(dual["n"]) == [1, 2] and all("[" in m for m in dual["method"])
    p_values = table["test_macro_f1_p_vs_ref"].dropna()
    assert len(p_values) == len(table) - 1 and p_values.between(0, 1).all()


def test_a_failing_run_does_not_stop_the_suite(write_config, tmp_path):
    from bench.methods.zeroshot import ZeroShot

    class Broken(ZeroShot):
        name = "broken"

        def predict_logits(self, images):
            raise RuntimeError("deliberately broken")

    METHODS.register("broken", Broken)
    try:
        result = bench("run", "--config", str(write_config(methods=("broken", "zeroshot"))))
    finally:
        METHODS.unregister("broken")
    assert result.exit_code == 1
    assert "failed: broken / synthetic / deterministic: RuntimeError: deliberately broken" in result.output
    assert [r["method"]["name"] for r in _results(tmp_path).values()] == ["zeroshot"]
    errors = list((tmp_path / "results" / "runs").glob("*/error.json"))
    assert len(errors) == 1 and "deliberately broken" in json.loads(errors[0].read_text())["error"]


def test_bad_input_errors(write_config, tmp_path):
    cfg = str(write_config())
    assert isinstance(bench("run", "--config", cfg, "--methods", "zeroshoot").exception, ConfigError)
    assert "did you mean 'zeroshot'" in str(bench("run", "--config", cfg, "--methods", "zeroshoot").exception)
    assert "'x' is not an integer" in str(bench("run", "--config", cfg, "--seeds", "0,x").exception)
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    assert "is not writable" in str(bench("run", "--config", cfg, "--results", str(blocker / "r")).exception)
    assert isinstance(bench("ls", "methds").exception, Exception)
    listed = bench("ls", "methods", "intclip*").output.split()
    assert {"intclip", "intclip-official", "intclip:no-sa", "intclip:single-none", "intclip-official:no-hci"} <= set(listed)
    assert "intclip-official:official" not in listed and "dualcoop" not in listed


def test_cli_exit_code_and_message_for_bad_config(tmp_path):
    cfg = tmp_path / "bench.toml"
    cfg.write_text("[suite]\nseeds = [0, 'a']\n")
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--config", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "suite.seeds.1: Input should be a valid integer" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_intclip_code_protocol_reports_the_codes_own_ap_beside_the_standard_map(write_config, tmp_path):
    cfg = write_config(methods=("label-prior", "zeroshot"), extra='[protocol]\nname = "intclip-code"\n')
    assert bench("run", "--config", str(cfg)).exit_code == 0
    for r in _results(tmp_path).values():
        assert r["protocol"]["threshold"] == 0.5 and {"mAP", "mAP_official"} <= set(r["metrics"]["test"])
        scores = store.read_scores(tmp_path / "results" / "runs" / r["run_id"])
        assert r["metrics"]["test"]["mAP_official"] == pytest.approx(metrics.official_average_precision(scores["test_scores"], scores["test_labels"]).mean())
    md = bench("report", "--config", str(cfg), "--format", "md", "--bootstrap", "0")
    assert "test mAP (code's AP)" in md.output and "epoch selected on TEST" in md.output


def test_cuda_asked_on_a_machine_without_it_fails_before_any_run_in_one_line(write_config, tmp_path):
    """Was: `engine.device = "cuda"` without CUDA failed with WeightsNotFoundError ("Put the checkpoint at ..."), and
    when every run failed `bench run` ended in a pandas KeyError traceback from the report code. Then (issue 25's
    "old behaviour", this test's former name ..._fails_every_run_clearly_and_run_still_summarises): every run was
    started and failed with DeviceUnavailableError, exit 1. Now pre-flight (bench.workflows.preflight) refuses
    before any run starts: exit 2, one line naming the fix, no run folder."""
    import torch

    from tests.conftest import bench_cli

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = write_config(methods=("label-prior", "dualcoop"), seeds=(0,))
    proc = bench_cli("run", "--config", str(cfg), "--executor", "serial", "--no-progress", "--set", 'engine.device="cuda"', cwd=tmp_path)
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 2, out
    assert "Traceback" not in out and "KeyError" not in out and "WeightsNotFound" not in out
    assert "pre-flight: 1 problem(s) before any run started: device: engine.device = 'cuda' but torch sees no CUDA device" in out
    assert "fix: run on a GPU machine, or set engine.device = \"auto\"" in out
    assert "runs trained" not in out and list((tmp_path / "results" / "runs").glob("*")) == []


def test_out_of_gpu_memory_is_its_own_error_saying_what_to_change(write_config, tmp_path, monkeypatch):
    import torch

    import bench.train.engine
    from bench.config import load_config
    from bench.errors import GPUOutOfMemoryError
    from bench.pipeline.plan import plan_suite
    from bench.pipeline.runner import execute_run

    def oom(*_args, **_kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)")

    cfg = load_config(write_config(methods=("dualcoop",), seeds=(0,)), {"ray.resources": {"dualcoop": {"cpu": 1, "gpu": 0.25}}})
    (plan,), datasets = plan_suite(cfg)
    monkeypatch.setattr(bench.train.engine, "run_method", oom)
    with pytest.raises(GPUOutOfMemoryError) as err:
        execute_run(plan, datasets[plan.data], cfg, log=lambda *_: None)
    message = str(err.value)
    assert "out of GPU memory" in message and "batch_size 32" in message and "gpu = 0.25 per trial" in message
    assert "lower methods.dualcoop.batch_size" in message and "Tried to allocate 2.00 GiB" in message
    assert not (plan.run_dir / "result.json").exists()


def test_cli_has_a_version_choices_and_help_for_every_option():
    """Was: no --version, --format a free string, options without help, and "[leaderboard]" eaten by rich markup."""
    import click
    import typer

    import bench

    runner = CliRunner()
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"bench {bench.__version__}"
    res = runner.invoke(app, ["report", "--format", "pdf"])
    assert res.exit_code == 2 and "'pdf' is not one of" in res.output and "latex" in res.output
    res = runner.invoke(app, ["run", "--executor", "dask"])
    assert res.exit_code == 2 and "'dask' is not one of" in res.output
    root = typer.main.get_command(app)
    missing = []
    for group in [root, *(c for c in root.commands.values() if isinstance(c, click.Group))]:
        for name, command in group.commands.items():
            for param in command.params:
                if isinstance(param, click.Option) and not (param.help or "").strip():
                    missing.append(f"{name} {param.opts[0]}")
    assert not missing, missing
    res = runner.invoke(app, ["leaderboard", "--help"], env={"COLUMNS": "200"})
    assert "run what is missing of the [leaderboard] suite" in res.output


def test_the_protocol_flag_is_recorded_as_an_override(write_config, tmp_path):
    cfg = write_config(methods=("label-prior",), seeds=(0,))
    res = CliRunner().invoke(app, ["run", "--config", str(cfg), "--executor", "serial", "--no-progress", "--protocol", "intclip-code"])
    assert res.exit_code == 0, res.output
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "results" / "runs").glob("*/result.json")]
    assert record["protocol"]["name"] == "intclip-code" and record["config_file"]["overrides"]["protocol.name"] == "intclip-code"
