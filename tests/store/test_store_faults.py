"""The result store under faults and hostile input: damaged and tampered artifacts, planted pickles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bench.store import store
from bench.cli.app import app
from bench.store import collection
from tests.conftest import build_store, make_run

runner = CliRunner()


class _Planted:
    """A pickle that would create a file when unpickled: what a hostile file in a shared store could hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _store(tmp_path: Path) -> tuple[Path, list[Path]]:
    results = tmp_path / "results"
    quality = {"intclip": 0.6, "dualcoop": 0.5, "label-prior": 0.1}
    runs = build_store(results, quality, per_run=lambda m, s: {"quality": quality[m]})
    return results, list(runs.values())


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
    records, bad = collection.load_results(results)
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
    from bench.backbones.loader import TINY_CLIP, load_backbone
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


# -- locks: two writers on one store -----------------------------------------------------------------------------------
def _suite_in_a_process(config: str, queue) -> None:
    import os as _os

    from rich.console import Console

    from bench.config import load_config
    from bench.workflows.suite import run_suite

    _os.chdir(Path(config).parent)
    outcome = run_suite(load_config(config), Console(stderr=True, quiet=True))
    queue.put((sorted(outcome.completed), sorted(outcome.skipped), dict(outcome.failed)))


@pytest.mark.slow
def test_two_suites_on_one_store_train_each_run_exactly_once(write_config):
    """Was: both trained everything and overwrote each other's complete records."""
    import multiprocessing

    config = write_config(methods=("dualcoop", "linear-probe"), seeds=(0, 1, 2, 3, 4), epochs=12)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_suite_in_a_process, args=(str(config), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    (done_a, skip_a, fail_a), (done_b, skip_b, fail_b) = queue.get(timeout=600), queue.get(timeout=600)
    for p in procs:
        p.join(60)
    assert not fail_a and not fail_b
    assert not set(done_a) & set(done_b)  # nobody trained a run the other trained
    assert len(done_a) + len(done_b) == 6 and sorted(done_a + done_b) == sorted(skip_a + done_a) == sorted(skip_b + done_b)
    assert done_a and done_b  # the two suites split the work (each takes a run's lock just before the run)
    runs = store.runs_dir(config.parent / "results")
    assert not list(runs.glob("*/result.json.corrupt-*"))
    for run_id in done_a + done_b:  # each record was written once: by the suite that trained it
        assert store.run_status(runs / run_id)[0] == "complete"


def test_a_lock_left_by_a_killed_process_is_taken_over(write_config, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from rich.console import Console

    from bench.config import load_config
    from bench.pipeline.plan import plan_suite
    from bench.workflows.suite import run_suite

    config = write_config(methods=("label-prior",), seeds=(0,))
    os.chdir(config.parent)
    cfg = load_config(config)
    (plan,), _ = plan_suite(cfg)
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from bench.store import locks; import time; l = locks.try_lock({str(plan.run_dir)!r}); print(l is not None, flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "True"
        from bench.store import locks

        assert locks.try_lock(plan.run_dir) is None and f"pid {holder.pid}" in locks.owner(plan.run_dir)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        outcome = run_suite(cfg, Console(stderr=True, quiet=True))
        assert outcome.completed == [plan.run_id]
    finally:
        if holder.poll() is None:
            holder.kill()


def test_leaderboard_regenerations_take_turns(tmp_path):
    """Two regenerations at once each compared with the same previous record; now the second waits for the first
    and compares with what the first wrote."""
    import subprocess
    import sys
    import threading

    from rich.console import Console

    from bench.config import load_config
    from bench.workflows.leaderboard import run_leaderboard

    results = tmp_path / "results"
    make_run(results, "intclip", 0, dataset="synthetic", backbone="tiny-clip")
    site = tmp_path / "site"
    cfg = load_config(None, {"paths.results": str(results), "leaderboard.site": str(site), "leaderboard.bootstrap": 0,
                             "leaderboard.methods": ["intclip"]})
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from bench.store import locks; import sys; l = locks.try_lock({str(site / 'history')!r}); "
                               "print(l is not None, flush=True); sys.stdin.readline()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "True"
        done: list = []
        worker = threading.Thread(target=lambda: done.append(run_leaderboard(cfg, Console(quiet=True), run=False)))
        worker.start()
        worker.join(2.0)
        assert worker.is_alive() and not list((site / "history").glob("*.json"))  # waiting for the holder
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(10)
        worker.join(60)
        assert done and done[0].site.stamp
        second = run_leaderboard(cfg, Console(quiet=True), run=False)
        assert second.site.previous == done[0].site.stamp
    finally:
        if holder.poll() is None:
            holder.kill()


# -- full disks ------------------------------------------------------------------------------------------------------
class _Device:
    """Counts what atomic writes write; with a budget, fails with ENOSPC once it is spent (a disk filling up)."""

    def __init__(self, budget: int | None = None) -> None:
        self.written, self.budget = 0, budget

    def open(self, fd: int):
        import os as _os

        device, real = self, _os.fdopen(fd, "wb")

        class Handle:
            def write(self, data) -> int:
                n = memoryview(data).nbytes
                if device.budget is not None and device.written + n > device.budget:
                    import errno

                    raise OSError(errno.ENOSPC, "No space left on device")
                device.written += n
                return real.write(data)

            def __getattr__(self, name):
                return getattr(real, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                real.close()

        return Handle()


def _scores(results: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for run_dir in sorted(store.runs_dir(results).iterdir()):
        if (run_dir / store.RESULT).is_file():
            out[run_dir.name] = store.read_scores(run_dir)
    return out


@pytest.mark.slow
def test_a_disk_that_fills_mid_suite_then_frees_loses_nothing(write_config, monkeypatch):
    """Was: temp files left behind filled the disk for the next run, the error read "unexpected pos ...", and
    error.json could be left empty. Now: the failed runs say "No space left on device at <file>", nothing
    half-written is left or taken as valid, and the rerun completes to the same scores as a run on a roomy disk."""
    from rich.console import Console

    import bench.io
    from bench.config import load_config
    from bench.workflows.suite import run_suite

    config = write_config(methods=("dualcoop", "linear-probe"), seeds=(0, 1), epochs=3)
    monkeypatch.chdir(config.parent)
    quiet = Console(stderr=True, quiet=True)
    roomy = _Device()
    monkeypatch.setattr(bench.io, "_open_temp", roomy.open)
    reference_cfg = load_config(config, {"paths.results": str(config.parent / "reference")})
    assert run_suite(reference_cfg, quiet).ok
    reference = _scores(reference_cfg.paths.results)

    full = _Device(budget=roomy.written // 2)
    monkeypatch.setattr(bench.io, "_open_temp", full.open)
    cfg = load_config(config)
    first = run_suite(cfg, quiet)
    assert first.failed and all("No space left on device at " in m for m in first.failed.values()), first.failed
    assert not list(cfg.paths.results.rglob("*.tmp"))  # every failed write removed its temp file
    for run_dir in store.runs_dir(cfg.paths.results).iterdir():
        status, _ = store.run_status(run_dir)
        assert status in ("complete", "partial", "new")
        if (run_dir / "error.json").exists():
            json.loads((run_dir / "error.json").read_text())  # never a half-written error file

    monkeypatch.setattr(bench.io, "_open_temp", _Device().open)  # space freed
    second = run_suite(load_config(config), quiet)
    assert second.ok and sorted(second.completed) == sorted(first.failed)
    again = _scores(cfg.paths.results)
    assert again.keys() == reference.keys()
    for run_id, arrays in reference.items():
        for key, value in arrays.items():
            assert np.array_equal(again[run_id][key], value), (run_id, key)


def test_too_little_free_space_is_refused_before_training(write_config, monkeypatch):
    import shutil as _shutil
    from collections import namedtuple

    from rich.console import Console

    from bench.config import load_config
    from bench.workflows.suite import run_suite

    config = write_config(methods=("dualcoop",), seeds=(0,), epochs=2)
    monkeypatch.chdir(config.parent)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(_shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    outcome = run_suite(load_config(config), Console(stderr=True, quiet=True))
    (message,) = outcome.failed.values()
    assert "No space left on device at " in message and "checkpoint (written every epoch) needs about" in message


# -- orphaned trials -------------------------------------------------------------------------------------------------
def test_a_trial_whose_suite_is_gone_writes_nothing(write_config, monkeypatch):
    """Was: Ray trial workers outlived a kill -9 of the driver by ~20 s and could still write checkpoints and
    records. Now a trial asks, before every write, whether its suite still holds the run's lock."""
    import subprocess
    import sys

    from bench.store import locks
    from bench.config import load_config
    from bench.errors import OrphanedRunError
    from bench.pipeline.plan import plan_suite
    from bench.pipeline.runner import execute_run

    config = write_config(methods=("dualcoop",), seeds=(0,), epochs=2)
    monkeypatch.chdir(config.parent)
    cfg = load_config(config)
    (plan,), datasets = plan_suite(cfg)
    alive = lambda: locks.is_held(plan.run_dir)  # noqa: E731  (what the Ray trial passes)
    assert not alive()
    with pytest.raises(OrphanedRunError, match="the suite that started this run is gone"):
        execute_run(plan, datasets[plan.data], cfg, executor="ray", log=lambda *_: None, owner_alive=alive)
    assert not list(plan.run_dir.glob("checkpoint*")) and not (plan.run_dir / store.RESULT).exists()

    driver = subprocess.Popen(  # a live suite holding the lock: the same trial runs to its record
        [sys.executable, "-c", f"from bench.store import locks; import sys; l = locks.try_lock({str(plan.run_dir)!r}); "
                               "print(l is not None, flush=True); sys.stdin.readline()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert driver.stdout.readline().strip() == "True" and alive()
        execute_run(plan, datasets[plan.data], cfg, executor="ray", log=lambda *_: None, owner_alive=alive)
        assert store.run_status(plan.run_dir)[0] == "complete"
    finally:
        driver.kill()
        driver.wait(10)
    assert not alive()  # killed: the OS dropped its lock


def test_a_run_folder_with_a_comma_is_refused_not_mixed_into_run_id_lists(tmp_path):
    """Was: a comma in a run folder's name split its run-id list in the report (KeyError on a half id)."""
    results, (run_dir, *_) = _store(tmp_path)
    odd = run_dir.with_name(run_dir.name + ",x")
    run_dir.rename(odd)
    data = json.loads((odd / store.RESULT).read_text())
    data["run_id"] = odd.name
    (odd / store.RESULT).write_text(json.dumps(data))
    with pytest.raises(store.CorruptResultError, match="run_id"):
        store.read_result(odd)
    res = runner.invoke(app, ["report", "--results", str(results), "--format", "md", "--bootstrap", "20"])
    assert res.exit_code == 0 and "skipped corrupt result" in res.output
