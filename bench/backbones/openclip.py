"""open_clip models as the harness sees them: which image and text towers a model has (from its open_clip config, or
from the built model), which methods can read them, its pretrained tags, and the files open_clip loads weights from.

Tower kinds: the image tower is ``resnet`` (open_clip's ModifiedResNet: ``vision_cfg.layers`` is a list), ``vit``
(open_clip's own VisionTransformer pooled on its class token: no ``timm_model_name``, no attentional pooler) or
``other`` (timm trunks such as ConvNeXt or EVA, attentional or average pooling); the text tower is ``clip`` (the
``CLIP`` class's own causal transformer read at the EOT token, with CLIP's BPE tokenizer, whose EOT is the largest
token id) or ``other`` (Hugging Face text models and tokenizers, ``custom_text`` configs, CoCa, SigLIP-style
pooling). Methods declare what they read (``Method.image_towers``, ``Method.clip_text``); nothing here imports the
registry, so the planner, ``create_method`` and ``bench ls backbones`` all share one rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.errors import WeightsNotFoundError

HF_HUB = "hf-hub:"
QUICKGELU_SUFFIX = "-quickgelu"
IMAGE_TOWERS = {
    "resnet": "a ResNet image tower (open_clip ModifiedResNet)",
    "vit": "a ViT image tower (open_clip VisionTransformer, class-token pooling)",
    "other": "an image tower of another kind (timm trunk, attentional or average pooling)",
}
SHORT = {"resnet": "ResNet", "vit": "ViT", "other": "other", "clip": "CLIP"}
TEXT_TOWERS = {
    "clip": "CLIP's text transformer and tokenizer",
    "other": "a text tower other than CLIP's own transformer with CLIP's tokenizer",
}


def is_hub(name: str) -> bool:
    return name.startswith(HF_HUB)


def hub_repo(name: str) -> str:
    """``hf-hub:org/name`` -> ``org/name``."""
    return name[len(HF_HUB):]


def model_config(model_name: str) -> dict[str, Any]:
    """The open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``, ...) of a model name, an
    ``hf-hub:`` repo (its ``open_clip_config.json``, from the Hugging Face cache when ``HF_HUB_OFFLINE=1``) included."""
    import open_clip

    try:
        cfg = open_clip.get_model_config(model_name)
    except Exception as err:  # huggingface_hub raises many types for a repo that is not cached or does not exist
        raise WeightsNotFoundError(
            f"{model_name}: its open_clip_config.json is not in the Hugging Face cache and could not be downloaded "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}); check the repo name, or "
            "download it once online (HF_HOME / HF_HUB_CACHE say where the cache is)"
        ) from err
    if not cfg:
        raise WeightsNotFoundError(f"{model_name}: open_clip has no model config of that name")
    return cfg


def image_tower(cfg: dict[str, Any]) -> str:
    """``resnet``, ``vit`` or ``other`` for an open_clip model config."""
    vision = cfg.get("vision_cfg", {})
    if vision.get("timm_model_name"):
        return "other"
    if isinstance(vision.get("layers"), (list, tuple)):
        return "resnet"
    if vision.get("attentional_pool") or vision.get("pool_type", "tok") != "tok":
        return "other"
    return "vit"


def text_tower(cfg: dict[str, Any]) -> str:
    """``clip`` when the model is open_clip's ``CLIP`` class with its own causal text transformer read at the EOT
    token (argmax of CLIP's tokens) and projected, and CLIP's tokenizer; else ``other``."""
    text = cfg.get("text_cfg", {})
    if cfg.get("custom_text") or "multimodal_cfg" in cfg or text.get("hf_model_name") or text.get("hf_tokenizer_name"):
        return "other"
    if text.get("pool_type", "argmax") != "argmax" or text.get("no_causal_mask") or text.get("embed_cls"):
        return "other"
    return "other" if text.get("proj_type", "linear") == "none" else "clip"


def towers(cfg: dict[str, Any]) -> tuple[str, str]:
    return image_tower(cfg), text_tower(cfg)


def model_towers(model: Any, tokenizer: Any) -> tuple[str, str]:
    """The towers of a built model, read from its modules (what an ``hf-hub:`` config turned out to build)."""
    from open_clip.model import CLIP
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.tokenizer import SimpleTokenizer
    from open_clip.transformer import VisionTransformer

    visual = getattr(model, "visual", None)
    if isinstance(visual, ModifiedResNet):
        image = "resnet"
    elif isinstance(visual, VisionTransformer) and visual.attn_pool is None and visual.pool_type == "tok":
        image = "vit"
    else:
        image = "other"
    clip_text = (
        isinstance(model, CLIP) and getattr(model, "text_pool_type", None) == "argmax" and model.attn_mask is not None
        and model.text_projection is not None and isinstance(tokenizer, SimpleTokenizer)
    )
    return image, "clip" if clip_text else "other"


def unsupported(method: Any, image: str, text: str) -> str | None:
    """Why ``method`` (a Method class) cannot read a backbone with these towers, or None when it can."""
    needs = tuple(getattr(method, "image_towers", tuple(IMAGE_TOWERS)))
    if image not in needs:
        wanted = " or ".join(SHORT[k] for k in needs)
        return f"{method.name} reads the dense tokens of a {wanted} image tower; the backbone has {IMAGE_TOWERS[image]}"
    if getattr(method, "clip_text", False) and text != "clip":
        return f"{method.name} learns prompts in {TEXT_TOWERS['clip']}; the backbone has {TEXT_TOWERS[text]}"
    return None


def tags(model_name: str) -> list[str]:
    """open_clip's pretrained tags of a model name (none for ``hf-hub:`` repos: their weights are the repo's)."""
    import open_clip

    return [] if is_hub(model_name) else list(open_clip.list_pretrained_tags_by_model(model_name))


def quickgelu_sibling(model_name: str) -> bool:
    """Whether open_clip has a ``<model_name>-quickgelu`` config (the same model with OpenAI's activation)."""
    import open_clip

    return not model_name.endswith(QUICKGELU_SUFFIX) and model_name + QUICKGELU_SUFFIX in open_clip.list_models()


def tag_is_quickgelu(model_name: str, tag: str) -> bool:
    import open_clip

    return bool((open_clip.get_pretrained_cfg(model_name, tag) or {}).get("quick_gelu", False))


def tag_weights_file(model_name: str, tag: str) -> Path:
    """The file open_clip loads for a pretrained tag: with the weights cached (as after ``create_model``), its path in
    the open_clip / Hugging Face cache, found without a download."""
    import open_clip

    found = open_clip.download_pretrained(open_clip.get_pretrained_cfg(model_name, tag))
    if not found:
        raise WeightsNotFoundError(f"{model_name}: open_clip has no pretrained tag {tag!r}")
    return Path(found)


def hub_weights_file(repo: str) -> Path:
    """The weights file open_clip loads for ``hf-hub:<repo>`` (``open_clip_model.safetensors``, else
    ``open_clip_pytorch_model.bin``), from the Hugging Face cache."""
    from open_clip.pretrained import download_pretrained_from_hf

    return Path(download_pretrained_from_hf(repo))
