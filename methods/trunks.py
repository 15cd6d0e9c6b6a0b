"""CNN trunks for methods that read a ResNet feature map (Query2Label): a copy of a CLIP ModifiedResNet's stem and
stages, or timm's ResNet with ImageNet weights, and torchvision's frozen BatchNorm as the official code builds it.

A trunk is ``stem -> layer1..layer4`` and returns the last feature map; which stages train is the method's choice.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from bench.errors import WeightsNotFoundError
from bench.io import sha256_file


# -- the trunks ------------------------------------------------------------------------------------------------------
class ResNetTrunk(nn.Module):
    """stem -> layer1..layer4: the final feature map ``[B, C, H/32, W/32]``."""

    def __init__(self, stem: nn.Module, layers: list[nn.Module]) -> None:
        super().__init__()
        self.stem = stem
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        convs = [m for m in self.layer4.modules() if isinstance(m, nn.Conv2d)]
        self.num_channels = convs[-1].out_channels  # every block ends at the layer's output width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))


def clip_trunk(visual: nn.Module) -> ResNetTrunk:
    """A copy of a CLIP ModifiedResNet's stem (3 convs + avgpool) and layer1..layer4."""
    if not all(hasattr(visual, n) for n in ("conv3", "layer4", "attnpool")):
        raise ValueError(
            f"query2label: trunk='clip' needs a CLIP ModifiedResNet (RN50, RN101, tiny-clip), got {type(visual).__name__}; "
            "use trunk='timm'"
        )
    stem_names = ("conv1", "bn1", "act1", "conv2", "bn2", "act2", "conv3", "bn3", "act3", "avgpool")
    stem = nn.Sequential(*(copy.deepcopy(getattr(visual, n)) for n in stem_names))
    layers = [copy.deepcopy(getattr(visual, f"layer{i}")) for i in range(1, 5)]
    return ResNetTrunk(stem, layers).float()


def load_resnet_checkpoint(model: nn.Module, path: Path, name: str) -> str:
    """Load a local ResNet state dict (timm or torchvision key names; fc ignored) into ``model``; return its sha256."""
    if not path.is_file():
        raise WeightsNotFoundError(f"query2label: timm_checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsNotFoundError(
            f"query2label: {path} does not fit timm model {name!r}: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    return sha256_file(path)


def timm_trunk(name: str, pretrained: bool = True, checkpoint: str | None = None) -> tuple[ResNetTrunk, str]:
    """timm's ResNet ``name`` as a trunk, and a description of the weights it got.

    Weights: ``checkpoint`` (a local file) if set, else timm's pretrained weights from the Hugging Face cache
    if ``pretrained``, else random. A missing download fails at once (under ``HF_HUB_OFFLINE=1``) with a
    :class:`WeightsNotFoundError` that says how to provide the file."""
    import timm

    if not timm.is_model(name):
        raise ValueError(f"query2label: unknown timm model {name!r}")
    if checkpoint:
        model = timm.create_model(name, pretrained=False, num_classes=0)
        path = Path(checkpoint).expanduser()
        weights = f"file:{path}:sha256={load_resnet_checkpoint(model, path, name)}"
    elif pretrained:
        try:
            model = timm.create_model(name, pretrained=True, num_classes=0)
        except Exception as err:  # HF hub/offline errors come in many types
            raise WeightsNotFoundError(
                f"query2label: could not load the pretrained weights of timm model {name!r} "
                f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}). Fetch them once with "
                f"network access (python -c \"import timm; timm.create_model('{name}', pretrained=True)\" fills the "
                "Hugging Face cache), or set methods.query2label.timm_checkpoint in bench.toml to a local ResNet "
                "state dict (.pth/.safetensors; torchvision's resnet101-63fe2227.pth works), or "
                "timm_pretrained = false for random weights"
            ) from err
        weights = f"timm:{name}"
    else:
        model = timm.create_model(name, pretrained=False, num_classes=0)
        weights = "random"
    stem = nn.Sequential(model.conv1, model.bn1, model.act1, model.maxpool)
    return ResNetTrunk(stem, [model.layer1, model.layer2, model.layer3, model.layer4]), weights


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` by torchvision's ``FrozenBatchNorm2d`` (scale, shift and statistics become
    buffers), as the official code builds its ResNet."""
    from torchvision.ops import FrozenBatchNorm2d

    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        with torch.no_grad():
            if module.affine:
                frozen.weight.copy_(module.weight)
                frozen.bias.copy_(module.bias)
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = freeze_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module
