"""The result store under faults and hostile input: damaged and tampered artifacts, planted pickles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bench import store
from bench.cli import app
from bench.reports import tables
from tests.storegen import make_run

runner = CliRunner()


class _Planted:
    """A pickle that would create a file when unpickled: what a hostile file in a shared store could hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _store(tmp_path: Path) -> tuple[Path, list[Path]]:
    results = tmp_path / "results"
    runs = [make_run(results, m, 0, quality=q) for m, q in (("intclip", 0.6), ("dualcoop", 0.5), ("label-prior", 0.1))]
    return results, [store.runs_dir(results) / r.run_id for r in runs]


def _validate(results: Path):
    return runner.invoke(app, ["validate", "--results", str(results)])


def test_records_keep_the_sha256_of_their_artifacts(tmp_path):
    _, (run_dir, *_) = _store(tmp_path)
    rec = store.read_result(run_dir)
    import hashlib

    assert rec.artifact_sha256 == {"scores.npz": hashlib.sha256((run_dir / "scores.npz").read_bytes()).hexdigest()}


def test_validate_recomputes_every_metric_not_only_the_headline(tmp_path):
    """Was: only macro F1 and mAP were recomputed, so an edited micro F1 or accuracy at 0.5 passed."""
    results, (run_dir, *_) = _store(tmp_path)
    assert _validate(results).exit_code == 0
    data = json.loads((run_dir / store.RESULT).read_text())
    data["metrics"]["test"]["samples_f1_at_0_5"] = 0.99
    (run_dir / store.RESULT).write_text(json.dumps(data))
    res = _validate(results)
    assert res.exit_code == 1 and "2 valid, 1 corrupt" in res.output
    assert f"{run_dir / store.SCORES}: metrics.test.samples_f1_at_0_5 = 0.990000" in res.output.replace("\n", "")


def test_randomised_scores_are_found_by_their_hash_and_never_ranked(tmp_path):
    """Was: a scores.npz replaced by other (well-formed) scores passed validate and was ranked by the report."""
    results, (_, _, prior) = _store(tmp_path)
    with np.load(prior / store.SCORES) as z:
        arrays = {k: z[k] for k in z.files}
    rng = np.random.default_rng(0)
    arrays["test_scores"] = rng.random(arrays["test_scores"].shape).astype(np.float32)
    np.savez(prior / store.SCORES, **arrays)
    status, reason = store.run_status(prior)
    assert status == "corrupt" and "damaged: its sha256 differs" in reason and str(prior / store.SCORES) in reason
    res = _validate(results)
    assert res.exit_code == 1 and "2 valid, 1 corrupt" in res.output
    records, bad = tables.load_results(results)
    assert {r.method.name for r in records} == {"intclip", "dualcoop"} and len(bad) == 1


@pytest.mark.parametrize("damage", ["truncate", "delete", "garbage"])
def test_a_damaged_scores_file_never_crashes_report_or_validate(tmp_path, damage):
    """Was: zipfile.BadZipFile out of `bench report` until someone deleted the file by hand."""
    results, (_, run_dir, _) = _store(tmp_path)
    path = run_dir / store.SCORES
    if damage == "delete":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:300] if damage == "truncate" else b"PK\x03\x04" + b"\x00" * 64)
    out = tmp_path / "table.md"
    res = runner.invoke(app, ["report", "--results", str(results), "--format", "md", "--bootstrap", "20", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "skipped corrupt result" in res.output and str(path) in res.output.replace("\n", "")
    assert "dualcoop" not in out.read_text() and "intclip" in out.read_text()
    assert _validate(results).exit_code == 1
    assert store.run_status(run_dir)[0] == "corrupt"  # bench run moves the record aside and redoes the run


def test_a_damaged_or_missing_weights_file_is_named_by_validate(tmp_path):
    results, (run_dir, *_) = _store(tmp_path)
    rec = store.read_result(run_dir)
    torch.save({"w": torch.arange(10.0)}, run_dir / "weights.pt")
    rec.artifacts["weights"] = "weights.pt"
    store.write_result(run_dir, rec, store.read_scores(run_dir))  # the record now hashes weights.pt too
    assert "weights.pt" in store.read_result(run_dir).artifact_sha256 and _validate(results).exit_code == 0
    blob = bytearray((run_dir / "weights.pt").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (run_dir / "weights.pt").write_bytes(bytes(blob))
    res = _validate(results)
    assert res.exit_code == 1 and f"{run_dir / 'weights.pt'}: damaged" in res.output.replace("\n", "")
    (run_dir / "weights.pt").unlink()
    assert "weights artifact is missing" in store.run_status(run_dir)[1]


def test_a_planted_pickle_in_scores_runs_nothing(tmp_path):
    results, (run_dir, *_) = _store(tmp_path)
    marker = tmp_path / "pwned"
    with np.load(run_dir / store.SCORES) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["test_scores"] = np.array([_Planted(marker)], dtype=object)
    np.savez(run_dir / store.SCORES, **arrays)
    assert store.run_status(run_dir)[0] == "corrupt"
    with pytest.raises(store.CorruptResultError):
        store.read_scores(run_dir)
    runner.invoke(app, ["report", "--results", str(results), "--format", "md", "--bootstrap", "20"])
    assert _validate(results).exit_code == 1
    assert not marker.exists()


def test_planted_pickles_in_caches_are_refused_and_rebuilt(tmp_path):
    """The synthetic dataset cache, the linear probe's feature cache and the decoded image cache are read with
    allow_pickle=False: a planted object array runs nothing and the cache is rebuilt (or refused)."""
    from bench.datasets.cache import open_cached_images
    from bench.datasets.synthetic import SyntheticIntentions

    marker = tmp_path / "pwned"
    planted = np.array([_Planted(marker)], dtype=object)
    adapter = SyntheticIntentions(SyntheticIntentions.Config(n_train=8, n_val=6, n_test=6), None, tmp_path / "cache")
    path = adapter.cache_path(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{f"{s}_{k}": planted for s in ("train", "val", "test") for k in ("images", "labels")})
    data = adapter.load(32)
    assert not data.info["from_cache"] and data.splits["train"].images.shape == (8, 32, 32, 3)
    np.save(tmp_path / "planted.npy", planted, allow_pickle=True)
    with pytest.raises(ValueError):
        open_cached_images(tmp_path / "planted.npy")
    assert not marker.exists()


def test_a_planted_pickle_in_the_probe_feature_cache_is_replaced(tmp_path):
    from bench.backbones import TINY_CLIP, load_backbone
    from bench.datasets.synthetic import SyntheticIntentions
    from bench.registry import METHODS, create_method

    marker = tmp_path / "pwned"
    data = SyntheticIntentions(SyntheticIntentions.Config(n_train=8, n_val=6, n_test=6), None, tmp_path / "cache").load(96)
    probe = create_method("linear-probe", METHODS.get("linear-probe").Config(), load_backbone(TINY_CLIP, None), data, torch.device("cpu"))
    images = data.splits["val"].images
    clean = probe.features("val", images, data.manifest_sha256, tmp_path / "feat", 4)
    (cached,) = (tmp_path / "feat" / "features").glob("*.npy")
    np.save(cached, np.array([_Planted(marker)], dtype=object), allow_pickle=True)
    again = probe.features("val", images, data.manifest_sha256, tmp_path / "feat", 4)
    assert np.array_equal(again, clean) and not marker.exists()
    assert np.array_equal(np.load(cached, allow_pickle=False), clean)  # the planted file was replaced
