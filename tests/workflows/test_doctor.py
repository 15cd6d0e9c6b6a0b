"""`bench doctor`, `bench weights status|fetch` and `bench reproduce`: each gap found with the command that fixes
it, weights found where open_clip would load them (never downloaded by a status), the paper's plan with every run
counted once, and the whole reproduction end to end on the tiny CLIP with generated Intentonomy-, EmotionROI- and
FI-shaped roots."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.workflows import doctor  # noqa: E402
from bench.cli.app import app  # noqa: E402
from bench.config import load_config  # noqa: E402
from bench.workflows.weights import weights_status  # noqa: E402
from tests.backbones.test_backbones_openclip import REV, VIT, hub_cache, tiny_models  # noqa: E402,F401  (fixtures)
from tests.datasets.test_data_cache import make_emotionroi, make_fi  # noqa: E402

runner = CliRunner()


def _config(tmp_path: Path, text: str = "") -> Path:
    path = tmp_path / "bench.toml"
    path.write_text(f'[paths]\nresults = "{tmp_path / "results"}"\ncache = "{tmp_path / "cache"}"\nweights = "{tmp_path / "weights"}"\n' + text)
    return path


@pytest.fixture
def no_caches(tmp_path, monkeypatch):
    """Empty open_clip and Hugging Face caches (nothing on this machine)."""
    import huggingface_hub

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))


def test_weights_are_found_where_open_clip_would_load_them(tmp_path, no_caches, hub_cache, monkeypatch):
    from open_clip import pretrained

    cfg = load_config(_config(tmp_path), {})
    tiny = weights_status(cfg, "tiny-clip")
    assert tiny.present and tiny.path.name == "bench-tiny-clip.pt"
    rn101 = weights_status(cfg, "RN101")  # the openai tag: in no cache here
    assert not rn101.present and rn101.detail == "open_clip tag 'openai' is not cached on this machine"
    assert rn101.fix == f"bench weights fetch RN101 (online), or put the checkpoint at {tmp_path / 'weights' / 'RN101.pt'}"
    (tmp_path / "weights").mkdir()
    torch.save({}, tmp_path / "weights" / "RN101.pt")
    assert weights_status(cfg, "RN101").detail == f"local: {tmp_path / 'weights' / 'RN101.pt'}"
    # a tag whose weights sit in the Hugging Face cache, as open_clip would read them
    monkeypatch.setitem(pretrained._PRETRAINED, VIT, {"fake_tag": {"hf_hub": "bench-test/tiny-vit/"}})
    cfg = load_config(_config(tmp_path, f'[backbones.{VIT}]\npretrained = "fake-tag"\n'), {})
    state = weights_status(cfg, VIT)
    expected = hub_cache / "models--bench-test--tiny-vit" / "snapshots" / REV / "open_clip_model.safetensors"
    assert state.present and state.path == expected
    hub = weights_status(cfg, "hf-hub:bench-test/tiny-rn")
    assert hub.present and hub.path.name == "open_clip_pytorch_model.bin"


def test_weights_cli_lists_and_refuses_to_download_offline(tmp_path, no_caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = _config(tmp_path, '[leaderboard]\nbackbone = "RN101"\n')
    res = runner.invoke(app, ["weights", "status", "--config", str(config)])
    assert res.exit_code == 1
    assert "tiny-clip" in res.output and "RN101" in res.output and "bench weights fetch RN101" in res.output.replace("\n", " ")
    res = runner.invoke(app, ["weights", "fetch", "RN101", "--config", str(config)])
    assert res.exit_code == 1 and "offline (HF_HUB_OFFLINE=1): cannot download 'openai'" in str(res.exception)
    res = runner.invoke(app, ["weights", "fetch", "tiny-clip", "--config", str(config)])
    assert res.exit_code == 0 and "bench-tiny-clip.pt" in res.output


def _by_item(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {c.item: c for c in checks}


def test_doctor_names_each_gap_and_its_fix(tmp_path, no_caches, monkeypatch):
    roi = make_emotionroi(tmp_path / "roi", n_train=10, n_test=2)
    config = _config(tmp_path, f'[suite]\ndatasets = ["intentonomy", "emotionroi"]\nexecutor = "serial"\n'
                               f'[paths.data]\nemotionroi = "{roi}"\n')
    checks = _by_item(doctor.run_checks(load_config(config, {})))
    assert checks["intentonomy"].status == "missing" and checks["intentonomy"].detail == "dataset 'intentonomy' not found: no data root is configured."
    assert checks["intentonomy"].fix.startswith("bench data download --dataset intentonomy --root /data/intentonomy")
    assert checks["emotionroi annotations"].status == "ok" and "train 54, val 6, test 12" in checks["emotionroi annotations"].detail
    assert (checks["emotionroi images"].status, checks["emotionroi images"].fix) == ("missing", "bench data verify --dataset emotionroi")
    assert checks["tiny-clip"].status == "ok" and checks["executor"].detail == "serial executor: no cluster needed"
    assert checks["cpu"].status == ("ok" if torch.cuda.is_available() else "warn") or "cuda:0" in checks
    res = runner.invoke(app, ["data", "verify", "--dataset", "emotionroi", "--config", str(config), "--no-progress"])
    assert res.exit_code == 0, res.output
    checks = _by_item(doctor.run_checks(load_config(config, {})))
    assert checks["emotionroi images"].status == "ok" and checks["emotionroi images"].detail.startswith("every image decodes")
    # a test image lost after verify: the (re)verified manifest holds it as missing, which blocks runs
    (roi / "images" / "joy" / "12.jpg").unlink()
    runner.invoke(app, ["data", "verify", "--dataset", "emotionroi", "--config", str(config), "--no-progress"])
    check = _by_item(doctor.run_checks(load_config(config, {})))["emotionroi images"]
    assert (check.status, check.detail.split(" (")[0]) == ("missing", "missing/corrupt: test 1")
    # disk: a cache disk with 10 bytes free cannot hold the decoded images
    monkeypatch.setattr("bench.io.free_bytes", lambda folder: 10)
    disk = [c for c in doctor.run_checks(load_config(config, {})) if c.area == "disk"]
    assert [c.status for c in disk] == ["missing", "missing"] and "0.0 GiB free" in disk[0].detail


def test_doctor_checks_devices_and_the_cluster_request(tmp_path, no_caches):
    config = _config(tmp_path, '[suite]\nmethods = ["dualcoop"]\nexecutor = "ray"\n[engine]\ndevice = "cuda"\n'
                               '[ray]\nnum_cpus = 2\nnum_gpus = 0\n[ray.resources.dualcoop]\ncpu = 1\ngpu = 1\n')
    checks = _by_item(doctor.run_checks(load_config(config, {})))
    if not torch.cuda.is_available():
        assert checks["cuda"].status == "missing" and "torch sees no CUDA device" in checks["cuda"].detail
    assert checks["cluster"].detail == "embedded cluster on this machine (2 CPUs, 0 GPUs)"
    assert checks["dualcoop"].status == "missing" and checks["dualcoop"].detail == "asks for 1 CPU, 1 GPU per trial; no node has that"
    res = runner.invoke(app, ["doctor", "--config", str(config)])
    assert res.exit_code == 1 and "missing" in res.output


def test_the_paper_plan_counts_every_run_once(tmp_path, no_caches):
    from bench.workflows.reproduce import INTCLIP_ECCV2024, make_plan

    plan = make_plan(None, INTCLIP_ECCV2024, None, "paper", {"paths.results": str(tmp_path / "results")})
    # Table 1: 3 deterministic + 7 x 3 seeds on RN101 (HLEG, LabCR, PIP-Net among them), zero-shot + 3 IntCLIP on
    # ViT-B/32; Tables 2-5: 3 + 1 + 4 + 1
    # configs x 3 seeds (IntCLIP and the consolidated names shared; single-none is no-sie-sa's config and fusion-add
    # no-sa's: one experiment, one run); Table 6a: (2 + 3) x 2 datasets; Table 6b: HLEG and HLEG + HCI x 3 on ViT-B/32
    assert plan.runs == 24 + 4 + 3 * (3 + 1 + 4 + 1) + 10 + 6 == 71
    shared = {(r.table, r.method): r.shared for r in plan.rows if r.shared}
    assert shared == {("2", "intclip"): "1", ("3", "intclip"): "1", ("3", "intclip:consolidated"): "2", ("4", "intclip"): "1",
                      ("4", "intclip:single-none"): "2", ("5", "intclip"): "1", ("5", "intclip:fusion-add"): "2", ("6b", "intclip"): "1"}
    row = next(r for r in plan.rows if (r.table, r.backbone, r.method) == ("1", "RN101", "intclip"))
    # no bench.toml: the methods' own settings (50 epochs), not the embedded default's cut for 2 cores
    assert row.epochs == 50 and row.hours == pytest.approx(3 * (50 * (12740 / 770 + 498 / 2780) + 1217 / 2780) / 3600)
    res = runner.invoke(app, ["reproduce", "intclip-eccv2024", "--dry-run", "--tables", "1,7", "--results", str(tmp_path / "r")])
    assert res.exit_code == 1 and "--tables 7: intclip-eccv2024 has tables 1, 2, 3, 4, 5, 6a, 6b" in str(res.exception)


@pytest.mark.slow
def test_reproduce_end_to_end_on_the_tiny_clip(tmp_path, no_caches):
    """`--scale tiny --tables 2,6a` on generated roots: the doctor passes, every planned run runs once, the page and
    the LaTeX hold the reproduced tables beside the paper's rows, and a rerun trains nothing."""
    from tests.datasets.test_datasets_real import SHARED, build_root

    if not (SHARED / "intentonomy_val2020.json").is_file():
        pytest.skip("real Intentonomy annotations not found")
    intentonomy = build_root(tmp_path / "intentonomy", n_train=24, keep=24)
    roi, fi = make_emotionroi(tmp_path / "roi", n_train=6, n_test=3), make_fi(tmp_path / "fi", per_class=20)
    sets = [f"paths.data.{name}=\"{root}\"" for name, root in (("intentonomy", intentonomy), ("emotionroi", roi), ("fi", fi))]
    sets.append("engine.progress=false")
    args = ["reproduce", "intclip-eccv2024", "--scale", "tiny", "--tables", "2,6a", "--executor", "serial", "--bootstrap", "0",
            "--results", str(tmp_path / "results"), "--config", str(_config(tmp_path))]
    for s in sets:
        args += ["--set", s]
    for name in ("intentonomy", "emotionroi", "fi"):
        res = runner.invoke(app, ["data", "verify", "--dataset", name, "--config", str(_config(tmp_path)), "--no-progress",
                                  "--set", next(s for s in sets if name in s)])
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output + str(res.exception)
    runs = list((tmp_path / "results" / "runs").iterdir())
    # Table 2: IntCLIP and 3 variants on Intentonomy; 6a: zero-shot and the probe once, IntCLIP, on 2 datasets
    assert len(runs) == 4 + 2 * 3
    page = (tmp_path / "results" / "reproduce" / "intclip-eccv2024.html").read_text()
    assert "Component ablation (the paper&#39;s Table 2)" in page and "Image emotion recognition accuracy" in page
    assert "IntCLIP (R101)" in page and "(paper)" in page  # the paper's rows beside the reproduced ones
    tex = (tmp_path / "results" / "reproduce" / "intclip-eccv2024.tex").read_text()
    assert "w/o SA" in tex and "Full IntCLIP" in tex
    if shutil.which("pdflatex"):
        assert (tmp_path / "results" / "reproduce" / "intclip-eccv2024.pdf").stat().st_size > 1000
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and len(list((tmp_path / "results" / "runs").iterdir())) == len(runs)
    assert all(json.loads((r / "result.json").read_text())["protocol"]["name"] == "val-threshold" for r in runs)
