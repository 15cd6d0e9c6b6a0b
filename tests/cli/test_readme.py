"""README cannot drift: every `bench ...` command in its shell blocks parses against the real CLI (each subcommand,
option and choice exists), and the ones that run offline on a small store run and exit 0."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from bench.cli.app import app
from tests.conftest import REPO

STORE = REPO / "tests" / "data" / "store-0.2.0" / "results"


def readme_commands() -> list[str]:
    """Every `bench ...` command line of README's bash/console blocks (continuations joined, comments dropped)."""
    text = (REPO / "README.md").read_text()
    out = []
    for block in re.findall(r"```(?:bash|console|sh)\n(.*?)```", text, flags=re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.split("  #")[0].split(" # ")[0].strip()
            line = line.split("&& ", 1)[1] if line.startswith("pip install") and "&& bench" in line else line
            if line.startswith("bench "):
                out.append(line)
    return out


def concrete(command: str, tmp: Path) -> list[str]:
    """README's shorthand made runnable: ``[--opt X]`` taken, ``a|b`` the first, DIR/FILE placeholders a path."""
    command = re.sub(r"\[([^\]]*)\]", r"\1", command)
    words = shlex.split(command)[1:]
    words = [w.split("|")[0] if "|" in w and not w.startswith(("'", '"')) else w for w in words]
    return [str(tmp / w.lower()) if w in ("DIR", "FILE") else w for w in words]


def parse(words: list[str]) -> None:
    """Parse ``words`` through the click command tree as the CLI would, without running anything."""
    command = typer.main.get_command(app)
    ctx = command.make_context("bench", list(words))
    while hasattr(command, "resolve_command"):
        pending = [*(getattr(ctx, "protected_args", None) or getattr(ctx, "_protected_args", None) or []), *ctx.args]
        if not pending:
            break
        name, command, rest = command.resolve_command(ctx, pending)
        ctx = command.make_context(name, rest, parent=ctx)


def test_readme_has_the_commands_this_test_reads():
    commands = readme_commands()
    assert len(commands) > 30 and any(c.startswith("bench run") for c in commands)
    assert any(c.startswith("bench reproduce intclip-eccv2024 --dry-run") for c in commands)


@pytest.mark.parametrize("command", readme_commands())
def test_every_readme_command_parses(command, tmp_path):
    parse(concrete(command, tmp_path))


def test_the_parser_check_can_fail(tmp_path):
    for wrong in ("bench run --methd intclip", "bench report --format pdf", "bench lss methods"):
        with pytest.raises(Exception):
            parse(concrete(wrong, tmp_path))


OFFLINE = ("bench ls ", "bench params ", "bench validate", "bench schema ", "bench report ", "bench weights status",
           "bench reproduce intclip-eccv2024 --dry-run")


@pytest.mark.slow
def test_readme_commands_that_run_offline_run(tmp_path, monkeypatch):
    """The listing, report, validation and planning commands, on a store an older bench wrote."""
    shutil.copytree(STORE, tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    ran = []
    for command in readme_commands():
        if not command.startswith(OFFLINE) or "--results /tmp" in command:
            continue
        words = concrete(command, tmp_path)
        if words[0] == "report" and "--out" in words:
            words[words.index("--out") + 1] = str(tmp_path / "out" / Path(words[words.index("--out") + 1]).name)
        result = CliRunner().invoke(app, words)
        allowed = (0, 1) if command.startswith("bench weights status") else (0,)  # 1: weights missing here, as it says
        assert result.exit_code in allowed, f"{command}\n{result.output[-2000:]}"
        ran.append(command)
    assert len(ran) >= 11, ran
