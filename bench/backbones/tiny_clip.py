"""A tiny CLIP that knows "sight": the embedded default backbone, pretrained by the project on synthetic scenes.

The architecture is an open_clip config (``assets/bench-tiny-clip.json``, model name ``bench-tiny-clip``): a
ModifiedResNet image tower shaped like RN50/RN101 (stem, layer1..layer4 with one bottleneck each, attnpool),
96 px input so layer4 gives a 3x3 map, and a 2-layer text transformer with the standard CLIP tokenizer (vocab
49408, context 77). The weights (``assets/bench-tiny-clip.pt``, an fp16 state dict) come from the pretraining
program :mod:`bench.tools.pretrain_tiny_clip` (``bench pretrain-tiny-clip``), which is off the run path: this module
only registers the config with open_clip and loads the shipped file through open_clip's own loading path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


MODEL_NAME = "bench-tiny-clip"
ASSETS = Path(__file__).resolve().parents[1] / "assets"
CONFIG_PATH = ASSETS / f"{MODEL_NAME}.json"
WEIGHTS_NAME = f"{MODEL_NAME}.pt"



def register() -> None:
    """Make ``bench-tiny-clip`` known to ``open_clip.create_model`` and ``get_tokenizer`` (idempotent)."""
    import open_clip

    if MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_PATH)


def weights_path() -> Path:
    """Where the shipped weights live (inside the installed package)."""
    return ASSETS / WEIGHTS_NAME


def _missing_weights(path: Path) -> Exception:
    from bench.errors import WeightsNotFoundError

    return WeightsNotFoundError(
        f"tiny CLIP weights not found at {path}: rebuild them with "
        f"`bench pretrain-tiny-clip --out {path}`, or reinstall the package"
    )


def load(device: str | torch.device = "cpu", path: str | Path | None = None) -> tuple[torch.nn.Module, Any]:
    """The pretrained tiny CLIP (fp32, eval mode) and its tokenizer, loaded through open_clip's own path."""
    import open_clip

    register()
    path = Path(path) if path is not None else weights_path()
    if not path.is_file():
        raise _missing_weights(path)
    model = open_clip.create_model(MODEL_NAME, pretrained=str(path), device=device)
    model.eval()
    return model, open_clip.get_tokenizer(MODEL_NAME)


# --------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------


def _mean_std(device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    mean = torch.tensor(OPENAI_DATASET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD, device=device).view(1, 3, 1, 1)
    return mean, std


def to_input(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> float ``[B, 3, H, W]`` normalised with CLIP's mean/std (the harness default)."""
    mean, std = _mean_std(device)
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    return ((x - mean) / std).contiguous()


def image_size(model: torch.nn.Module) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)
