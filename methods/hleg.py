"""HLEG (Shi, Ye, Zhang, Du, "Learnable hierarchical label embedding and grouping for visual intention
understanding", IEEE TAC 2023), as its released code (ShiQingHongYa/HLEG, built on Query2Label) trains it.

Query2Label's parts (a ResNet trunk with stem and layer1 frozen and BatchNorm frozen, DETR's sine encoding, one
post-norm encoder layer, decoder layers without self-attention, group-wise linear heads) arranged over the label
hierarchy, fine level first (Intentonomy: 28 -> 15 -> 9). Decoder layer l serves level l:

- its target (the decoder input) is sigmoid(Linear_l(memory over the HW tokens)): per channel, a learned mix of the
  image tokens, one row per class of the level ("learnable label embedding");
- its query position is the label embedding (C x d, learned) at the fine level and, one level up, the mean of the
  previous layer's outputs over each group's members ("accumulative grouping");
- its output goes through the shared final LayerNorm and the level's group-wise head.

A level's label is 1 when any member below it is. The loss ("Hard-First") is, per image, the largest of the three
levels' ASL sums plus 0.1 x the fine level's: mean_b [max_l L_l(b) + 0.1 L_fine(b)], with ASL gamma_neg 2, gamma_pos
0, clip 0, eps 1e-5, focusing weight detached, summed over classes (not Query2Label's / B / C * 1000). The score is
the fine level's logit, which depends on the first decoder layer only. Training as the released train.py: AdamW
(wd 1e-2) under OneCycle (max lr 1e-4, pct_start 0.2, stepped per batch), batch 128, 6 epochs, EMA 0.9997 scored
beside the raw weights every epoch, fp16 autocast with a GradScaler, 224 px squashed, ImageNet mean/std, Cutout as it
is called there then RandAugment.

Parameters the released optimiser updates for 28 classes, torchvision/timm ResNet-101 at 224 px (7 x 7 = 49 tokens),
d = 2048, FFN 8192, no input projection (asserted in tests/methods/test_hleg.py)::

    trunk layer2..layer4 convolutions               42,172,416   (BatchNorm: frozen buffers)
    encoder layer (attn 4d^2+4d, FFN 2dF+F+d, 2 LN)  50,358,272
    3 decoder layers (cross-attn, FFN, 2 LN each)   151,074,816
    final decoder LayerNorm                               4,096
    target projections Linear(49, 28 / 15 / 9)           2,600   (1,400 + 750 + 450)
    label embedding 28 x 2048                            57,344
    group-wise heads (K x d + K for K = 28, 15, 9)      106,548   (57,372 + 30,735 + 18,441)
    learnable                                       243,776,092
    + frozen stem conv and layer1 convolutions          222,400  -> 243,998,492 nn.Parameters here

The released optimiser's one param group holds 310,923,868 parameters: its TransformerDecoder also keeps the
template layer it cloned its layers from (``decoder.decoder_layer``, self-attention included, 67,147,776
parameters), which is never called, gets no gradient (DDP with find_unused_parameters) and so is never updated by
AdamW; the harness does not build it. IntCLIP's Table 1 prints 89.4M for HLEG, which no configuration of the
released code gives (see README).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bench.data import to_device, to_model_input
from bench.errors import ConfigError
from bench.methods.augment import BatchedRandAugment
from bench.methods.base import Method
from bench.methods.components import asymmetric_loss_terms
from bench.methods.query2label import (
    build_trunk,
    IMAGENET_MEAN,
    IMAGENET_STD,
    GroupWiseLinear,
    LabelTransformer,
    Query2Label,
    Query2LabelConfig,
    sine_position_encoding,
)
from bench.methods.trunks import ResNetTrunk

# The released code's hard-coded Intentonomy hierarchy (data_utils/get_dataset_new.py): the 28 fine classes of each
# of the 15 middle groups, and the middle groups of each of the 9 coarse groups, in its order.
RELEASED_MIDDLE = ((24, 27), (5,), (13,), (11,), (3, 7, 8, 9, 19), (4, 6, 20, 21), (14,), (15, 16), (2, 22, 23), (0,),
                   (17, 25), (10,), (1,), (12,), (18, 26))
RELEASED_COARSE = ((0, 1), (2, 3), (4, 5), (6,), (7, 8, 9), (10,), (11,), (12,), (13, 14))


class HLEGConfig(Query2LabelConfig):
    presets = {
        # The released train.py's defaults (its README command passes none): everything below is also the default.
        "official": {
            "hidden_dim": 2048, "dim_feedforward": 8192, "enc_layers": 1, "nheads": 4, "dropout": 0.1,
            "epochs": 6, "batch_size": 128, "early_stop_patience": None, "lr": 1e-4, "weight_decay": 1e-2,
            "pct_start": 0.2, "ema_decay": 0.9997, "fine_loss_weight": 0.1, "autocast": "fp16",
            "augment": True, "cutout": True, "preprocessing": "official",
        },
    }

    preset: str | None = "official"
    # auto: imagenet (timm trunk) or clip (clip trunk); official: the released resize (PIL bilinear on the full
    # decode, for file-based datasets) and ImageNet mean/std, as its get_datasets builds them
    preprocessing: Literal["auto", "clip", "official", "imagenet"] = "official"
    hidden_dim: int = Field(default=2048, gt=0)
    dim_feedforward: int = Field(default=8192, gt=0)
    dec_layers: int | None = Field(default=None, gt=0)  # None: one per hierarchy level (the released 3); else = levels
    # the label hierarchy: the dataset's classes' (coarse-first ancestors), the released code's hard-coded
    # Intentonomy one (28 classes), or auto: released when there are 28 classes and the dataset's hierarchy is that
    # one (in another group order) or carries none (no ancestors, or a level of one group); else the dataset's
    hierarchy: Literal["auto", "dataset", "released"] = "auto"
    fine_loss_weight: float = Field(default=0.1, ge=0)
    # label embedding initialisation: N(0, 1) (nn.Embedding), or hci: the CLIP text features of the classes' HCI
    # sentences, mapped to d by a seeded orthonormal projection and scaled to norm sqrt(d) (IntCLIP's Table 6b)
    label_init: Literal["random", "hci"] = "random"
    epochs: int = Field(default=6, gt=0)
    batch_size: int = Field(default=128, gt=0)
    early_stop_patience: int | None = Field(default=None, gt=0)
    autocast: Literal["auto", "bf16", "fp16", "off"] = "fp16"
    cutout: bool = True  # SLCutoutPIL(n_holes=1, length=-1): a 3 x 3 square of one random colour (see PixelCutout)


# -- the label hierarchy -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelLevels:
    """Classes per level, fine first, and for each level above the fine one the parent of every class below it."""

    sizes: tuple[int, ...]
    parents: tuple[tuple[int, ...], ...]  # parents[l][k]: the level-(l+1) group of level-l class k
    source: str

    def groups(self, level: int) -> list[list[int]]:
        """Members (level ``level``) of each level-``level + 1`` group."""
        out: list[list[int]] = [[] for _ in range(self.sizes[level + 1])]
        for k, g in enumerate(self.parents[level]):
            out[g].append(k)
        return out


def released_levels() -> LabelLevels:
    middle = [0] * 28
    for g, members in enumerate(RELEASED_MIDDLE):
        for k in members:
            middle[k] = g
    coarse = [0] * len(RELEASED_MIDDLE)
    for g, members in enumerate(RELEASED_COARSE):
        for k in members:
            coarse[k] = g
    return LabelLevels((28, len(RELEASED_MIDDLE), len(RELEASED_COARSE)), (tuple(middle), tuple(coarse)), "released")


def dataset_levels(classes: list) -> LabelLevels:
    """Levels from each class's ancestors (coarse first): a group is an ancestor path, numbered in class order."""
    depths = {len(c.hierarchy) for c in classes}
    if len(depths) > 1:
        short = [c.key for c in classes if len(c.hierarchy) == min(depths)][:5]
        raise ConfigError(f"hleg: every class needs the same number of ancestors; got depths {sorted(depths)} ({short} ...)")
    depth = depths.pop() if depths else 0
    keys = [[(c.key,) for c in classes]]  # level 0: the classes themselves
    keys += [[tuple(c.hierarchy[: depth - level + 1]) for c in classes] for level in range(1, depth + 1)]
    index = [{k: i for i, k in enumerate(dict.fromkeys(level))} for level in keys]
    sizes = tuple(len(ix) for ix in index)
    parents = []
    for level in range(depth):
        parent = [0] * sizes[level]
        for child, up in zip(keys[level], keys[level + 1]):
            parent[index[level][child]] = index[level + 1][up]
        parents.append(tuple(parent))
    return LabelLevels(sizes, tuple(parents), "dataset")


def label_levels(classes: list, mode: str) -> LabelLevels:
    if mode == "released":
        if len(classes) != 28:
            raise ConfigError(f"hleg: hierarchy='released' is the Intentonomy hierarchy of 28 classes; the dataset has {len(classes)}")
        return released_levels()
    levels = dataset_levels(classes)
    if mode == "auto" and len(classes) == 28:
        released = released_levels()
        if len(levels.sizes) == 1 or min(levels.sizes) == 1 or fine_partitions(levels) == fine_partitions(released):
            return released
    return levels


def fine_partitions(levels: LabelLevels) -> list[list[list[int]]]:
    """Per level above the fine one, its groups as sorted sets of fine classes (independent of group order)."""
    owner, out = list(range(levels.sizes[0])), []
    for parent, size in zip(levels.parents, levels.sizes[1:]):
        owner = [parent[o] for o in owner]
        out.append(sorted(sorted(k for k, o in enumerate(owner) if o == g) for g in range(size)))
    return out


def level_targets(labels: torch.Tensor, parents: list[torch.Tensor], sizes: tuple[int, ...]) -> list[torch.Tensor]:
    """Per level, multi-hot targets ``[B, K_l]``: a group is positive when any member below it is (the max of its
    members); ``parents[l]`` ``[1, K_l]`` holds each level-l class's group, ``sizes`` the classes per level."""
    out = [labels]
    for parent, size in zip(parents, sizes[1:], strict=True):
        up = labels.new_zeros(labels.shape[0], size)
        labels = up.scatter_reduce(1, parent.expand(labels.shape[0], -1), labels, "amax", include_self=True)
        out.append(labels)
    return out


def hleg_loss(logits: list[torch.Tensor], targets: list[torch.Tensor], gamma_neg: float = 2.0, gamma_pos: float = 0.0,
              clip: float = 0.0, eps: float = 1e-5, fine_weight: float = 0.1) -> torch.Tensor:
    """Hard-First: mean over images of (the largest level's ASL sum + fine_weight x the fine level's), in fp32."""
    per_level = torch.stack([
        -asymmetric_loss_terms(torch.sigmoid(x.float()), y, gamma_neg, gamma_pos, clip, eps).sum(1)
        for x, y in zip(logits, targets, strict=True)
    ], dim=1)  # [B, L]
    return per_level.max(dim=1).values.mean() + fine_weight * per_level[:, 0].mean()


# -- the network -----------------------------------------------------------------------------------------------------
class HLEGNet(nn.Module):
    def __init__(self, trunk: ResNetTrunk, levels: LabelLevels, tokens: int, config: HLEGConfig) -> None:
        super().__init__()
        c, d = trunk.num_channels, config.hidden_dim
        use_proj = c != d if config.input_proj is None else config.input_proj
        if not use_proj and c != d:
            raise ValueError(f"hleg: input_proj=false needs hidden_dim == trunk width ({c}), got {d}")
        self.trunk = trunk
        self.input_proj = nn.Conv2d(c, d, kernel_size=1) if use_proj else nn.Identity()
        n = len(levels.sizes)
        self.transformer = LabelTransformer(d, config.nheads, config.dim_feedforward, config.dropout, config.enc_layers, n)
        self.tokens = tokens
        # level 0's is built after the released Transformer's xavier init (torch's Linear init); the others before
        self.target_proj = nn.ModuleList(nn.Linear(tokens, k) for k in levels.sizes)
        for proj in self.target_proj[1:]:
            nn.init.xavier_uniform_(proj.weight)
        self.query_embed = nn.Embedding(levels.sizes[0], d)
        self.heads = nn.ModuleList(GroupWiseLinear(k, d) for k in levels.sizes)
        for level, parent in enumerate(levels.parents):  # each group's members [K_{l+1}, K_l] and their count
            member = F.one_hot(torch.tensor(parent), levels.sizes[level + 1]).T.float()
            self.register_buffer(f"members_{level}", member, persistent=False)
            self.register_buffer(f"group_size_{level}", member.sum(1, keepdim=True), persistent=False)
            self.register_buffer(f"parent_{level}", torch.tensor(parent)[None], persistent=False)

    def parents(self) -> list[torch.Tensor]:
        return [getattr(self, f"parent_{i}") for i in range(len(self.heads) - 1)]

    def forward(self, images: torch.Tensor, fine_only: bool = False) -> list[torch.Tensor]:
        """Per-level logits ``[B, K_l]``, fine first (only the fine level's with ``fine_only``)."""
        src = self.input_proj(self.trunk(images))  # [B, d, h, w]
        _, d, h, w = src.shape
        if h * w != self.tokens:
            raise ValueError(f"hleg: built for {self.tokens} image tokens, got a {h}x{w} feature map (input {tuple(images.shape[-2:])})")
        pos = sine_position_encoding(h, w, d, device=src.device).flatten(1).T.to(src.dtype)  # [HW, d]
        memory = src.flatten(2).transpose(1, 2)  # [B, HW, d]
        for layer in self.transformer.encoder:
            memory = layer(memory, pos)
        query_pos = self.query_embed.weight.unsqueeze(0).expand(memory.shape[0], -1, -1).to(memory.dtype)
        logits = []
        for level, layer in enumerate(self.transformer.decoder):
            tgt = torch.sigmoid(self.target_proj[level](memory.transpose(1, 2))).transpose(1, 2)  # [B, K_l, d]
            out = layer(tgt, memory, pos, query_pos)
            logits.append(self.heads[level](self.transformer.decoder_norm(out)))
            if fine_only:
                break
            if level + 1 < len(self.heads):  # the next level's query position: its groups' mean outputs (>= fp32)
                members, size = getattr(self, f"members_{level}"), getattr(self, f"group_size_{level}")
                dtype = torch.promote_types(out.dtype, torch.float32)
                with torch.autocast(out.device.type, enabled=False):
                    query_pos = torch.einsum("gk,bkd->bgd", members.to(dtype), out.to(dtype)) / size.to(dtype)
        return logits


# -- augmentation ----------------------------------------------------------------------------------------------------
class PixelCutout:
    """The released train transform's ``SLCutoutPIL(n_holes=1, length=-1)``: the box it asks PIL for is inverted
    (corners centre +- 1 swapped), which Pillow < 9.5 drew as the 3 x 3 square around a uniformly drawn centre (clipped
    to the image) in one uniformly drawn colour, and Pillow >= 9.5 rejects. On a uint8 batch ``[B, 3, H, W]``."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        centre_y, centre_x = torch.randint(h, (b,)), torch.randint(w, (b,))
        colour = torch.randint(256, (b, 3), dtype=torch.uint8)
        rows, cols = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
        inside = ((rows - centre_y[:, None, None]).abs() <= 1) & ((cols - centre_x[:, None, None]).abs() <= 1)
        inside, colour = to_device(inside, images.device), to_device(colour, images.device)
        return torch.where(inside[:, None], colour[:, :, None, None], images)


# -- HCI label embeddings --------------------------------------------------------------------------------------------
@torch.no_grad()
def hci_label_embedding(clip: nn.Module, tokenizer, sentences: list[str], width: int) -> torch.Tensor:
    """``[C, width]``: the L2-normalised CLIP text features of the sentences through a random orthonormal map to
    ``width`` (drawn from torch's generator), each row scaled to norm sqrt(width) (an N(0, 1) row's expected norm).
    With a text width <= ``width`` the map keeps every cosine between the sentences' features."""
    device = next(clip.parameters()).device
    feats = F.normalize(clip.encode_text(tokenizer([s.rstrip(".") + "." for s in sentences]).to(device)).float(), dim=-1).cpu()
    dim = feats.shape[1]
    basis, _ = torch.linalg.qr(torch.randn(max(dim, width), min(dim, width)))  # orthonormal columns
    proj = basis if dim >= width else basis.T  # [dim, width]
    return math.sqrt(width) * F.normalize(feats @ proj, dim=-1)


# -- the method ------------------------------------------------------------------------------------------------------
@torch.no_grad()
def feature_tokens(trunk: ResNetTrunk, data, backbone) -> tuple[int, int]:
    """The trunk's feature-map size on this dataset's images (the backbone's size when the dataset has none)."""
    split = next(iter(data.splits.values()), None)
    h, w = split.images.shape[1:3] if split is not None else (backbone.image_size, backbone.image_size)
    fmap = trunk.eval()(torch.zeros(1, 3, h, w))
    return tuple(fmap.shape[-2:])


class HLEG(Query2Label):
    """Inherits Query2Label's optimiser (AdamW + OneCycle per batch), EMA and its raw/EMA variants, frozen-BN training
    mode and state handling; builds the hierarchical network and trains it with the Hard-First loss."""

    name = "hleg"
    family, display_name = "Intention methods", "HLEG"
    Config = HLEGConfig
    VARIANTS = {"hci": {"label_init": "hci"}}  # hleg:hci, IntCLIP's Table 6b "[33] + HCI"

    def __init__(self, config: HLEGConfig, backbone, data, device) -> None:
        Method.__init__(self, config, backbone, data, device)
        levels = label_levels(data.classes, config.hierarchy)
        if config.dec_layers is not None and config.dec_layers != len(levels.sizes):
            raise ConfigError(f"hleg: dec_layers={config.dec_layers}, but the hierarchy has {len(levels.sizes)} levels {levels.sizes}")
        trunk, kind, weights = build_trunk(config, backbone)
        h, w = feature_tokens(trunk, data, backbone)
        net = HLEGNet(trunk, levels, h * w, config)
        if config.label_init == "hci":
            missing = [c.key for c in data.classes if not c.sentence]
            if missing or not hasattr(backbone.model, "encode_text"):
                raise ConfigError(f"hleg: label_init='hci' needs a CLIP text tower and a sentence for every class (missing: {missing[:5]})")
            with torch.no_grad():
                net.query_embed.weight.copy_(hci_label_embedding(backbone.model, backbone.tokenizer, [c.sentence for c in data.classes], config.hidden_dim))
        self.levels = levels
        self.model = net.to(device)
        self.model.eval()  # prepare() augments only while training
        self.preprocessing = config.preprocessing if config.preprocessing != "auto" else ("clip" if kind == "clip" else "imagenet")
        self.resolved: dict[str, Any] = {
            "trunk": kind, "trunk_weights": weights, "trunk_channels": trunk.num_channels,
            "input_proj": isinstance(net.input_proj, nn.Conv2d), "preprocessing": self.preprocessing,
            "hierarchy": levels.source, "level_sizes": list(levels.sizes), "feature_map": [h, w],
        }
        self._augment = [PixelCutout()] if config.cutout else []
        if config.augment:
            self._augment.append(BatchedRandAugment(num_ops=config.randaugment_ops, magnitude=config.randaugment_magnitude))
        self.apply_memory_format()
        self._forward = self.maybe_compile(self.model)
        self._ema = {n: p.detach().float().clone() for n, p in self.learnable_parameters().items()}
        self._ema_updates = 0
        self._raw_backup: dict[str, torch.Tensor] | None = None

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, H, W, 3]`` -> normalised float ``[B, 3, H, W]``; while training, each image first gets the
        released order of augmentations (Cutout, then RandAugment), on uint8 on the method's device."""
        if self._augment and self.model.training:
            batch = to_device(torch.as_tensor(images), self.device).permute(0, 3, 1, 2)
            for augment in self._augment:
                batch = augment(batch)
            images = batch.permute(0, 2, 3, 1)
        if self.preprocessing in ("imagenet", "official"):
            return to_model_input(images, IMAGENET_MEAN, IMAGENET_STD, "clip", self.device, self.channels_last)
        return to_model_input(images, self.backbone.mean, self.backbone.std, "clip", self.device, self.channels_last)

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        c = self.config
        targets = level_targets(self._targets(labels), self.model.parents(), self.levels.sizes)
        return hleg_loss(self._forward(images), targets, c.gamma_neg, c.gamma_pos, c.asl_clip, c.asl_eps, c.fine_loss_weight)

    @torch.no_grad()
    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self._forward(images, fine_only=True)[0].double()
