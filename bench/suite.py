"""The whole suite: plan it, triage it against the store, and run what is missing, in-process one run at a time
(``executor = "serial"``) or as Ray Tune trials (:mod:`bench.ray_executor`); never redo or rewrite a complete run.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench import store
from bench.config import BenchConfig
from bench.plan import SuiteOutcome, plan_suite, triage
from bench.runner import execute_run, record_failure


def run_suite(
    cfg: BenchConfig, console: Console | None = None, ray_address: str | None = None, extra: dict[str, Any] | None = None
) -> SuiteOutcome:
    """Run every missing run of the suite (Ray Tune trials, or in-process with ``executor = "serial"``); never
    redo or rewrite a complete one."""
    console = console or Console(stderr=True)
    store.ensure_writable(cfg.paths.results)
    plans, datasets = plan_suite(cfg)
    for plan in plans:
        plan.extra = dict(extra or {})
    outcome, todo = triage(plans, console)
    if not todo:
        console.print(f"all {len(plans)} runs already have results in {cfg.paths.results}; nothing to train")
        return outcome
    console.print(f"{len(plans)} runs planned: {len(outcome.skipped)} done already, {len(todo)} to run ({cfg.suite.executor})")
    if cfg.suite.executor == "ray":
        from bench.ray_executor import run_trials  # (Ray imported only when used)

        run_trials(cfg, todo, datasets, outcome, console, ray_address)
        return outcome
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not cfg.engine.progress, transient=False) as progress:
        suite_task = progress.add_task("suite", total=len(todo))
        for plan in todo:
            progress.update(suite_task, description=f"suite: {plan.label}")
            try:
                execute_run(plan, datasets[plan.data], cfg, progress=progress, log=progress.console.print)
                outcome.completed.append(plan.run_id)
            except Exception as err:  # one failed run must not stop the suite
                record_failure(plan, err, outcome)
                progress.console.print(f"[red]failed {plan.label}: {type(err).__name__}: {err}[/]")
            progress.advance(suite_task)
    return outcome
