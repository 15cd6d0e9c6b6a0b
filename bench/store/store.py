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
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ValidationError

from bench.errors import ConfigError, CorruptResultError, NewerRecordError
from bench.io import atomic_write_bytes, sha256_file
from bench.store.schema import SCHEMA_VERSION, RunResult, migrate

RESULT = "result.json"
SCORES = "scores.npz"
ALIASES = "aliases.json"  # names later suites gave a complete run (see add_aliases)
SCORE_KEYS = ("val_scores", "val_labels", "test_scores", "test_labels")
LOGIT_KEYS = ("val_logits", "test_logits")  # float64 ranking scores (logits / margins); absent in older stores
RunStatus = Literal["complete", "newer", "corrupt", "partial", "new"]
METRIC_TOLERANCE = 1e-6  # a stored metric may differ from the one recomputed from scores.npz by float rounding only


def compute_run_id(identity: dict[str, Any]) -> str:
    """Hash of what defines a run (resolved config, dataset manifest hash, code version): 16 hex chars."""
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def runs_dir(results: Path) -> Path:
    return Path(results) / "runs"


def write_problem(results: Path) -> str | None:
    """Why the results folder cannot be created or written (``None``: it can); writes and removes a probe file."""
    try:
        runs_dir(results).mkdir(parents=True, exist_ok=True)
        probe = runs_dir(results) / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        return f"{results} is not writable ({err.strerror or err})"
    return None


def ensure_writable(results: Path) -> None:
    """Fail before any work if the results folder cannot be created or written."""
    problem = write_problem(results)
    if problem is not None:
        raise ConfigError(f"paths.results: {problem}")


def write_result(run_dir: Path, result: RunResult, scores: dict[str, np.ndarray]) -> None:
    """Write scores.npz, then result.json (the completion marker), both atomically; the record keeps the sha256 of
    every artifact (scores.npz and the files already in ``result.artifacts``), so damage is found later."""
    run_dir.mkdir(parents=True, exist_ok=True)
    missing = [k for k in SCORE_KEYS if k not in scores]
    if missing:
        raise ValueError(f"scores lack {missing}")
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(scores[k]) for k in (*SCORE_KEYS, *LOGIT_KEYS) if k in scores})
    payload = buf.getvalue()
    atomic_write_bytes(run_dir / SCORES, payload)
    hashes = {SCORES: hashlib.sha256(payload).hexdigest()}
    hashes.update({f: sha256_file(run_dir / f) for f in result.artifacts.values() if f != SCORES})
    result.artifact_sha256 = hashes
    atomic_write_bytes(run_dir / RESULT, (result.model_dump_json(indent=2, exclude_none=False) + "\n").encode())


def read_result(run_dir: Path) -> RunResult:
    """Load, migrate (older ``schema_version``) and validate a run's result.json, ignoring keys this version does
    not know. Raises :class:`CorruptResultError` naming the file and the fault, or :class:`NewerRecordError` for a
    record of a newer schema version that does not validate here (not corrupt: leave it alone)."""
    path = run_dir / RESULT
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as err:
        raise CorruptResultError(f"{path}: unreadable: {err}") from None
    return _parse_result(run_dir, raw)


def _parse_result(run_dir: Path, raw: bytes) -> RunResult:
    path = run_dir / RESULT
    try:
        data = json.loads(raw)
    except ValueError as err:
        raise CorruptResultError(f"{path}: unreadable: {err}") from None
    if not isinstance(data, dict):
        raise CorruptResultError(f"{path}: <root>: expected a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    newer = isinstance(version, int) and version > SCHEMA_VERSION
    try:
        result = RunResult.model_validate(migrate(data))
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "<root>"
        if newer:
            raise NewerRecordError(
                f"{path}: written by a newer bench (schema_version {version} > {SCHEMA_VERSION}) and not readable by "
                f"this one ({loc}: {first['msg']}); upgrade bench to include it"
            ) from None
        raise CorruptResultError(f"{path}: {loc}: {first['msg']}") from None
    if result.run_id != run_dir.name:
        raise CorruptResultError(f"{path}: run_id {result.run_id!r} does not match its folder {run_dir.name!r}")
    return result


def read_scores(run_dir: Path) -> dict[str, np.ndarray]:
    """Load scores.npz (with the logits when the store has them) and check its keys and shapes."""
    path = run_dir / SCORES
    try:
        with np.load(path, allow_pickle=False) as npz:
            scores = {k: npz[k] for k in SCORE_KEYS}
            scores.update({k: npz[k] for k in LOGIT_KEYS if k in npz.files})
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise CorruptResultError(f"{path}: unreadable or incomplete: {type(err).__name__}: {err}") from None
    for split in ("val", "test"):
        s, y = scores[f"{split}_scores"], scores[f"{split}_labels"]
        if s.ndim != 2 or len(s) != len(y) or not np.isfinite(s).all() or s.min() < 0 or s.max() > 1:
            raise CorruptResultError(f"{path}: {split}_scores must be finite [N, C] in [0, 1] matching {split}_labels")
        logits = scores.get(f"{split}_logits")
        if logits is not None and (logits.shape != s.shape or not np.isfinite(logits).all()):
            raise CorruptResultError(f"{path}: {split}_logits must be finite with the shape of {split}_scores {s.shape}")
    return scores


def check_scores(result: RunResult, scores: dict[str, np.ndarray], path: Path) -> None:
    """Raise :class:`CorruptResultError` when scores.npz contradicts the record: other split sizes or class count,
    or any metric that recomputing from the stored scores (at the record's threshold) does not give."""
    from bench import metrics

    n_classes = len(result.dataset.class_keys)
    for split in ("val", "test"):
        s, y = scores[f"{split}_scores"], scores[f"{split}_labels"]
        expected = result.dataset.split_sizes.get(split)
        if s.shape[1] != n_classes or (expected is not None and len(s) != expected):
            raise CorruptResultError(
                f"{path}: {split}_scores has shape {s.shape} but the record has {expected} {split} images x {n_classes} classes"
            )
        stored = getattr(result.metrics, split)
        try:
            if result.dataset.task == "multilabel":
                threshold = result.protocol.threshold if result.protocol.threshold is not None else 0.5
                recomputed = metrics.multilabel_metrics(s, y, threshold, scores.get(f"{split}_logits"))
                if "mAP_official" in stored:
                    recomputed["mAP_official"] = float(np.mean(metrics.official_average_precision(s, y)))
            else:
                recomputed = metrics.multiclass_metrics(s, y)
        except ValueError as err:
            raise CorruptResultError(f"{path}: {split}: {err}") from None
        for key, value in recomputed.items():
            if key in stored and isinstance(value, float) and abs(stored[key] - value) > METRIC_TOLERANCE:
                raise CorruptResultError(
                    f"{path}: metrics.{split}.{key} = {stored[key]:.6f} in {RESULT} but its scores.npz gives {value:.6f}"
                )


def check_artifacts(run_dir: Path, result: RunResult, *, full: bool = False, hash_scores: bool = True) -> None:
    """Raise :class:`CorruptResultError` naming the file when an artifact the record lists is missing, or when its
    bytes no longer have the sha256 the record kept (scores.npz unless ``hash_scores`` is False; every artifact
    with ``full``, which hashes the weights too). Records written before hashes were kept are checked for presence
    only."""
    for name, file in result.artifacts.items():
        path = run_dir / file
        if not path.is_file():
            raise CorruptResultError(f"{path}: the record's {name} artifact is missing")
        expected = result.artifact_sha256.get(file)
        if expected is not None and (full or (hash_scores and file == SCORES)) and sha256_file(path) != expected:
            raise CorruptResultError(f"{path}: damaged: its sha256 differs from the one {RESULT} recorded")


def verify_run(run_dir: Path, result: RunResult, *, full: bool = False) -> dict[str, np.ndarray]:
    """Artifacts present and intact, scores.npz readable with the record's shapes and every metric recomputed from
    it; returns the scores."""
    check_artifacts(run_dir, result, full=full)
    scores = read_scores(run_dir)
    check_scores(result, scores, run_dir / SCORES)
    return scores


def run_status(run_dir: Path) -> tuple[RunStatus, str | None]:
    """``complete`` (valid result whose scores agree with it), ``newer`` (a record of a newer harness that this one
    cannot read: skipped, never moved), ``corrupt`` (result present, invalid: reason given), ``partial`` (a
    checkpoint, no result) or ``new``."""
    if (run_dir / RESULT).exists():
        try:
            verify_run(run_dir, read_result(run_dir))
        except NewerRecordError as err:
            return "newer", str(err)
        except CorruptResultError as err:
            return "corrupt", str(err)
        return "complete", None
    if any(run_dir.glob("checkpoint*")):
        return "partial", None
    return "new", None


def read_aliases(run_dir: Path) -> list[str]:
    """The names later suites gave a complete run (``aliases.json``; empty when absent or unreadable)."""
    try:
        data = json.loads((run_dir / ALIASES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [n for n in data if isinstance(n, str)] if isinstance(data, list) else []


def add_aliases(run_dir: Path, names: list[str]) -> None:
    """Remember every name in ``names`` that the run's record does not carry (a variant that resolves to the run's
    config, named by a later suite) in ``aliases.json`` beside it: result.json is never rewritten."""
    try:
        method = json.loads((run_dir / RESULT).read_bytes()).get("method", {})
        known = {method.get("name"), *method.get("aliases", []), *read_aliases(run_dir)}
    except (OSError, ValueError, AttributeError, TypeError):
        return  # an unreadable record is the triage's and validate's business
    new = [n for n in names if n not in known]
    if new:
        atomic_write_bytes(run_dir / ALIASES, json.dumps(sorted([*read_aliases(run_dir), *new])).encode())


def quarantine(run_dir: Path) -> Path:
    """Move a corrupt result.json aside (``result.json.corrupt-<unix time>``) so the run can be redone."""
    target = run_dir / f"{RESULT}.corrupt-{int(time.time())}"
    os.replace(run_dir / RESULT, target)
    return target


def iter_results(results: Path, verify: bool = False) -> Iterator[tuple[Path, RunResult | CorruptResultError]]:
    """Every run folder with a result.json: the validated record, or the error that says why it is not (with
    ``verify``, a record whose artifacts are missing, damaged or unreadable is an error; recomputing every metric
    is ``bench validate``'s and the run triage's job)."""
    root = runs_dir(results)
    if not root.is_dir():
        return
    for run_dir in sorted(p for p in root.iterdir() if (p / RESULT).exists()):
        try:
            result = read_result(run_dir)
            if verify:
                check_artifacts(run_dir, result)
                if SCORES not in result.artifact_sha256:  # an older record without hashes: parse its scores instead
                    read_scores(run_dir)
            yield run_dir, result
        except CorruptResultError as err:
            yield run_dir, err


CHECKED = Path(".cache") / "checked-records.json"  # under the results folder: which records' metrics were recomputed
CHECK_VERSION = 1  # part of every cache key: bump when the recomputation changes, so every record is checked again
# Reports recompute every metric of a record they have not checked before. Off (tests only, monkeypatched: stores
# whose hand-picked metric values are not what their scores give) reports trust intact scores as before.
RECOMPUTE_METRICS = True


def iter_checked(results: Path) -> Iterator[tuple[Path, RunResult | CorruptResultError]]:
    """Every run folder with a result.json: the record, or the error that says why it may not be reported. A
    record is checked as :func:`verify_run` checks it (artifacts present, scores.npz intact, finite, of the
    record's shapes, every metric recomputed from it), reading scores.npz once; a record whose result.json and
    scores.npz bytes (their sha256) were checked before is not recomputed (``<results>/.cache/checked-records.json``,
    rewritten after a full pass; a read-only store simply recomputes every time)."""
    root = runs_dir(results)
    if not root.is_dir():
        return
    cache = Path(results) / CHECKED
    try:
        known = json.loads(cache.read_bytes()).get("records", {})
    except (OSError, ValueError, AttributeError):
        known = {}
    checked: dict[str, str] = {}
    for run_dir in sorted(p for p in root.iterdir() if (p / RESULT).exists()):
        try:
            yield run_dir, _checked_record(run_dir, known if isinstance(known, dict) else {}, checked)
        except CorruptResultError as err:
            yield run_dir, err
    if checked != known:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(cache, json.dumps({"version": CHECK_VERSION, "records": checked}, indent=1).encode())
        except OSError:
            pass  # read-only: nothing is remembered, the next report recomputes


def _checked_record(run_dir: Path, known: dict[str, str], checked: dict[str, str]) -> RunResult:
    """One record of :func:`iter_checked`; adds its cache key to ``checked`` once it passed.

    The key holds the sha256 of result.json's bytes, the scores.npz sha256 the record kept and scores.npz's size and
    mtime (ns): when all match the key of an earlier pass, scores.npz (hashed then) is only checked for presence,
    not rehashed nor rescored. Any rewrite of scores.npz changes its mtime (or size), so it is hashed again;
    ``bench validate`` always hashes and rescores."""
    path = run_dir / RESULT
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise CorruptResultError(f"{path}: unreadable: {err}") from None
    result = _parse_result(run_dir, raw)
    recorded = result.artifact_sha256.get(SCORES)
    stamp = _stamp(run_dir / SCORES)
    prefix = f"{CHECK_VERSION}:{hashlib.sha256(raw).hexdigest()}:"
    if RECOMPUTE_METRICS and recorded and stamp and known.get(run_dir.name) == f"{prefix}{recorded}:{stamp}":
        check_artifacts(run_dir, result, hash_scores=False)  # unchanged since it was hashed and rescored
        checked[run_dir.name] = known[run_dir.name]
        return result
    check_artifacts(run_dir, result)  # scores.npz hashed against the record (when it kept the hash)
    if not RECOMPUTE_METRICS:
        if SCORES not in result.artifact_sha256:
            read_scores(run_dir)
        return result
    try:
        scores_sha = recorded or sha256_file(run_dir / SCORES)
    except OSError as err:
        raise CorruptResultError(f"{run_dir / SCORES}: unreadable: {err}") from None
    base, prior = f"{prefix}{scores_sha}", known.get(run_dir.name, "")
    if prior != base and not prior.startswith(f"{base}:"):  # rescored before (a key without a stamp: older cache)
        check_scores(result, read_scores(run_dir), run_dir / SCORES)
    checked[run_dir.name] = f"{base}:{stamp}"
    return result


def _stamp(path: Path) -> str:
    """``size:mtime_ns`` of a file ('' when it cannot be stat'ed)."""
    try:
        st = path.stat()
    except OSError:
        return ""
    return f"{st.st_size}:{st.st_mtime_ns}"
