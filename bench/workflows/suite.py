"""The whole suite: plan it, triage it against the store, and run what is missing, in-process one run at a time
(``executor = "serial"``) or as Ray Tune trials (:mod:`bench.ray.executor`); never redo or rewrite a complete run.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.reports.escape import rich_text as escape  # control and bidi characters removed too
from bench.store import locks
from bench.store import store
from bench.workflows import preflight
from bench.config import BenchConfig
from bench.errors import ConfigError
from bench.pipeline.plan import PlannedRun, SuiteOutcome, plan_suite
from bench.pipeline.progress import EtaColumn, live_wanted, suite_board
from bench.pipeline.runner import execute_run, record_failure


def run_suite(
    cfg: BenchConfig, console: Console | None = None, ray_address: str | None = None, extra: dict[str, Any] | None = None
) -> SuiteOutcome:
    """Run every missing run of the suite (Ray Tune trials, or in-process with ``executor = "serial"``); never
    redo or rewrite a complete one. A store that cannot be written is fine while every run is complete (they are
    reused, nothing is written); the first write it would need fails with :class:`bench.errors.ConfigError`.

    A run is locked while it is trained and written (:mod:`bench.store.locks`); the serial loop takes each run's lock just
    before the run, so two suites on one store split the work. A run another bench holds is left to it; once this
    suite's other runs are done it waits for the holder and takes its result (or does the run, if the holder failed
    or was killed). Either way each run is trained and written once."""
    console = console or Console(stderr=True)
    read_only = store.write_problem(cfg.paths.results)  # a read-only store of complete runs is only reported
    plans, datasets = plan_suite(cfg)
    for plan in plans:
        plan.extra = dict(extra or {})
    outcome, todo = triage(plans, console, read_only)
    if not todo:
        note = f" (read-only: {read_only}; nothing written)" if read_only else ""
        console.print(f"all {len(plans)} runs already have results in {cfg.paths.results}; nothing to train{note}")
        return outcome
    preflight.ensure(cfg, todo, ray_address)  # weights, device, data: before anything is scheduled
    console.print(f"{len(plans)} runs planned: {len(outcome.skipped)} done already, {len(todo)} to run ({cfg.suite.executor})")
    if cfg.suite.executor == "ray":
        deferred = _ray_claimed(cfg, todo, datasets, outcome, console, ray_address)
    else:
        deferred = _serial(cfg, todo, datasets, outcome, console, wait=False)
    for plan in deferred:
        console.print(f"[cyan]{escape(plan.label)}: another bench is running it ({escape(locks.owner(plan.run_dir))}); waiting for it[/]")
    if cfg.suite.executor == "ray":
        for plan in deferred:
            lock = locks.wait_lock(plan.run_dir)
            try:
                _run_if_missing(plan, outcome, lambda todo: _ray(cfg, todo, datasets, outcome, console, ray_address))
            finally:
                lock.release()
    else:
        _serial(cfg, deferred, datasets, outcome, console, wait=True)
    return outcome


def _run_if_missing(plan: PlannedRun, outcome: SuiteOutcome, run: Any) -> None:
    """Under the run's lock: take a result another bench wrote meanwhile, or do the run."""
    status, _ = store.run_status(plan.run_dir)
    if status in ("complete", "newer"):
        outcome.skipped.append(plan.run_id)
        return
    if status == "corrupt":
        store.quarantine(plan.run_dir)
    run([plan])


def _ray_claimed(cfg: BenchConfig, todo: list[PlannedRun], datasets: dict[str, Any], outcome: SuiteOutcome,
                 console: Console, ray_address: str | None) -> list[PlannedRun]:
    """Lock every run nobody else holds, run those as Ray trials together, release; return the others."""
    held = {p.run_id: locks.try_lock(p.run_dir) for p in todo}
    try:
        mine = [p for p in todo if held[p.run_id] is not None]
        ready = [p for p in mine if store.run_status(p.run_dir)[0] not in ("complete", "newer")]
        outcome.skipped += [p.run_id for p in mine if p not in ready]
        _ray(cfg, ready, datasets, outcome, console, ray_address)
    finally:
        for lock in held.values():
            if lock is not None:
                lock.release()
    return [p for p in todo if held[p.run_id] is None]


def _ray(cfg: BenchConfig, todo: list[PlannedRun], datasets: dict[str, Any], outcome: SuiteOutcome, console: Console,
         ray_address: str | None) -> None:
    if todo:
        from bench.ray.executor import run_trials  # (Ray imported only when used)

        run_trials(cfg, todo, datasets, outcome, console, ray_address)


def _serial(cfg: BenchConfig, todo: list[PlannedRun], datasets: dict[str, Any], outcome: SuiteOutcome,
            console: Console, *, wait: bool) -> list[PlannedRun]:
    """Run ``todo`` in-process, each under its lock; a run held elsewhere is waited for (``wait``) or returned.
    Live: the engine's row shows the run's epoch/epochs and last val score, the suite's row the ETA from the epochs
    finished so far (:class:`bench.pipeline.progress.SuiteBoard`); else (``--no-progress``, not a terminal) a line per event."""
    if not todo:
        return []
    deferred: list[PlannedRun] = []
    board, live = suite_board(cfg, todo), live_wanted(console, cfg.engine.progress)
    say = (lambda line: None) if live else (lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), EtaColumn())
    with Progress(*columns, console=console, disable=not live, transient=False) as progress:
        suite_task = progress.add_task("suite", total=len(todo), board=board)

        def one(plans: list[PlannedRun]) -> None:
            (plan,) = plans
            progress.update(suite_task, description=f"suite: {plan.label}")
            say(board.started(plan.run_id))

            def report(record: dict[str, Any]) -> None:
                say(board.reported(plan.run_id, record["epoch"] + 1, record.get("selection_metric")))

            try:
                execute_run(plan, datasets[plan.data], cfg, progress=progress, report=report, log=progress.console.print)
                outcome.completed.append(plan.run_id)
                say(board.finished(plan.run_id, "done"))
            except Exception as err:  # one failed run must not stop the suite
                record_failure(plan, err, outcome)
                board.finished(plan.run_id, "errored")
                progress.console.print(f"[red]failed {escape(plan.label)}: {type(err).__name__}: {escape(str(err))}[/]")

        for plan in todo:
            lock = locks.wait_lock(plan.run_dir, progress.console.print) if wait else locks.try_lock(plan.run_dir)
            if lock is None:
                deferred.append(plan)
                board.discard(plan.run_id)  # (not this board's work: it leaves the ETA)
                continue
            try:
                _run_if_missing(plan, outcome, one)
            finally:
                lock.release()
            board.discard(plan.run_id)  # a result another bench wrote meanwhile: nothing left to do
            progress.advance(suite_task)
    return deferred


def triage(plans: list[PlannedRun], console: Console, read_only: str | None = None) -> tuple[SuiteOutcome, list[PlannedRun]]:
    """Split planned runs into complete (skipped) and to-run; corrupt results are moved aside and rerun.
    ``read_only`` (why the store cannot be written): complete runs are reused as ever, and the first run that would
    write (a corrupt result to move aside, a run to do or resume) raises :class:`ConfigError` naming that write."""
    outcome = SuiteOutcome(planned=plans)
    todo = []
    for plan in plans:
        status, reason = store.run_status(plan.run_dir)
        if status == "complete":
            outcome.skipped.append(plan.run_id)
            if read_only is None:  # a name this suite gives the run that its record does not know yet
                store.add_aliases(plan.run_dir, plan.names)
            continue
        if status == "newer":  # a newer harness's record: never rerun, never moved
            outcome.skipped.append(plan.run_id)
            console.print(f"[yellow]{escape(plan.label)}: {escape(str(reason))}; kept as is[/]")
            continue
        if read_only is not None:
            write = {"corrupt": f"moving the corrupt result {plan.run_dir / store.RESULT} aside ({reason})",
                     "partial": f"resuming {plan.label} from its checkpoint in {plan.run_dir}"}.get(
                         status, f"running {plan.label} (its result goes to {plan.run_dir})")
            raise ConfigError(f"paths.results: {read_only}; the first write needed: {write}")
        if status == "corrupt":
            moved = store.quarantine(plan.run_dir)
            console.print(f"[yellow]corrupt result for {escape(plan.label)}: {escape(str(reason))}; kept as {moved.name}, rerunning[/]")
        elif status == "partial":
            console.print(f"[cyan]{escape(plan.label)}: checkpoint found, resuming[/]")
        todo.append(plan)
    return outcome, todo
