"""The bootstrap's significance cache is per comparison group: a new run recomputes its own group only, the numbers
read back from the cache equal the computed ones, and a damaged cache file is recomputed, not trusted."""

from __future__ import annotations

import json

import pandas as pd

from bench.reports import compare, significance
from bench.store import collection
from tests.conftest import make_run


def _significance(root):
    records = collection.load_results(root)[0]
    summary = collection.summarise(collection.results_frame(records))
    return compare.add_significance(summary, records, root, 100, test="bootstrap")


def _counted(monkeypatch) -> list[tuple[str, ...]]:
    """Every compare_to_reference call, as the sorted method keys (run ids) it compared."""
    calls: list[tuple[str, ...]] = []
    real = significance.compare_to_reference

    def counting(methods, *args, **kwargs):
        calls.append(tuple(sorted(methods)))
        return real(methods, *args, **kwargs)

    monkeypatch.setattr(significance, "compare_to_reference", counting)
    return calls


def _columns(summary: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in summary if c.startswith("test_") and ("_p_" in c or c.endswith("_diff"))]
    return summary.sort_values(["backbone", "method"])[["backbone", "method", *cols]].reset_index(drop=True)


def test_a_new_run_recomputes_only_its_own_group(tmp_path, monkeypatch):
    for backbone in ("RN50", "RN101"):  # two comparison groups
        for seed in (0, 1):
            make_run(tmp_path, "intclip", seed, backbone=backbone, quality=0.6)
            make_run(tmp_path, "label-prior", seed, backbone=backbone, quality=0.1)
    calls = _counted(monkeypatch)
    cold = _significance(tmp_path)
    assert len(calls) == 2  # one per group
    files = sorted((tmp_path / ".cache" / "significance").glob("*.json"))
    assert len(files) == 2

    warm = _significance(tmp_path)
    assert len(calls) == 2  # nothing recomputed
    pd.testing.assert_frame_equal(_columns(warm), _columns(cold))

    new = make_run(tmp_path, "label-prior", 2, backbone="RN50", quality=0.1)
    after = _significance(tmp_path)
    assert len(calls) == 3
    assert any(new.run_id in ids for ids in calls[-1])  # the recomputed group is the RN50 one
    rn101 = _columns(after)[lambda f: f["backbone"] == "RN101"].reset_index(drop=True)
    pd.testing.assert_frame_equal(rn101, _columns(cold)[lambda f: f["backbone"] == "RN101"].reset_index(drop=True))


def test_a_damaged_or_foreign_cache_file_is_recomputed(tmp_path, monkeypatch):
    for seed in (0, 1):
        make_run(tmp_path, "intclip", seed, quality=0.6)
        make_run(tmp_path, "label-prior", seed, quality=0.1)
    calls = _counted(monkeypatch)
    cold = _significance(tmp_path)
    (path,) = (tmp_path / ".cache" / "significance").glob("*.json")
    for damaged in ("{not json", json.dumps({"key": "another group", "values": {}})):
        path.write_text(damaged)
        again = _significance(tmp_path)
        pd.testing.assert_frame_equal(_columns(again), _columns(cold))
    assert len(calls) == 3
    assert json.loads(path.read_text())["key"] != "another group"  # rewritten with this group's values
