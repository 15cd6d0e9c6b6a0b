"""A run's checkpoint: everything needed to continue training bit-identically after an epoch, as tensors and
plain data only, so it loads with ``weights_only=True`` (a checkpoint in a shared results folder cannot run code).
A checkpoint that cannot be read is moved aside and the run starts from scratch.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT = "checkpoint.pt"


def rng_state() -> dict[str, Any]:
    """Every generator's state as tensors and plain numbers only, so a checkpoint loads with ``weights_only=True``
    (no pickled objects: a checkpoint in a shared results folder cannot run code)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": python_gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (its tensors may have been mapped to a GPU by ``map_location``)."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].cpu().tolist()), py["gauss"]))


def checkpoint_bytes(method: Any) -> int:
    """About what a checkpoint needs on disk while it is replaced: the method's state and two optimizer moments per
    learnable value, twice (the new file is written beside the old one)."""
    state = sum(t.numel() * t.element_size() for t in method.state_dict().values() if isinstance(t, torch.Tensor))
    moments = 2 * sum(p.numel() * p.element_size() for p in method.learnable_parameters().values())
    return 2 * (state + moments) + (1 << 20)


CHECKPOINT_KEYS = frozenset({"epoch", "method", "optimizer", "scheduler", "scaler", "best", "history", "rng"})


def read_checkpoint(path: Path, name: str, log: Callable[[str], None], device: Any = "cpu") -> dict[str, Any] | None:
    """The run's checkpoint, read as tensors and plain data only (``weights_only=True``: a pickle that would run code
    is refused). One that cannot be read (truncated, damaged, hostile, of another layout) is moved aside to
    ``checkpoint.pt.corrupt-<unix time>`` with a message naming it, and the run starts from scratch (None)."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
        missing = CHECKPOINT_KEYS - set(ckpt) if isinstance(ckpt, dict) else CHECKPOINT_KEYS
        if missing:
            raise ValueError(f"not a bench checkpoint (lacks {sorted(missing)})")
    except Exception as err:  # UnpicklingError, RuntimeError (zip reader), EOFError, ValueError, ...
        moved = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        os.replace(path, moved)
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        log(f"{name}: checkpoint {path} cannot be read ({type(err).__name__}: {reason}); moved aside to "
                f"{moved.name}, training from scratch")
        return None
    return ckpt


def resume(
    ckpt: dict[str, Any], method: Any, optimizer: torch.optim.Optimizer, scheduler: Any,
    scaler: torch.amp.GradScaler, log: Callable[[str], None],
) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    """Restore the method, optimizer, scheduler, scaler and every random generator from the run's checkpoint;
    return (the epoch to continue from, the history so far, the best selection so far)."""
    method.load_state_dict(ckpt["method"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    log(f"resumed {method.name} from its checkpoint after epoch {ckpt['epoch']}")
    return ckpt["epoch"], ckpt["history"], ckpt["best"]


def checkpoint_state(
    next_epoch: int, method: Any, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: torch.amp.GradScaler,
    best: dict[str, Any], history: list[dict[str, Any]],
) -> dict[str, Any]:
    """Everything :func:`_resume` needs to continue bit-identically after an epoch."""
    return {
        "epoch": next_epoch,
        "method": method.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict(),
        "best": best,
        "history": history,
        "rng": rng_state(),
    }
