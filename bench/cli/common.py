"""What every ``bench`` command module shares: the two consoles and the options that mean the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from bench.config import BenchConfig, load_config
from bench.overrides import command_overrides

out = Console()
if not out.is_terminal:  # logs and pipes: room for the whole table instead of truncated cells
    out = Console(width=170)
err = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="bench.toml to use (default: ./bench.toml, else built-in defaults).")]
ResultsOpt = Annotated[Optional[Path], typer.Option("--results", help="Results folder (overrides paths.results).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override any bench.toml key: --set methods.linear-probe.refine_steps=2")]
PretrainedOpt = Annotated[Optional[str], typer.Option("--pretrained", help="The backbone's weights: an open_clip tag (laion2b_s34b_b88k), a checkpoint file, local-dir:DIR or none (random); sets backbones.<backbone>.pretrained.")]
RayOpt = Annotated[Optional[str], typer.Option("--ray-address", help="Existing Ray cluster (an address, or 'auto' for the one on this machine); also RAY_ADDRESS.")]


def load(config: Path | None, results: Path | None = None, sets: list[str] | None = None, sections: bool = True,
         values: dict[str, object] | None = None, pretrained: str | None = None, pretrained_for: str = "suite",
         **suite: object) -> BenchConfig:
    """The config with the command's flags applied (:func:`bench.overrides.command_overrides`); ``--pretrained`` sets ``backbones.<name>.pretrained`` of the
    backbone ``[<pretrained_for>]`` then runs on (a recorded override)."""
    from bench.config import configured_backbone
    from bench.overrides import backbone_key

    found = command_overrides(results, sets, values, **suite)
    if pretrained is not None:
        found[backbone_key(configured_backbone(config, found, pretrained_for))] = pretrained
    return load_config(config, found, sections=sections)
