"""What every ``bench`` command module shares: the two consoles and the options that mean the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

out = Console()
if not out.is_terminal:  # logs and pipes: room for the whole table instead of truncated cells
    out = Console(width=170)
err = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="bench.toml to use (default: ./bench.toml, else built-in defaults).")]
ResultsOpt = Annotated[Optional[Path], typer.Option("--results", help="Results folder (overrides paths.results).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override any bench.toml key: --set methods.linear-probe.refine_steps=2")]
RayOpt = Annotated[Optional[str], typer.Option("--ray-address", help="Existing Ray cluster (an address, or 'auto' for the one on this machine); also RAY_ADDRESS.")]
