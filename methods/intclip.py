"""IntCLIP (Yang, Ye, Tao, "Synergy of Sight and Semantics: Visual Intention Understanding with CLIP", ECCV 2024).

SPEC 3.1, read top to bottom like the paper:
1. Sight-semantic image encoding (SIE): one CLIP visual tower, split where the semantic layers begin. The shared
   part (stem, layer1, layer2 for RN101) and the sight branch (the remaining layers) stay frozen; the semantic branch
   is a trainable deep copy of the remaining layers. Both branches pool DualCoOp-style into 1 + HW dense tokens
   through the frozen attnpool projections.
2. Sight-assisted aggregation (SA): Q, K from the semantic map, V from the sight map, no 1/sqrt(d) scaling,
   out = gamma * V A^T + (sight + semantic) / 2 with gamma = 0 at init; the semantic branch's global (mean) token
   goes in front (the official code takes its top-left spatial token: ``global_token = "semantic-top-left"``).
3. Prompts: class-specific positive/negative contexts with the class text of Hierarchical Class Integration (HCI).
4. Head: class-specific region aggregation, p_k = sigmoid(logit^+_k - logit^-_k); loss: ASL in fp32.

Learnable parameters for RN101 and 28 classes: semantic layer4 (14,964,736) + SA (328,321) + prompts (458,752)
= 15,751,809 (the paper's 15.7M); the official code also trains the layer3 copy (+26,090,496 = 41,842,305).
ViT-B/32: the semantic branch copies the last 3 transformer blocks; tokens are the projected patch tokens and CLS.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from bench.methods.base import Method
from bench.methods.components import (
    PromptLearner,
    PromptScoring,
    PromptTrainingConfig,
    dense_tokens,
    prompt_features,
    region_aggregation,
    warmup_cosine,
)

RESNET_LAYERS = ("layer1", "layer2", "layer3", "layer4")


class IntCLIPConfig(PromptTrainingConfig):
    presets = {
        # The paper text: lr 0.002, 50 epochs, batch 32.
        "paper": {"lr_prompt": 0.002, "lr_visual": 0.002, "epochs": 50, "batch_size": 32},
        # The released code: every behaviour it has, including its quirks.
        "official": {
            "lr_prompt": 4e-4,
            "lr_visual": 4e-5,
            "epochs": 60,
            "batch_size": 64,
            "semantic_layers": ["layer3", "layer4"],
            "global_token": "semantic-top-left",
            "preprocessing": "official",
            # torch.cuda.amp.autocast() (fp16) without a GradScaler, as utils/trainers.py trains
            "autocast": "fp16",
            "loss_scaling": "off",
            # dataloaders/intenton.py trains on Resize, CutoutPIL(0.5), RandAugment
            "augment": "cutout-randaugment",
        },
    }

    search_space = {
        "lr_prompt": ("loguniform", 1e-4, 1e-2),
        "lr_visual": ("loguniform", 1e-5, 1e-2),
        "weight_decay": ("loguniform", 1e-5, 1e-3),
        "batch_size": ("choice", [32, 64]),
        "gamma_neg": ("choice", [1.0, 2.0, 4.0]),
    }

    preset: str | None = "paper"
    # SIE
    branches: Literal["dual", "single"] = "dual"
    trained_layers: Literal["semantic", "none", "all"] = "semantic"
    semantic_layers: list[Literal["layer1", "layer2", "layer3", "layer4"]] = Field(default_factory=lambda: ["layer4"])
    vit_semantic_blocks: int = Field(default=3, gt=0)
    # SA
    fusion: Literal["sa", "add", "concat-mlp"] = "sa"
    global_token: Literal["semantic-mean", "semantic-top-left"] = "semantic-mean"
    # prompts and HCI
    class_text: Literal["hci", "name", "hierarchy"] = "hci"
    # optimisation (the rest, and the ASL settings, in PromptTrainingConfig)
    lr_prompt: float = Field(default=0.002, gt=0)
    lr_visual: float = Field(default=0.002, gt=0)


# -- SIE: splitting a CLIP visual tower -------------------------------------------------------------------------
class ResNetStem(nn.Module):
    """The ModifiedResNet stem as a module (three convs, then average pooling)."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        names = ("conv1", "bn1", "act1", "conv2", "bn2", "act2", "conv3", "bn3", "act3", "avgpool")
        self.layers = nn.Sequential(*(getattr(visual, n) for n in names))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ViTEmbed(nn.Module):
    """Patch embedding, class token, positional embedding and ln_pre of an open_clip VisionTransformer."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.conv1, self.ln_pre = visual.conv1, visual.ln_pre
        self.class_embedding, self.positional_embedding = visual.class_embedding, visual.positional_embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x)


def split_visual(visual: nn.Module, config: IntCLIPConfig) -> tuple[nn.Module, nn.Module]:
    """(shared trunk, deeper part) of the visual tower; the deeper part is what the branches hold."""
    if hasattr(visual, "attnpool"):  # ModifiedResNet
        stages: list[nn.Module] = [ResNetStem(visual)] + [getattr(visual, n) for n in RESNET_LAYERS]
        first = 0 if config.trained_layers == "all" else 1 + min(RESNET_LAYERS.index(n) for n in config.semantic_layers)
    else:  # VisionTransformer
        blocks = list(visual.transformer.resblocks)
        stages = [ViTEmbed(visual)] + blocks
        first = 0 if config.trained_layers == "all" else len(stages) - config.vit_semantic_blocks
    return nn.Sequential(*stages[:first]), nn.Sequential(*stages[first:])


class VisualTokens(nn.Module):
    """Frozen projection of a branch's output to tokens ``[B, 1 + N, D]`` (token 0 global, then spatial)."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.is_resnet = hasattr(visual, "attnpool")
        if self.is_resnet:
            self.attnpool = visual.attnpool
        else:
            self.ln_post, self.proj = visual.ln_post, visual.proj

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        if self.is_resnet:
            h, w = x.shape[-2:]
            return dense_tokens(self.attnpool, x), (h, w)
        side = int((x.shape[1] - 1) ** 0.5)
        return self.ln_post(x) @ self.proj, (side, side)


# -- SA ----------------------------------------------------------------------------------------------------------
class SightAssistedAggregation(nn.Module):
    """SA on the spatial token maps: Q, K from semantic (C -> C/8), V from sight (C -> C), 1x1 convs with bias."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Conv2d(dim, dim // 8, 1)
        self.key = nn.Conv2d(dim, dim // 8, 1)
        self.value = nn.Conv2d(dim, dim, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, sight: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        """``sight``, ``semantic``: ``[B, C, H, W]`` -> fused ``[B, C, H, W]``."""
        b, c, h, w = sight.shape
        q = self.query(semantic).flatten(2)  # [B, C/8, N]
        k = self.key(semantic).flatten(2)
        v = self.value(sight).flatten(2)  # [B, C, N]
        attention = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # [B, N(query), N(key)], no 1/sqrt(d)
        out = (v @ attention.transpose(1, 2)).view(b, c, h, w)
        return self.gamma * out + (sight + semantic) / 2


class AddFusion(nn.Module):
    """Ablation: the branch average (what SA is at gamma = 0)."""

    def forward(self, sight: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        return (sight + semantic) / 2


class ConcatMLPFusion(nn.Module):
    """Ablation: a per-token MLP on the concatenated branches (2C -> C -> C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv2d(2 * dim, dim, 1), nn.GELU(), nn.Conv2d(dim, dim, 1))

    def forward(self, sight: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([sight, semantic], dim=1))


# -- HCI ---------------------------------------------------------------------------------------------------------
def class_texts(classes: list, mode: str) -> list[str]:
    """HCI sentence, fine-grained name, or the consolidated "coarse, middle, fine" names."""
    if mode == "hci":
        return [c.sentence for c in classes]
    if mode == "name":
        return [c.name for c in classes]
    return [", ".join([*c.hierarchy, c.name]) for c in classes]


# -- the model ---------------------------------------------------------------------------------------------------
def make_fusion(kind: str, dim: int) -> nn.Module:
    """The module that merges the sight and semantic maps (Table 5): ``sa`` sight-assisted aggregation (the
    paper's), ``add`` a plain sum, ``concat-mlp`` concatenation then an MLP."""
    if kind == "sa":
        return SightAssistedAggregation(dim)
    if kind == "add":
        return AddFusion()
    if kind == "concat-mlp":
        return ConcatMLPFusion(dim)
    raise ValueError(f"intclip: unknown fusion {kind!r} (expected sa, add or concat-mlp)")


class IntCLIPNet(nn.Module):
    def __init__(self, clip: nn.Module, tokenizer, texts: list[str], config: IntCLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.clip = clip.requires_grad_(False)  # explicitly frozen, text tower included
        visual = clip.visual
        self.shared, deeper = split_visual(visual, config)
        self.tokens = VisualTokens(visual)
        dual = config.branches == "dual"
        self.sight = deeper if dual else None
        self.semantic = copy.deepcopy(deeper) if dual else deeper
        self.semantic.requires_grad_(config.trained_layers != "none")
        dim = int(visual.attnpool.c_proj.out_features if hasattr(visual, "attnpool") else visual.proj.shape[1])
        self.fusion = make_fusion(config.fusion, dim) if dual else None
        self.prompts = PromptLearner(clip, tokenizer, texts, config.n_ctx, csc=True, init_std=config.ctx_init_std)

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Dense tokens ``[B, 1 + HW, D]`` after SIE and fusion."""
        with torch.no_grad():  # the shared trunk and the sight branch are frozen: no activations kept
            shared = self.shared(images)
            sight = self.tokens(self.sight(shared))[0] if self.sight is not None else None
        semantic, (h, w) = self.tokens(self.semantic(shared))
        if sight is None:
            return semantic
        to_map = lambda t: t[:, 1:].transpose(1, 2).reshape(t.shape[0], -1, h, w)  # noqa: E731
        fused = self.fusion(to_map(sight), to_map(semantic)).flatten(2).transpose(1, 2)
        front = semantic[:, :1] if self.config.global_token == "semantic-mean" else semantic[:, 1:2]
        return torch.cat([front, fused], dim=1)

    def text_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        return prompt_features(self.clip, self.prompts, self.config.truncate_text)

    def forward(self, images: torch.Tensor, text: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return region_aggregation(self.image_tokens(images), *(text or self.text_features()))


class IntCLIP(PromptScoring, Method):
    name = "intclip"
    family, display_name = "IntCLIP", "IntCLIP"
    Config = IntCLIPConfig
    image_towers = ("resnet", "vit")  # any open_clip ModifiedResNet or class-token VisionTransformer
    clip_text = True
    VARIANTS = {
        "official": {"preset": "official"},
        # Table 2
        "no-hci": {"class_text": "name"},
        "consolidated": {"class_text": "hierarchy"},
        "no-sa": {"fusion": "add"},
        "no-sie-sa": {"branches": "single", "trained_layers": "none"},
        # Table 4: branches x trained layers
        **{f"{b}-{t}": {"branches": b, "trained_layers": t} for b in ("single", "dual") for t in ("none", "all", "semantic")},
        # Table 5: fusion
        "fusion-add": {"fusion": "add"},
        "fusion-concat-mlp": {"fusion": "concat-mlp"},
    }

    def __init__(self, config: IntCLIPConfig, backbone, data, device) -> None:
        super().__init__(config, backbone, data, device)
        missing = [c.key for c in data.classes if config.class_text == "hci" and not c.sentence]
        if missing:
            raise ValueError(f"intclip: class_text='hci' needs a sentence for every class; missing for {missing[:5]}")
        self.net = IntCLIPNet(backbone.model, backbone.tokenizer, class_texts(data.classes, config.class_text), config).to(device)
        self.model = self.net
        self.setup_augment(config)
        self.apply_memory_format()
        self._forward = self.maybe_compile(self.net)  # the net itself unless `compile` is on
        self._eval_text: tuple[torch.Tensor, torch.Tensor] | None = None

    def param_groups(self) -> list[dict[str, Any]]:
        prompts = [p for p in self.net.prompts.parameters() if p.requires_grad]
        prompt_ids = {id(p) for p in prompts}
        visual = [p for p in self.net.parameters() if p.requires_grad and id(p) not in prompt_ids]
        groups = [{"params": prompts, "lr": self.config.lr_prompt, "name": "prompts"}]
        if visual:
            groups.append({"params": visual, "lr": self.config.lr_visual, "name": "semantic+fusion"})
        return groups

    def configure_optimizers(self, steps_per_epoch: int):
        c = self.config
        optimizer = torch.optim.SGD(
            self.param_groups(), lr=c.lr_prompt, momentum=c.momentum, weight_decay=c.weight_decay, **self.optimizer_options()
        )
        return optimizer, warmup_cosine(optimizer, c.epochs, c.warmup_epochs, c.warmup_lr)

    def train(self, mode: bool = True) -> None:
        self.net.train(mode)
        for module in self.net.modules():  # BatchNorm running statistics stay frozen
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        self._eval_text = None

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.config.loss(*self._forward(images), labels)

    def text_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.text_features()

    def logits(self, images: torch.Tensor, text: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self._forward(images, text)


IntCLIPOfficial = IntCLIP.variant("official", name="intclip-official", display_name="IntCLIP (released code)")
