"""Smoke mode (bench.pipeline.limit, README "Smoke mode"): ``--limit N`` keeps N images of every split, seeded and
stratified; a limited run has its own run id (a run without a limit keeps the one an older bench wrote), records its
limit, composes with the label-efficiency protocols (or is refused by name), and its rows are apart from full runs
and marked "limit N" in every table."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from bench.config import load_config
from bench.datasets import subsets
from bench.datasets.base import ClassInfo, DatasetData, Split
from bench.errors import BenchError, ConfigError
from bench.pipeline.limit import LIMIT_SEED, LimitPlan, apply_limit, limit_indices
from bench.pipeline.plan import plan_suite
from bench.store import collection, store
from tests.conftest import REPO, bench_cli, make_run

OLD_STORE = REPO / "tests" / "data" / "store-0.2.0"  # written by bench 0.2.0, before smoke mode existed


def _labels(n: int = 600, classes: int = 12, seed: int = 3) -> np.ndarray:
    """Multi-hot labels whose classes range from 2 positives to about 40% of the images."""
    rng = np.random.default_rng(seed)
    y = rng.random((n, classes)) < np.linspace(0.0, 0.4, classes)
    y[:, 0] = False
    y[rng.choice(n, 2, replace=False), 0] = True  # a class with two positives in the whole split
    return y.astype(np.float32)


def test_a_limited_subset_has_n_images_keeps_every_class_and_follows_the_seed():
    y = _labels()
    for n in (12, 16, 100):
        idx = limit_indices(y, n, 0, "train")
        assert len(idx) == n and len(np.unique(idx)) == n and (np.diff(idx) > 0).all()
        assert ((y[idx].sum(axis=0) > 0) == (y.sum(axis=0) > 0)).all()  # the 2-positive class too
    assert len(limit_indices(y, 5, 0, "train")) == 5
    assert (limit_indices(y, len(y) + 7, 0, "train") == np.arange(len(y))).all()  # a small split stays whole
    # proportional beyond the covering images: each class within 2 of N/size x its count
    idx = limit_indices(y, 100, 0, "train")
    assert np.abs(y[idx].sum(axis=0) - 100 / len(y) * y.sum(axis=0)).max() <= 2
    same, other, val = (limit_indices(y, 16, 0, "train"), limit_indices(y, 16, 1, "train"),
                        limit_indices(y, 16, 0, "val"))
    assert (same == limit_indices(y, 16, 0, "train")).all()
    assert not np.array_equal(same, other) and not np.array_equal(same, val)  # seeds and splits draw apart
    single = np.random.default_rng(0).integers(0, 7, 300)  # single-label: one image per class, then by class size
    counts = np.bincount(single[limit_indices(single, 14, 0, "test")], minlength=7)
    assert counts.sum() == 14 and counts.min() >= 1


def _plans(results, cache, **extra):
    cfg = load_config(OLD_STORE / "bench.toml", {"suite.methods": ["zeroshot", "dualcoop"], "paths.cache": str(cache),
                                                 "paths.results": str(results), **extra})
    plans, datasets = plan_suite(cfg)
    return {p.method: p for p in plans}, datasets["synthetic"]


def test_a_limited_run_has_its_own_id_and_a_full_run_keeps_the_stored_one(shared_cache):
    full, data = _plans(OLD_STORE / "results", shared_cache)
    limited, _ = _plans(OLD_STORE / "results", shared_cache, **{"suite.limit": 16})
    wide, _ = _plans(OLD_STORE / "results", shared_cache, **{"suite.limit": 60})
    for method in ("zeroshot", "dualcoop"):
        assert "limit" not in full[method].identity
        assert (full[method].run_dir / store.RESULT).is_file()  # the run bench 0.2.0 wrote: same id, no rerun
        assert len({full[method].run_id, limited[method].run_id, wide[method].run_id}) == 3
        assert {k: v for k, v in limited[method].identity.items() if k != "limit"} == full[method].identity
    entry = limited["dualcoop"].identity["limit"]
    assert entry["n"] == 16 and entry["seed"] == LIMIT_SEED
    assert entry["split_sizes"] == {"train": 16, "val": 16, "test": 16}
    assert entry["split_sizes_full"] == {"train": 96, "val": 48, "test": 48}
    for split in ("train", "val", "test"):
        expected = limit_indices(data.splits[split].labels, 16, LIMIT_SEED, split)
        assert entry["sha256"][split] == subsets.indices_sha256(expected)
    assert wide["dualcoop"].identity["limit"]["split_sizes"] == {"train": 60, "val": 48, "test": 48}
    assert "(limit 16)" in limited["dualcoop"].label
    # the run draws the same subsets again; a changed split is refused
    run_data, record = apply_limit(limited["dualcoop"].identity, data)
    assert record == entry and {k: len(s) for k, s in run_data.splits.items()} == entry["split_sizes"]
    idx = limit_indices(data.splits["val"].labels, 16, LIMIT_SEED, "val")
    assert run_data.splits["val"].ids == [data.splits["val"].ids[i] for i in idx]
    assert np.array_equal(run_data.splits["val"].labels, data.splits["val"].labels[idx])
    tampered = {**limited["dualcoop"].identity, "limit": {**entry, "sha256": {**entry["sha256"], "test": "0" * 64}}}
    with pytest.raises(BenchError, match="limit = 16 subsets .* not the ones planned"):
        apply_limit(tampered, data)
    assert store.read_result(full["dualcoop"].run_dir).limit is None  # an older record validates: the whole dataset


def test_a_limit_composes_with_a_train_fraction_and_refuses_too_few_shots(shared_cache):
    plans, data = _plans(OLD_STORE / "results", shared_cache, **{"suite.limit": 16, "suite.train_fraction": [0.5]})
    labels = plans["dualcoop"].identity["labels"]
    limited_train = data.splits["train"].labels[limit_indices(data.splits["train"].labels, 16, LIMIT_SEED, "train")]
    expected = subsets.nested_fractions(limited_train, [0.5], 0)[0.5]  # drawn from the limited training split
    assert labels["n_train"] == 8 and labels["train_sha256"] == subsets.indices_sha256(expected)
    classes = [ClassInfo(f"c{i}", f"class {i}", f"a photo of class {i}.") for i in range(10)]
    split = Split(np.zeros((100, 4, 4, 3), dtype=np.uint8), np.arange(100) % 10, [str(i) for i in range(100)])
    data = DatasetData("toy", "multiclass", classes, [], {"train": split, "val": split, "test": split}, "0" * 64)
    suite = load_config(None, {"suite.shots": [1, 4], "suite.limit": 16}, sections=False).suite
    with pytest.raises(ConfigError, match=r"suite.limit = 16 .* 'toy': too few for suite.shots = 4 \(4 x 10 classes = 40\)"):
        LimitPlan(suite).data("toy", data)


def _limited_copy(results, record, n: int = 16) -> str:
    """A copy of ``record``'s run as a limited run of its own (same scores)."""
    data = json.loads((store.runs_dir(results) / record.run_id / store.RESULT).read_text())
    data["run_id"] = f"{record.run_id}-limit{n}"
    data["limit"] = {"n": n, "seed": 0, "split_sizes": {"train": n, "val": n, "test": n},
                     "split_sizes_full": {"train": 100, "val": 100, "test": 100}, "sha256": {"train": "f" * 64}}
    folder = store.runs_dir(results) / data["run_id"]
    shutil.copytree(store.runs_dir(results) / record.run_id, folder)
    (folder / store.RESULT).write_text(json.dumps(data))
    return data["run_id"]


def test_limited_rows_are_apart_from_full_rows_and_marked_in_every_table(tmp_path):
    from bench.reports.render import render_report

    results = tmp_path / "results"
    limited_ids = []
    for seed, value in ((0, 0.30), (1, 0.50)):
        r = make_run(results, "dualcoop", seed, test={"macro_f1": value}, dataset="synthetic")
        limited_ids.append(_limited_copy(results, r))
    records, bad = collection.load_results(results)
    assert not bad and len(records) == 4
    frame = collection.results_frame(records)
    assert sorted(frame["limit"]) == ["", "", "limit 16", "limit 16"]
    summary = collection.summarise(frame).set_index("method")
    assert list(summary.index) == ["dualcoop", "dualcoop [limit 16]"] and summary["n"].tolist() == [2, 2]
    assert set(summary.loc["dualcoop [limit 16]", "run_ids"].split(",")) == set(limited_ids)
    assert summary.loc["dualcoop [limit 16]", "test_macro_f1_mean"] == pytest.approx(0.40)
    # the full row's experiment id is the one it had before smoke mode; the limited row's differs
    full = summary.loc["dualcoop"]
    old_key = {k: str(full[k]) for k in ("method_name", "method_version", "config_id", "weights_id", "tuned")}
    assert full["experiment_id"] == store.compute_run_id(old_key)[:12] != summary.loc["dualcoop [limit 16]", "experiment_id"]
    cfg = load_config(None, {"paths.results": str(results)}, sections=False)
    md = render_report(cfg, "md", bootstrap=0)[0]
    assert "| dualcoop \\[limit 16\\] | 1.000 | 2 | 40.00 ± 14.14 |" in md and "| dualcoop | 1.000 | 2 | 40.00 ± 14.14 |" in md
    html = render_report(cfg, "html", bootstrap=0)[0]
    assert html.count(">dualcoop [limit 16]</td>") >= 1 and html.count(">dualcoop</td>") >= 1
    latex = render_report(cfg, "latex", bootstrap=0)[0]
    assert "\ndualcoop [limit 16] & 1.00 &" in latex and "\ndualcoop & 1.00 &" in latex


@pytest.mark.slow
def test_bench_run_limit_16_on_the_synthetic_dataset(write_config, tmp_path):
    config = write_config(methods=("label-prior", "linear-probe"), seeds=(0,))
    done = bench_cli("run", "--config", str(config), "--limit", "16", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    records, bad = collection.load_results(tmp_path / "results")
    assert not bad and sorted(r.method.name for r in records) == ["label-prior", "linear-probe"]
    for r in records:
        assert r.limit is not None and r.limit.n == 16
        assert r.dataset.split_sizes == {"train": 16, "val": 16, "test": 16} == r.limit.split_sizes
        assert r.limit.split_sizes_full == {"train": 96, "val": 48, "test": 48}
    assert "[limit 16]" in done.stdout
    report = bench_cli("report", "--results", str(tmp_path / "results"), "--bootstrap", "0", cwd=tmp_path)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "| label-prior \\[limit 16\\] |" in report.stdout and "| linear-probe \\[limit 16\\] |" in report.stdout
    again = bench_cli("run", "--config", str(config), "--limit", "16", "--no-progress", cwd=tmp_path)
    assert again.returncode == 0 and "0 runs trained, 2 reused" in again.stderr, again.stdout + again.stderr
    import bench  # the Python API's limit= is the same key: the same runs, reused

    frame = bench.run(config=config, results=tmp_path / "results", limit=16)
    assert sorted(frame["run_id"]) == sorted(r.run_id for r in records) and set(frame["limit"]) == {"limit 16"}
