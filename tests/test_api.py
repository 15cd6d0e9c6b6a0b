"""The Python API: the numbers a notebook gets are the command line's."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import bench
from bench.store import store
from bench.cli.app import app
from tests.conftest import make_run


def test_import_bench_stays_light():
    import subprocess
    import sys

    code = ("import sys, bench; before = 'pandas' in sys.modules; f = bench.load_results; "
            "print(before, 'pandas' in sys.modules, 'torch' in sys.modules, callable(f))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "False", "True"]  # pandas once the API is used; torch never, to read results


def test_load_results_and_summarize_match_the_records_and_the_csv_report(tmp_path):
    results = tmp_path / "results"
    recs = [make_run(results, m, s, quality=q) for m, q in (("intclip", 0.6), ("dualcoop", 0.5)) for s in (0, 1)]
    runs = bench.load_results(results)
    assert isinstance(runs, pd.DataFrame) and len(runs) == 4
    by_id = runs.set_index("run_id")
    for r in recs:
        assert by_id.loc[r.run_id, "test_macro_f1"] == r.metrics.test["macro_f1"]
        assert by_id.loc[r.run_id, "method"] == r.method.name and by_id.loc[r.run_id, "seed"] == r.seed
    table = bench.summarize(runs).set_index("method")
    expected = np.mean([r.metrics.test["macro_f1"] for r in recs if r.method.name == "intclip"])
    assert table.loc["intclip", "test_macro_f1_mean"] == pytest.approx(expected, abs=1e-12)
    assert table.loc["intclip", "n"] == 2
    csv = CliRunner().invoke(app, ["report", "--results", str(results), "--format", "csv", "--bootstrap", "0"])
    assert csv.exit_code == 0
    assert bench.report(results, format="csv", bootstrap=0) == csv.output


def test_a_damaged_record_is_skipped_with_a_warning_naming_it(tmp_path):
    results = tmp_path / "results"
    rec = make_run(results, "intclip", 0)
    (store.runs_dir(results) / rec.run_id / store.SCORES).write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning, match=rf"skipped corrupt result: .*{rec.run_id}.*scores.npz"):
        assert bench.load_results(results).empty


def test_run_from_python_returns_its_runs(write_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(methods=("label-prior", "zeroshot"), seeds=(0,))
    frame = bench.run(config=config, executor="serial")
    assert sorted(frame["method"]) == ["label-prior", "zeroshot"] and frame.attrs["failed"] == {}
    again = bench.run(config=config, executor="serial")  # complete runs are reused
    assert sorted(again["run_id"]) == sorted(frame["run_id"])
    for run_id, value in zip(frame["run_id"], frame["test_macro_f1"], strict=True):
        record = json.loads((tmp_path / "results" / "runs" / run_id / "result.json").read_text())
        assert record["metrics"]["test"]["macro_f1"] == value
    md = bench.report(tmp_path / "results", format="md", bootstrap=0)
    assert "label-prior" in md and "zeroshot" in md
