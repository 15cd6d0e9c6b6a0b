"""Which device a run trains on, and where it ran.

The policy (``engine.device``):

- ``"cpu"``: the CPU, always; the only way to train on the CPU when a GPU is there.
- ``"auto"``: inside a Ray trial, CUDA exactly when Ray gave the trial a GPU (or a fraction of one) and the CPU when
  it gave none; outside Ray (the serial executor), CUDA when there is one.
- ``"cuda"`` / ``"cuda:<index>"`` / ``"mps"``: that device.

A run that should use CUDA (asked for it, or holds a Ray GPU) on a machine where torch sees none fails at once with
:class:`~bench.errors.DeviceUnavailableError` naming the node, the GPUs Ray assigned and what torch reports, instead
of training on the CPU without a word or failing later with an unrelated error.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

from bench.errors import DeviceUnavailableError


@dataclass
class Placement:
    """Where a run executes: the Ray node (``None`` outside Ray), the host, and the GPU ids Ray assigned (a Ray trial's
    placement is read by :func:`bench.ray.executor.trial_placement`, the one module that imports Ray)."""

    node_id: str | None = None
    hostname: str = field(default_factory=socket.gethostname)
    ray_gpu_ids: list[str] = field(default_factory=list)

    @property
    def in_ray(self) -> bool:
        return self.node_id is not None

    def describe(self) -> str:
        where = f"node {self.node_id[:12]} ({self.hostname})" if self.node_id else f"host {self.hostname}"
        return where + (f", Ray GPU ids {', '.join(self.ray_gpu_ids)}" if self.ray_gpu_ids else "")


def resolve_device(name: str, placement: Placement | None = None) -> Any:
    """The torch device of a run under the policy above; raises :class:`DeviceUnavailableError` when CUDA is required
    and missing."""
    import torch

    placement = placement or Placement()
    if name == "cpu":
        return torch.device("cpu")
    if name == "auto":
        if placement.in_ray:
            wants_cuda = bool(placement.ray_gpu_ids)
        else:
            wants_cuda = torch.cuda.is_available()
        name = "cuda" if wants_cuda else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        _require_cuda(device, placement, torch)
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailableError(f"engine.device = {name!r}, but MPS is not available on {placement.describe()}")
    return device


def _require_cuda(device: Any, placement: Placement, torch: Any) -> None:
    why = "Ray gave this trial a GPU" if placement.ray_gpu_ids else f"engine.device = {str(device)!r}"
    if not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"{why} on {placement.describe()}, but torch sees no CUDA device there (torch {torch.__version__}, "
            f"built with CUDA {torch.version.cuda or 'none'}, CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r}). Install a CUDA build of torch and the driver on "
            "that node, or set engine.device = \"cpu\" (and [ray.resources.<method>] gpu = 0) to train on the CPU"
        )
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceUnavailableError(
            f"engine.device = {str(device)!r} on {placement.describe()}, which has {torch.cuda.device_count()} visible "
            "CUDA device(s)"
        )


def accelerator_versions(device: Any) -> dict[str, Any]:
    """CUDA runtime, cuDNN and driver versions of a CUDA device (empty on the CPU)."""
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return {}
    out: dict[str, Any] = {"cuda_runtime": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    try:
        import pynvml  # shipped with torch's CUDA wheels as nvidia-ml-py

        pynvml.nvmlInit()
        out["driver"] = pynvml.nvmlSystemGetDriverVersion()
    except Exception:  # no NVML: the driver version stays unknown
        out["driver"] = None
    return out
