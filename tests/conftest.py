"""Shared fixtures: a tiny suite config (small synthetic data, few epochs) and offline settings."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

TINY_TOML = """
[suite]
methods = {methods}
datasets = ["synthetic"]
backbone = "tiny-clip"
seeds = {seeds}
executor = "serial"

[paths]
results = "results"
cache = "{cache}"

[engine]
progress = false

[datasets.synthetic]
n_train = 96
n_val = 48
n_test = 48

[methods.dualcoop]
epochs = {epochs}
batch_size = 32

[methods.linear-probe]
c_grid = [0.01, 1.0, 100.0]
refine_steps = 1
"""


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One cache folder for the whole session, so the synthetic data renders once."""
    return tmp_path_factory.mktemp("bench-cache")


@pytest.fixture
def write_config(tmp_path: Path, shared_cache: Path):
    """Write a tiny bench.toml into tmp_path and return its path."""

    def write(methods=("zeroshot", "dualcoop"), seeds=(0,), epochs=2, extra: str = "") -> Path:
        text = TINY_TOML.format(
            methods=list(methods), seeds=list(seeds), epochs=epochs, cache=shared_cache.as_posix()
        ).replace("'", '"')
        path = tmp_path / "bench.toml"
        path.write_text(text + textwrap.dedent(extra))
        return path

    return write


@pytest.fixture(autouse=True)
def _trust_handpicked_metrics(request, monkeypatch):
    """storegen's ``make_run(test=..., val=...)`` writes metric values that its scores do not give, so a test can
    place the best and second best exactly; reports skip such records as tampered (``store.iter_checked``). Modules
    that build stores that way read them with the hash-only check; tests/test_hostile_records.py keeps the full one."""
    module = request.module
    if module.__name__.endswith("test_hostile_records") or "make_run" not in Path(module.__file__).read_text():
        return
    from bench.store import store

    monkeypatch.setattr(store, "RECOMPUTE_METRICS", False)
