"""`bench run` and `bench tune`: train what is missing of a suite, or search a method's hyperparameters on val, then
print the runs' summary tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from bench.cli.common import ConfigOpt, PretrainedOpt, RayOpt, ResultsOpt, SetOpt, err, out
from bench.cli.common import load as _load
from bench.config import BenchConfig
from bench.errors import BenchError
from bench.overrides import parse_int_list, parse_name_list
from bench.reports.escape import rich_text as escape  # control and bidi characters removed too


def run(
    methods: Annotated[Optional[str], typer.Option("--methods", "-m", help="Comma-separated method names.")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "--datasets", "-d", help="Comma-separated dataset names.")] = None,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="Comma-separated integer seeds, e.g. 0,1,2.")] = None,
    backbone: Annotated[Optional[str], typer.Option("--backbone", "-b", help="Backbone name (see `bench ls backbones`); overrides suite.backbone.")] = None,
    results: ResultsOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="Root of the (single) dataset: sets paths.data.<dataset>.")] = None,
    executor: Annotated[Optional[Literal["ray", "serial"]], typer.Option("--executor", help="ray (default: Tune trials) or serial (in-process, for debugging).")] = None,
    protocol: Annotated[Optional[Literal["val-threshold", "intclip-code"]], typer.Option("--protocol", help="Overrides protocol.name: val-threshold (default) or intclip-code (epoch chosen on test, as the released code).")] = None,
    ray_address: RayOpt = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Live progress (off: one line per event, for logs).")] = True,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Smoke mode: at most N images per split (train, val, test), seeded and stratified; sets suite.limit, and the runs are kept and reported apart from full ones.")] = None,
    pretrained: PretrainedOpt = None,
) -> None:
    """Train and evaluate every method x dataset x seed that has no result yet, then print the table."""
    from bench.workflows.suite import run_suite

    if data_root is not None:
        names = parse_name_list(dataset) if dataset else None
        if not names or len(names) != 1:
            raise BenchError("--data-root needs exactly one --dataset (the root of that dataset)")
    values: dict[str, object] = {f"paths.data.{names[0]}": str(data_root.resolve())} if data_root is not None else {}
    if protocol is not None:
        values["protocol.name"] = protocol
    cfg = _load(
        config,
        results,
        sets,
        values=values,
        methods=parse_name_list(methods) if methods else None,
        datasets=parse_name_list(dataset) if dataset else None,
        seeds=parse_int_list(seeds, "--seeds") if seeds else None,
        backbone=backbone,
        executor=executor,
        pretrained=pretrained,
        limit=limit,
    )

    if not progress:
        cfg.engine.progress = False
    outcome = run_suite(cfg, err, ray_address)
    _print_runs(cfg, {p.run_id for p in outcome.planned})
    err.print(
        f"{len(outcome.completed)} runs trained, {len(outcome.skipped)} reused, {len(outcome.failed)} failed; "
        f"results in {cfg.paths.results}"
    )
    if outcome.failed:
        for message in outcome.failed.values():
            err.print(f"[red]failed: {escape(message)}[/]")
        raise typer.Exit(1)


def _print_runs(cfg: BenchConfig, run_ids: set[str]) -> None:
    """The summary tables of these runs of the store, fitted to the terminal's width (numbers never wrap)."""
    from bench.cli.console import fitted_tables
    from bench.store import collection

    records, _ = collection.load_results(cfg.paths.results)
    for table in fitted_tables(collection.summarise(collection.results_frame([r for r in records if r.run_id in run_ids])), out.width):
        out.print(table)


def tune(
    method: Annotated[str, typer.Option("--method", "-m", help="The method to search (see `bench ls methods`).")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="The dataset whose val split the search scores.")] = "synthetic",
    num_samples: Annotated[Optional[int], typer.Option("--num-samples", "-n", min=1, help="Trials to sample (overrides tune.num_samples).")] = None,
    results: ResultsOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    ray_address: RayOpt = None,
    backbone: Annotated[Optional[str], typer.Option("--backbone", "-b", help="Backbone name (see `bench ls backbones`); overrides suite.backbone.")] = None,
    pretrained: PretrainedOpt = None,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="Comma-separated seeds the best config is refitted over (overrides suite.seeds).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Smoke mode for the search and the refit: at most N images per split (train, val, test), seeded and stratified; sets suite.limit, and the runs are kept and reported apart from full ones.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Live progress of the search and the refit (off: one line per event, for logs).")] = True,
) -> None:
    """Search hyperparameters on val (Optuna TPE + ASHA on Ray Tune), then refit the best over the seeds."""
    from bench.workflows.tune import run_tune
    from bench.registry import DATASETS, METHODS

    METHODS.check(method)
    DATASETS.check(dataset)
    overrides = list(sets or []) + ([f"tune.num_samples={num_samples}"] if num_samples else [])
    cfg = _load(config, results, overrides, backbone=backbone, pretrained=pretrained,
                seeds=parse_int_list(seeds, "--seeds") if seeds else None, limit=limit)
    if not progress:
        cfg.engine.progress = False
    summary = run_tune(cfg, method, dataset, err, ray_address)
    _print_runs(cfg, set(summary["refit_run_ids"]))  # the refit's results, as `bench run` prints them
    best = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in summary["best_params"].items())
    err.print(
        f"best: {escape(best) or 'the preset'} (val {100 * summary['best_val_selection_metric']:.2f}); "
        f"{summary['stopped_early']} of {summary['num_trials']} trials stopped early by ASHA; "
        f"refit {len(summary['refit_run_ids'])} runs; study {summary['storage']}"
    )
    if summary["refit_failed"]:
        raise typer.Exit(1)
