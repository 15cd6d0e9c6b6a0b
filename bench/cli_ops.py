"""``bench doctor``, ``bench weights status|fetch`` and ``bench reproduce``: getting a machine ready for the real
suite and reproducing the paper. Mounted into the main CLI (``bench/cli.py``).

Exit codes: 0 fine; 1 something is missing (doctor, weights status) or runs failed (reproduce); 2 bad input.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import typer
from rich.markup import escape

from bench.cli_common import ConfigOpt, RayOpt, ResultsOpt, SetOpt, err, load, out, overrides
from bench.config import parse_name_list

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
    from bench import doctor as checks

    cfg = load(config, results, sets, datasets=parse_name_list(dataset) if dataset else None, backbone=backbone, executor=executor)
    found = checks.run_checks(cfg, ray_address, connect)
    checks.render(found, out)
    missing = checks.missing(found)
    if missing:
        err.print(f"[red]{len(missing)} missing: {escape(', '.join(f'{c.area} {c.item}' for c in missing))}[/]")
        raise typer.Exit(1)


@weights_app.command("status")
def weights_status(
    backbones: Annotated[Optional[list[str]], typer.Argument(help="Backbones (default: the suite's, the leaderboard's and every [backbones.*] of the config).")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """For each backbone: its configured weights and whether they are here (a local file or folder, the shipped
    tiny CLIP, the open_clip or Hugging Face cache), or the command or download that gets them. No network."""
    from rich.table import Table

    from bench.weights import weights_status as status

    cfg = load(config, None, sets)
    names = backbones or list(dict.fromkeys([cfg.suite.backbone, *([cfg.leaderboard.backbone] if cfg.leaderboard.backbone else []), *cfg.backbones]))
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
    from bench.config import backbone_key
    from bench.io import sha256_file
    from bench.weights import fetch

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
    from bench.reproduce import PRESETS, gate, make_plan, print_plan, run_all, write_report

    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}: expected one of {', '.join(PRESETS)}")
    chosen = PRESETS[preset]
    found = overrides(results, sets, {"protocol.name": protocol} if protocol else None, executor=executor)
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
