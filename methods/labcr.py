"""LabCR (Shi, Ye, Huang, Ruan, Du, "Label-aware calibration and relation-preserving in visual intention
understanding", IEEE TIP 2024) as its released code trains it (github.com/ShiQingHongYa/LabCR, ``train.py``,
``models/Losses.py``).

The network is Query2Label's (:mod:`bench.methods.query2label`) in its README shape: an ImageNet ResNet-101 with
frozen BatchNorm (stem and layer1 frozen), a transformer as wide as the trunk (d = 2048, FFN 8192, no input
projection, one encoder and two decoder layers without self-attention, dropout 0.3), one query per label and a
group-wise linear head. What LabCR adds is in training: every image is seen as two augmented views v1, v2 (logits
z1, z2 ``[B, C]``, label features h1, h2 ``[B, C, d]``: the decoder output the head reads), and the loss is

    L = ASL(z1) + ASL(z2) + alpha * L_overall + (1 - alpha) * L_target + L_relation

- ASL: gamma_neg 2, gamma_pos 0, no clip, eps 1e-5, focusing weight detached, reduced as sum / B / C * 10.
- L_overall (DUDC, "overall" calibration): with p = sigmoid(z), CE(p1, p2) + CE(p2, p1), where
  CE(p, q) = mean_b -sum_c p_bc log(q_bc + eps).
- L_target (DUDC, "individual" calibration): each positive label k of an image gets its own distribution,
  softmax over {the image's negative labels} + {k}; the term is CE(q1, q2) + CE(q2, q1) averaged over the image's
  positive labels, then over images. The released code builds it from a Python list (``torch.Tensor(list)``), which
  copies the values out of the autograd graph: it adds a constant to the loss and nothing to the gradients.
  ``single_term = "constant"`` (default) keeps that; ``"trained"`` lets it train, as the paper describes it.
- L_relation (IRP/ISD): each view's flattened label features, L2-normalised, give a B x B cosine matrix / tau
  (tau 0.4); each row without its diagonal entry is softmax-ed over the other B - 1 images, and the term is
  KL(r1 || r2) + KL(r2 || r1) with KL(p || q) = mean_b sum_j p (log(p + eps) - log(q + eps)).

The released run is two GPUs under DistributedDataParallel with a total batch of 64: each GPU computes the loss on
its own 32 images (the relation matrix is 32 x 32) and DDP averages the gradients. ``relation_group_size = 32``
reproduces that on one device: the batch is split into groups of 32 consecutive images, each group's loss is
computed alone and the groups' losses are averaged. (The released ``all_reduce`` calls inside the loss sum the
*values* of the calibration and relation terms over the GPUs but are not differentiated: they change what the log
prints, not the gradients.)

Training: AdamW (lr 1e-4, betas 0.9/0.999, weight decay 1e-2 on every parameter) under OneCycleLR (max_lr 1e-4,
pct_start 0.2, stepped per batch; the released ``lr_mult`` only changes the lr the optimizer is built with, which
OneCycleLR overwrites), an EMA of the weights (0.9997) scored beside the raw weights every epoch, 30 epochs, batch
64, fp16 autocast with a GradScaler, no early stopping. Input: 224 x 224 resize (PIL bilinear, ``preprocessing =
"official"``), ImageNet mean/std; each training view is the released ``SLCutoutPIL(n_holes=1, length=-1)`` (with
``length = -1`` it paints a 3 x 3 square of one random colour: PIL < 9.5 swaps the reversed corners) then
RandAugment.

Parameter counts, RN101 timm trunk, 28 classes (asserted in tests/methods/test_labcr.py)::

    trunk layer2..layer4 convolutions           42,172,416
    encoder layer (d = 2048, F = 8192)          50,358,272   4d^2 + 4d (attention) + 2dF + F + d (FFN) + 4d (2 LN)
    2 decoder layers (cross-attn, FFN, 2 LN)   100,716,544
    decoder final LayerNorm                          4,096
    label queries (C x d)                           57,344
    group-wise head (C x d + C)                     57,372
    learnable = what the released optimizer updates   193,366,044
    + frozen stem conv and layer1 convs            222,400
    total nn.Parameters                        193,588,444

The IntCLIP paper's Table 1 lists LabCR at 56.2M; no configuration of the released code gives that (its defaults
give the 193.37M above, the same network as ``query2label:readme``).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bench.methods.components import asymmetric_loss_terms
from bench.methods.query2label import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Query2Label,
    Query2LabelConfig,
    sine_position_encoding,
)
from bench.train.batches import to_device, to_model_input

# The released train.py / models/Losses.py defaults (Intentonomy, 2 GPUs).
OFFICIAL: dict[str, Any] = {
    "hidden_dim": 2048,
    "dim_feedforward": 8192,
    "enc_layers": 1,
    "dec_layers": 2,
    "nheads": 4,
    "dropout": 0.3,
    "gamma_neg": 2.0,
    "gamma_pos": 0.0,
    "asl_clip": 0.0,
    "asl_eps": 1e-5,
    "asl_scale": 10.0,
    "alpha": 0.4,
    "tau": 0.4,
    "single_term": "constant",
    "relation_group_size": 32,
    "epochs": 30,
    "batch_size": 64,
    "early_stop_patience": None,
    "lr": 1e-4,
    "weight_decay": 1e-2,
    "pct_start": 0.2,
    "ema": True,
    "ema_decay": 0.9997,
    "augment": True,
    "cutout": True,
    "randaugment_ops": 2,
    "randaugment_magnitude": 9,
    "preprocessing": "official",
    "autocast": "fp16",
}


class LabCRConfig(Query2LabelConfig):
    presets = {"official": OFFICIAL}

    search_space = {
        **Query2LabelConfig.search_space,
        "alpha": ("uniform", 0.0, 1.0),
        "tau": ("loguniform", 0.05, 2.0),
    }

    preset: str | None = "official"
    # official: the released input (PIL bilinear resize of the full decode, on file-based datasets) with ImageNet
    # mean/std; imagenet: the harness's default decode with ImageNet mean/std; clip: default decode, the backbone's
    preprocessing: Literal["official", "imagenet", "clip"] = "official"
    hidden_dim: int = Field(default=2048, gt=0)
    dim_feedforward: int = Field(default=8192, gt=0)
    dropout: float = Field(default=0.3, ge=0, lt=1)
    # ASL (the released --eps is also the eps of the calibration and relation terms' log(p + eps))
    asl_scale: float = Field(default=10.0, gt=0)  # sum / B / C * asl_scale (Query2Label's code: 1000)
    # LabCR's terms
    alpha: float = Field(default=0.4, ge=0, le=1)  # overall vs per-target calibration (released --alpha)
    tau: float = Field(default=0.4, gt=0)  # relation temperature (released --tau_feat)
    single_term: Literal["constant", "trained"] = "constant"  # constant: the released code (no gradient)
    relation_group_size: int | None = Field(default=32, ge=2)  # per-GPU batch of the released run; None: whole batch
    # schedule and precision
    epochs: int = Field(default=30, gt=0)
    batch_size: int = Field(default=64, gt=0)
    early_stop_patience: int | None = Field(default=None, gt=0)
    autocast: Literal["auto", "bf16", "fp16", "off"] = "fp16"
    # augmentation of each view: the released 3 x 3 cutout, then RandAugment
    cutout: bool = True


# -- the network's two outputs ---------------------------------------------------------------------------------------
class LogitsAndLabelFeatures(nn.Module):
    """Runs a Query2Label network and returns its logits ``[B, C]`` and the decoder output the head reads
    ``[B, C, d]`` (the released model's ``features``)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.net
        src = net.input_proj(net.trunk(images))
        _, d, h, w = src.shape
        pos = sine_position_encoding(h, w, d, device=src.device).flatten(1).T.to(src.dtype)
        label_features = net.transformer(src.flatten(2).transpose(1, 2), pos, net.query_embed.weight)
        return net.head(label_features), label_features


# -- augmentation ----------------------------------------------------------------------------------------------------
def dot_cutout(images: torch.Tensor) -> torch.Tensor:
    """The released ``SLCutoutPIL(n_holes=1, length=-1)`` on a uint8 batch ``[B, 3, H, W]``: per image a 3 x 3 square
    (clipped to the image) around a uniformly drawn pixel, filled with one uniformly drawn colour. (With length -1
    the corners come out reversed, (c + 1, c - 1); Pillow 9.0.1, the released requirement, swaps them and fills
    both end rows and columns.)"""
    b, _, h, w = images.shape
    device = images.device
    centre_y, centre_x = torch.randint(h, (b,)), torch.randint(w, (b,))  # torch's CPU generator (seeded, resumable)
    colour = torch.randint(256, (b, 3), dtype=torch.uint8)
    centre_y, centre_x, colour = (to_device(t, device) for t in (centre_y, centre_x, colour))
    rows, cols = torch.arange(h, device=device)[None, :, None], torch.arange(w, device=device)[None, None, :]
    inside = ((rows - centre_y[:, None, None]).abs() <= 1) & ((cols - centre_x[:, None, None]).abs() <= 1)
    return torch.where(inside[:, None], colour[:, :, None, None], images)


# -- the loss (per group of images) ----------------------------------------------------------------------------------
def asymmetric_loss(
    z: torch.Tensor, targets: torch.Tensor, gamma_neg: float, gamma_pos: float, clip: float, eps: float
) -> torch.Tensor:
    """The released AsymmetricLossOptimized, element-wise (to be negated and reduced), in the logits' precision:
    p = sigmoid(z), p_m = min(1 - p + clip, 1) (clip > 0) or 1 - p;
    y log(max(p, eps)) (1 - p)^gamma_pos + (1 - y) log(max(p_m, eps)) (1 - p_m)^gamma_neg, weights detached."""
    return asymmetric_loss_terms(torch.sigmoid(z), targets, gamma_neg, gamma_pos, clip, eps, fp32=False)


def cross_entropy_rows(p: torch.Tensor, q: torch.Tensor, eps: float) -> torch.Tensor:
    """-sum_last p log(q + eps): the released ``cross`` before its mean."""
    return -(p * torch.log(q + eps)).sum(-1)


def overall_calibration(z1: torch.Tensor, z2: torch.Tensor, eps: float) -> torch.Tensor:
    """CE(sigmoid z1, sigmoid z2) + CE(sigmoid z2, sigmoid z1), each averaged over the images."""
    p1, p2 = torch.sigmoid(z1), torch.sigmoid(z2)
    return cross_entropy_rows(p1, p2, eps).mean() + cross_entropy_rows(p2, p1, eps).mean()


def target_calibration(z1: torch.Tensor, z2: torch.Tensor, targets: torch.Tensor, eps: float) -> torch.Tensor:
    """Per positive label k of an image: softmax over {negatives} + {k} in each view; CE(q1, q2) + CE(q2, q1)
    averaged over the image's positive labels, then over the images that have one (the released code gives NaN for
    an image without a positive label; every Intentonomy image has one)."""
    positive = targets > 0.5  # [B, C]
    c = targets.shape[1]
    # allowed[b, k, j]: class j takes part in row k's softmax (the negatives of image b, and k itself)
    allowed = (~positive)[:, None, :] | torch.eye(c, dtype=torch.bool, device=targets.device)[None]

    def row_distributions(z: torch.Tensor) -> torch.Tensor:
        masked = z[:, None, :].expand(-1, c, -1).masked_fill(~allowed, float("-inf"))
        return masked.softmax(-1)  # [B, C (row k), C]

    q1, q2 = row_distributions(z1), row_distributions(z2)
    per_row = cross_entropy_rows(q1, q2, eps) + cross_entropy_rows(q2, q1, eps)  # [B, C]
    count = positive.sum(1)
    has_positive = count > 0
    per_image = (per_row * positive).sum(1) / count.clamp(min=1)
    return (per_image * has_positive).sum() / has_positive.sum().clamp(min=1)


def relation_preserving(h1: torch.Tensor, h2: torch.Tensor, tau: float, eps: float) -> torch.Tensor:
    """KL(r1 || r2) + KL(r2 || r1), r = softmax over the other images of the label-feature cosine similarity / tau."""
    b = h1.shape[0]
    if b < 2:  # no other image to relate to
        return (h1.sum() + h2.sum()) * 0.0
    off_diagonal = ~torch.eye(b, dtype=torch.bool, device=h1.device)

    def relations(h: torch.Tensor) -> torch.Tensor:
        f = F.normalize(h.reshape(b, -1), dim=1)
        return (torch.mm(f, f.t()) / tau)[off_diagonal].view(b, b - 1).softmax(-1)

    r1, r2 = relations(h1), relations(h2)

    def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return (p * torch.log(p + eps) - p * torch.log(q + eps)).sum(1).mean()

    return kl(r1, r2) + kl(r2, r1)


def labcr_loss(
    z1: torch.Tensor, z2: torch.Tensor, h1: torch.Tensor, h2: torch.Tensor, targets: torch.Tensor, config: LabCRConfig
) -> torch.Tensor:
    """The loss of one group of images (one GPU of the released run), from both views' logits and label features."""
    c = config
    dtype = torch.promote_types(z1.dtype, torch.float32)  # fp32 under autocast (float64 stays float64)
    z1, z2, targets = z1.to(dtype), z2.to(dtype), targets.to(dtype)
    b, n = targets.shape

    def asl(z: torch.Tensor) -> torch.Tensor:
        terms = asymmetric_loss(z, targets, c.gamma_neg, c.gamma_pos, c.asl_clip, c.asl_eps)
        return -terms.sum() / b / n * c.asl_scale

    single = target_calibration(z1, z2, targets, c.asl_eps)
    if c.single_term == "constant":
        single = single.detach()
    calibration = c.alpha * overall_calibration(z1, z2, c.asl_eps) + (1.0 - c.alpha) * single
    return asl(z1) + asl(z2) + calibration + relation_preserving(h1, h2, c.tau, c.asl_eps)


# -- the method ------------------------------------------------------------------------------------------------------
class LabCR(Query2Label):
    name = "labcr"
    family, display_name = "Intention methods", "LabCR"
    Config = LabCRConfig
    VARIANTS: dict[str, dict[str, Any]] = {}

    def __init__(self, config: LabCRConfig, backbone, data, device) -> None:
        super().__init__(config, backbone, data, device)  # the Query2Label network, EMA, optimizer, RandAugment
        self._train_forward = self.maybe_compile(LogitsAndLabelFeatures(self.model))

    # -- inputs ------------------------------------------------------------------------------------------------
    def _augment_view(self, batch: torch.Tensor) -> torch.Tensor:
        if self.config.cutout:
            batch = dot_cutout(batch)
        return self._randaugment(batch) if self._randaugment is not None else batch

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, H, W, 3]`` -> normalised float input. While training (model in train mode) every image gives
        two views, each with its own augmentation draw: ``[2B, 3, H, W]``, all first views, then all second views
        (identical views when ``augment`` is off)."""
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if self.preprocessing in ("official", "imagenet") else (
            self.backbone.mean, self.backbone.std)
        if self.model.training:
            batch = to_device(torch.as_tensor(images), self.device).permute(0, 3, 1, 2)
            if self.config.augment:
                views = [self._augment_view(batch), self._augment_view(batch)]
            else:
                views = [batch, batch]
            images = torch.cat(views).permute(0, 2, 3, 1)
        return to_model_input(images, mean, std, "clip", self.device, self.channels_last)

    # -- training ----------------------------------------------------------------------------------------------
    def training_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``images``: both views of the batch as :meth:`prepare` stacks them (``[2B, 3, H, W]``); ``labels``: the
        batch's ``[B, C]`` targets (or ``[B]`` class indices). The mean of the groups' :func:`labcr_loss`."""
        b = labels.shape[0]
        if images.shape[0] != 2 * b:
            raise ValueError(
                f"{self.name}: training_loss needs two views per image ([2B, 3, H, W], as prepare() gives in "
                f"training mode), got {images.shape[0]} images for {b} labels"
            )
        logits, label_features = self._train_forward(images)
        targets = self._targets(labels)
        size = self.config.relation_group_size or b
        losses = []
        for start in range(0, b, size):
            group = slice(start, min(start + size, b))
            second = slice(b + group.start, b + group.stop)
            z1, z2, h1, h2 = logits[group], logits[second], label_features[group], label_features[second]
            losses.append(labcr_loss(z1, z2, h1, h2, targets[group], self.config))
        return torch.stack(losses).mean()
