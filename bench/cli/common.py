"""What every ``bench`` command module shares: the two consoles and the options that mean the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from bench.config import BenchConfig, load_config, parse_override

out = Console()
if not out.is_terminal:  # logs and pipes: room for the whole table instead of truncated cells
    out = Console(width=170)
err = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="bench.toml to use (default: ./bench.toml, else built-in defaults).")]
ResultsOpt = Annotated[Optional[Path], typer.Option("--results", help="Results folder (overrides paths.results).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override any bench.toml key: --set methods.linear-probe.refine_steps=2")]
RayOpt = Annotated[Optional[str], typer.Option("--ray-address", help="Existing Ray cluster (an address, or 'auto' for the one on this machine); also RAY_ADDRESS.")]


def overrides(results: Path | None = None, sets: list[str] | None = None, values: dict[str, object] | None = None,
              **suite: object) -> dict[str, object]:
    """The dotted overrides of a command: ``--set`` strings (parsed as TOML values), typed ``values`` (CLI paths and
    numbers, never re-parsed: a path may hold quotes or backslashes), ``--results``, then the suite flags given."""
    found: dict[str, object] = dict(parse_override(s) for s in sets or [])
    found.update(values or {})
    if results is not None:
        found["paths.results"] = str(results.resolve())
    found.update({f"suite.{k}": v for k, v in suite.items() if v is not None})
    return found


def load(config: Path | None, results: Path | None = None, sets: list[str] | None = None, sections: bool = True,
         values: dict[str, object] | None = None, pretrained: str | None = None, pretrained_for: str = "suite",
         **suite: object) -> BenchConfig:
    """The config with :func:`overrides` applied; ``--pretrained`` sets ``backbones.<name>.pretrained`` of the
    backbone ``[<pretrained_for>]`` then runs on (a recorded override)."""
    from bench.config import backbone_key, configured_backbone

    found = overrides(results, sets, values, **suite)
    if pretrained is not None:
        found[backbone_key(configured_backbone(config, found, pretrained_for))] = pretrained
    return load_config(config, found, sections=sections)
