"""Records that survive upgrades, one set of defaults, and rows that never mix experiments."""

import json
import os
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import REPO
from bench import metrics
from bench.store import store
from bench.cli.app import app
from bench.config import DEFAULT_CONFIG, load_config
from bench.reports import tables
from bench.store import collection
from bench.store.schema import SCHEMA_VERSION, RunResult, json_schema, migrate, unknown_keys
from tests.conftest import make_run

runner = CliRunner()


# -- one set of defaults ---------------------------------------------------------------------------------------------
def test_builtin_defaults_are_the_repository_bench_toml_whole(tmp_path, monkeypatch):
    assert tomllib.loads(DEFAULT_CONFIG.read_text()) == tomllib.loads((REPO / "bench.toml").read_text())
    repo = load_config(REPO / "bench.toml")
    monkeypatch.chdir(tmp_path)  # no bench.toml here
    builtin = load_config()
    assert builtin.builtin and not repo.builtin
    dump = lambda c: c.model_dump(mode="json", exclude={"paths": True, "leaderboard": {"site"}})  # noqa: E731  (paths resolve per folder)
    assert dump(builtin) == dump(repo)
    assert builtin.paths.results == tmp_path / "results"
    assert builtin.config_file()["path"] == "package:bench/default.toml"
    assert builtin.config_file()["sha256"] == repo.config_file()["sha256"]


@pytest.mark.slow
def test_same_run_id_from_any_folder(tmp_path, monkeypatch):
    from bench.pipeline.plan import plan_suite

    over = {"suite.methods": ["dualcoop", "intclip-official", "query2label"], "suite.seeds": [0], "paths.cache": str(tmp_path / "cache")}
    monkeypatch.chdir(REPO)
    in_repo, _ = plan_suite(load_config(None, over))
    monkeypatch.chdir(tmp_path)
    elsewhere, _ = plan_suite(load_config(None, over))
    assert [p.run_id for p in in_repo] == [p.run_id for p in elsewhere]
    by_method = {p.method: p.identity["method"]["config"] for p in elsewhere}
    assert by_method["dualcoop"]["epochs"] == 6 and by_method["query2label"]["hidden_dim"] == 128
    assert by_method["intclip-official"]["preprocessing"] == "clip"


# -- records across versions ---------------------------------------------------------------------------------------
def _one_run(tmp_path: Path) -> tuple[Path, RunResult]:
    rec = make_run(tmp_path / "results", "intclip", 0)
    return store.runs_dir(tmp_path / "results") / rec.run_id, rec


def test_unknown_keys_are_kept_ignored_reported_and_never_rerun(tmp_path):
    run_dir, rec = _one_run(tmp_path)
    data = json.loads((run_dir / store.RESULT).read_text())
    data["from_the_future"] = {"x": 1}
    data["training"]["new_field"] = 3
    raw = json.dumps(data, indent=2)
    (run_dir / store.RESULT).write_text(raw)
    read = store.read_result(run_dir)
    assert unknown_keys(read) == ["from_the_future", "training.new_field"]
    assert store.run_status(run_dir)[0] == "complete"
    res = runner.invoke(app, ["validate", "--results", str(tmp_path / "results")])
    assert res.exit_code == 0, res.output
    assert "1 valid, 0 corrupt" in res.output and "from_the_future" in res.output and "training.new_field" in res.output
    summary = collection.summarise(collection.results_frame(collection.load_results(tmp_path / "results")[0]))
    assert list(summary["method"]) == ["intclip"]
    assert (run_dir / store.RESULT).read_text() == raw  # kept on disk as written


def test_an_older_record_is_migrated_in_memory(tmp_path):
    run_dir, rec = _one_run(tmp_path)
    data = json.loads((run_dir / store.RESULT).read_text())
    data["schema_version"] = 1
    del data["config_file"]
    data["backbone"].pop("weights_id", None)
    (run_dir / store.RESULT).write_text(json.dumps(data))
    read = store.read_result(run_dir)
    assert read.schema_version == SCHEMA_VERSION and read.weights_id == "sha256:" + "b" * 64  # from weights_sha256
    assert migrate({"schema_version": 1, "backbone": {"pretrained": "openai"}})["backbone"]["weights_id"] == "tag:openai"
    assert migrate({"schema_version": 1, "backbone": {"pretrained": "none"}})["backbone"]["weights_id"] == "none"


def test_a_newer_record_this_version_cannot_read_is_left_alone(tmp_path):
    run_dir, _ = _one_run(tmp_path)
    data = json.loads((run_dir / store.RESULT).read_text())
    data["schema_version"] = SCHEMA_VERSION + 1
    data["metrics"] = "moved to metrics.json"  # an incompatible change
    raw = json.dumps(data)
    (run_dir / store.RESULT).write_text(raw)
    status, reason = store.run_status(run_dir)
    assert status == "newer" and "newer bench" in reason
    from bench.pipeline.plan import PlannedRun
    from bench.workflows.suite import triage
    from rich.console import Console

    plan = PlannedRun(run_dir.name, "intclip", "intentonomy", 0, "RN101", {}, run_dir)
    outcome, todo = triage([plan], Console(file=open(os.devnull, "w")))
    assert todo == [] and outcome.skipped == [run_dir.name]
    assert (run_dir / store.RESULT).read_text() == raw and not list(run_dir.glob("*.corrupt-*"))
    res = runner.invoke(app, ["validate", "--results", str(tmp_path / "results")])
    assert res.exit_code == 0 and "1 from a newer bench (kept)" in res.output


def test_scores_that_contradict_the_record_make_it_corrupt(tmp_path):
    run_dir, rec = _one_run(tmp_path)
    assert store.run_status(run_dir)[0] == "complete"
    data = json.loads((run_dir / store.RESULT).read_text())
    data["metrics"]["test"]["macro_f1"] = 0.99
    (run_dir / store.RESULT).write_text(json.dumps(data))
    status, reason = store.run_status(run_dir)
    assert status == "corrupt" and "metrics.test.macro_f1 = 0.990000 in result.json but its scores.npz gives" in reason
    res = runner.invoke(app, ["validate", "--results", str(tmp_path / "results")])
    assert res.exit_code == 1 and "0 valid, 1 corrupt" in res.output
    (run_dir / store.SCORES).write_bytes((run_dir / store.SCORES).read_bytes()[:100])  # truncated zip
    assert "damaged: its sha256 differs" in store.run_status(run_dir)[1]


def test_json_schema_documents_every_field():
    schema = json_schema()
    assert schema["properties"]["schema_version"]["default"] == SCHEMA_VERSION
    undocumented = [k for k, v in schema["properties"].items() if "description" not in v and "$ref" not in v and k != "status"]
    assert undocumented == []
    for name, definition in schema["$defs"].items():
        assert all("description" in v for v in definition["properties"].values()), name
    res = runner.invoke(app, ["schema", "result"])
    assert res.exit_code == 0 and json.loads(res.output)["title"].startswith("bench result record")


# -- one row = one experiment ----------------------------------------------------------------------------------------
def _relabel(tmp_path: Path, rec: RunResult, **changes) -> None:
    """Rewrite a stored record with other identity fields (a different run id, same scores)."""
    data = json.loads(rec.model_dump_json())
    for path, value in changes.items():
        node = data
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    data["run_id"] = store.compute_run_id(data)
    src, dst = store.runs_dir(tmp_path) / rec.run_id, store.runs_dir(tmp_path) / data["run_id"]
    shutil.copytree(src, dst)
    (dst / store.RESULT).write_text(json.dumps(data))


@pytest.mark.parametrize(
    "change, label",
    [
        ({"backbone.weights_id": "none", "backbone.pretrained": "none"}, "zeroshot [weights: none]"),
        ({"method.version": "2"}, "zeroshot [v2]"),
        ({"method.config": {"template": "{}"}}, "zeroshot [config "),
    ],
)
def test_runs_of_other_weights_versions_or_configs_are_separate_labelled_rows(tmp_path, change, label):
    runs = [make_run(tmp_path, "zeroshot", seed, config={"template": "a photo of {}"}) for seed in (0, 1, 2)]
    _relabel(tmp_path, runs[0], seed=0, **change)
    summary = collection.summarise(collection.results_frame(collection.load_results(tmp_path)[0]))
    assert len(summary) == 2 and sorted(summary["n"]) == [1, 3]
    single = summary[summary["n"] == 1].iloc[0]
    assert single["method"].startswith(label)
    assert summary[summary["n"] == 3].iloc[0]["method"].startswith("zeroshot [")  # both labels say what differs
    assert summary["experiment_id"].nunique() == 2


def test_deterministic_rows_show_n_1_and_are_marked(tmp_path):
    rec = make_run(tmp_path, "linear-probe", 0)
    _relabel(tmp_path, rec, seed=None)
    shutil.rmtree(store.runs_dir(tmp_path) / rec.run_id)
    make_run(tmp_path, "intclip", 0)
    make_run(tmp_path, "intclip", 1)
    summary = collection.summarise(collection.results_frame(collection.load_results(tmp_path)[0]))
    probe = summary[summary["method"] == "linear-probe"].iloc[0]
    assert probe["n"] == 1 and probe["deterministic"] and probe["seeds"] == "deterministic"
    md = tables.to_markdown(summary)
    assert "| linear-probe | 1.000 | 1 (deterministic) |" in md


# -- mAP on margins ----------------------------------------------------------------------------------------------
def test_map_of_saturated_scores_does_not_depend_on_their_tie_order():
    rng = np.random.default_rng(0)
    y = (rng.random((300, 6)) < 0.3).astype(np.float32)
    margins = rng.normal(0, 1, y.shape) * 10 + 25 * y  # many margins far above 17: float32 sigmoid == 1.0
    probs = (1 / (1 + np.exp(-margins))).astype(np.float32)
    assert (probs == 1.0).mean() > 0.2
    forward = metrics.multilabel_metrics(probs, y, 0.5, ranking=margins)
    order = np.arange(len(y))[::-1]  # reverse the order of every tie group
    backward = metrics.multilabel_metrics(probs[order], y[order], 0.5, ranking=margins[order])
    assert forward["mAP"] == backward["mAP"]
    # on the saturated probabilities the tie order decides AP: what the stored logits prevent
    ties_for = metrics.mean_average_precision(np.where(probs == 1.0, 1.0 - 1e-7 * (1 - y), probs), y)
    ties_against = metrics.mean_average_precision(np.where(probs == 1.0, 1.0 - 1e-7 * y, probs), y)
    assert ties_for - ties_against > 0.01
    assert ties_against <= forward["mAP"] <= ties_for
