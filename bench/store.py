"""The result store: ``<results>/runs/<run_id>/{result.json, scores.npz}`` plus a checkpoint while training.

``result.json`` is written last and atomically (temp file, fsync, rename), so its presence means the run is
complete; ``scores.npz`` holds val/test scores and labels for re-scoring and bootstrap. A result that does not
validate is moved aside (kept, never deleted) and the run is redone. No torch here: reports use this module.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ValidationError

from bench.errors import ConfigError, CorruptResultError
from bench.schema import RunResult

RESULT = "result.json"
SCORES = "scores.npz"
SCORE_KEYS = ("val_scores", "val_labels", "test_scores", "test_labels")
RunStatus = Literal["complete", "corrupt", "partial", "new"]


def compute_run_id(identity: dict[str, Any]) -> str:
    """Hash of what defines a run (resolved config, dataset manifest hash, code version): 16 hex chars."""
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def runs_dir(results: Path) -> Path:
    return Path(results) / "runs"


def ensure_writable(results: Path) -> None:
    """Fail before any work if the results folder cannot be created or written."""
    try:
        runs_dir(results).mkdir(parents=True, exist_ok=True)
        probe = runs_dir(results) / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"paths.results: {results} is not writable ({err.strerror or err})") from None


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that readers see the old file or the whole new one (temp file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_result(run_dir: Path, result: RunResult, scores: dict[str, np.ndarray]) -> None:
    """Write scores.npz, then result.json (the completion marker), both atomically."""
    run_dir.mkdir(parents=True, exist_ok=True)
    missing = [k for k in SCORE_KEYS if k not in scores]
    if missing:
        raise ValueError(f"scores lack {missing}")
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(scores[k]) for k in SCORE_KEYS})
    atomic_write_bytes(run_dir / SCORES, buf.getvalue())
    atomic_write_bytes(run_dir / RESULT, (result.model_dump_json(indent=2) + "\n").encode())


def read_result(run_dir: Path) -> RunResult:
    """Load and validate a run's result.json; raise :class:`CorruptResultError` naming the file and the fault."""
    path = run_dir / RESULT
    try:
        result = RunResult.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise CorruptResultError(f"{path}: {loc}: {first['msg']}") from None
    except (OSError, ValueError) as err:
        raise CorruptResultError(f"{path}: unreadable: {err}") from None
    if result.run_id != run_dir.name:
        raise CorruptResultError(f"{path}: run_id {result.run_id!r} does not match its folder {run_dir.name!r}")
    return result


def read_scores(run_dir: Path) -> dict[str, np.ndarray]:
    """Load scores.npz and check its keys and shapes."""
    path = run_dir / SCORES
    try:
        with np.load(path) as npz:
            scores = {k: npz[k] for k in SCORE_KEYS}
    except (OSError, KeyError, ValueError) as err:
        raise CorruptResultError(f"{path}: unreadable or incomplete: {err}") from None
    for split in ("val", "test"):
        s, y = scores[f"{split}_scores"], scores[f"{split}_labels"]
        if s.ndim != 2 or len(s) != len(y) or not np.isfinite(s).all() or s.min() < 0 or s.max() > 1:
            raise CorruptResultError(f"{path}: {split}_scores must be finite [N, C] in [0, 1] matching {split}_labels")
    return scores


def run_status(run_dir: Path) -> tuple[RunStatus, str | None]:
    """``complete`` (valid result), ``corrupt`` (result present, invalid: reason given), ``partial`` (a
    checkpoint, no result) or ``new``."""
    if (run_dir / RESULT).exists():
        try:
            read_result(run_dir)
            read_scores(run_dir)
        except CorruptResultError as err:
            return "corrupt", str(err)
        return "complete", None
    if any(run_dir.glob("checkpoint*")):
        return "partial", None
    return "new", None


def quarantine(run_dir: Path) -> Path:
    """Move a corrupt result.json aside (``result.json.corrupt-<unix time>``) so the run can be redone."""
    target = run_dir / f"{RESULT}.corrupt-{int(time.time())}"
    os.replace(run_dir / RESULT, target)
    return target


def iter_results(results: Path) -> Iterator[tuple[Path, RunResult | CorruptResultError]]:
    """Every run folder with a result.json: the validated record, or the error that says why it is not."""
    root = runs_dir(results)
    if not root.is_dir():
        return
    for run_dir in sorted(p for p in root.iterdir() if (p / RESULT).exists()):
        try:
            yield run_dir, read_result(run_dir)
        except CorruptResultError as err:
            yield run_dir, err
