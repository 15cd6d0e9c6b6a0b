import json
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.store import store
from bench.errors import ConfigError, CorruptResultError, UnknownNameError
from bench.registry import METHODS, Registry


def test_registry_is_lazy_and_helpful():
    reg = Registry("widget", {"json-dumps": "json:dumps", "never-imported": "bench_no_such_module:thing"})
    assert reg.names() == ["json-dumps", "never-imported"]
    assert reg.names("json*") == ["json-dumps"]
    assert "bench_no_such_module" not in sys.modules  # listing imports nothing
    assert reg.get("json-dumps") is json.dumps
    with pytest.raises(UnknownNameError, match=r"unknown widget 'json-dump'; did you mean 'json-dumps'\?"):
        reg.get("json-dump")
    with pytest.raises(UnknownNameError) as info:
        reg.get("zzz")
    assert "did you mean" not in str(info.value) and "bench ls widgets" in str(info.value)


def test_every_registered_method_builds_its_config():
    for name in METHODS.names():
        cls = METHODS.get(name)
        assert cls.name == name
        cls.Config()  # defaults validate


def test_run_id_depends_on_every_identity_field():
    base = {"method": {"name": "m", "config": {"lr": 1}}, "seed": 0, "dataset": {"manifest_sha256": "a"}, "code": "1"}
    rid = store.compute_run_id(base)
    assert len(rid) == 16 and rid == store.compute_run_id(json.loads(json.dumps(base)))
    for key, value in (("seed", 1), ("dataset", {"manifest_sha256": "b"}), ("code", "2"), ("method", {"name": "m", "config": {"lr": 2}})):
        assert store.compute_run_id({**base, key: value}) != rid, key


def test_unwritable_results_dir_fails_up_front(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"paths.results: .*file/sub is not writable"):
        store.ensure_writable(blocker / "sub")


def _fake_scores(n=6, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "val_scores": rng.random((n, c), dtype=np.float32),
        "val_labels": (rng.random((n, c)) > 0.5).astype(np.float32),
        "test_scores": rng.random((n, c), dtype=np.float32),
        "test_labels": (rng.random((n, c)) > 0.5).astype(np.float32),
    }


def test_status_detects_corrupt_results_and_quarantine_keeps_them(tmp_path: Path):
    run_dir = tmp_path / "runs" / "abc"
    run_dir.mkdir(parents=True)
    assert store.run_status(run_dir) == ("new", None)
    (run_dir / "checkpoint.pt").write_bytes(b"x")
    assert store.run_status(run_dir)[0] == "partial"
    (run_dir / "result.json").write_text('{"schema_version": 1, "run_id": "abc"')
    status, reason = store.run_status(run_dir)
    assert status == "corrupt" and "result.json" in reason
    moved = store.quarantine(run_dir)
    assert moved.read_text().startswith('{"schema_version"') and not (run_dir / "result.json").exists()


def test_scores_are_validated(tmp_path: Path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    scores = _fake_scores()
    np.savez(run_dir / "scores.npz", **scores)
    assert set(store.read_scores(run_dir)) == set(store.SCORE_KEYS)
    scores["test_scores"][0, 0] = 1.5
    np.savez(run_dir / "scores.npz", **scores)
    with pytest.raises(CorruptResultError, match="test_scores must be finite"):
        store.read_scores(run_dir)


def test_presets_and_search_spaces_name_real_config_fields():
    for name in METHODS.names():
        config = METHODS.get(name).Config
        for preset, values in config.presets.items():
            assert set(values) <= set(config.model_fields), (name, preset)
            config(preset=preset)  # every preset validates
        for key, spec in config.search_space.items():
            assert key in config.model_fields, (name, key)
            assert spec[0] in ("loguniform", "uniform", "int", "choice"), (name, key)
    assert METHODS.get("dualcoop").Config(preset="repository").csc is False
    assert METHODS.get("query2label").Config(preset="readme").hidden_dim == 2048
