"""The ``bench`` command line: thin wrappers over the harness modules."""

from __future__ import annotations

import fnmatch
import sys
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from bench.reports.escape import rich_text as escape  # control and bidi characters removed too

from bench.cli.common import ConfigOpt, ResultsOpt, SetOpt, err, out
from bench.cli.common import load as _load
from bench.config import BenchConfig, parse_int_list, parse_name_list
from bench.errors import BenchError

app = typer.Typer(
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, help="Benchmark harness for visual intention understanding with CLIP."
)


def _version(value: bool) -> None:
    if value:
        import bench

        typer.echo(f"bench {bench.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Benchmark harness for visual intention understanding with CLIP."""


PretrainedOpt = Annotated[Optional[str], typer.Option("--pretrained", help="The backbone's weights: an open_clip tag (laion2b_s34b_b88k), a checkpoint file, local-dir:DIR or none (random); sets backbones.<backbone>.pretrained.")]


@app.command()
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
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Existing Ray cluster ('auto', 'ray://host:10001'); also RAY_ADDRESS.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Live progress (off: one line per event, for logs).")] = True,
    pretrained: PretrainedOpt = None,
) -> None:
    """Train and evaluate every method x dataset x seed that has no result yet, then print the table."""
    from bench.pipeline.suite import run_suite

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
    from bench.reports import tables

    records, _ = tables.load_results(cfg.paths.results)
    for table in fitted_tables(tables.summarise(tables.results_frame([r for r in records if r.run_id in run_ids])), out.width):
        out.print(table)


@app.command()
def tune(
    method: Annotated[str, typer.Option("--method", "-m", help="The method to search (see `bench ls methods`).")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="The dataset whose val split the search scores.")] = "synthetic",
    num_samples: Annotated[Optional[int], typer.Option("--num-samples", "-n", min=1, help="Trials to sample (overrides tune.num_samples).")] = None,
    results: ResultsOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Existing Ray cluster (an address, or 'auto' for the one on this machine); also RAY_ADDRESS.")] = None,
    backbone: Annotated[Optional[str], typer.Option("--backbone", "-b", help="Backbone name (see `bench ls backbones`); overrides suite.backbone.")] = None,
    pretrained: PretrainedOpt = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Live progress of the search and the refit (off: one line per event, for logs).")] = True,
) -> None:
    """Search hyperparameters on val (Optuna TPE + ASHA on Ray Tune), then refit the best over the seeds."""
    from bench.pipeline.tune import run_tune
    from bench.registry import DATASETS, METHODS

    METHODS.check(method)
    DATASETS.check(dataset)
    overrides = list(sets or []) + ([f"tune.num_samples={num_samples}"] if num_samples else [])
    cfg = _load(config, results, overrides, backbone=backbone, pretrained=pretrained)
    if not progress:
        cfg.engine.progress = False
    summary = run_tune(cfg, method, dataset, err, ray_address)
    _print_runs(cfg, set(summary["refit_run_ids"]))  # the refit's results, as `bench run` prints them
    err.print(
        f"best {summary['best_params']} (val {100 * summary['best_val_selection_metric']:.2f}); "
        f"{summary['stopped_early']} of {summary['num_trials']} trials stopped early by ASHA; "
        f"refit {len(summary['refit_run_ids'])} runs; study {summary['storage']}"
    )
    if summary["refit_failed"]:
        raise typer.Exit(1)




@app.command()
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
    from bench.api import render_report

    values: dict[str, object] = {}
    if ref is not None:
        values["report.reference"] = None if ref.strip().lower() == "none" else ref
    if test is not None:
        values["report.test"] = test
    cfg = _load(config, results, sections=False, values=values)  # reads results only: no method module (no torch)
    text, n_runs = render_report(cfg, fmt, bootstrap, reference, standalone, warn=lambda m: err.print(f"[yellow]{escape(m)}[/]"),
                                 columns=columns, metrics=parse_name_list(metrics) if metrics else None)
    if output is None:
        sys.stdout.write(text)
    else:
        from bench.io import atomic_write_text

        output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output, text)
        err.print(f"wrote {output} ({n_runs} runs)")


@app.command()
def leaderboard(
    config: ConfigOpt = None,
    results: ResultsOpt = None,
    sets: SetOpt = None,
    site: Annotated[Optional[Path], typer.Option("--site", help="Site folder (overrides leaderboard.site).")] = None,
    tolerance: Annotated[Optional[float], typer.Option("--tolerance", help="Flag drops larger than this many points.", min=0)] = None,
    run: Annotated[bool, typer.Option("--run/--no-run", help="--no-run: only regenerate the site from the stored results.")] = True,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Existing Ray cluster (an address, or 'auto' for the one on this machine); also RAY_ADDRESS.")] = None,
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


@app.command("ls")
def ls(
    what: Annotated[str, typer.Argument(help="methods, datasets, backbones or runs.")],
    pattern: Annotated[str, typer.Argument(help="Shell-style filter, e.g. 'intclip*'.")] = "*",
    results: ResultsOpt = None,
    config: ConfigOpt = None,
) -> None:
    """List registered methods, datasets, backbones, or the runs in the result store."""
    from bench.registry import REGISTRIES

    if what == "backbones":
        _ls_backbones(pattern)
        return
    if what in REGISTRIES:
        registry = REGISTRIES[what]
        names = registry.names()
        if what == "methods":  # variants too: "intclip:no-sa" runs intclip with that ablation's config
            names = sorted(names + [v for base in names for v in registry.variants(base)])
        for name in names:
            if fnmatch.fnmatchcase(name, pattern):
                out.print(name)
        return
    if what != "runs":
        raise BenchError(f"bench ls {what!r}: expected one of methods, datasets, backbones, runs")
    from bench.store import store

    cfg = _load(config, results)
    for run_dir, rec in store.iter_results(cfg.paths.results):
        if isinstance(rec, BenchError):
            out.print(f"{run_dir.name}  [red]unreadable[/]: {escape(str(rec))}")
        elif fnmatch.fnmatchcase(rec.method.name, pattern):
            main_metric = "macro_f1" if rec.dataset.task == "multilabel" else "accuracy"
            out.print(
                f"{rec.run_id}  {rec.method.name:<14} {rec.dataset.name:<12} {rec.backbone['name']:<10} {'deterministic' if rec.seed is None else f'seed {rec.seed}'}  "
                f"test {main_metric} {100 * rec.metrics.test[main_metric]:.2f}"
            )


def _ls_backbones(pattern: str) -> None:
    """The registered backbones, then open_clip's models: towers, pretrained tags, the methods that run on each."""
    from rich.table import Table

    from bench.backbones.loader import backbone_rows
    from bench.registry import BACKBONES, METHODS

    table = Table(title="Backbones (also any hf-hub:org/name; --backbone NAME --pretrained TAG|PATH|local-dir:DIR|none)")
    for col in ("name", "image tower", "text tower", "pretrained (default first)", "methods"):
        table.add_column(col, overflow="fold")
    for r in backbone_rows(BACKBONES, METHODS, pattern):
        name = f"[bold]{escape(r['name'])}[/]" if r["registered"] else escape(r["name"])
        table.add_row(name, r["image_tower"], r["text_tower"], escape(", ".join(r["tags"]) or "-"), ", ".join(r["methods"]))
    out.print(table)


@app.command()
def validate(config: ConfigOpt = None, results: ResultsOpt = None) -> None:
    """Check bench.toml (every section) and every record in the result store: each record validates, its
    artifacts are present with the sha256 it recorded, its scores.npz agrees with it (split sizes, classes, every
    metric recomputed), and keys this version does not know are listed as warnings (a newer harness wrote them;
    they are kept). Exits 1 naming each bad record."""
    from bench.store import store
    from bench.errors import NewerRecordError
    from bench.store.schema import unknown_keys

    cfg = _load(config, results)
    out.print(f"config OK: {cfg.source or 'built-in defaults'}" + (" (built-in defaults)" if cfg.builtin else ""))
    n_ok = n_bad = n_newer = 0
    for run_dir, rec in store.iter_results(cfg.paths.results):
        if isinstance(rec, NewerRecordError):
            n_newer += 1
            err.print(f"[yellow]warning: {escape(str(rec))}[/]")
            continue
        if isinstance(rec, BenchError):
            n_bad += 1
            err.print(f"[red]{escape(str(rec))}[/]")
            continue
        try:
            store.verify_run(run_dir, rec, full=True)  # artifacts present, hashes, every metric recomputed
        except BenchError as e:
            n_bad += 1
            err.print(f"[red]{escape(str(e))}[/]")
            continue
        n_ok += 1
        extra = unknown_keys(rec)
        if extra:
            err.print(
                f"[yellow]warning: {run_dir / store.RESULT}: keys unknown to this version (schema_version "
                f"{rec.schema_version}), kept and ignored: {', '.join(extra)}[/]"
            )
    newer = f", {n_newer} from a newer bench (kept)" if n_newer else ""
    out.print(f"results: {n_ok} valid, {n_bad} corrupt{newer} in {cfg.paths.results}")
    if n_bad:
        raise typer.Exit(1)


@app.command()
def schema(what: Annotated[str, typer.Argument(help="result: the JSON Schema of result.json.")] = "result") -> None:
    """Print the JSON Schema of a record (generated from the pydantic model; every field documented)."""
    import json

    from bench.store.schema import json_schema

    if what != "result":
        raise BenchError(f"bench schema {what!r}: expected 'result'")
    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


@app.command()
def params(
    methods: Annotated[str, typer.Option("--methods", "-m", help="Comma-separated method names (variants allowed).")] = "intclip,intclip-official,dualcoop,linear-probe,zeroshot",
    backbone: Annotated[str, typer.Option("--backbone", "-b", help="Backbone the methods are built on (random weights).")] = "RN101",
    num_classes: Annotated[int, typer.Option("--num-classes", "-n", min=1, help="Classes of the task (Intentonomy: 28).")] = 28,
    fmt: Annotated[Literal["table", "json"], typer.Option("--format", "-f", help="A table or JSON.")] = "table",
) -> None:
    """Build each method with random weights (no download) and print learnable and total parameters."""
    import json

    from bench.backbones.params import count_params

    if fmt not in ("table", "json"):
        raise BenchError(f"--format {fmt!r}: expected table or json")
    rows = count_params(parse_name_list(methods), backbone, num_classes)
    if fmt == "json":
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    from rich.table import Table

    table = Table(title=f"Parameters with {backbone}, {num_classes} classes")
    for col in ("method", "learnable", "learnable (M)", "total"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        table.add_row(r["method"], f"{r['learnable']:,}", f"{r['learnable'] / 1e6:.2f}", f"{r['total']:,}")
    out.print(table)


@app.command("pretrain-tiny-clip")
def pretrain_tiny_clip(
    output: Annotated[Path, typer.Option("--out", help="Where to write the fp16 state dict.")] = Path("bench/assets/bench-tiny-clip.pt"),
    seed: Annotated[int, typer.Option("--seed", help="Seed of the scenes and the initial weights.")] = 0,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Training steps (default: the shipped weights' 900).")] = None,
    eval_only: Annotated[bool, typer.Option("--eval", help="Only print the zero-shot sight table of the shipped weights.")] = False,
) -> None:
    """Reproduce the shipped tiny CLIP weights (contrastive pretraining on synthetic scene captions)."""
    from bench.tools import pretrain_tiny_clip as program

    if eval_only:
        raise typer.Exit(program.main(["--eval"]))
    argv = ["--out", str(output), "--seed", str(seed)] + (["--steps", str(steps)] if steps else [])
    raise typer.Exit(program.main(argv))


from bench.cli.data import data_app  # noqa: E402
from bench.cli.ops import crosscheck, doctor, reproduce, weights_app  # noqa: E402

app.add_typer(data_app, name="data")
app.add_typer(weights_app, name="weights")
app.command("doctor")(doctor)
app.command("reproduce")(reproduce)
app.command("crosscheck")(crosscheck)


def main() -> None:
    try:
        app()
    except BenchError as e:
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
