"""CLIP backbones from open_clip: which weights, how they load, and how images are normalised.

Weights resolve in this order: the ``pretrained`` value from bench.toml (``[backbones.<name>]``) or the spec's
default, where the value is ``"none"`` (random init, for tests), a ``local-dir:`` folder in open_clip's format, a
checkpoint file path, or an open_clip pretrained tag; for a tag, a file ``<paths.weights>/<name>.pt`` wins over
the open_clip/Hugging Face cache. A tag that is not cached fails fast with ``HF_HUB_OFFLINE=1`` and the error says
where to put the file.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.errors import WeightsNotFoundError
from bench.io import sha256_file

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
PACKAGE_PREFIX = "package:"
WEIGHT_SUFFIXES = {".pt", ".pth", ".bin", ".safetensors"}


def _names_a_file(value: str) -> bool:
    """Whether a ``pretrained`` value is a checkpoint path (else an open_clip tag, ``none`` or a prefixed form)."""
    return Path(value).suffix in WEIGHT_SUFFIXES or "/" in value


@dataclass(frozen=True)
class BackboneSpec:
    """A named backbone: the open_clip model name, its default weights and an optional setup hook."""

    name: str
    model_name: str
    default_pretrained: str
    setup: str | None = None  # "module:function" run before create_model (e.g. registering a custom config)
    # named after an OpenAI CLIP model: OpenAI's architecture (QuickGELU) unless an open_clip tag's own training used
    # another (e.g. LAION weights, trained with nn.GELU)
    openai: bool = False


TINY_CLIP = BackboneSpec("tiny-clip", "bench-tiny-clip", "package:bench-tiny-clip.pt", setup="bench.tiny_clip:register")
RN50 = BackboneSpec("RN50", "RN50", "openai", openai=True)
RN101 = BackboneSpec("RN101", "RN101", "openai", openai=True)
VIT_B_32 = BackboneSpec("ViT-B-32", "ViT-B-32", "openai", openai=True)
QUICKGELU_SUFFIX = "-quickgelu"


def architecture(spec: BackboneSpec, pretrained: str | None) -> str:
    """The open_clip model config a backbone is built from. A backbone named after an OpenAI CLIP model is OpenAI's
    architecture, QuickGELU (x sigmoid(1.702 x)) included, for random, file and OpenAI/YFCC/CC12M-tag weights
    alike; only an open_clip tag whose weights were trained with nn.GELU (LAION, DataComp, ...) uses open_clip's
    GELU config, as those weights need. Other backbones use their own config."""
    import open_clip

    value = pretrained or spec.default_pretrained
    if not spec.openai or value.startswith("local-dir:"):
        return spec.model_name
    is_tag = value != "none" and not value.startswith(PACKAGE_PREFIX) and not _names_a_file(value)
    if is_tag and not (open_clip.get_pretrained_cfg(spec.model_name, value) or {}).get("quick_gelu", False):
        return spec.model_name
    return spec.model_name + QUICKGELU_SUFFIX


def activation(model: torch.nn.Module) -> str:
    """``quick_gelu`` or ``gelu``: the activation of the text tower's MLPs (what the architecture choice decides)."""
    from open_clip.transformer import QuickGELU

    return "quick_gelu" if any(isinstance(m, QuickGELU) for m in model.modules()) else "gelu"


@dataclass
class Backbone:
    """A loaded CLIP model with its tokenizer and provenance."""

    spec: BackboneSpec
    model: torch.nn.Module
    tokenizer: Any
    pretrained: str
    weights_sha256: str | None
    image_size: int
    weights_id: str = ""
    architecture: str = ""  # the open_clip model config built (e.g. "RN101-quickgelu")
    activation: str = ""  # "quick_gelu" or "gelu"
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    info: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """What result records store about the backbone."""
        return {
            "name": self.spec.name,
            "model_name": self.spec.model_name,
            "pretrained": self.pretrained,
            "weights_sha256": self.weights_sha256,
            "weights_id": self.weights_id,
            "architecture": self.architecture,
            "activation": self.activation,
            "image_size": self.image_size,
        }


def _sha256(path: Path) -> str:
    stat = path.stat()
    return _sha256_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:  # size and mtime: a replaced file is hashed again
    return sha256_file(path)


def _folder_sha256(folder: Path) -> str:
    """One hash over every file of a ``local-dir:`` folder (relative names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{_sha256(path)}\n".encode())
    return digest.hexdigest()


def weights_identity(spec: BackboneSpec, pretrained: str | None, weights_dir: Path | None) -> str:
    """What makes two runs' backbone weights the same, known before loading them: ``sha256:<hash>`` of a
    checkpoint file (or of a ``local-dir:`` folder's files), ``tag:<open_clip tag>`` for weights from the open_clip
    cache, or ``none`` for random init. It is part of every run id and of every table row's identity."""
    value, local = resolve_pretrained(spec, pretrained, weights_dir)
    if value == "none":
        return "none"
    if local is None:
        return f"tag:{value}"
    return f"sha256:{_folder_sha256(local) if local.is_dir() else _sha256(local)}"


def _package_file(name: str) -> Path:
    return Path(__file__).resolve().parent / "assets" / name


def _run_setup(spec: BackboneSpec) -> None:
    if spec.setup:
        module, _, func = spec.setup.partition(":")
        getattr(importlib.import_module(module), func)()


def resolve_pretrained(spec: BackboneSpec, pretrained: str | None, weights_dir: Path | None) -> tuple[str, Path | None]:
    """Return (the weights value recorded in results, a local file/folder to load or None for a tag)."""
    value = pretrained or spec.default_pretrained
    if value == "none":
        return value, None
    if value.startswith(PACKAGE_PREFIX):
        path = _package_file(value[len(PACKAGE_PREFIX):])
        if not path.is_file():
            raise WeightsNotFoundError(
                f"{spec.name}: the shipped weights {path} are missing; reinstall the package or rebuild them with "
                "`bench pretrain-tiny-clip`"
            )
        return value, path
    if value.startswith("local-dir:"):
        path = Path(value[len("local-dir:"):]).expanduser()
        if not path.is_dir():
            raise WeightsNotFoundError(f"{spec.name}: local-dir folder {path} does not exist")
        return value, path
    as_path = Path(value).expanduser()
    if _names_a_file(value):
        if not as_path.is_file():
            raise WeightsNotFoundError(
                f"{spec.name}: checkpoint {as_path} does not exist (set backbones.{spec.name}.pretrained in "
                "bench.toml to an existing file, an open_clip tag, or \"none\")"
            )
        return value, as_path
    if weights_dir is not None and (weights_dir / f"{spec.name}.pt").is_file():
        return value, weights_dir / f"{spec.name}.pt"
    return value, None


def load_backbone(
    spec: BackboneSpec, pretrained: str | None = None, weights_dir: Path | None = None, device: str = "cpu"
) -> Backbone:
    """Build the open_clip model for ``spec`` with the resolved weights, in eval mode on ``device``."""
    import open_clip

    _run_setup(spec)
    value, local = resolve_pretrained(spec, pretrained, weights_dir)
    arch = architecture(spec, value)
    sha = None
    try:
        if value == "none":
            logging.disable(logging.WARNING)  # open_clip warns that random init is random: asked for here
            try:
                model = open_clip.create_model(arch, pretrained=None, device=device)
            finally:
                logging.disable(logging.NOTSET)
        elif value.startswith("local-dir:"):
            model = open_clip.create_model(f"local-dir:{local}", device=device)
        elif local is not None:
            sha = _sha256(local)
            model = open_clip.create_model(arch, pretrained=str(local), device=device)
        else:
            model = open_clip.create_model(arch, pretrained=value, device=device, require_pretrained=True)
    except WeightsNotFoundError:
        raise
    except Exception as err:  # open_clip/HF raise many types for a missing or offline download
        where = f"{weights_dir / (spec.name + '.pt')}" if weights_dir else f"<paths.weights>/{spec.name}.pt"
        raise WeightsNotFoundError(
            f"{spec.name}: could not load weights {value!r} ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
            f"Put the checkpoint at {where}, or set backbones.{spec.name}.pretrained in bench.toml to a checkpoint "
            "path, a cached open_clip tag, or \"none\" for random weights"
        ) from err
    model.eval()
    tokenizer = open_clip.get_tokenizer(spec.model_name if not value.startswith("local-dir:") else f"local-dir:{local}")
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    pre = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = tuple(pre.get("mean", OPENAI_MEAN))
    std = tuple(pre.get("std", OPENAI_STD))
    ident = "none" if value == "none" else f"sha256:{sha}" if sha else weights_identity(spec, pretrained, weights_dir)
    built = f"local-dir:{local}" if value.startswith("local-dir:") else arch
    return Backbone(spec, model, tokenizer, value, sha, size, ident, built, activation(model), mean, std)  # type: ignore[arg-type]


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
