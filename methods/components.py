"""Building blocks shared by the prompt-learning methods (DualCoOp, IntCLIP).

- :class:`PromptLearner`: per class a positive and a negative learnable context ("X x n_ctx <class text>.").
- :func:`encode_prompts`: the frozen CLIP text tower on prompt embeddings, run only up to the longest prompt's EOT
  token (attention is causal, so the EOT features are identical to a full 77-token pass).
- :func:`dense_tokens`: DualCoOp's attention-free pooling of a ResNet feature map into 1 + HW projected tokens.
- :func:`region_aggregation`: the class-specific region aggregation head.
- :func:`asymmetric_loss`: ASL on the 2-way (negative, positive) softmax, always in fp32.
- :func:`warmup_cosine`: Dassl's constant warmup epoch, then cosine per epoch (the released code's schedule).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bench.datasets.subsets import UNOBSERVED
from bench.train.batches import to_device
from bench.methods.augment import TrainAugment
from bench.methods.base import TrainConfig

PROMPT_FILLER = "X"


class PromptTrainingConfig(TrainConfig):
    """What DualCoOp and IntCLIP share: prompt contexts, SGD with warmup + cosine, and the ASL settings."""

    epochs: int = Field(default=50, gt=0)
    batch_size: int = Field(default=32, gt=0)
    n_ctx: int = Field(default=16, gt=0)
    ctx_init_std: float = Field(default=0.02, gt=0)
    truncate_text: bool = True  # exact: causal attention ends at the longest prompt's EOT
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0)
    warmup_epochs: int = Field(default=1, ge=0)
    warmup_lr: float = Field(default=1e-5, ge=0)
    gamma_neg: float = Field(default=2.0, ge=0)
    gamma_pos: float = Field(default=1.0, ge=0)
    asl_clip: float = Field(default=0.05, ge=0, lt=1)
    asl_eps: float = Field(default=1e-6, gt=0, lt=1)
    loss_weight: float = Field(default=0.03, gt=0)
    # training augmentation on the device: none, or the DualCoOp / released IntCLIP train transform (Cutout at half
    # the side with a random colour, then RandAugment with ``randaugment_ops`` operations at ``randaugment_magnitude``)
    augment: Literal["none", "cutout-randaugment"] = "none"
    cutout_factor: float = Field(default=0.5, gt=0, le=1)
    randaugment_ops: int = Field(default=2, ge=0)
    randaugment_magnitude: int = Field(default=9, ge=0, le=30)

    def loss(self, logit_pos: torch.Tensor, logit_neg: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``loss_weight`` x ASL with these settings. Single-label datasets (EmotionROI, FI) give class indices
        ``[B]``: the loss sees them one-hot, as multi-label targets with one positive (the released code is
        multi-label only; prediction is the argmax of the margins)."""
        if labels.ndim == 1:
            labels = F.one_hot(labels.long(), logit_pos.shape[1]).to(logit_pos.dtype)
        return self.loss_weight * asymmetric_loss(
            logit_pos, logit_neg, labels, self.gamma_neg, self.gamma_pos, self.asl_clip, self.asl_eps
        )


class PromptLearner(nn.Module):
    """Learnable positive/negative contexts, class-specific (``csc``) or shared, initialised N(0, std)."""

    def __init__(self, clip: nn.Module, tokenizer, class_texts: list[str], n_ctx: int = 16, csc: bool = True, init_std: float = 0.02):
        super().__init__()
        width = clip.token_embedding.weight.shape[1]
        n_cls = len(class_texts) if csc else 1
        self.ctx_pos = nn.Parameter(torch.empty(n_cls, n_ctx, width).normal_(0.0, init_std))
        self.ctx_neg = nn.Parameter(torch.empty(n_cls, n_ctx, width).normal_(0.0, init_std))
        self.num_classes, self.n_ctx = len(class_texts), n_ctx
        texts = [" ".join([PROMPT_FILLER] * n_ctx) + " " + t.rstrip(".") + "." for t in class_texts]
        tokens = tokenizer(texts)
        with torch.no_grad():
            embedding = clip.token_embedding(tokens).float()
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("prefix", embedding[:, :1], persistent=False)  # SOT
        self.register_buffer("suffix", embedding[:, 1 + n_ctx :], persistent=False)  # class text, ".", EOT, pad
        self.text_length = int(tokens.argmax(dim=-1).max()) + 1  # positions up to the longest prompt's EOT

    def forward(self, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt embeddings ``[C, L, W]`` for the positive and the negative contexts: all the tokenizer's
        positions, or only the first ``length`` (nothing past them is built)."""
        expand = (self.num_classes, -1, -1)
        suffix = self.suffix if length is None else self.suffix[:, : max(length - 1 - self.n_ctx, 0)]
        pos = torch.cat([self.prefix, self.ctx_pos.expand(*expand), suffix], dim=1)
        neg = torch.cat([self.prefix, self.ctx_neg.expand(*expand), suffix], dim=1)
        return pos, neg


def prompt_features(clip: nn.Module, prompts: PromptLearner, truncate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative prompt features ``[C, D]`` through the frozen text tower (one batched pass; with
    ``truncate``, the prompts are built and encoded only up to the longest one's EOT)."""
    length = prompts.text_length if truncate else None
    pos, neg = prompts(length)
    tokens = torch.cat([prompts.tokens, prompts.tokens])
    feats = encode_prompts(clip, torch.cat([pos, neg]), tokens, truncate, length)
    return feats[: len(pos)], feats[len(pos) :]


def encode_prompts(
    clip: nn.Module, embeddings: torch.Tensor, tokens: torch.Tensor, truncate: bool = True, length: int | None = None
) -> torch.Tensor:
    """EOT features of the text tower for prompt ``embeddings`` ``[P, L, W]`` (tokens give the EOT positions),
    projected; with ``truncate`` the tower only sees positions up to the longest prompt's EOT (``length`` when the
    caller knows it, which saves reading the EOT positions back from the GPU)."""
    eot = tokens.argmax(dim=-1)
    if not truncate:
        length = embeddings.shape[1]
    elif length is None:
        length = int(eot.max()) + 1
    x = embeddings[:, :length] + clip.positional_embedding[:length].to(embeddings.dtype)
    mask = clip.attn_mask[:length, :length] if clip.attn_mask is not None else None
    x = clip.ln_final(clip.transformer(x, attn_mask=mask))
    x = x[torch.arange(x.shape[0], device=x.device), eot]
    return x @ clip.text_projection if not isinstance(clip.text_projection, nn.Linear) else clip.text_projection(x)


def resnet_trunk(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """ModifiedResNet stem + layer1..layer4: the final feature map ``[B, C, H, W]``."""
    x = visual.stem(images)
    for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
        x = layer(x)
    return x


def positional_embedding(attnpool: nn.Module, h: int, w: int) -> torch.Tensor:
    """The attnpool's positional embedding ``[1 + HW, C]``, bicubically resized when the map is not the
    pretraining size."""
    pos = attnpool.positional_embedding
    grid = int(math.isqrt(pos.shape[0] - 1))
    if grid * grid == h * w and grid == h:
        return pos
    spatial = pos[1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    spatial = F.interpolate(spatial.float(), size=(h, w), mode="bicubic", align_corners=False).to(pos.dtype)
    return torch.cat([pos[:1], spatial.permute(0, 2, 3, 1).reshape(h * w, -1)])


def dense_tokens(attnpool: nn.Module, feature_map: torch.Tensor) -> torch.Tensor:
    """DualCoOp pooling: [mean token, HW spatial tokens] + positional embedding, then ``c_proj(v_proj(.))`` on
    every token, no attention. Returns ``[B, 1 + HW, D]``."""
    b, c, h, w = feature_map.shape
    x = feature_map.flatten(2).transpose(1, 2)  # [B, HW, C]
    x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
    x = x + positional_embedding(attnpool, h, w).to(x.dtype)
    return attnpool.c_proj(attnpool.v_proj(x))


def region_aggregation(
    tokens: torch.Tensor, text_pos: torch.Tensor, text_neg: torch.Tensor, region_scale: float = 20.0, logit_scale: float = 5.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-specific region aggregation. ``tokens`` ``[B, R, D]``, prompt features ``[C, D]``.

    s^{+/-}_{k,r} = 20 <f_r, t^{+/-}_k>;  w_{k,r} = softmax_r(s^+_{k,r});  logit^{+/-}_k = 5 sum_r w_{k,r} s^{+/-}_{k,r}.
    Returns (logit_pos, logit_neg), each ``[B, C]``; the class probability is sigmoid(logit_pos - logit_neg).
    """
    f = F.normalize(tokens, dim=-1)
    s_pos = region_scale * f @ F.normalize(text_pos, dim=-1).T  # [B, R, C]
    s_neg = region_scale * f @ F.normalize(text_neg, dim=-1).T
    region_weights = s_pos.softmax(dim=1)
    return logit_scale * (region_weights * s_pos).sum(dim=1), logit_scale * (region_weights * s_neg).sum(dim=1)


class PromptScoring:
    """Eval of the prompt methods (DualCoOp, IntCLIP), mixed in before ``Method``: the prompt features are constant
    while evaluating, so ``start_eval`` computes them once per pass (``train()`` drops them again), and a score is
    sigmoid(logit+ - logit-), and what ranks is the margin logit+ - logit- itself (float64: the sigmoid saturates to
    exactly 1.0 in float32 for margins above ~17). The class provides ``text_features()`` and ``logits(images, text)``."""

    _eval_text: tuple[torch.Tensor, torch.Tensor] | None = None
    _augment: TrainAugment | None = None

    @property
    def augmenting(self) -> bool:
        """Whether the trained part is in training mode (then batches are augmented)."""
        return self.model.training

    def setup_augment(self, config: PromptTrainingConfig) -> None:
        self._augment = None
        if config.augment == "cutout-randaugment":
            self._augment = TrainAugment(config.cutout_factor, config.randaugment_ops, config.randaugment_magnitude)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, H, W, 3]`` -> model input; training batches first get the configured augmentation, on the
        device, one draw per image."""
        if self._augment is not None and self.augmenting:
            batch = to_device(torch.as_tensor(images), self.device).permute(0, 3, 1, 2)
            images = self._augment(batch).permute(0, 2, 3, 1)
        return super().prepare(images)

    @torch.no_grad()
    def start_eval(self) -> None:
        self._eval_text = self.text_features()

    @torch.no_grad()
    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        if self._eval_text is None:
            self.start_eval()
        logit_pos, logit_neg = self.logits(images, self._eval_text)
        return logit_pos.double() - logit_neg.double()


def asymmetric_loss_terms(
    p_pos: torch.Tensor, labels: torch.Tensor, gamma_neg: float, gamma_pos: float, clip: float, eps: float,
    fp32: bool = True,
) -> torch.Tensor:
    """Element-wise ASL log-likelihood (to be negated and reduced) from positive-class probabilities, in fp32
    (``fp32=False``: in the inputs' own precision, as LabCR's released loss computes it).

    p_m = min(1 - p + clip, 1) (clip > 0) or 1 - p;
    l = y log(max(p, eps)) (1 - p)^gamma_pos + (1 - y) log(max(p_m, eps)) (1 - p_m)^gamma_neg, the focusing
    weights detached.
    """
    p_pos, y = (p_pos.float(), labels.float()) if fp32 else (p_pos, labels)
    p_neg = 1.0 - p_pos
    if clip > 0:
        p_neg = (p_neg + clip).clamp(max=1.0)
    loss = y * torch.log(p_pos.clamp(min=eps)) + (1.0 - y) * torch.log(p_neg.clamp(min=eps))
    if gamma_neg == 0 and gamma_pos == 0:
        return loss
    with torch.no_grad():
        p_t = p_pos * y + p_neg * (1.0 - y)
        weight = torch.pow(1.0 - p_t, gamma_pos * y + gamma_neg * (1.0 - y))
    return loss * weight


def asymmetric_loss(
    logit_pos: torch.Tensor,
    logit_neg: torch.Tensor,
    labels: torch.Tensor,
    gamma_neg: float = 2.0,
    gamma_pos: float = 1.0,
    clip: float = 0.05,
    eps: float = 1e-6,
) -> torch.Tensor:
    """DualCoOp/IntCLIP ASL on the 2-way softmax over (negative, positive), summed; in fp32 (fp16's eps underflows
    to NaN). Labels of -1 (:data:`bench.datasets.subsets.UNOBSERVED`, partial labels) add nothing, as the released
    DualCoOp code drops them from the sum; with every label observed the sum is bit for bit the plain one."""
    p_pos = torch.softmax(torch.stack([logit_neg.float(), logit_pos.float()], dim=-1), dim=-1)[..., 1]
    observed = labels != UNOBSERVED
    terms = asymmetric_loss_terms(p_pos, labels.clamp(min=0), gamma_neg, gamma_pos, clip, eps)
    return -torch.where(observed, terms, torch.zeros_like(terms)).sum()


def warmup_cosine(optimizer: torch.optim.Optimizer, epochs: int, warmup_epochs: int = 1, warmup_lr: float = 1e-5):
    """Per-epoch schedule of the released DualCoOp/IntCLIP code (Dassl's ``ConstantWarmupScheduler`` around
    ``CosineAnnealingLR(T_max=epochs)``, warmup recounted): ``warmup_epochs`` at the constant ``warmup_lr``, then the
    cosine starts from each group's base lr, so epoch e >= warmup gets base x 0.5 (1 + cos(pi (e - warmup) / epochs)).
    With one warmup epoch of 60: 4.000e-4 at e = 1, 2.105e-4 at e = 30, 1.096e-6 at e = 59 for a base of 4e-4."""

    def factor(base_lr: float):
        def f(epoch: int) -> float:
            if epoch < warmup_epochs:
                return warmup_lr / base_lr
            return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / epochs))

        return f

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor(g["lr"]) for g in optimizer.param_groups])
