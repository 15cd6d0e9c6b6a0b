"""Hostile records and inputs (issue 24): non-finite scores, tampered metrics, read-only stores, decompression bombs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from bench.store import store
from bench.cli.app import app
from tests.conftest import build_store

runner = CliRunner()
LB = ["--set", 'leaderboard.methods=["dualcoop","intclip","linear-probe"]', "--set", 'leaderboard.datasets=["intentonomy"]',
      "--set", 'leaderboard.backbone="RN101"', "--set", "leaderboard.seeds=[0,1,2]", "--set", "leaderboard.bootstrap=200"]


@pytest.fixture(autouse=True)
def _recompute(monkeypatch):
    monkeypatch.setattr(store, "RECOMPUTE_METRICS", True, raising=False)  # whatever a shared fixture chose


def _store(results: Path) -> dict[tuple[str, int], Path]:
    return build_store(results, ("intclip", "dualcoop", "linear-probe"), (0, 1, 2),
                       per_run=lambda m, s: {"quality": 0.5 + 0.05 * s})


def _nan_scores(run_dir: Path) -> None:
    """A NaN in test_scores, the record's hash re-recorded (what a buggy plugin or a copied store leaves)."""
    with np.load(run_dir / store.SCORES) as npz:
        scores = dict(npz)
    scores["test_scores"][0, 0] = np.nan
    buf = io.BytesIO()
    np.savez(buf, **scores)
    (run_dir / store.SCORES).write_bytes(buf.getvalue())
    data = json.loads((run_dir / store.RESULT).read_text())
    data["artifact_sha256"][store.SCORES] = hashlib.sha256(buf.getvalue()).hexdigest()
    (run_dir / store.RESULT).write_text(json.dumps(data))


def _tamper(run_dir: Path, value: float = 0.99) -> None:
    data = json.loads((run_dir / store.RESULT).read_text())
    data["metrics"]["test"]["macro_f1"] = value
    (run_dir / store.RESULT).write_text(json.dumps(data))


def _hostile(tmp_path: Path) -> tuple[Path, Path, Path]:
    results = tmp_path / "results"
    runs = _store(results)
    _nan_scores(runs[("dualcoop", 1)])
    _tamper(runs[("intclip", 2)])
    return results, runs[("dualcoop", 1)], runs[("intclip", 2)]


def _skips(output: str) -> list[str]:
    return [line for line in output.replace("\n ", " ").splitlines() if line.startswith("skipped")]


@pytest.mark.parametrize("test", ["seed-t", "bootstrap"])
def test_report_skips_nan_scores_and_tampered_metrics(tmp_path, test):
    """Was: the NaN record made the report exit 2 (no tables); the tampered record showed as 99.00."""
    results, nan_run, tampered = _hostile(tmp_path)
    res = runner.invoke(app, ["report", "--results", str(results), "--format", "md", "--test", test, "--bootstrap", "200"])
    assert res.exit_code == 0, res.output
    rows = {line.split("|")[1].strip(): line.split("|")[3].strip() for line in res.output.splitlines() if line.startswith("| ") and "---" not in line}
    assert rows == {"Method": "n", "intclip": "2", "dualcoop": "2", "linear-probe": "3"}
    assert "99.00" not in res.output
    skips = _skips(res.output)
    assert len(skips) == 2
    assert sum(nan_run.name in s for s in skips) == 1 and sum(tampered.name in s for s in skips) == 1
    assert any("metrics.test.macro_f1 = 0.990000" in s for s in skips)


def test_a_metric_edited_after_a_checked_report_is_still_caught(tmp_path):
    """The cache of checked records is keyed by the record's and its scores' sha256: an edit invalidates it."""
    results = tmp_path / "results"
    runs = _store(results)
    first = runner.invoke(app, ["report", "--results", str(results), "--format", "md", "--bootstrap", "0"])
    assert first.exit_code == 0 and not _skips(first.output)
    assert len(json.loads((results / store.CHECKED).read_text())["records"]) == 9
    _tamper(runs[("linear-probe", 0)])
    second = runner.invoke(app, ["report", "--results", str(results), "--format", "md", "--bootstrap", "0"])
    assert second.exit_code == 0 and "99.00" not in second.output
    assert [runs[("linear-probe", 0)].name in s for s in _skips(second.output)] == [True]


@pytest.mark.slow
def test_leaderboard_publishes_neither_nan_nor_tampered_records(tmp_path):
    """Was: exit 2 and no site for the NaN record (significance on); 99.00 on the site for the tampered one."""
    results, nan_run, tampered = _hostile(tmp_path)
    site = tmp_path / "site"
    res = runner.invoke(app, ["leaderboard", "--no-run", "--results", str(results), "--site", str(site), *LB])
    assert res.exit_code == 0, res.output
    html = (site / "intentonomy.html").read_text()
    for method in ("intclip", "dualcoop", "linear-probe"):
        assert f'data-method="{method}"' in html
    assert "99.00" not in html and "99.00" not in (site / "index.html").read_text()
    entries = json.loads(next((site / "history").glob("*.json")).read_text())["entries"]
    assert sorted((v["method"], v["n"]) for v in entries.values()) == [("dualcoop", 2), ("intclip", 2), ("linear-probe", 3)]
    skips = _skips(res.output)
    assert len(skips) == 2 and any(nan_run.name in s for s in skips) and any(tampered.name in s for s in skips)


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def _read_only(results: Path, monkeypatch) -> None:
    """chmod the store read-only; where that does not stop writes (root), the writability check is simulated."""
    for path in [results, *results.rglob("*")]:
        if path.is_dir():
            path.chmod(0o555)
    if os.access(store.runs_dir(results), os.W_OK):
        monkeypatch.setattr(store, "write_problem", lambda r: f"{r} is not writable (simulated)")


def test_bench_run_reports_a_complete_read_only_store(write_config, tmp_path, monkeypatch):
    """Was: exit 2, "not writable", although every planned run had a valid result."""
    cfg = write_config(methods=("label-prior",))
    assert runner.invoke(app, ["run", "--config", str(cfg)]).exit_code == 0
    results = tmp_path / "results"
    before = _tree(store.runs_dir(results))
    _read_only(results, monkeypatch)
    try:
        res = runner.invoke(app, ["run", "--config", str(cfg)])
        assert res.exit_code == 0, res.output
        assert "nothing to train" in res.output and "label-prior" in res.output and "1 reused" in res.output
        assert _tree(store.runs_dir(results)) == before
        more = runner.invoke(app, ["run", "--config", str(cfg), "--methods", "label-prior,zeroshot"])
        assert more.exit_code != 0
        message = str(more.exception) if more.exception else more.output
        assert "not writable" in message and "the first write needed: running zeroshot" in message
        assert _tree(store.runs_dir(results)) == before
    finally:
        for path in [results, *results.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)


# ---------------------------------------------------------------------------------------------------------------
# `bench data verify` with bounded memory
# ---------------------------------------------------------------------------------------------------------------


def _png_bomb(path: Path, side: int) -> None:
    """An RGB PNG of side x side black pixels written row by row (a few hundred KB on disk, 3 * side**2 decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer, row, body = zlib.compressobj(9), b"\0" * (1 + 3 * side), []
    body = [packer.compress(row) for _ in range(side)] + [packer.flush()]
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", b"".join(body)) + chunk(b"IEND", b""))


def _emotionroi(root: Path) -> list[str]:
    rng = np.random.default_rng(0)
    training, testing = [], []
    for cls in ("anger", "disgust", "fear", "joy", "sadness", "surprise"):
        for i in range(6):
            rel = f"{cls}/{i + 1}.jpg"
            (root / "images" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(root / "images" / rel, quality=85)
            (training if i < 4 else testing).append(rel)
    (root / "training_testing_split").mkdir()
    (root / "training_testing_split" / "training.txt").write_text("\n".join(training) + "\n")
    (root / "training_testing_split" / "testing.txt").write_text("\n".join(testing) + "\n")
    return training


PEAK = """
import resource, sys
from typer.testing import CliRunner
from bench.cli.data import data_app
res = CliRunner().invoke(data_app, ["verify", "--dataset", "emotionroi", "--root", sys.argv[1], "--set",
                                    f'paths.cache="{sys.argv[2]}"', "--no-progress", "--workers", "1"])
print(res.exit_code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def _verify_peak_mb(root: Path, cache: Path) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", PEAK, str(root), str(cache)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    code, peak = out.stdout.split()[-2:]
    return int(code), int(peak)


@pytest.mark.slow
def test_verify_turns_a_decompression_bomb_into_a_bad_image_with_bounded_memory(tmp_path):
    """Was: a 12000x12000 PNG (under PIL's hard 2x limit, so only warned about) decoded to 432 MB and counted ok,
    and every file was read whole (a 150 MB image: 150 MB more)."""
    from bench.datasets.images import Manifest

    root = tmp_path / "EmotionROI"
    train = _emotionroi(root)
    ref_code, reference = _verify_peak_mb(root, tmp_path / "cache-ref")
    _png_bomb(root / "images" / train[0], 12_000)
    big = root / "images" / train[1]
    with open(big, "ab") as fh:  # a valid JPEG followed by 150 MB the decoder never needs
        fh.truncate(big.stat().st_size + 150 * 2**20)
    code, peak = _verify_peak_mb(root, tmp_path / "cache")
    manifest = Manifest.read(next((tmp_path / "cache").rglob("emotionroi/manifest-*.json")))
    entries = {e.path: e for split in manifest.entries.values() for e in split}
    assert code == ref_code  # a bad train image is skipped and counted, not fatal (this tiny copy has no val split)
    assert entries[f"images/{train[0]}"].status == "corrupt"
    assert entries[f"images/{train[1]}"].status == "ok"
    assert entries[f"images/{train[1]}"].sha256 == hashlib.sha256(big.read_bytes()).hexdigest()
    assert sum(c["corrupt"] for c in manifest.counts().values()) == 1
    assert peak < reference + 100, (peak, reference)
