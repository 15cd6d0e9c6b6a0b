"""`bench report` and `bench leaderboard`: the result store as tables (md, csv, LaTeX, HTML) and the nightly site."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from bench.cli.common import ConfigOpt, PretrainedOpt, RayOpt, ResultsOpt, SetOpt, err
from bench.cli.common import load as _load
from bench.errors import BenchError
from bench.overrides import parse_name_list
from bench.reports.escape import rich_text as escape  # control and bidi characters removed too


def report(
    fmt: Annotated[Literal["md", "csv", "latex", "html"], typer.Option("--format", "-f", help="Markdown, CSV, the paper's tables in LaTeX, or one HTML page.")] = "md",
    output: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write to this file instead of stdout.")] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Resamples of the bootstrap tests (0: no significance column).", min=0)] = 1000,
    ref: Annotated[Optional[str], typer.Option("--ref", help="The method every other is tested against, declared before the results (default: report.reference, intclip; 'none': no p-values).")] = None,
    test: Annotated[Optional[Literal["seed-t", "bootstrap"]], typer.Option("--test", help="seed-t: t-test over seeds (calibrated; default); bootstrap: hierarchical bootstrap (anti-conservative at few seeds).")] = None,
    reference: Annotated[bool, typer.Option("--reference", help="latex/html: add the paper's rows and a reproduced-minus-paper column.")] = False,
    standalone: Annotated[bool, typer.Option("--standalone", help="latex: a complete document that compiles on its own.")] = False,
    columns: Annotated[Optional[Literal["test", "val", "both"]], typer.Option("--columns", help="latex/html: the splits every paper table shows (default: as the paper, Table 1 test and val, the others test).")] = None,
    metrics: Annotated[Optional[str], typer.Option("--metrics", help="latex/html: comma-separated metric columns, e.g. macro_f1,mAP (default: the paper's; a table keeps those of its task).")] = None,
    tables: Annotated[Literal["all", "efficiency"], typer.Option("--tables", help="efficiency: only the label-efficiency tables (CSV: one row per method and budget).")] = "all",
    results: ResultsOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Summarise the result store: mean +- std over seeds per method, dataset, backbone and protocol, with a
    one-sided test of every method against the declared reference (a t-test over seeds, Holm-corrected); md, csv,
    the paper's tables in LaTeX (booktabs) or a self-contained HTML page."""
    if standalone and fmt != "latex":
        raise BenchError("--standalone applies to --format latex only")
    if reference and fmt not in ("latex", "html"):
        raise BenchError("--reference applies to --format latex and html")
    if (columns or metrics) and fmt not in ("latex", "html"):
        raise BenchError("--columns and --metrics apply to --format latex and html (md and csv list every metric)")
    from bench.reports.render import render_report

    values: dict[str, object] = {}
    if ref is not None:
        values["report.reference"] = None if ref.strip().lower() == "none" else ref
    if test is not None:
        values["report.test"] = test
    cfg = _load(config, results, sections=False, values=values)  # reads results only: no method module (no torch)
    if not cfg.paths.results.is_dir():
        where = "--results" if results is not None else f"paths.results of {cfg.source or 'the built-in defaults'}"
        raise BenchError(f"{where}: no result store at {cfg.paths.results} (run `bench run` first, or pass --results DIR)")
    text, n_runs = render_report(cfg, fmt, bootstrap, reference, standalone, warn=lambda m: err.print(f"[yellow]{escape(m)}[/]"),
                                 columns=columns, metrics=parse_name_list(metrics) if metrics else None, tables=tables)
    if output is None:
        sys.stdout.write(text)
    else:
        from bench.io import atomic_write_text

        output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output, text)
        err.print(f"wrote {output} ({n_runs} runs)")


def leaderboard(
    config: ConfigOpt = None,
    results: ResultsOpt = None,
    sets: SetOpt = None,
    site: Annotated[Optional[Path], typer.Option("--site", help="Site folder (overrides leaderboard.site).")] = None,
    tolerance: Annotated[Optional[float], typer.Option("--tolerance", help="Flag drops larger than this many points.", min=0)] = None,
    run: Annotated[bool, typer.Option("--run/--no-run", help="--no-run: only regenerate the site from the stored results.")] = True,
    ray_address: RayOpt = None,
    backbone: Annotated[Optional[str], typer.Option("--backbone", "-b", help="Backbone name; overrides leaderboard.backbone.")] = None,
    pretrained: PretrainedOpt = None,
) -> None:
    """The nightly job: run what is missing of the \\[leaderboard] suite, regenerate the site (index + one page per
    dataset), record a dated history entry and flag regressions. Exit 3 when a regression is flagged, 1 when runs
    failed, 0 otherwise."""
    from bench.workflows.leaderboard import run_leaderboard

    values: dict[str, object] = {}
    if site is not None:
        values["leaderboard.site"] = str(site.resolve())
    if tolerance is not None:
        values["leaderboard.tolerance"] = tolerance
    if backbone is not None:
        values["leaderboard.backbone"] = backbone
    cfg = _load(config, results, sets, sections=run, values=values, pretrained=pretrained, pretrained_for="leaderboard")
    outcome = run_leaderboard(cfg, err, ray_address, run=run)
    s = outcome.site
    err.print(
        f"site {cfg.leaderboard.site}: {len(s.pages)} pages, {len(s.entries)} entries, regeneration {s.stamp}"
        + (f" (compared with {s.previous})" if s.previous else " (first regeneration)")
    )
    for r in s.regressions:
        err.print(f"[red]regression: {escape(r['key'])}: {r['before']:.2f} -> {r['after']:.2f} ({r['change']:+.2f} points)[/]")
    for message in outcome.failed.values():
        err.print(f"[red]failed: {escape(message)}[/]")
    if outcome.exit_code:
        raise typer.Exit(outcome.exit_code)
