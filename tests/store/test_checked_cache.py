"""store.iter_checked remembers what it checked: an unchanged record (same result.json bytes, scores.npz of the same
size and mtime) is neither rehashed nor rescored on the next pass; a rewritten scores.npz is hashed again, so damage
of the same size is still caught, and a touched but intact one passes."""

from __future__ import annotations

import os

import pytest

from bench.errors import CorruptResultError
from bench.store import store
from tests.conftest import make_run


@pytest.fixture
def counted(monkeypatch):
    """Counts of scores.npz hashes and rescorings done by the store."""
    monkeypatch.setattr(store, "RECOMPUTE_METRICS", True)  # make_run's records carry their true metrics
    counts = {"hash": 0, "rescore": 0}
    real_hash, real_check = store.sha256_file, store.check_scores

    def hashing(path, *args, **kwargs):
        counts["hash"] += path.name == store.SCORES
        return real_hash(path, *args, **kwargs)

    def rescoring(*args, **kwargs):
        counts["rescore"] += 1
        return real_check(*args, **kwargs)

    monkeypatch.setattr(store, "sha256_file", hashing)
    monkeypatch.setattr(store, "check_scores", rescoring)
    return counts


def _pass(results):
    return {p.name: r for p, r in store.iter_checked(results)}


def test_unchanged_records_are_not_rehashed_nor_rescored(tmp_path, counted):
    runs = [make_run(tmp_path, m, s) for m in ("intclip", "zeroshot") for s in (0, 1)]
    first = _pass(tmp_path)
    assert counted == {"hash": 4, "rescore": 4}
    second = _pass(tmp_path)
    assert counted == {"hash": 4, "rescore": 4}  # nothing redone
    assert {k: v.run_id for k, v in second.items()} == {k: v.run_id for k, v in first.items()} == {r.run_id: r.run_id for r in runs}


def test_a_rewritten_scores_file_is_hashed_again(tmp_path, counted):
    run = make_run(tmp_path, "intclip", 0)
    scores = store.runs_dir(tmp_path) / run.run_id / store.SCORES
    _pass(tmp_path)
    st = scores.stat()
    os.utime(scores, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched, bytes intact
    assert not isinstance(_pass(tmp_path)[run.run_id], CorruptResultError)
    assert counted == {"hash": 2, "rescore": 1}  # hashed again; the same bytes need no rescoring

    data = bytearray(scores.read_bytes())
    data[len(data) // 2] ^= 0xFF  # damage of the same size
    scores.write_bytes(bytes(data))
    os.utime(scores, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    err = _pass(tmp_path)[run.run_id]
    assert isinstance(err, CorruptResultError) and "sha256 differs" in str(err) and str(scores) in str(err)


def test_a_removed_scores_file_is_reported_even_when_remembered(tmp_path, counted):
    run = make_run(tmp_path, "intclip", 0)
    _pass(tmp_path)
    (store.runs_dir(tmp_path) / run.run_id / store.SCORES).unlink()
    err = _pass(tmp_path)[run.run_id]
    assert isinstance(err, CorruptResultError) and "missing" in str(err)
