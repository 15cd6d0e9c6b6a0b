"""Pre-flight: what would make every trial fail, checked before anything is scheduled (no Ray, no trial, no write).

``bench run``, ``bench tune``, ``bench reproduce`` and :func:`bench.api.run` call :func:`ensure` with the runs they
are about to start. It reuses ``bench doctor``'s checks (:mod:`bench.workflows.doctor`, :mod:`bench.workflows.weights`)
and keeps only the fatal ones:

- each planned backbone's weights are on this machine (``weights_status``: a local file, the open_clip or Hugging
  Face cache); when they are not, the fix is ``bench weights fetch`` (and unsetting ``HF_HUB_OFFLINE`` when set);
- the device policy can be met: ``engine.device = "cuda"`` on an embedded run (no Ray address) where torch sees no
  CUDA device; on an existing cluster, the per-trial requests are checked by :func:`bench.ray.executor.preflight`;
- each file-based dataset's root and annotation files can be listed (``--data-root`` / ``[paths.data]``).

A failure is a :class:`PreflightError` (a :class:`bench.errors.BenchError`: the CLI exits 2 with its message, the
API raises it) with one line per problem, each ending in the command that fixes it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from bench.config import BenchConfig
from bench.errors import BenchError

OFFLINE_VALUES = ("1", "true", "yes", "on")


class PreflightError(BenchError):
    """One or more checks that would fail every affected trial; the message has one line per problem and its fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        head = f"pre-flight: {len(problems)} problem(s) before any run started:"
        super().__init__("\n".join([head, *(f"  {p}" for p in problems)]))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in OFFLINE_VALUES


def weights_problems(cfg: BenchConfig, backbones: Iterable[str]) -> list[str]:
    """One line per backbone whose configured weights are not on this machine (never touches the network)."""
    from bench.workflows.weights import weights_status

    problems = []
    for backbone in sorted(set(backbones)):
        state = weights_status(cfg, backbone)
        if state.present:
            continue
        fix = state.fix or f"bench weights fetch {backbone}"
        if _offline() and fix.startswith("bench weights fetch"):
            fix = f"HF_HUB_OFFLINE={os.environ['HF_HUB_OFFLINE']} is set: unset it and run {fix}"
        problems.append(f"weights {backbone} ({state.pretrained}): {state.detail}; fix: {fix}")
    return problems


def device_problems(cfg: BenchConfig, ray_address: str | None) -> list[str]:
    """CUDA asked (``engine.device``) where the runs would run on this machine and torch sees no CUDA device."""
    import torch

    wanted = cfg.engine.device
    remote = cfg.suite.executor == "ray" and (ray_address or os.environ.get("RAY_ADDRESS") or cfg.ray.address)
    if not wanted.startswith("cuda") or remote or torch.cuda.is_available():
        return []
    return [f"device: engine.device = {wanted!r} but torch sees no CUDA device on this machine; "
            f"fix: run on a GPU machine, or set engine.device = \"auto\" (--set engine.device='\"cpu\"')"]


def data_problems(cfg: BenchConfig, datasets: Iterable[str]) -> list[str]:
    """Each file-based dataset whose root or annotation files cannot be listed, or whose held-out images are
    missing per its manifest (``bench doctor``'s data checks; an unverified manifest is only a warning here: runs
    verify it)."""
    from bench.workflows import doctor

    scoped = cfg.model_copy(deep=True)
    scoped.suite.datasets = sorted(set(datasets))
    if not scoped.suite.datasets:
        return []
    return [f"data {c.item}: {c.detail}; fix: {c.fix}" for c in doctor.run_checks(scoped, connect=False)
            if c.area == "data" and c.status == "missing" and "not verified yet" not in c.detail]


def problems(cfg: BenchConfig, runs: Iterable[Any] | None = None, ray_address: str | None = None) -> list[str]:
    """Every fatal problem for ``runs`` (planned runs: ``.backbone``, ``.dataset``), or ``cfg``'s whole suite."""
    runs = list(runs) if runs is not None else None
    backbones = [r.backbone for r in runs] if runs is not None else [cfg.suite.backbone]
    datasets = [r.dataset for r in runs] if runs is not None else list(cfg.suite.datasets)
    if runs is not None and not runs:
        return []
    return weights_problems(cfg, backbones) + device_problems(cfg, ray_address) + data_problems(cfg, datasets)


def ensure(cfg: BenchConfig, runs: Iterable[Any] | None = None, ray_address: str | None = None) -> None:
    """Raise :class:`PreflightError` listing every problem :func:`problems` finds; return quietly otherwise."""
    found = problems(cfg, runs, ray_address)
    if found:
        raise PreflightError(found)
