"""``bench doctor``, ``bench weights status|fetch`` and ``bench reproduce``: getting a machine ready for the real
suite and reproducing the paper. Mounted into the main CLI (``bench/cli.py``).

Exit codes: 0 fine; 1 something is missing (doctor, weights status) or runs failed (reproduce); 2 bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from bench.reports.escape import rich_text as escape  # control and bidi characters removed too

from bench.cli.common import ConfigOpt, RayOpt, ResultsOpt, SetOpt, err, load, out
from bench.overrides import command_overrides, parse_name_list

weights_app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                          help="Whether each backbone's weights are on this machine, and getting them.")


def doctor(
    config: ConfigOpt = None,
    results: ResultsOpt = None,
    sets: SetOpt = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Comma-separated datasets (overrides suite.datasets).")] = None,
    backbone: Annotated[Optional[str], typer.Option("--backbone", "-b", help="Backbone (overrides suite.backbone).")] = None,
    executor: Annotated[Optional[Literal["ray", "serial"]], typer.Option("--executor", help="Overrides suite.executor (ray: check the cluster too).")] = None,
    ray_address: RayOpt = None,
    connect: Annotated[bool, typer.Option("--connect/--no-connect", help="Contact the configured Ray cluster (--no-connect: skip it).")] = True,
) -> None:
    """Check what a real run of the suite needs: data roots and their manifests, the backbone's weights, CUDA
    devices and their free memory, the Ray cluster and its resources, free disk for the decoded caches at the
    backbone's resolution; print ok/warn/missing with the command that fixes each. Exits 1 when anything is missing."""
    from bench.workflows import doctor as checks

    cfg = load(config, results, sets, datasets=parse_name_list(dataset) if dataset else None, backbone=backbone, executor=executor)
    found = checks.run_checks(cfg, ray_address, connect)
    checks.render(found, out)
    missing = checks.missing(found)
    if missing:
        err.print(f"[red]{len(missing)} missing: {escape(', '.join(f'{c.area} {c.item}' for c in missing))}[/]")
        raise typer.Exit(1)


@weights_app.command("status")
def weights_status(
    backbones: Annotated[Optional[list[str]], typer.Argument(help="Backbones (default: the suite's, the leaderboard's, every [backbones.*] of the config and every registered one).")] = None,
    backbone: Annotated[Optional[list[str]], typer.Option("--backbone", "-b", help="A backbone to show (repeatable; any open_clip name or hf-hub:org/name too).")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """For each backbone: its configured weights and whether they are here (a local file or folder, the shipped
    tiny CLIP, the open_clip or Hugging Face cache), or the command or download that gets them. No network."""
    from rich.table import Table

    from bench.workflows.weights import weights_status as status

    cfg = load(config, None, sets)
    from bench.registry import BACKBONES

    asked = [*(backbones or []), *(backbone or [])]
    for name in asked:
        BACKBONES.check(name)  # an unknown name fails with "did you mean"
    names = asked or list(dict.fromkeys([cfg.suite.backbone, *([cfg.leaderboard.backbone] if cfg.leaderboard.backbone else []),
                                         *cfg.backbones, *BACKBONES.names()]))
    table = Table(title="backbone weights", title_justify="left")
    for col in ("backbone", "weights", "present", "where / how to get them"):
        table.add_column(col, overflow="fold")
    absent = 0
    for name in names:
        state = status(cfg, name)
        absent += not state.present
        table.add_row(escape(name), escape(state.pretrained), "[green]yes[/]" if state.present else "[red]no[/]",
                      escape(state.detail if state.present else f"{state.detail}; {state.fix}"))
    out.print(table)
    if absent:
        raise typer.Exit(1)


@weights_app.command("fetch")
def weights_fetch(
    backbone: Annotated[str, typer.Argument(help="Backbone whose configured weights to download, e.g. RN101.")],
    config: ConfigOpt = None,
    sets: SetOpt = None,
    pretrained: Annotated[Optional[str], typer.Option("--pretrained", help="Another open_clip tag than the configured one.")] = None,
) -> None:
    """Download a backbone's weights with open_clip's own download (into its cache, where `bench run` finds them);
    says so and exits 1 when offline (HF_HUB_OFFLINE)."""
    from bench.overrides import backbone_key
    from bench.io import sha256_file
    from bench.workflows.weights import fetch

    cfg = load(config, None, sets, values={backbone_key(backbone): pretrained} if pretrained else None)
    path = fetch(cfg, backbone)
    out.print(f"{escape(backbone)}: {escape(str(path))} (sha256 {sha256_file(path)})")


def reproduce(
    preset: Annotated[str, typer.Argument(help="What to reproduce: intclip-eccv2024.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and its GPU-hours; check and run nothing.")] = False,
    tables: Annotated[Optional[str], typer.Option("--tables", help="Comma-separated tables of the paper, e.g. 1,2,6a (default: all).")] = None,
    protocol: Annotated[Optional[Literal["val-threshold", "intclip-code"]], typer.Option("--protocol", help="val-threshold (default) or intclip-code (the released code's epoch chosen on test; marked in every table).")] = None,
    scale: Annotated[Literal["paper", "tiny"], typer.Option("--scale", help="paper (default), or tiny: the tiny CLIP, one seed, one epoch per method (tests the whole path in minutes).")] = "paper",
    executor: Annotated[Optional[Literal["ray", "serial"]], typer.Option("--executor", help="Overrides suite.executor.")] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", min=0, help="Resamples of the significance test in the report (0: off).")] = 1000,
    config: ConfigOpt = None,
    results: ResultsOpt = None,
    sets: SetOpt = None,
    ray_address: RayOpt = None,
) -> None:
    """Plan every run the paper's tables need, print the plan with its estimated GPU-hours, check with `bench
    doctor` that data, weights and devices are there, run only what is missing, and write one HTML page (and a
    PDF where pdflatex is installed) with every reproduced table beside the paper's numbers and the differences."""
    from bench.errors import ConfigError
    from bench.workflows.reproduce import PRESETS, gate, make_plan, print_plan, run_all, write_report

    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}: expected one of {', '.join(PRESETS)}")
    chosen = PRESETS[preset]
    found = command_overrides(results, sets, {"protocol.name": protocol} if protocol else None, executor=executor)
    plan = make_plan(config, chosen, parse_name_list(tables) if tables else None, scale, found)
    print_plan(plan, chosen, out)
    if dry_run:
        return
    missing = gate(plan, out, ray_address)
    if missing:
        err.print(f"[red]not ready: {escape(', '.join(f'{c.area} {c.item}' for c in missing))} (fix the rows marked missing, or --dry-run to plan only)[/]")
        raise typer.Exit(2)
    failed = run_all(plan, err, ray_address)
    folder = plan.configs[0].paths.results / "reproduce"
    for path in write_report(plan, folder, chosen, bootstrap):
        out.print(f"wrote {escape(str(path))}")
    for message in failed.values():
        err.print(f"[red]failed: {escape(message)}[/]")
    if failed:
        raise typer.Exit(1)


def crosscheck(
    results: ResultsOpt = None,
    reference: Annotated[Optional[Path], typer.Option("--reference", help="The reference file (default: the shipped bench/assets/default_reference.json).")] = None,
    run: Annotated[bool, typer.Option("--run/--no-run", help="--no-run: compare the store as it is (default: run what is missing of the default suite first).")] = True,
    draws: Annotated[int, typer.Option("--draws", min=0, help="Perturbed repeats of every val selection (inputs scaled by 1 + 1e-7 noise; 0: skip).")] = 10,
    executor: Annotated[Optional[Literal["ray", "serial"]], typer.Option("--executor", help="Overrides suite.executor.")] = None,
) -> None:
    """The cross-machine promise: run the embedded default suite (what is missing), compare every number of its table
    with the shipped reference within the reference's tolerances, and check that no val selection moves when its
    inputs are scaled by 1 + 1e-7 noise. Exit 1 when a number is outside its tolerance or a selection moves."""
    from rich.table import Table

    from bench.workflows import crosscheck as cc

    cfg = load(None, results, values={"engine.progress": False}, executor=executor)
    if run:
        from rich.console import Console

        from bench.workflows.suite import run_suite

        outcome = run_suite(cfg, Console(stderr=True))
        if outcome.failed:
            for message in outcome.failed.values():
                err.print(f"[red]failed: {escape(str(message))}[/]")
            raise typer.Exit(1)
    ref = cc.load_reference(reference or cc.REFERENCE)
    checks, problems = cc.compare(ref, cc.table_of(cfg.paths.results))
    made = ref.get("made", {})
    table = Table(title=f"default suite vs the reference made on {made.get('machine', '?')} ({made.get('date', '?')})",
                  title_justify="left")
    for name, justify in (("method", "left"), ("split", "left"), ("metric", "left"), ("reference", "right"),
                          ("fresh", "right"), ("Δ", "right"), ("tolerance", "right"), ("", "left")):
        table.add_column(name, justify=justify, no_wrap=True)
    for c in checks:
        table.add_row(escape(c.method), c.split, c.metric, f"{c.reference:.2f}", "-" if c.fresh is None else f"{c.fresh:.2f}",
                      "-" if c.delta is None else f"{c.delta:+.2f}", f"± {c.tolerance:.2f}", "ok" if c.ok else "[red]OUTSIDE[/]")
    out.print(table)
    moved: list[str] = []
    if draws:
        moved = cc.selection_stability(cfg.paths.results, draws) + cc.probe_stability(cfg, draws)
        out.print(f"selections under 1 + 1e-7 noise ({draws} draws each): "
                  + ("none moved" if not moved else f"[red]{len(moved)} moved[/]"))
    for line in problems + moved:
        err.print(f"[red]{escape(line)}[/]")
    bad = [c for c in checks if not c.ok]
    if bad or problems or moved:
        err.print(f"[red]crosscheck failed: {len(bad)} of {len(checks)} numbers outside their tolerance, "
                  f"{len(problems)} other problems, {len(moved)} selections moved[/]")
        raise typer.Exit(1)
    out.print(f"crosscheck passed: {len(checks)} numbers within their tolerances")
