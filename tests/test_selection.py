"""Val selections with a tie rule (bench.selection), their records, their flags in reports, their stability under
float noise, and the cross-machine check (bench.workflows.crosscheck, `bench crosscheck`)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from bench.workflows import crosscheck
from bench.store import store
from bench.cli.app import app
from bench.reports import tables
from bench.store import collection
from bench.store.schema import SelectionRecord
from bench.selection import TOLERANCE, epoch_selection, fragile_selections, select
from tests.conftest import make_run


def test_select_ties_margin_and_rule():
    # 0.500 best; 0.4995 tied (inside the 0.001 tolerance); 0.4988 just outside; 0.30 far
    sel = select([(0.2, 0.5), (0.35, 0.4995), (0.5, 0.4988), (0.8, 0.30)], "threshold", lambda t: (abs(t - 0.5), t))
    assert sel.best == 0.5 and sel.tie_set == [0.35, 0.2] and sel.chosen == 0.35  # nearest 0.5 among the tied
    assert sel.margin == pytest.approx(0.4995 - 0.4988)  # chosen minus the best outside the tie set
    assert sel.fragile and sel.to_dict()["fragile"]  # 0.0007 < 0.001: a candidate outside is nearly as good
    clear = select([(1, 0.6), (2, 0.5)], "C", lambda c: c)
    assert clear.chosen == 1 and clear.margin == pytest.approx(0.1) and not clear.fragile
    assert select([(3, 0.5), (1, 0.5)], "C", lambda c: c).chosen == 1  # exact tie: the rule, not the order given
    everything = select([(0.1, 0.5), (0.9, 0.5)], "threshold", lambda t: abs(t - 0.5))
    assert everything.margin is None and not everything.fragile
    with_nan = select([(1, math.nan), (2, 0.4)], "C", lambda c: c)
    assert with_nan.chosen == 2 and with_nan.margin is None  # a NaN candidate is never chosen nor a margin
    with pytest.raises(ValueError, match="no candidates"):
        select([], "C", lambda c: c)


def test_epoch_selection_takes_the_earliest_tied_epoch_then_the_variant_order():
    history = [
        {"epoch": 0, "selection_metric": 0.30, "variant_metrics": {"raw": 0.30, "ema": 0.28}},
        {"epoch": 1, "selection_metric": 0.4005, "variant_metrics": {"raw": 0.395, "ema": 0.4005}},
        {"epoch": 2, "selection_metric": 0.401, "variant_metrics": {"raw": 0.401, "ema": 0.4008}},
    ]
    sel = epoch_selection(history, ["raw", "ema"])
    # tied: (1, ema) 0.4005, (2, raw) 0.401, (2, ema) 0.4008; the earliest epoch wins
    assert sel.chosen == [1, "ema"] and sel.tie_set == [[1, "ema"], [2, "raw"], [2, "ema"]]
    assert sel.margin == pytest.approx(0.4005 - 0.395)
    assert epoch_selection([], ["raw"]) is None
    single = [{"epoch": 0, "selection_metric": 0.2}, {"epoch": 1, "selection_metric": 0.25}]
    assert epoch_selection(single, ["default"]).chosen == [1, "default"]


@pytest.fixture
def tiny_store(write_config, tmp_path):
    config = write_config(methods=("linear-probe", "dualcoop"), seeds=(0,), epochs=3)
    res = CliRunner().invoke(app, ["run", "--config", str(config)])
    assert res.exit_code == 0, res.output
    return config, tmp_path / "results"


@pytest.mark.slow
def test_records_carry_each_selection_and_the_engine_restores_the_chosen_epoch(tiny_store):
    _, results = tiny_store
    records = {r.method.name: r for _, r in store.iter_results(results)}
    dual, probe = records["dualcoop"], records["linear-probe"]
    assert set(dual.selections) == {"epoch", "threshold"} and set(probe.selections) == {"C", "threshold"}
    want = epoch_selection(dual.training.history, [dual.training.best_variant])
    assert dual.selections["epoch"].chosen == want.chosen == [dual.training.best_epoch, dual.training.best_variant]
    assert dual.selections["epoch"].rule == "earliest epoch, then variant order"
    # the val metrics of the record are those of the chosen epoch's weights at the chosen threshold
    assert dual.metrics.val["macro_f1"] == pytest.approx(dual.selections["threshold"].value)
    assert dual.protocol.threshold == dual.selections["threshold"].chosen
    assert probe.training.fit_info["converged"] and probe.training.fit_info["unconverged_C"] == []
    assert probe.selections["C"].chosen == probe.training.fit_info["C"] and probe.selections["C"].rule == "smallest C"
    for sel in (*dual.selections.values(), *probe.selections.values()):
        assert sel.tolerance == TOLERANCE and sel.chosen in sel.tie_set and sel.value >= sel.best - TOLERANCE


@pytest.mark.slow
def test_no_selection_moves_under_float_noise(tiny_store):
    """Thresholds and epochs from the stored val scores and histories, and the probe's C and threshold refitted on
    its cached features, each scaled by 1 + 1e-7 noise, 10 draws: nothing moves."""
    config, results = tiny_store
    from bench.config import load_config

    assert crosscheck.selection_stability(results, draws=10) == []
    assert crosscheck.probe_stability(load_config(config), draws=10) == []


def test_a_selection_at_the_edge_of_its_tie_set_moves_and_is_caught(tmp_path):
    """The check can fail: val scores with a threshold decided by one score 1e-9 above a grid point."""
    make_run(tmp_path, "intclip", 0, quality=0.6)
    run_dir = next(store.runs_dir(tmp_path).iterdir())
    record, scores = store.read_result(run_dir), dict(store.read_scores(run_dir))
    # one class, two images: only thresholds below 0.4 + 1e-9 get both right, so noise of 1e-7 moves the choice
    scores["val_scores"] = np.array([[0.4 + 1e-9], [0.1]], dtype=np.float64)
    scores["val_labels"] = np.array([[1], [0]], dtype=np.float32)
    from bench.metrics import threshold_selection

    sel = threshold_selection(scores["val_scores"], scores["val_labels"])
    record.selections = {"threshold": SelectionRecord(**sel.to_dict())}
    (run_dir / store.SCORES).unlink()
    np.savez(run_dir / store.SCORES, **scores)
    (run_dir / store.RESULT).write_text(record.model_dump_json())
    moved = crosscheck.selection_stability(tmp_path, draws=10)
    assert len(moved) == 1 and "threshold 0.4 ->" in moved[0]


def test_reports_flag_a_margin_inside_the_tolerance(tmp_path):
    for seed in (0, 1):
        make_run(tmp_path, "intclip", seed, quality=0.6)
    run_dir = sorted(store.runs_dir(tmp_path).iterdir())[0]
    record = store.read_result(run_dir)
    record.selections = {
        "threshold": SelectionRecord(what="threshold", chosen=0.3, value=0.41, best=0.4105, tie_set=[0.3], margin=0.0004,
                                     tolerance=TOLERANCE, rule="nearest 0.5, then lower", candidates=19),
        "epoch": SelectionRecord(what="epoch", chosen=[3, "default"], value=0.41, best=0.41, tie_set=[[3, "default"]],
                                 margin=0.02, tolerance=TOLERANCE, rule="earliest epoch, then variant order", candidates=6),
    }
    (run_dir / store.RESULT).write_text(record.model_dump_json())
    assert [s["what"] for s in fragile_selections({k: v.model_dump() for k, v in store.read_result(run_dir).selections.items()})] == ["threshold"]
    records = collection.load_results(tmp_path)[0]
    summary = collection.summarise(collection.results_frame(records))
    md = tables.to_markdown(summary)
    assert "Near-tie selections" in md and f"seed {record.seed}: threshold (margin 0.04 pt)" in md
    assert "epoch (margin" not in md  # a margin of 2 points is safe
    from bench.reports import layout

    (table,) = layout.paper_tables(summary)  # the LaTeX and HTML tables say it in the caption
    assert "Near-tie val selections" in "".join(map(str, table.caption))


def _reference_from(results, tolerance=0.25):
    rows = crosscheck.table_of(results)
    return {"made": {"machine": "test", "date": "today"},
            "rows": {m: {"n": r["n"], "run_ids": r["run_ids"],
                         **{s: {k: {"value": v, "tolerance": tolerance} for k, v in r[s].items()} for s in crosscheck.SPLITS}}
                     for m, r in rows.items()}}


@pytest.mark.slow
def test_crosscheck_passes_within_and_fails_outside_the_tolerance(tiny_store, tmp_path):
    config, results = tiny_store
    reference = _reference_from(results)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(reference))
    args = ["crosscheck", "--results", str(results), "--no-run", "--draws", "0", "--reference"]
    res = CliRunner().invoke(app, [*args, str(good)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "crosscheck passed" in res.output
    moved = json.loads(good.read_text())
    cell = moved["rows"]["dualcoop"]["test"]["macro_f1"]
    cell["value"] += 0.30  # outside ± 0.25
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(moved))
    res = CliRunner().invoke(app, [*args, str(bad)], env={"COLUMNS": "200"})
    assert res.exit_code == 1 and "OUTSIDE" in res.output and "1 of 16 numbers outside" in res.output
    cell["value"] -= 0.10  # 0.20 away: inside
    bad.write_text(json.dumps(moved))
    assert CliRunner().invoke(app, [*args, str(bad)]).exit_code == 0
    moved["rows"]["dualcoop"]["run_ids"] = ["someone-else"]
    bad.write_text(json.dumps(moved))
    res = CliRunner().invoke(app, [*args, str(bad)], env={"COLUMNS": "200"})
    assert res.exit_code == 1 and "run ids differ" in res.output


def test_shipped_reference_is_complete():
    """The shipped reference holds every method of the default suite, every number with a tolerance of at least
    the floor, and names its machine."""
    from bench.config import load_config

    reference = crosscheck.load_reference()
    suite = load_config(crosscheck.REFERENCE.parents[1] / "default.toml").suite
    assert sorted(reference["rows"]) == sorted(suite.methods)
    assert reference["made"]["machine"] and reference["made"]["build"]["torch"]
    for row in reference["rows"].values():
        for split in crosscheck.SPLITS:
            assert set(row[split]) == set(crosscheck.METRICS)
            for cell in row[split].values():
                assert cell["tolerance"] >= max(0.25, 3 * cell["spread"]) - 0.005  # rounded to 2 decimals


def test_tune_chooses_the_earliest_trial_within_the_tolerance(tmp_path):
    """The refit's config: trial 0 (the paper's defaults) wins a near-tie with a later, nominally better trial."""
    import pandas as pd

    from bench.ray.search import _summarise

    class Result:
        def __init__(self, lr, values):
            self.config, self.error = {"lr": lr}, None
            self.metrics = {"training_iteration": len(values)}
            self.metrics_dataframe = pd.DataFrame({"selection_metric": values})

    class Data:
        name, manifest_sha256 = "synthetic", "a" * 64

    grid = [Result(0.002, [0.30, 0.4000]), Result(0.01, [0.4008, 0.39]), Result(0.1, [0.35, 0.3992])]
    summary = _summarise(grid, {"lr": ["loguniform", 1e-4, 1e-1]}, 2, "s", tmp_path, "dualcoop", Data())
    assert summary["best_params"] == {"lr": 0.002} and summary["best_val_selection_metric"] == 0.4
    sel = summary["selection"]
    assert sel["chosen"] == 0 and sel["tie_set"] == [0, 1] and sel["margin"] == pytest.approx(0.4 - 0.3992)
    assert sel["fragile"] and sel["rule"] == "earliest trial"
    grid[1].metrics_dataframe = pd.DataFrame({"selection_metric": [0.45, 0.39]})  # clearly better: it wins
    assert _summarise(grid, {"lr": []}, 2, "s", tmp_path, "dualcoop", Data())["best_params"] == {"lr": 0.01}
