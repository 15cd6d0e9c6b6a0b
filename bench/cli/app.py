"""The ``bench`` command line: the Typer app, every command registered on it, and :func:`main` (the console
script). Each command lives with its kind: :mod:`.run` (run, tune), :mod:`.report` (report, leaderboard),
:mod:`.inspect` (ls, params, validate, schema, pretrain-tiny-clip), :mod:`.data`, :mod:`.ops` (doctor, reproduce,
crosscheck, weights)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from bench.cli import inspect, ops, report, run
from bench.cli.common import err
from bench.cli.data import data_app
from bench.errors import BenchError
from bench.reports.escape import rich_text as escape  # control and bidi characters removed too

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


for _name, _command in (
    ("run", run.run), ("tune", run.tune), ("report", report.report), ("leaderboard", report.leaderboard),
    ("ls", inspect.ls), ("validate", inspect.validate), ("schema", inspect.schema), ("params", inspect.params),
    ("pretrain-tiny-clip", inspect.pretrain_tiny_clip), ("doctor", ops.doctor), ("reproduce", ops.reproduce),
    ("crosscheck", ops.crosscheck),
):
    app.command(_name)(_command)
app.add_typer(data_app, name="data")
app.add_typer(ops.weights_app, name="weights")


def main() -> None:
    try:
        app()
    except BenchError as e:
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
