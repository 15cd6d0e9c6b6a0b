"""A lab adds a method and a dataset from its own package, through entry points, without touching bench: one file
each (tests/plugin/bench_toy_plugin: prior_knn.py; toy_coco.py + toy_coco.json), declared in its dist-info."""

import pytest
import json
from pathlib import Path

from tests.conftest import bench_cli



def _plugin_bench(*args: str, cwd: Path):
    return bench_cli(*args, cwd=cwd, plugin=True)


@pytest.mark.slow
def test_a_method_and_a_dataset_from_another_package_run_end_to_end(tmp_path):
    assert "prior-knn" in _plugin_bench("ls", "methods", cwd=tmp_path).stdout.split()
    assert "toy-coco" in _plugin_bench("ls", "datasets", cwd=tmp_path).stdout.split()
    run = _plugin_bench("run", "--methods", "prior-knn,label-prior", "--dataset", "toy-coco", "--seeds", "0,1", "--executor", "serial",
                 "--no-progress", "--results", str(tmp_path / "results"), "--set", f'paths.cache="{tmp_path / "cache"}"', cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    records = {json.loads(p.read_text())["method"]["name"]: json.loads(p.read_text()) for p in (tmp_path / "results" / "runs").glob("*/result.json")}
    knn, prior = records["prior-knn"], records["label-prior"]
    assert knn["seed"] is None and knn["method"]["family"] == "Reference points" and knn["dataset"]["main_metric"] == "mAP"
    assert knn["dataset"]["class_keys"] == ["red", "green", "blue", "yellow"] and knn["training"]["fit_info"]["k"] == 5
    assert knn["metrics"]["test"]["mAP"] > prior["metrics"]["test"]["mAP"] + 0.1  # it looks at the images
    report = _plugin_bench("report", "--results", str(tmp_path / "results"), "--format", "md", "--bootstrap", "100",
                    "--ref", "prior-knn", "--test", "bootstrap", cwd=tmp_path)
    assert report.returncode == 0 and "| prior-knn |" in report.stdout and "toy-coco" in report.stdout
    assert "| prior-knn | 0.000 | 1 (deterministic) |" in report.stdout
    # toy-coco tests the main metric it declares, against the reference declared on the command line
    assert "p vs ref (mAP)" in report.stdout and "bootstrap of mAP" in report.stdout and "declared reference prior-knn" in report.stdout


def test_a_plugin_cannot_replace_a_built_in_method(tmp_path, monkeypatch):
    from importlib.metadata import EntryPoint, EntryPoints

    from bench import registry as registry_mod
    from bench.registry import MethodRegistry

    fake = EntryPoints([EntryPoint(name="dualcoop", value="somewhere:Else", group="bench.methods")])
    monkeypatch.setattr(registry_mod, "_installed_entry_points", lambda: fake)
    registry = MethodRegistry("method", {"dualcoop": "bench.methods.dualcoop:DualCoOp"}, group="bench.methods")
    assert registry.get("dualcoop").__name__ == "DualCoOp"
