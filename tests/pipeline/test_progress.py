"""What a running suite and bench tune show (issue 16, item 5): one row per running trial with its epoch, last val
score, elapsed and node; a clock that ticks between events; the suite ETA from finished epochs; one line per event
without live progress; the final table within 100 columns; no Ray token banner."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from bench.pipeline.progress import EtaColumn, Output, SearchBoard, duration, live_wanted, short_params, suite_board


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Cfg:
    """The one thing a board asks of a config: each method's epoch budget (a fitted method has none)."""

    def method_config(self, method: str):
        return SimpleNamespace() if method == "zeroshot" else SimpleNamespace(epochs=4)


def _plan(run_id: str, method: str, seed: int | None) -> SimpleNamespace:
    return SimpleNamespace(run_id=run_id, method=method, dataset="synthetic", dataset_label="synthetic", seed=seed)


PLANS = [_plan("a", "dualcoop", 0), _plan("b", "dualcoop", 1), _plan("z", "zeroshot", None)]


def _render(renderable, width: int = 100) -> list[str]:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(renderable)
    return console.export_text().splitlines()


def _row(lines: list[str], first: str) -> list[str]:
    (line,) = [line for line in lines if line.startswith("│") and line.strip("│ ").startswith(first)]
    return [c.strip() for c in line.strip("│").split("│")]


def test_durations_and_params():
    assert [duration(s) for s in (None, 0, 9.6, 75, 3725)] == ["?", "0:00", "0:10", "1:15", "1:02:05"]
    assert short_params({"lr": 0.0012345, "n_ctx": 8, "loss": "asl"}) == "lr=0.00123 n_ctx=8 loss=asl"


def test_suite_board_rows_eta_and_a_clock_that_ticks_without_events():
    clock = Clock()
    board = suite_board(Cfg(), PLANS, clock)
    lines = _render(board)
    assert lines[0] == "suite: 3 waiting, 0 running, 0 done, 0 errored; 0:00 elapsed, ETA ?"
    assert board.started("a") == "started dualcoop / synthetic / seed 0"
    clock.now += 10
    line = board.reported("a", 1, 0.2534, node="10.0.0.7")
    # 1 epoch in 10 s; left: a 3, b 4, z (fitted) 1 -> 8 epochs x 10 s
    assert board.eta() == pytest.approx(80.0)
    assert line == "dualcoop / synthetic / seed 0: epoch 1/4, val 25.34, 0:10 on 10.0.0.7; suite ETA 1:20"
    first = _render(board)
    assert first[0] == "suite: 2 waiting, 1 running, 0 done, 0 errored; 0:10 elapsed, ETA 1:20"
    assert _row(first, "running") == ["running", "dualcoop", "synthetic", "0", "1/4", "25.34", "0:10", "10.0.0.7"]
    clock.now += 5  # no event: the elapsed times move and the ETA counts down
    second = _render(board)
    assert second[0] == "suite: 2 waiting, 1 running, 0 done, 0 errored; 0:15 elapsed, ETA 1:15"
    assert _row(second, "running")[6] == "0:15"
    assert all(len(line) <= 100 for line in first + second)


def test_eta_counts_epochs_of_trials_that_run_side_by_side_and_fitted_methods():
    clock = Clock()
    board = suite_board(Cfg(), PLANS, clock)
    board.started("a")
    board.started("b")
    clock.now += 12
    board.reported("a", 1, 0.2)
    board.reported("b", 1, 0.3)  # 2 epochs in 12 s of wall time: 6 s each; left 3 + 3 + 1
    assert board.eta() == pytest.approx(42.0)
    board.started("z")
    clock.now += 2
    assert board.finished("z", "done", 0.4) == (
        "done zeroshot / synthetic / deterministic after 0:02 (val 40.00); 1 of 3 finished, suite ETA 0:28")
    assert board.eta() == pytest.approx(14 / 3 * 6)  # 3 units in 14 s, 6 epochs left
    clock.now += 100
    assert board.eta() == 0.0  # overdue: never negative


def test_finished_rows_linger_then_leave_and_errors_show():
    clock = Clock()
    board = suite_board(Cfg(), PLANS, clock)
    board.started("a")
    board.started("b")
    clock.now += 30
    board.reported("a", 4, 0.5)
    board.finished("a", "done")
    assert board.finished("b", "errored") == (
        "errored dualcoop / synthetic / seed 1 after 0:30 (val -); 2 of 3 finished, suite ETA 0:30")
    lines = _render(board)
    assert lines[0] == "suite: 1 waiting, 0 running, 1 done, 1 errored; 0:30 elapsed, ETA 0:30"
    assert _row(lines, "done") == ["done", "dualcoop", "synthetic", "0", "4/4", "50.00", "0:30", "-"]
    assert _row(lines, "errored")[:5] == ["errored", "dualcoop", "synthetic", "1", "0/4"]
    clock.now += board.LINGER + 1
    assert not [line for line in _render(board) if line.startswith("│")]
    board.discard("z")  # another bench runs it: it no longer waits here
    assert board.counts()["waiting"] == 0 and board.eta() == 0.0


def test_suite_view_without_live_progress_prints_one_line_per_event_and_pickles():
    from bench.ray.executor import SuiteView

    clock = Clock()
    console = Console(record=True, width=100, file=io.StringIO())
    assert not live_wanted(console, True) and not live_wanted(None, True)
    view = SuiteView(suite_board(Cfg(), PLANS, clock), console, live=False)
    trial = SimpleNamespace(config={"plan": {"run_id": "b"}}, last_result={})
    view.on_trial_start(0, [], trial)
    clock.now += 7
    view.on_trial_result(0, [], trial, {"epoch": 1, "selection_metric": 0.3, "node_ip": "10.1.2.3", "done": False})
    view.on_trial_result(0, [], trial, {"epoch": 4, "val_macro_f1": 0.31, "done": True})  # the final report: no row
    trial.last_result = {"done": True, "val_macro_f1": 0.31, "final_val": 0.31}
    clock.now += 1
    view.on_trial_complete(0, [], trial)
    view.on_experiment_end([])
    assert console.export_text().splitlines() == [
        "started dualcoop / synthetic / seed 1",
        "dualcoop / synthetic / seed 1: epoch 1/4, val 30.00, 0:07 on 10.1.2.3; suite ETA 0:56",
        "done dualcoop / synthetic / seed 1 after 0:08 (val 30.00); 1 of 3 finished, suite ETA 0:34",
    ]
    copy = pickle.loads(pickle.dumps(view))  # Tune pickles its callbacks
    assert copy.board.trials["b"].state == "done" and copy.out.live is None


def test_live_output_draws_the_board_and_stops():
    clock = Clock()
    board = suite_board(Cfg(), PLANS, clock)
    stream = io.StringIO()
    console = Console(file=stream, width=100, force_terminal=True, color_system=None)
    assert live_wanted(console, True) and not live_wanted(console, False)
    out = Output(board, console, live=True)
    out(board.started("a"))
    assert out.live is not None and out.live.auto_refresh  # refreshes itself: the clock ticks between events
    clock.now += 3
    out(board.reported("a", 2, 0.25, node="n1"))
    out.close()
    assert out.live is None
    assert "│ running │ dualcoop │ synthetic │    0 │   2/4 │ 25.00 │    0:03 │ n1   │" in stream.getvalue()


def test_search_view_shows_each_trial_as_it_reports():
    from bench.ray.search import FINISHED, SearchView

    clock = Clock()
    console = Console(record=True, width=100, file=io.StringIO())
    board = SearchBoard("dualcoop", "synthetic", samples=3, epochs=4, clock=clock)
    view = SearchView(board, console, False, ["lr", "n_ctx"], 4)
    one = SimpleNamespace(trial_id="t1", config={"lr": 0.002, "n_ctx": 16, "other": 1}, last_result={})
    two = SimpleNamespace(trial_id="t2", config={"lr": 0.0001234, "n_ctx": 8}, last_result={})
    view.on_trial_start(0, [], one)
    view.on_trial_start(0, [], two)
    clock.now += 4
    for epoch, value in ((1, 0.21), (2, 0.26)):
        view.on_trial_result(0, [], one, {"epoch": epoch, "selection_metric": value, "best_selection_metric": max(0.21, value)})
    view.on_trial_result(0, [], two, {"epoch": 1, "selection_metric": 0.1, "best_selection_metric": 0.1})
    lines = _render(board)
    assert lines[:2] == ["search dualcoop on synthetic: 2 running, 0 done, 0 pruned, 0 errored of 3; 0:04 elapsed",
                         "best val 26.00 (trial t1)"]
    assert _row(lines, "t1") == ["t1", "lr=0.002 n_ctx=16", "2/4", "26.00", "26.00", "RUNNING", "0:04"]
    two.last_result = {"training_iteration": 1, "selection_metric": 0.1}  # ASHA stopped it before its budget
    view.on_trial_complete(0, [], two)
    view.on_trial_result(0, [], one, {"epoch": 2, "selection_metric": 0.26, "best_selection_metric": 0.26, FINISHED: 1})
    one.last_result = {"training_iteration": 3, FINISHED: 1}  # its own early stop: done, not pruned
    view.on_trial_complete(0, [], one)
    assert console.export_text().splitlines() == [
        "trial t1 RUNNING: lr=0.002 n_ctx=16",
        "trial t2 RUNNING: lr=0.000123 n_ctx=8",
        "trial t1: epoch 1/4, val 21.00 (best 21.00)",
        "trial t1: epoch 2/4, val 26.00 (best 26.00)",
        "trial t2: epoch 1/4, val 10.00 (best 10.00)",
        "trial t2 PRUNED at epoch 1/4: best val 10.00 after 0:04 (lr=0.000123 n_ctx=8)",
        "trial t1 DONE at epoch 2/4: best val 26.00 after 0:04 (lr=0.002 n_ctx=16)",
    ]
    assert _row(_render(board), "t2")[5] == "PRUNED"


def test_the_serial_progress_carries_the_eta_column():
    clock = Clock()
    board = suite_board(Cfg(), PLANS[:1], clock)
    column = EtaColumn()
    assert column.render(SimpleNamespace(fields={"board": board})).plain == "ETA ?"
    board.started("a")
    clock.now += 5
    board.reported("a", 1, 0.2)
    assert column.render(SimpleNamespace(fields={"board": board})).plain == "ETA 0:15"
    assert column.render(SimpleNamespace(fields={})).plain == ""


def test_serial_suite_without_live_progress_logs_epochs_with_the_eta(write_config):
    from bench.config import load_config
    from bench.workflows.suite import run_suite

    cfg = load_config(write_config(methods=("dualcoop",), seeds=(0,), epochs=2))
    console = Console(record=True, width=200, file=io.StringIO())
    outcome = run_suite(cfg, console)
    assert outcome.ok
    lines = console.export_text().splitlines()
    assert "started dualcoop / synthetic / seed 0" in lines
    epochs = [line for line in lines if line.startswith("dualcoop / synthetic / seed 0: epoch ")]
    assert [line.split(",")[0] for line in epochs] == ["dualcoop / synthetic / seed 0: epoch 1/2", "dualcoop / synthetic / seed 0: epoch 2/2"]
    assert epochs[0].rsplit("suite ETA ", 1)[1] != "?" and epochs[1].endswith("suite ETA 0:00")
    assert any(line.startswith("done dualcoop / synthetic / seed 0 after ") for line in lines)


# the final table within 100 columns

def _wide_store(tmp_path: Path) -> Path:
    from tests.conftest import make_run

    results = tmp_path / "results"
    extra = {"tuning": {"study": "s"}}
    for seed in (0, 1, 2):  # the widest table: 5 metrics per split (the code's mAP too), long labels, mean ± std
        for lr in (0.002, 0.0005):
            make_run(results, "intclip-official", seed, protocol="intclip-code", config={"lr": lr}, extra=extra,
                     test={"mAP_official": 0.4123 + seed / 100}, val={"mAP_official": 0.3987 + seed / 100})
        make_run(results, "dualcoop", seed, protocol="intclip-code", test={"mAP_official": 0.35}, val={"mAP_official": 0.3})
    return results


def test_the_final_table_fits_100_columns_and_no_number_wraps(tmp_path, monkeypatch):
    from bench.cli import run as cli
    from bench.reports import tables
    from bench.store import collection

    results = _wide_store(tmp_path)
    records, _ = collection.load_results(results)
    summary = collection.summarise(collection.results_frame(records))
    (( _, header, rows),) = tables.table_rows(summary)
    assert "test mAP (code's AP)" in header and len(rows) == 3
    for width in (100, 80):
        console = Console(record=True, width=width, file=io.StringIO())
        monkeypatch.setattr(cli, "out", console)
        cli._print_runs(SimpleNamespace(paths=SimpleNamespace(results=results)), {r.run_id for r in records})
        text = console.export_text()
        assert max(len(line) for line in text.splitlines()) <= width
        for row in rows:  # every number cell intact on one line ("41.23 ± 1.00", never "41.23 ±" / "1.00")
            for cell in row[1:]:
                assert any(f" {cell} │" in line for line in text.splitlines()), (width, cell)
        assert "· test" in text and "· val" in text and "Macro F1" in text and "test Macro F1" not in text
    wide = Console(record=True, width=250, file=io.StringIO())
    monkeypatch.setattr(cli, "out", wide)
    cli._print_runs(SimpleNamespace(paths=SimpleNamespace(results=results)), {r.run_id for r in records})
    assert "test Macro F1" in wide.export_text() and "· test" not in wide.export_text()  # room: one table


# Ray's startup banner

@pytest.mark.slow
def test_a_ray_suite_logs_its_trials_and_no_token_banner(write_config, tmp_path: Path):
    cfg = write_config(methods=("dualcoop",), seeds=(0,), epochs=2, extra="[ray]\nnum_cpus = 1\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--config", str(cfg), "--executor", "ray", "--no-progress"],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Token authentication is enabled" not in proc.stderr + proc.stdout
    lines = proc.stderr.splitlines()
    assert "started dualcoop / synthetic / seed 0" in lines
    (last,) = [line for line in lines if line.startswith("dualcoop / synthetic / seed 0: epoch 2/2, val ")]
    assert " on " in last and last.endswith("suite ETA 0:00")  # the node the trial ran on (its IP, from Tune)
    assert any(line.startswith("done dualcoop / synthetic / seed 0 after ") for line in lines)


def test_the_banner_filter_drops_only_that_notice():
    import logging

    from bench.ray import executor as ray_executor

    ray_executor.quiet_startup()
    ray_executor.quiet_startup()  # once
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    (chatter,) = [f for f in logger.filters if isinstance(f, ray_executor._StartupChatter)]

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord(logger.name, logging.WARNING, __file__, 1, msg, None, None)

    assert not chatter.filter(record("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled"))
    assert chatter.filter(record("Token authentication is disabled for this Ray cluster. Anyone with network access"))
