"""CLIP backbones from open_clip: which weights, how they load, and how images are normalised.

Weights resolve in this order: the ``pretrained`` value from bench.toml (``[backbones.<name>]``) or the spec's
default, where the value is ``"none"`` (random init, for tests), a ``local-dir:`` folder in open_clip's format, a
checkpoint file path, or an open_clip pretrained tag; for a tag, a file ``<paths.weights>/<name>.pt`` wins over
the open_clip/Hugging Face cache. A tag that is not cached fails fast with ``HF_HUB_OFFLINE=1`` and the error says
where to put the file.

Beyond the registered names (:data:`bench.registry.BACKBONES`), any open_clip model name (``open_clip.list_models()``,
configs added with ``open_clip.add_model_config`` included) and any ``hf-hub:org/name`` repo is a backbone
(:func:`resolve_spec`): a model name's default weights are its ``openai`` tag where open_clip has one (else the
config must name them), a hub repo's are the repo's own. Every record stores the model name, the weights value and
the sha256 of the file open_clip loaded (a checkpoint, the cached file of a tag, the hub repo's weights file).
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

from bench.errors import ConfigError, WeightsNotFoundError
from bench.io import sha256_file
from bench.backbones.openclip import (
    QUICKGELU_SUFFIX,
    hub_repo,
    hub_weights_file,
    is_hub,
    model_config,
    quickgelu_sibling,
    tag_is_quickgelu,
    tag_weights_file,
    tags,
    towers,
)

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
    # an open_clip model with a "<model>-quickgelu" sibling config: that one exactly when the weights are a tag that
    # open_clip says was trained with QuickGELU (e.g. "openai"); files and random init use the model's own config
    quickgelu_by_tag: bool = False


TINY_CLIP = BackboneSpec("tiny-clip", "bench-tiny-clip", "package:bench-tiny-clip.pt", setup="bench.backbones.tiny_clip:register")
RN50 = BackboneSpec("RN50", "RN50", "openai", openai=True)
RN101 = BackboneSpec("RN101", "RN101", "openai", openai=True)
VIT_B_32 = BackboneSpec("ViT-B-32", "ViT-B-32", "openai", openai=True)


def resolve_spec(name: str) -> BackboneSpec | None:
    """The spec of a backbone that is not registered: an open_clip model name or ``hf-hub:org/name``; None when
    ``name`` is neither (the registry then fails with close matches)."""
    if is_hub(name):
        parts = hub_repo(name).split("/")
        return BackboneSpec(name, name, name) if len(parts) == 2 and all(parts) else None
    import open_clip

    if name not in open_clip.list_models():
        return None
    default = "openai" if "openai" in tags(name) else ""
    return BackboneSpec(name, name, default, quickgelu_by_tag=quickgelu_sibling(name))


def _is_tag(value: str) -> bool:
    return value not in ("", "none") and not value.startswith((PACKAGE_PREFIX, "local-dir:")) and not is_hub(value) \
        and not _names_a_file(value)


def weights_problem(spec: BackboneSpec, pretrained: str | None) -> str | None:
    """Why ``pretrained`` (or the spec's default) cannot give ``spec`` weights, or None: no default and nothing set
    (never silently random), an open_clip tag on a hub repo, or a hub repo as the weights of a model name."""
    value = pretrained or spec.default_pretrained
    fix = f"pass --pretrained TAG|PATH|local-dir:DIR|none or set backbones.{spec.name}.pretrained in bench.toml"
    if not value:
        known = tags(spec.model_name)
        listed = f"its open_clip tags: {', '.join(known)}" if known else "open_clip has no pretrained tag for it"
        return f"backbone {spec.name!r} has no default weights (no 'openai' tag; {listed}): {fix}"
    if is_hub(spec.model_name) and (_is_tag(value) or (is_hub(value) and value != spec.model_name)):
        return (f"backbone {spec.name!r} takes its weights from its hub repo, not {value!r}: a checkpoint file, "
                "local-dir:DIR or none can replace them")
    if is_hub(value) and not is_hub(spec.model_name):
        return f"{value!r} names a hub repo: pass it as the backbone (--backbone {value}), its config and weights come together"
    return None


def spec_towers(spec: BackboneSpec) -> tuple[str, str]:
    """(image tower, text tower) of a backbone from its open_clip config, no weights loaded."""
    run_setup(spec)
    return towers(model_config(spec.model_name))


def architecture(spec: BackboneSpec, pretrained: str | None) -> str:
    """The open_clip model config a backbone is built from. A backbone named after an OpenAI CLIP model is OpenAI's
    architecture, QuickGELU (x sigmoid(1.702 x)) included, for random, file and OpenAI/YFCC/CC12M-tag weights
    alike; only an open_clip tag whose weights were trained with nn.GELU (LAION, DataComp, ...) uses open_clip's
    GELU config, as those weights need. Other backbones use their own config."""
    import open_clip

    value = pretrained or spec.default_pretrained
    if spec.quickgelu_by_tag:
        return spec.model_name + QUICKGELU_SUFFIX if _is_tag(value) and tag_is_quickgelu(spec.model_name, value) else spec.model_name
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
    if is_hub(value):
        return f"hub:{hub_repo(value)}"
    if local is None:
        return f"tag:{value}"
    return f"sha256:{_folder_sha256(local) if local.is_dir() else _sha256(local)}"


def _package_file(name: str) -> Path:
    return Path(__file__).resolve().parents[1] / "assets" / name


def run_setup(spec: BackboneSpec) -> None:
    """Run the spec's ``setup`` hook (``"module:function"``, e.g. registering the tiny CLIP's open_clip config), so
    open_clip knows the model before anything reads its config."""
    if spec.setup:
        module, _, func = spec.setup.partition(":")
        getattr(importlib.import_module(module), func)()


def resolve_pretrained(spec: BackboneSpec, pretrained: str | None, weights_dir: Path | None) -> tuple[str, Path | None]:
    """Return (the weights value recorded in results, a local file/folder to load or None for a tag or hub repo)."""
    problem = weights_problem(spec, pretrained)
    if problem:
        raise ConfigError(problem)
    value = pretrained or spec.default_pretrained
    if value == "none" or is_hub(value):
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


def _create(spec: BackboneSpec, arch: str, value: str, local: Path | None, device: str) -> tuple[torch.nn.Module, str | None]:
    """The open_clip model through open_clip's factory, and the sha256 of the weights file it loaded (None for
    random init and ``local-dir:`` folders)."""
    import open_clip

    if value == "none":
        logging.disable(logging.WARNING)  # open_clip warns that random init is random: asked for here
        try:
            return open_clip.create_model(arch, pretrained=None, load_weights=False, device=device), None
        finally:
            logging.disable(logging.NOTSET)
    if value.startswith("local-dir:"):
        return open_clip.create_model(f"local-dir:{local}", device=device), None
    if local is not None and is_hub(arch):  # a checkpoint file on a hub repo's architecture
        model = open_clip.create_model(arch, load_weights=False, device=device)
        open_clip.load_checkpoint(model, str(local))
        return model, _sha256(local)
    if local is not None:
        return open_clip.create_model(arch, pretrained=str(local), device=device), _sha256(local)
    if is_hub(value):
        model = open_clip.create_model(value, device=device, require_pretrained=True)
        return model, _sha256(hub_weights_file(hub_repo(value)))
    model = open_clip.create_model(arch, pretrained=value, device=device, require_pretrained=True)
    try:  # the tag's file, now in the open_clip / Hugging Face cache: found again without a download
        return model, _sha256(tag_weights_file(arch, value))
    except Exception as err:  # noqa: BLE001  # the weights did load; only their hash is unknown
        logging.getLogger(__name__).warning("%s: could not hash the weights of tag %r: %s", spec.name, value, err)
        return model, None


def _load_error(spec: BackboneSpec, value: str, weights_dir: Path | None, err: Exception) -> WeightsNotFoundError:
    why = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
    if is_hub(spec.model_name):
        return WeightsNotFoundError(
            f"{spec.name}: could not load weights {value!r} ({why}). The repo must be in the Hugging Face cache "
            f"(HF_HUB_OFFLINE=1 reads only the cache), or set backbones.\"{spec.name}\".pretrained in bench.toml to a "
            "checkpoint path or \"none\" for random weights"
        )
    where = f"{weights_dir / (spec.name + '.pt')}" if weights_dir else f"<paths.weights>/{spec.name}.pt"
    return WeightsNotFoundError(
        f"{spec.name}: could not load weights {value!r} ({why}). "
        f"Put the checkpoint at {where}, or set backbones.{spec.name}.pretrained in bench.toml to a checkpoint "
        "path, a cached open_clip tag, or \"none\" for random weights"
    )


def load_backbone(
    spec: BackboneSpec, pretrained: str | None = None, weights_dir: Path | None = None, device: str = "cpu"
) -> Backbone:
    """Build the open_clip model for ``spec`` with the resolved weights, in eval mode on ``device``."""
    import open_clip

    run_setup(spec)
    value, local = resolve_pretrained(spec, pretrained, weights_dir)
    arch = architecture(spec, value)
    try:
        model, sha = _create(spec, arch, value, local, device)
    except WeightsNotFoundError:
        raise
    except Exception as err:  # open_clip/HF raise many types for a missing or offline download
        raise _load_error(spec, value, weights_dir, err) from err
    model.eval()
    tokenizer = open_clip.get_tokenizer(spec.model_name if not value.startswith("local-dir:") else f"local-dir:{local}")
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    pre = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = tuple(pre.get("mean", OPENAI_MEAN))
    std = tuple(pre.get("std", OPENAI_STD))
    file = local is not None and not value.startswith("local-dir:")
    ident = "none" if value == "none" else f"sha256:{sha}" if file else weights_identity(spec, pretrained, weights_dir)
    built = f"local-dir:{local}" if value.startswith("local-dir:") else arch
    return Backbone(spec, model, tokenizer, value, sha, size, ident, built, activation(model), mean, std)  # type: ignore[arg-type]


def backbone_rows(backbones: Any, methods: Any, pattern: str = "*") -> list[dict[str, Any]]:
    """What ``bench ls backbones`` shows: the registered backbones, then every other open_clip model, whose name
    matches ``pattern``: towers, pretrained tags (the default first) and the methods (registry base names) that
    can run on it. ``backbones`` and ``methods`` are the registries (passed in: this module never imports them)."""
    import fnmatch

    import open_clip

    from bench.backbones.openclip import unsupported

    classes = {name: methods.get(name) for name in methods.names()}
    registered = backbones.names()
    specs = [backbones.get(n) for n in registered]
    for spec in specs:
        run_setup(spec)  # a registered backbone's own open_clip config (tiny-clip's) is listed once, under its name
    taken = set(registered) | {spec.model_name for spec in specs}
    specs += [resolve_spec(n) for n in open_clip.list_models() if n not in taken]
    rows = []
    for spec in specs:
        if spec is None or not fnmatch.fnmatchcase(spec.name, pattern):
            continue
        image, text = spec_towers(spec)
        known = tags(spec.model_name)
        default = [spec.default_pretrained] if spec.default_pretrained else []
        runs = [
            name for name, cls in classes.items()
            if any(fnmatch.fnmatchcase(spec.name, p) for p in cls.supported_backbones) and unsupported(cls, image, text) is None
        ]
        rows.append({"name": spec.name, "registered": spec.name in registered, "image_tower": image, "text_tower": text,
                     "default": spec.default_pretrained or None, "tags": default + [t for t in known if t not in default],
                     "methods": runs})
    return rows
