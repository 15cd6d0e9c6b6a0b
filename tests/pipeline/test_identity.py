"""One experiment, one run: the run id keys on the base method and its resolved config, so names that resolve to one
config train once and appear under each name; a store written before that is read without a rerun."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from bench.cli.app import app
from bench.config import load_config
from bench.pipeline.plan import experiment_key, plan_suite
from bench.store import collection, store
from tests.conftest import REPO

OLD_STORE = REPO / "tests" / "data" / "store-0.2.0"
runner = CliRunner()


def _config(tmp_path: Path, shared_cache: Path, methods: list[str], seeds=(0, 1), extra: dict | None = None):
    return load_config(None, {"suite.methods": methods, "suite.datasets": ["synthetic"], "suite.seeds": list(seeds),
                              "suite.executor": "serial", "paths.results": str(tmp_path / "results"),
                              "paths.cache": str(shared_cache), "datasets.synthetic": {"n_train": 96, "n_val": 48, "n_test": 48},
                              **(extra or {})})


def test_variants_with_one_config_are_one_run_per_seed_with_every_name(tmp_path, shared_cache):
    names = ["intclip:no-sa", "intclip:fusion-add", "intclip", "intclip:dual-semantic", "intclip:fusion-concat-mlp"]
    cfg = _config(tmp_path, shared_cache, names, extra={'methods."intclip:dual-semantic".epochs': 6})
    plans, _ = plan_suite(cfg)  # (the embedded default's [methods.intclip] sets epochs = 6, a section of that name only)
    by_seed = {}
    for p in plans:
        by_seed.setdefault(p.seed, []).append(p.names)
    # no-sa = fusion-add (fusion "add"); dual-semantic = the default; concat-mlp its own: 3 configs per seed
    assert by_seed == {s: [["intclip:no-sa", "intclip:fusion-add"], ["intclip", "intclip:dual-semantic"],
                           ["intclip:fusion-concat-mlp"]] for s in (0, 1)}
    assert len({p.run_id for p in plans}) == 6
    keys = {n: experiment_key(n, cfg.method_config(n)) for n in names}
    assert keys["intclip:no-sa"] == keys["intclip:fusion-add"] != keys["intclip"] == keys["intclip:dual-semantic"]


def test_a_store_written_before_reads_without_a_rerun_under_both_names(tmp_path):
    work = tmp_path / "store"
    shutil.copytree(OLD_STORE, work)
    with (work / "bench.toml").open("a") as f:  # the settings the file gives intclip:no-sa, for the other name too
        f.write('\n[methods."intclip:fusion-add"]\nepochs = 1\nbatch_size = 32\n')
    before = sorted(p.name for p in (work / "results" / "runs").iterdir())
    assert len(before) == 3
    done = runner.invoke(app, ["run", "--config", str(work / "bench.toml"), "--no-progress",
                               "--methods", "zeroshot,dualcoop,intclip:no-sa,intclip:fusion-add"])
    assert done.exit_code == 0, done.output
    assert "0 runs trained, 3 reused" in done.output
    assert sorted(p.name for p in (work / "results" / "runs").iterdir()) == before  # nothing new, nothing moved
    records, bad = collection.load_results(work / "results")
    assert not bad
    frame = collection.results_frame(records)
    rows = frame.set_index("method_name")
    assert {"zeroshot", "dualcoop", "intclip:no-sa", "intclip:fusion-add"} == set(rows.index)
    # the later name is remembered beside the record (result.json is never rewritten) and has the same numbers
    variant_dir = store.runs_dir(work / "results") / rows.loc["intclip:no-sa", "run_id"]
    assert json.loads((variant_dir / store.ALIASES).read_text()) == ["intclip:fusion-add"]
    assert rows.loc["intclip:no-sa", "test_macro_f1"] == rows.loc["intclip:fusion-add", "test_macro_f1"]
    assert rows.loc["intclip:no-sa", "run_id"] == rows.loc["intclip:fusion-add", "run_id"]
    report = runner.invoke(app, ["report", "--results", str(work / "results"), "--bootstrap", "0"])
    assert report.exit_code == 0 and "intclip:fusion-add" in report.output and "intclip:no-sa" in report.output


def test_reproduce_plans_each_distinct_config_once_per_seed(tmp_path, monkeypatch):
    from bench.workflows.reproduce import INTCLIP_ECCV2024, make_plan

    monkeypatch.chdir(tmp_path)
    plan = make_plan(None, INTCLIP_ECCV2024, None, "paper", {})
    owned: dict[tuple, str] = {}
    for row, cfg in ((r, next(c for c in plan.configs if c.suite.backbone == r.backbone and r.method in c.suite.methods
                               and r.dataset in c.suite.datasets)) for r in plan.rows):
        key = (row.backbone, row.dataset, experiment_key(row.method, cfg.method_config(row.method, row.backbone)))
        if row.shared is None:
            assert key not in owned, f"{row.method} in Table {row.table} trains {owned.get(key)}'s config again"
            owned[key] = row.method
        else:
            assert key in owned and row.hours == 0.0
    rows = {(r.table, r.method): r for r in plan.rows}
    assert rows[("5", "intclip:fusion-add")].shared == "2" and rows[("4", "intclip:single-none")].shared == "2"
    assert plan.runs == sum(r.runs for r in plan.rows if r.shared is None)
