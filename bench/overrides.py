"""Dotted overrides of bench.toml: ``--set key.path=value`` parsing, the list flags, and the one function that turns a
command's flags (CLI or Python API) into overrides. No validation here: :func:`bench.config.load_config` applies
the overrides and validates the result."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from bench.errors import ConfigError


def command_overrides(results: Path | str | None = None, sets: list[str] | None = None,
                      values: dict[str, Any] | None = None, **suite: Any) -> dict[str, Any]:
    """The dotted overrides of a command, in order: ``--set`` strings (parsed as TOML values), typed ``values`` (CLI
    paths and numbers, never re-parsed: a path may hold quotes or backslashes), ``--results`` (made absolute), then
    the suite flags given (``methods=[...]`` -> ``suite.methods``; ``None`` means not given)."""
    found: dict[str, Any] = dict(parse_override(s) for s in sets or [])
    found.update(values or {})
    if results is not None:
        found["paths.results"] = str(Path(results).resolve())
    found.update({f"suite.{k}": v for k, v in suite.items() if v is not None})
    return found


def split_key(key: str) -> list[str]:
    """A dotted key's parts; a part in double quotes may hold dots (``backbones."ViT-L-14-336".pretrained``)."""
    return [p[1:-1] if len(p) > 1 and p[0] == p[-1] == '"' else p for p in re.findall(r'"[^"]*"|[^.]+', key)]


def backbone_key(name: str, key: str = "pretrained") -> str:
    """The dotted override key of ``[backbones.<name>]``'s ``key`` (the name quoted when it holds a dot)."""
    part = f'"{name}"' if "." in name else name
    return f"backbones.{part}.{key}"


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` (dotted, parts quoted where they hold dots) in the nested TOML tables ``data``."""
    parts = split_key(key)
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {key!r}: {'.'.join(parts[: i + 1])} is not a table")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse a ``--set key.path=value`` flag; the value is read as TOML (``3``, ``[0, 1]``, ``true``,
    ``"x"``) and falls back to a plain string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set methods.dualcoop.epochs=2")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.strip(), value


def parse_int_list(text: str, flag: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` with an error naming the flag and the bad value."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        try:
            out.append(int(item))
        except ValueError:
            raise ConfigError(f"{flag}: {item!r} is not an integer (expected e.g. {flag} 0,1,2)") from None
    return out


def parse_name_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]
