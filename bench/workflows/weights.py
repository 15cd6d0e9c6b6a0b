"""``bench weights status|fetch``: whether each backbone's weights are on this machine, and getting them.

Status never touches the network: a checkpoint file, ``local-dir:`` folder or the shipped tiny CLIP is present or
not; an open_clip tag is present when ``<paths.weights>/<name>.pt`` exists, or its file is in the Hugging Face cache
(``try_to_load_from_cache``) or open_clip's URL cache (``~/.cache/clip``); an ``hf-hub:`` repo when its config and
weights are in the Hugging Face cache. Fetch downloads through open_clip's own functions (the file ``create_model``
would load) and refuses, with the manual route, when ``HF_HUB_OFFLINE`` is set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bench.config import BenchConfig
from bench.errors import BenchError, WeightsNotFoundError

HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass
class WeightsState:
    backbone: str
    pretrained: str
    present: bool
    detail: str
    fix: str = ""
    path: Path | None = None


def _hub_cached(repo: str, filename: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename)
    return Path(found) if isinstance(found, str) else None


def cached_tag_file(model_name: str, tag: str) -> Path | None:
    """The cached file open_clip would load for ``model_name`` + ``tag``, without any download; None if absent."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, tag) or {}
    if "file" in cfg:
        return Path(cfg["file"]) if Path(cfg["file"]).is_file() else None
    hub = cfg.get("hf_hub", "")
    if hub:
        repo, filename = os.path.split(hub)
        for name in (filename,) if filename else HUB_WEIGHTS:
            found = _hub_cached(repo, name)
            if found is not None:
                return found
    url = cfg.get("url", "")
    if url:
        path = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if path.is_file():
            return path
    return None


def _tag_fix(spec, value: str, weights_dir: Path | None) -> str:
    where = (weights_dir or Path("<paths.weights>")) / f"{spec.name}.pt"
    return f"bench weights fetch {spec.name} (online), or put the checkpoint at {where}"


def weights_status(cfg: BenchConfig, backbone: str) -> WeightsState:
    """Where ``backbone``'s configured weights are (or what to run or download to get them)."""
    from bench.backbones.loader import resolve_pretrained
    from bench.backbones.openclip import hub_repo, is_hub
    from bench.registry import BACKBONES

    spec = BACKBONES.get(backbone)
    pretrained = cfg.backbone_pretrained(backbone)
    value = pretrained or spec.default_pretrained
    try:
        value, local = resolve_pretrained(spec, pretrained, cfg.paths.weights)
    except BenchError as err:
        return WeightsState(backbone, str(value), False, str(err).splitlines()[0],
                            fix=f"set backbones.{backbone}.pretrained in bench.toml (or --pretrained) to a file that exists")
    if value == "none":
        return WeightsState(backbone, value, True, "random initialisation (pretrained = \"none\"): nothing to load")
    if local is not None:
        return WeightsState(backbone, value, True, f"local: {local}", path=local)
    if is_hub(value):
        repo = hub_repo(value)
        config = _hub_cached(repo, "open_clip_config.json")
        weights = next((p for p in (_hub_cached(repo, f) for f in HUB_WEIGHTS) if p is not None), None)
        if config is not None and weights is not None:
            return WeightsState(backbone, value, True, f"Hugging Face cache: {weights}", path=weights)
        return WeightsState(backbone, value, False, f"{repo} is not in the Hugging Face cache",
                            fix=f"bench weights fetch {backbone} (online), or copy the repo into HF_HUB_CACHE")
    path = cached_tag_file(spec.model_name, value)
    if path is not None:
        return WeightsState(backbone, value, True, f"open_clip cache: {path}", path=path)
    return WeightsState(backbone, value, False, f"open_clip tag {value!r} is not cached on this machine",
                        fix=_tag_fix(spec, value, cfg.paths.weights))


def fetch(cfg: BenchConfig, backbone: str) -> Path:
    """Download ``backbone``'s weights with open_clip's own functions and return the cached file; an offline
    machine (``HF_HUB_OFFLINE``) or a failed download is a :class:`WeightsNotFoundError` saying what to do."""
    from bench.backbones.loader import run_setup
    from bench.backbones.openclip import hub_repo, hub_weights_file, is_hub, model_config, tag_weights_file
    from bench.registry import BACKBONES

    state = weights_status(cfg, backbone)
    if state.present:
        return state.path or Path(state.detail)
    if state.fix.startswith("set backbones"):
        raise WeightsNotFoundError(f"{backbone}: {state.detail}; {state.fix}")
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise WeightsNotFoundError(
            f"{backbone}: offline (HF_HUB_OFFLINE={os.environ['HF_HUB_OFFLINE']}): cannot download {state.pretrained!r}; "
            f"unset HF_HUB_OFFLINE on a machine with network, or {state.fix.split(', or ', 1)[-1]}")
    spec = BACKBONES.get(backbone)
    run_setup(spec)
    try:
        if is_hub(state.pretrained):
            model_config(state.pretrained)  # the repo's config comes with it
            return hub_weights_file(hub_repo(state.pretrained))
        return tag_weights_file(spec.model_name, state.pretrained)
    except WeightsNotFoundError:
        raise
    except Exception as err:  # urllib / huggingface_hub raise many types for a failed download
        raise WeightsNotFoundError(f"{backbone}: download of {state.pretrained!r} failed ({type(err).__name__}: "
                                   f"{str(err).splitlines()[0][:200] if str(err) else ''}); {state.fix}") from err
