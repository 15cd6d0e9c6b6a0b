"""`bench tune`: Optuna TPE + ASHA on val through Ray Tune, a persisted study, then a refit over the seeds."""

import pytest
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna


@pytest.mark.slow
def test_tune_searches_on_val_stops_trials_early_and_refits(write_config, tmp_path: Path):
    cfg = write_config(methods=("dualcoop",), seeds=(0, 1), epochs=4, extra="[tune]\nnum_samples = 6\n[ray]\nnum_cpus = 2\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "tune", "--method", "dualcoop", "--config", str(cfg)],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=480,
    )
    assert proc.returncode == 0, proc.stderr
    summary_path = next((tmp_path / "results" / "tune").glob("*/summary.json"))
    summary = json.loads(summary_path.read_text())
    assert summary["num_trials"] == 6 and summary["stopped_early"] >= 1
    assert summary["trials"][0]["params"] == {"lr": 0.002, "weight_decay": 0.0005, "n_ctx": 16, "gamma_neg": 2.0}  # the preset first
    best = max(t["best_val_selection_metric"] for t in summary["trials"])
    assert summary["best_val_selection_metric"] == best
    study = optuna.load_study(study_name=summary["study"], storage=f"sqlite:///{summary['storage']}")
    assert len(study.trials) == 6
    # ASHA-stopped trials are PRUNED in the study (not COMPLETE full-budget results), and every trial has one value
    # everywhere: its val selection metric at its best epoch
    states = {"pruned": optuna.trial.TrialState.PRUNED, "complete": optuna.trial.TrialState.COMPLETE}
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(pruned) == summary["stopped_early"] >= 1
    for trial in study.trials:
        (match,) = [t for t in summary["trials"] if t["params"] == trial.params]
        assert trial.state == states[match["state"]]
        assert abs(trial.value - match["best_val_selection_metric"]) < 1e-12
    assert study.best_value == summary["best_val_selection_metric"]
    assert not (summary_path.parent / "trials").exists()  # search checkpoints removed once summarised
    assert "Macro F1" in proc.stdout  # the refit's results table
    refits = [json.loads((tmp_path / "results" / "runs" / rid / "result.json").read_text()) for rid in summary["refit_run_ids"]]
    assert sorted(r["seed"] for r in refits) == [0, 1]
    for r in refits:
        assert r["extra"]["tuning"]["best_params"] == summary["best_params"]
        assert all(r["method"]["config"][k] == v for k, v in summary["best_params"].items())
    # a second call reuses the study and the refit results
    again = subprocess.run(
        [sys.executable, "-m", "bench", "tune", "--method", "dualcoop", "--config", str(cfg)],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300,
    )
    assert again.returncode == 0 and "already searched" in again.stderr and "nothing to train" in again.stderr
