"""`bench leaderboard`: dated history, change since the previous regeneration, regression flag and exit code."""

from __future__ import annotations

import pytest

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from bench.store import store
from bench.cli.app import app
from tests.conftest import make_run

LB = [
    "--set", 'leaderboard.methods=["dualcoop","intclip","linear-probe"]',
    "--set", 'leaderboard.datasets=["intentonomy"]',
    "--set", 'leaderboard.backbone="RN101"',
    "--set", "leaderboard.seeds=[0,1]",
    "--set", "leaderboard.bootstrap=0",
]


def _regenerate(results: Path, site: Path, *extra: str):
    return CliRunner().invoke(app, ["leaderboard", "--no-run", "--results", str(results), "--site", str(site), "--tolerance", "1.0", *LB, *extra])


def _plant_drop(results: Path, method: str, points: float) -> None:
    for run_dir, record in store.iter_results(results):
        if record.method.name == method:
            record.metrics.test["macro_f1"] -= points / 100
            store.write_result(run_dir, record, store.read_scores(run_dir))


def _row(html: str, method: str) -> str:
    return re.search(rf'<tr class="[^"]*" data-method="{re.escape(method)}">.*?</tr>', html, re.S).group(0)


@pytest.mark.slow
def test_two_regenerations_with_a_planted_drop(tmp_path):
    results, site = tmp_path / "results", tmp_path / "site"
    for method, value in (("dualcoop", 0.38), ("intclip", 0.40), ("linear-probe", 0.30)):
        for seed in (0, 1):
            make_run(results, method, seed, test={"macro_f1": value})
    make_run(results, "zeroshot", 0)  # not in the leaderboard suite: left out

    first = _regenerate(results, site)
    assert first.exit_code == 0, first.output
    assert "first regeneration" in first.output
    assert sorted(p.name for p in site.iterdir()) == ["history", "index.html", "intentonomy.html"]

    _plant_drop(results, "dualcoop", 5.0)  # 38 -> 33: beyond the 1-point tolerance
    _plant_drop(results, "linear-probe", 0.5)  # 30 -> 29.5: within it
    second = _regenerate(results, site)
    assert second.exit_code == 3, second.output
    assert re.search(r"regression: intentonomy@aaaaaaaaaaaa / RN101 / val-threshold / dualcoop #[0-9a-f]{12}: 38.00 -> 33.00 \(-5.00 points\)", second.output)

    history = sorted((site / "history").glob("*.json"))
    assert len(history) == 2
    record = json.loads(history[-1].read_text())
    assert record["previous"] == json.loads(history[0].read_text())["stamp"]
    assert [r["key"].split(" / ")[-1].split(" #")[0] for r in record["regressions"]] == ["dualcoop"]
    assert {k.split(" / ")[-1].split(" #")[0]: v for k, v in record["changes"].items()} == {"dualcoop": -5.0, "intclip": 0.0, "linear-probe": -0.5}
    assert "zeroshot" not in json.dumps(record["entries"])

    for page in ("index.html", "intentonomy.html"):
        html = (site / page).read_text()
        dual = _row(html, "dualcoop")
        assert "regression" in dual.split(">")[0] and ">-5.00<" in dual and '<span class="flag">regression</span>' in dual
        probe = _row(html, "linear-probe")
        assert "regression" not in probe and ">-0.50<" in probe
        assert "1 regression" in html

    third = _regenerate(results, site)  # nothing changed since: no flag, exit 0, the history keeps all three
    assert third.exit_code == 0, third.output
    assert len(list((site / "history").glob("*.json"))) == 3
    assert "No regression beyond 1.0 points" in (site / "index.html").read_text()


@pytest.mark.slow
def test_history_compares_a_row_only_with_the_same_experiment(tmp_path):
    """Runs on other weights join the store between regenerations: they are a new row, not a change of the old."""
    results, site = tmp_path / "results", tmp_path / "site"
    for seed in (0, 1):
        make_run(results, "dualcoop", seed, test={"macro_f1": 0.38})
    assert _regenerate(results, site).exit_code == 0
    for seed in (0, 1):  # the same method on random weights, 10 points lower
        rec = make_run(results, "dualcoop", seed + 10, test={"macro_f1": 0.28})
        data = json.loads(rec.model_dump_json())
        data["backbone"].update(pretrained="none", weights_id="none")
        data["seed"] = seed
        data["run_id"] = store.compute_run_id(data)
        src = store.runs_dir(results) / rec.run_id
        src.rename(store.runs_dir(results) / data["run_id"])
        (store.runs_dir(results) / data["run_id"] / "result.json").write_text(json.dumps(data))
    second = _regenerate(results, site)
    assert second.exit_code == 0, second.output  # no regression: nothing of the first experiment changed
    record = json.loads(sorted((site / "history").glob("*.json"))[-1].read_text())
    labels = sorted((v["method"], v["value"], v["n"]) for v in record["entries"].values())
    assert labels == [("dualcoop [weights: none]", 28.0, 2), ("dualcoop [weights: sha256:bbbbbbbb]", 38.0, 2)]
    assert list(record["changes"].values()) == [0.0]  # the pretrained row, compared with itself


def test_a_damaged_history_record_is_named(tmp_path):
    site = tmp_path / "site"
    (site / "history").mkdir(parents=True)
    (site / "history" / "2026-01-01T000000Z.json").write_text("{not json")
    res = _regenerate(tmp_path / "results", site)
    assert res.exit_code != 0 and "2026-01-01T000000Z.json" in str(res.exception)


@pytest.mark.slow
def test_leaderboard_runs_what_is_missing(write_config, tmp_path):
    cfg = write_config(methods=("label-prior",), extra='[leaderboard]\nsite = "lb-site"\nbootstrap = 0\n')
    runner = CliRunner()
    first = runner.invoke(app, ["leaderboard", "--config", str(cfg)])
    assert first.exit_code == 0, first.output
    assert (tmp_path / "lb-site" / "synthetic.html").exists()
    second = runner.invoke(app, ["leaderboard", "--config", str(cfg)])
    assert second.exit_code == 0 and "nothing to train" in second.output
    assert len(list((tmp_path / "lb-site" / "history").glob("*.json"))) == 2
