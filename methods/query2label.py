"""Query2Label (Liu, Zhang, Yang, Su, Zhu 2021) as IntCLIP's Table 1 runs it (SPEC 3.3).

A ResNet-101 trunk gives a feature map; a 1x1 input projection brings it to the transformer width; a DETR sine
positional encoding marks where each token sits; one post-norm encoder layer mixes the tokens; two decoder layers,
whose self-attention is removed (cross-attention + FFN only), let one learned query per label pool the features
it needs; a group-wise linear head scores each label from its own query: logit_k = <w_k, h_k> + b_k.

Training follows the official code: ASL (gamma_neg 2, gamma_pos 0, focusing weight detached) normalised as
sum / B / C * 1000, AdamW with a OneCycle schedule stepped per batch, an EMA of the weights (decay 0.9997) scored
beside the raw weights every epoch (the better one on val wins), early stopping, RandAugment on train batches.

Trunks (config ``trunk``): ``timm`` is timm's ``resnet101`` with ImageNet (torchvision) weights, as in the
official code; ``clip`` is the run's CLIP ModifiedResNet (stem + layer1..layer4, copied, so the backbone object is
untouched); ``auto`` picks ``clip`` for the tiny embedded backbone (a 2048-wide ImageNet trunk makes no sense for
it) and ``timm`` otherwise. In the trunk the stem and layer1 are frozen and BatchNorm never updates: with
``frozen_bn="buffers"`` (the official code: torchvision's FrozenBatchNorm2d) the BN scale/shift and statistics are
fixed buffers; with ``frozen_bn="eval"`` BN stays an ``nn.BatchNorm2d`` in eval mode whose affine parameters train
in layer2..layer4.

Parameter counts, RN101 timm trunk, 28 classes (the integers are asserted in tests/test_query2label.py)::

    trunk layer2..layer4 convolutions                  42,172,416   (resnet101 without fc: 42,500,160
                                                                     = 42,394,816 conv + 105,344 BN affine)
    input projection 2048 -> 1024 (1x1 conv + bias)     2,098,176
    encoder layer (attn 4d^2+4d, FFN 2dF+F+d, 2 LN)    12,596,224   d = 1024, F = 4096
    2 decoder layers (cross-attn, FFN, 2 LN each)      25,192,448
    decoder final LayerNorm                                 2,048
    label queries (C x d)                                  28,672
    group-wise head (C x d + C)                            28,700
    learnable, default (frozen_bn="buffers")           82,118,684
    + frozen stem conv (9,408) and layer1 convs          222,400
    total nn.Parameters                                82,341,084   = SPEC's "82.34M for 28 classes"

    frozen_bn="eval": + BN affine of layer2..4 102,400 -> learnable 82,221,084; total (+ all 105,344 BN affine
    params) 82,446,428 = the 82.4M printed in IntCLIP's Table 1.

    README config (d = 2048, F = 8192; the official code has no input projection unless --keep_input_proj, and
    2048 = the trunk width): 42,172,416 + 50,358,272 + 100,716,544 + 4,096 + 57,344 + 57,372 = 193,366,044
    learnable, 193,588,444 total (SPEC's "193.6M").

So the paper-level numbers (82.34M / 82.4M / 193.6M) are all-parameter totals of the model, frozen stem and layer1
included; what the optimizer updates with stem and layer1 frozen (as in the official code) is 82.12M (82.22M with
trainable BN affine), and :meth:`param_counts` reports exactly that as ``learnable`` (SPEC 5).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from bench.train.batches import to_device, to_model_input
from bench.methods.augment import BatchedRandAugment
from bench.methods.base import Method, TrainConfig
from bench.methods.components import asymmetric_loss_terms
from bench.methods.trunks import ResNetTrunk, clip_trunk, freeze_batchnorm, timm_trunk

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TINY_BACKBONE = "tiny-clip"


class Query2LabelConfig(TrainConfig):
    presets = {
        # IntCLIP's Table 1 variant (82.4M): a narrower transformer behind a 2048 -> 1024 input projection.
        "intclip": {"hidden_dim": 1024, "dim_feedforward": 4096},
        # The official README command (COCO, 448 px): transformer as wide as the trunk, no input projection.
        "readme": {"hidden_dim": 2048, "dim_feedforward": 8192},
    }

    search_space = {
        "lr": ("loguniform", 1e-5, 1e-3),
        "weight_decay": ("loguniform", 1e-4, 1e-1),
        "dropout": ("uniform", 0.0, 0.3),
        "gamma_neg": ("choice", [1.0, 2.0, 4.0]),
    }

    preset: str | None = "intclip"
    preprocessing: Literal["auto", "clip", "official", "imagenet"] = "auto"  # auto: imagenet (timm), clip (clip)
    # trunk
    trunk: Literal["auto", "timm", "clip"] = "auto"
    timm_model: str = "resnet101.tv_in1k"
    timm_pretrained: bool = True
    timm_checkpoint: str | None = None  # local .pth/.safetensors ResNet state dict (timm or torchvision names)
    frozen_bn: Literal["buffers", "eval"] = "buffers"
    # transformer
    hidden_dim: int = Field(default=1024, gt=0)
    dim_feedforward: int = Field(default=4096, gt=0)
    input_proj: bool | None = None  # None: present iff the trunk width differs from hidden_dim
    enc_layers: int = Field(default=1, ge=0)
    dec_layers: int = Field(default=2, gt=0)
    nheads: int = Field(default=4, gt=0)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    # ASL on sigmoid probabilities
    gamma_neg: float = Field(default=2.0, ge=0)
    gamma_pos: float = Field(default=0.0, ge=0)
    asl_clip: float = Field(default=0.0, ge=0, lt=1)  # SPEC 3.3 (note: the official main_mlc.py passes no clip, leaving its loss class default)
    asl_eps: float = Field(default=1e-5, gt=0, lt=1)
    # optimisation
    epochs: int = Field(default=80, gt=0)
    batch_size: int = Field(default=64, gt=0)
    early_stop_patience: int | None = Field(default=8, gt=0)
    lr: float = Field(default=1e-4, gt=0)
    weight_decay: float = Field(default=1e-2, ge=0)
    pct_start: float = Field(default=0.2, gt=0, lt=1)
    ema: bool = True
    ema_decay: float = Field(default=0.9997, gt=0, lt=1)
    # augmentation
    augment: bool = True
    randaugment_ops: int = Field(default=2, ge=0)
    randaugment_magnitude: int = Field(default=9, ge=0, le=30)

    @model_validator(mode="after")
    def _check_width(self) -> Query2LabelConfig:
        if self.hidden_dim % 4:
            raise ValueError(f"hidden_dim={self.hidden_dim} must be a multiple of 4 (2D sine encoding: sin/cos per axis)")
        if self.hidden_dim % self.nheads:
            raise ValueError(f"hidden_dim={self.hidden_dim} is not divisible by nheads={self.nheads}")
        return self


# -- positional encoding, transformer, head -------------------------------------------------------------------------
def sine_position_encoding(h: int, w: int, dim: int, temperature: float = 10000.0, device=None) -> torch.Tensor:
    """DETR's normalised 2D sine encoding, ``[dim, h, w]``: channels [0, dim/2) encode the row, [dim/2, dim) the
    column; with y = row/(h + 1e-6) * 2pi (rows counted from 1) and t_j = temperature^(2 floor(j/2) / (dim/2)),
    channel 2i is sin(y / t_2i) and channel 2i+1 is cos(y / t_2i+1) (same for x)."""
    npf, eps, scale = dim // 2, 1e-6, 2 * math.pi
    y = torch.arange(1, h + 1, dtype=torch.float32, device=device).view(h, 1).expand(h, w) / (h + eps) * scale
    x = torch.arange(1, w + 1, dtype=torch.float32, device=device).view(1, w).expand(h, w) / (w + eps) * scale
    dim_t = temperature ** (2 * torch.div(torch.arange(npf, device=device), 2, rounding_mode="floor") / npf)

    def encode(v: torch.Tensor) -> torch.Tensor:
        v = v[..., None] / dim_t  # [h, w, npf]
        return torch.stack((v[..., 0::2].sin(), v[..., 1::2].cos()), dim=-1).flatten(-2)

    return torch.cat((encode(y), encode(x)), dim=-1).permute(2, 0, 1)


class EncoderLayer(nn.Module):
    """Post-norm encoder layer: the positional encoding is added to queries and keys, not to values."""

    def __init__(self, d: int, nheads: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, nheads, dropout=dropout, batch_first=True)
        self.linear1, self.linear2 = nn.Linear(d, dim_feedforward), nn.Linear(dim_feedforward, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout, self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        q = k = src + pos
        src = self.norm1(src + self.dropout1(self.self_attn(q, k, src, need_weights=False)[0]))
        return self.norm2(src + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(src))))))


class DecoderLayer(nn.Module):
    """Post-norm decoder layer without self-attention: label queries cross-attend to the image tokens, then FFN."""

    def __init__(self, d: int, nheads: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(d, nheads, dropout=dropout, batch_first=True)
        self.linear1, self.linear2 = nn.Linear(d, dim_feedforward), nn.Linear(dim_feedforward, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout, self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        attended = self.cross_attn(tgt + query_pos, memory + pos, memory, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout1(attended))
        return self.norm2(tgt + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(tgt))))))


class LabelTransformer(nn.Module):
    """``enc_layers`` encoder layers over the image tokens, ``dec_layers`` decoder layers for the label queries
    (the target starts at zero, the query embedding is added at every cross-attention), a final LayerNorm."""

    def __init__(self, d: int, nheads: int, dim_feedforward: int, dropout: float, enc_layers: int, dec_layers: int) -> None:
        super().__init__()
        self.encoder = nn.ModuleList(EncoderLayer(d, nheads, dim_feedforward, dropout) for _ in range(enc_layers))
        self.decoder = nn.ModuleList(DecoderLayer(d, nheads, dim_feedforward, dropout) for _ in range(dec_layers))
        self.decoder_norm = nn.LayerNorm(d)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        memory = tokens
        for layer in self.encoder:
            memory = layer(memory, pos)
        query_pos = queries.unsqueeze(0).expand(tokens.shape[0], -1, -1).to(memory.dtype)
        tgt = torch.zeros_like(query_pos)
        for layer in self.decoder:
            tgt = layer(tgt, memory, pos, query_pos)
        return self.decoder_norm(tgt)


class GroupWiseLinear(nn.Module):
    """One linear classifier per label on its own query: logit_k = <w_k, h_k> + b_k."""

    def __init__(self, num_classes: int, d: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(d)
        self.weight = nn.Parameter(torch.empty(num_classes, d).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_classes).uniform_(-bound, bound))

    def forward(self, hs: torch.Tensor) -> torch.Tensor:
        return (hs * self.weight).sum(-1) + self.bias


class Query2LabelNet(nn.Module):
    def __init__(self, trunk: ResNetTrunk, num_classes: int, config: Query2LabelConfig) -> None:
        super().__init__()
        c, d = trunk.num_channels, config.hidden_dim
        use_proj = c != d if config.input_proj is None else config.input_proj
        if not use_proj and c != d:
            raise ValueError(f"query2label: input_proj=false needs hidden_dim == trunk width ({c}), got {d}")
        self.trunk = trunk
        self.input_proj = nn.Conv2d(c, d, kernel_size=1) if use_proj else nn.Identity()
        self.transformer = LabelTransformer(
            d, config.nheads, config.dim_feedforward, config.dropout, config.enc_layers, config.dec_layers
        )
        self.query_embed = nn.Embedding(num_classes, d)
        self.head = GroupWiseLinear(num_classes, d)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        src = self.input_proj(self.trunk(images))  # [B, d, H, W]
        _, d, h, w = src.shape
        pos = sine_position_encoding(h, w, d, device=src.device).flatten(1).T.to(src.dtype)  # [HW, d]
        hs = self.transformer(src.flatten(2).transpose(1, 2), pos, self.query_embed.weight)  # [B, C, d]
        return self.head(hs)


# -- loss -----------------------------------------------------------------------------------------------------------
def asymmetric_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    gamma_neg: float = 2.0,
    gamma_pos: float = 0.0,
    clip: float = 0.0,
    eps: float = 1e-5,
) -> torch.Tensor:
    """ASL on sigmoid probabilities, in fp32, normalised as the official Query2Label code: sum / B / C * 1000.

    p = sigmoid(x), p_m = min(1 - p + clip, 1) (clip > 0) or 1 - p;
    L = -[y log(max(p, eps)) (1 - p)^gamma_pos + (1 - y) log(max(p_m, eps)) (1 - p_m)^gamma_neg]; the focusing
    weights are detached."""
    x = logits.float()
    terms = asymmetric_loss_terms(torch.sigmoid(x), labels, gamma_neg, gamma_pos, clip, eps)
    return -terms.sum() / x.shape[0] / x.shape[1] * 1000.0


# -- the method -----------------------------------------------------------------------------------------------------
def build_trunk(config: Any, backbone: Any) -> tuple[ResNetTrunk, str, str]:
    """(trunk, trunk kind, weights) as the official Query2Label code builds it (HLEG and LabCR too): the CLIP trunk on
    the tiny CLIP, else timm's ImageNet ResNet; stem and layer1 frozen (requires_grad False); with ``frozen_bn =
    "buffers"`` BatchNorm never updates its statistics."""
    backbone_name = getattr(getattr(backbone, "spec", None), "name", None)
    kind = config.trunk if config.trunk != "auto" else ("clip" if backbone_name == TINY_BACKBONE else "timm")
    if kind == "clip":
        trunk, weights = clip_trunk(backbone.model.visual), f"clip:{backbone_name}"
    else:
        trunk, weights = timm_trunk(config.timm_model, config.timm_pretrained, config.timm_checkpoint)
    if config.frozen_bn == "buffers":
        freeze_batchnorm(trunk)
    for part in (trunk.stem, trunk.layer1):
        part.requires_grad_(False)
    return trunk, kind, weights


class Query2Label(Method):
    name = "query2label"
    family, display_name = "Multi-label methods", "Query2Label"
    Config = Query2LabelConfig
    supported_backbones = ("*",)  # the timm trunk ignores the CLIP backbone; trunk="clip" needs a ModifiedResNet
    scheduler_interval = "step"  # OneCycle steps per batch
    VARIANTS = {"readme": {"preset": "readme"}}  # query2label:readme, the official README's 2048/8192 transformer

    @classmethod
    def random_weights_config(cls, config: Query2LabelConfig) -> Query2LabelConfig:
        return config.model_copy(update={"timm_pretrained": False, "timm_checkpoint": None})

    def __init__(self, config: Query2LabelConfig, backbone, data, device) -> None:
        super().__init__(config, backbone, data, device)
        trunk, trunk_kind, weights = build_trunk(config, backbone)
        self.model = Query2LabelNet(trunk, data.num_classes, config).to(device)
        self.model.eval()  # prepare() augments only while training
        preprocessing = config.preprocessing
        if preprocessing == "auto":
            preprocessing = "clip" if trunk_kind == "clip" else "imagenet"
        self.preprocessing = preprocessing
        self.resolved: dict[str, Any] = {  # what "auto" became, for the run's record
            "trunk": trunk_kind,
            "trunk_weights": weights,
            "trunk_channels": trunk.num_channels,
            "input_proj": isinstance(self.model.input_proj, nn.Conv2d),
            "preprocessing": preprocessing,
        }
        self._randaugment = None
        if config.augment:  # the per-image draws of torchvision's v2.RandAugment, applied batch-wise on the device
            self._randaugment = BatchedRandAugment(num_ops=config.randaugment_ops, magnitude=config.randaugment_magnitude)
        self.apply_memory_format()
        self._forward = self.maybe_compile(self.model)  # the model itself unless `compile` is on
        # EMA of every learnable parameter, fp32, started from the initial weights (the official ModelEma)
        self._ema = {n: p.detach().float().clone() for n, p in self.learnable_parameters().items()}
        self._ema_updates = 0
        self._raw_backup: dict[str, torch.Tensor] | None = None  # raw weights while the EMA is swapped in

    # -- what is trained ---------------------------------------------------------------------------------------
    def configure_optimizers(self, steps_per_epoch: int) -> tuple[torch.optim.Optimizer, Any]:
        c = self.config
        optimizer = torch.optim.AdamW(
            self.param_groups(), lr=c.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=c.weight_decay, **self.optimizer_options()
        )
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=c.lr, total_steps=c.epochs * steps_per_epoch, pct_start=c.pct_start
        )
        return optimizer, scheduler

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)
        for m in self.model.trunk.modules():  # BN statistics never update (frozen_bn="eval")
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()

    # -- inputs ------------------------------------------------------------------------------------------------
    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, H, W, 3]`` -> normalised float ``[B, 3, H, W]``; while training (model in train mode) each
        image first gets its own RandAugment draw, on uint8 on the method's device."""
        if self._randaugment is not None and self.model.training:
            batch = to_device(torch.as_tensor(images), self.device).permute(0, 3, 1, 2)
            images = self._randaugment(batch).permute(0, 2, 3, 1)
        mean, std, preset = (IMAGENET_MEAN, IMAGENET_STD, "clip") if self.preprocessing == "imagenet" else (
            self.backbone.mean, self.backbone.std, self.preprocessing)
        return to_model_input(images, mean, std, preset, self.device, self.channels_last)

    def _targets(self, labels: torch.Tensor) -> torch.Tensor:
        if labels.ndim == 1:  # multiclass: one-hot
            return F.one_hot(labels.long(), self.num_classes).float()
        return labels.float()

    # -- training ----------------------------------------------------------------------------------------------
    def training_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        c = self.config
        return asymmetric_loss(self._forward(images), self._targets(labels), c.gamma_neg, c.gamma_pos, c.asl_clip, c.asl_eps)

    @torch.no_grad()
    def after_step(self) -> None:
        """EMA update: shadow <- decay * shadow + (1 - decay) * param."""
        if not self.config.ema:
            return
        params = self.learnable_parameters()
        names = list(self._ema)
        shadows, current = [self._ema[n] for n in names], [params[n].detach().float() for n in names]
        torch._foreach_lerp_(shadows, current, 1.0 - self.config.ema_decay)
        self._ema_updates += 1

    # -- variants: raw and EMA weights -------------------------------------------------------------------------
    def eval_variants(self) -> list[str]:
        return ["raw", "ema"] if self.config.ema else ["raw"]

    @torch.no_grad()
    def use_variant(self, variant: str) -> None:
        if variant not in self.eval_variants():
            raise ValueError(f"{self.name}: unknown weight variant {variant!r} (known: {self.eval_variants()})")
        params = self.learnable_parameters()
        if variant == "ema" and self._raw_backup is None:
            self._raw_backup = {n: p.detach().clone() for n, p in params.items()}
            for n, p in params.items():
                p.copy_(self._ema[n])
        elif variant == "raw" and self._raw_backup is not None:
            for n, p in params.items():
                p.copy_(self._raw_backup[n])
            self._raw_backup = None

    def variant_state(self, variant: str) -> dict[str, Any]:
        state = self.state_dict()
        if variant == "ema":
            state["params"] = {n: t.clone() for n, t in self._ema.items()}
        return state

    # -- inference ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self._forward(images).double()

    # -- state -------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Raw weights (even while the EMA is swapped in), the EMA shadow and its update count."""
        raw = self._raw_backup
        if raw is None:
            raw = {n: p.detach() for n, p in self.learnable_parameters().items()}
        return {
            "params": {n: t.clone() for n, t in raw.items()},
            "ema": {n: t.clone() for n, t in self._ema.items()},
            "ema_updates": self._ema_updates,
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        params = self.learnable_parameters()
        for key in ("params", "ema"):
            missing = set(params) - set(state.get(key, {}))
            if missing:
                raise KeyError(f"{self.name}: checkpoint {key!r} lacks {sorted(missing)[:5]}")
        self._raw_backup = None
        for n, p in params.items():
            p.copy_(state["params"][n])
            self._ema[n].copy_(state["ema"][n])
        self._ema_updates = int(state.get("ema_updates", 0))
