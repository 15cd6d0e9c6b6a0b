"""Looking at what the harness knows: `bench ls`, `bench params`, `bench validate`, `bench schema`, and
`bench pretrain-tiny-clip` (the shipped tiny CLIP's weights, reproduced)."""

from __future__ import annotations

import fnmatch
import sys
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from bench.cli.common import ConfigOpt, ResultsOpt, err, out
from bench.cli.common import load as _load
from bench.errors import BenchError
from bench.overrides import parse_name_list
from bench.reports.escape import rich_text as escape  # control and bidi characters removed too


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

    cfg = _load(config, results, sections=False)  # the store only: no method module (no torch)
    _ls_runs(store.iter_results(cfg.paths.results), pattern)


def _ls_runs(found, pattern: str) -> None:
    """The store's runs as one aligned table, sorted by dataset, backbone, method and seed; unreadable ones after."""
    from rich.table import Table

    from bench.store.schema import main_metric_of

    good, bad = [], []
    for run_dir, rec in found:
        if isinstance(rec, BenchError):
            bad.append((run_dir.name, str(rec)))
        elif any(fnmatch.fnmatchcase(n, pattern) for n in (rec.method.name, *rec.method.aliases)):
            good.append(rec)
    good.sort(key=lambda r: (r.dataset.name, r.backbone["name"], r.method.name, -1 if r.seed is None else r.seed, r.run_id))
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col, justify in (("run id", "left"), ("method", "left"), ("dataset", "left"), ("backbone", "left"),
                         ("protocol", "left"), ("seed", "right"), ("test (main metric)", "right")):
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for rec in good:
        metric = main_metric_of(rec.dataset.task, rec.dataset.main_metric)
        name = rec.method.name + (f" (= {', '.join(rec.method.aliases)})" if rec.method.aliases else "")
        table.add_row(rec.run_id, escape(name), escape(rec.dataset.name), escape(rec.backbone["name"]), rec.protocol.name,
                      "-" if rec.seed is None else str(rec.seed), f"{metric} {100 * rec.metrics.test[metric]:.2f}")
    out.print(table)
    for name, reason in sorted(bad):
        out.print(f"{escape(name)}  [red]unreadable[/]: {escape(reason)}")


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


def schema(what: Annotated[str, typer.Argument(help="result: the JSON Schema of result.json.")] = "result") -> None:
    """Print the JSON Schema of a record (generated from the pydantic model; every field documented)."""
    import json

    from bench.store.schema import json_schema

    if what != "result":
        raise BenchError(f"bench schema {what!r}: expected 'result'")
    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


def params(
    methods: Annotated[str, typer.Option("--methods", "-m", help="Comma-separated method names (variants allowed).")] = "intclip,intclip-official,dualcoop,linear-probe,zeroshot",
    backbone: Annotated[str, typer.Option("--backbone", "-b", help="Backbone the methods are built on (random weights).")] = "RN101",
    num_classes: Annotated[int, typer.Option("--num-classes", "-n", min=1, help="Classes of the task (Intentonomy: 28).")] = 28,
    fmt: Annotated[Literal["table", "json"], typer.Option("--format", "-f", help="A table or JSON.")] = "table",
) -> None:
    """Build each method with random weights (no download) and print learnable and total parameters."""
    import json

    from bench.pipeline.params import count_params

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
