"""PIP-Net (Wang et al., "Prototype-based intent perception", IEEE TMM 2023) as its released code trains it
(github.com/CodeMonsterPHD/PIP-Net: tools/main.py, lib/core, lib/criterion, lib/utils, lib/models/network.py).

Model: an ImageNet ResNet-50 (timm's ``resnet50.tv_in1k``: the torchvision weights the released code loads),
globally average-pooled to f, and K = 4 prototypes per class. Class c scores z_c = max_k cos(f / sum(f), p_ck) / T
(T = 0.15); the loss is the cross-entropy of softmax(z) against the label vector scaled to sum 1; an image's scores
are softmax(z). (``predict_logits`` returns their log-odds z_c - logsumexp_{j != c} z_j, so the harness's sigmoid
gives the softmax exactly and ranks as it does.) The trunk trains with SGD (momentum 0.9) per batch, lr x 1/10
(stem), 1/8, 1/6, 1/4, 1/2 (layer1..4), lr 1e-3, MultiStepLR at epochs 20 and 30 (x 0.1); 40 epochs of 64 images
with RandomRotation(5), a horizontal flip and RandomCrop(padding 10), ImageNet normalisation, fp32.

The prototypes get no gradient from the loss (detached); they are rebuilt between epochs, outside it:

1. Before training, from one pass over the train images (train augmentation, eval mode): per class, the features
   y_ic f_i of its images (y_ic > 0, and y_ic != 1/3 with soft labels), the 20% least cosine-similar to their mean
   dropped, the rest divided by their sums, k-means (scikit-learn, K clusters, 10 inits) -> the class's K centres.
2. After each epoch e >= 1: a new pass, the same clustering over every pass so far (``feature_bank="accumulate"``:
   the released code appends every pass to one list it never clears), then prototype k <- 0.999 p_k + 0.001 c_j,
   where ``linear_sum_assignment`` pairs k with centre j on their cosine matrix, *minimised* as the released code
   calls it, i.e. each prototype with a least similar centre (``matching="max-cosine"`` pairs the most similar).
3. Then one Adam step (lr 1e-3) on ||cos(M)||_F, M the class means of the prototypes (the diversity loss). The
   released code hands Adam a new Parameter after the first epoch (``Mydata.update``), so only the step after epoch 0
   reaches the prototypes (``diversity_steps="first"``; ``"every"`` steps every epoch).

The engine steps the scheduler once per epoch, after training and before val: :class:`PrototypeSchedule` does steps
2 and 3 there; the first train() builds the prototypes (step 1). Learnable parameters, what the two optimisers hold,
for ResNet-50 and 28 classes: 23,508,032 (trunk: torchvision's resnet50 without fc) + 28 x 4 x 2048 = 229,376
(prototypes) = 23,737,408. tests/methods/test_pipnet.py checks the whole against a float64 re-derivation.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
import torch.nn.functional as F
from bench.methods.base import Method, TrainConfig
from bench.methods.trunks import ResNetTrunk, clip_trunk, timm_trunk
from pydantic import Field, model_validator
from torch import nn

from bench.data import batch_indices, prefetch_batches, to_device, to_model_input
from bench.errors import WeightsNotFoundError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TINY_BACKBONE = "tiny-clip"
STAGE_LR = (("stem", 1 / 10), ("layer1", 1 / 8), ("layer2", 1 / 6), ("layer3", 1 / 4), ("layer4", 1 / 2))
ONE_THIRD = 1 / 3  # soft labels of one annotator in three: kept in the loss, left out of the prototypes

OFFICIAL = {  # tools/main.py and lib/config/para.py (main() overrides found_lr 5e-3 -> 1e-3)
    "epochs": 40, "batch_size": 64, "lr": 1e-3, "lr_prototype": 1e-3, "momentum": 0.9, "weight_decay": 0.0,
    "milestones": [20, 30], "gamma": 0.1, "temperature": 0.15, "components": 4, "discard_rate": 0.2,
    "prototype_momentum": 0.999, "kmeans_n_init": 10, "matching": "min-cosine", "feature_bank": "accumulate",
    "diversity_steps": "first", "augment": True, "rotation": 5.0, "flip": 0.5, "crop_padding": 10,
    "autocast": "off",  # the released code trains in fp32
}


class PIPNetConfig(TrainConfig):
    presets = {"official": OFFICIAL}
    search_space = {
        "lr": ("loguniform", 1e-4, 1e-2),
        "lr_prototype": ("loguniform", 1e-4, 1e-2),
        "temperature": ("uniform", 0.05, 0.5),
    }

    preset: str | None = "official"
    preprocessing: Literal["auto", "clip", "imagenet"] = "auto"  # auto: imagenet (timm), clip (clip)
    trunk: Literal["auto", "timm", "clip"] = "auto"  # auto: clip on the tiny CLIP, timm elsewhere
    timm_model: str = "resnet50.tv_in1k"
    timm_pretrained: bool = True
    timm_checkpoint: str | None = None  # local .pth/.safetensors ResNet state dict (timm or torchvision names)
    # prototypes
    components: int = Field(default=4, gt=0)
    temperature: float = Field(default=0.15, gt=0)
    discard_rate: float = Field(default=0.2, ge=0, lt=1)
    prototype_momentum: float = Field(default=0.999, ge=0, le=1)
    kmeans_n_init: int = Field(default=10, gt=0)
    matching: Literal["min-cosine", "max-cosine"] = "min-cosine"
    feature_bank: Literal["accumulate", "current"] = "accumulate"
    diversity_steps: Literal["first", "every", "none"] = "first"
    # optimisation
    epochs: int = Field(default=40, gt=0)
    batch_size: int = Field(default=64, gt=0)
    lr: float = Field(default=1e-3, gt=0)
    lr_prototype: float = Field(default=1e-3, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    milestones: list[int] = Field(default_factory=lambda: [20, 30])
    gamma: float = Field(default=0.1, gt=0)
    # augmentation (train batches and the prototype passes)
    augment: bool = True
    rotation: float = Field(default=5.0, ge=0, le=180)
    flip: float = Field(default=0.5, ge=0, le=1)
    crop_padding: int = Field(default=10, ge=0)

    @model_validator(mode="after")
    def _check_milestones(self) -> PIPNetConfig:
        if any(m <= 0 for m in self.milestones) or self.milestones != sorted(self.milestones):
            raise ValueError(f"milestones must be increasing positive epochs, got {self.milestones}")
        return self


# -- the mathematics -------------------------------------------------------------------------------------------------
def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The released ``cosine``: (a b^T) / (|a| |b|^T), no epsilon."""
    return (a @ b.T) / (a.norm(dim=1, keepdim=True) @ b.norm(dim=1, keepdim=True).T)


def prototype_logits(features: torch.Tensor, prototypes: torch.Tensor, num_classes: int, temperature: float) -> torch.Tensor:
    """z ``[B, C]``: per class the largest cosine of the L1-normalised features with its K prototypes (rows
    c*K .. c*K + K - 1), over T; float32, outside autocast."""
    with torch.autocast(features.device.type, enabled=False):
        x = features.float()
        x = x / x.sum(dim=1, keepdim=True)
        cos = cosine_matrix(x, prototypes.to(x.dtype))
        return cos.view(len(x), num_classes, -1).max(dim=2).values / temperature


def soft_target_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-mean_b sum_c t_bc log softmax(z_b)_c with t = y / sum(y), in float64 as the released code's float64 targets
    make it. A row without any label (none in Intentonomy; the released code would divide by zero) adds 0."""
    y = labels.double()
    total = y.sum(dim=1, keepdim=True)
    target = torch.where(total > 0, y / total.clamp(min=torch.finfo(y.dtype).tiny), torch.zeros_like(y))
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def softmax_log_odds(logits: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)) of p = softmax(z), exactly and without cancellation: z_c - logsumexp_{j != c} z_j."""
    c = logits.shape[1]
    eye = torch.eye(c, dtype=torch.bool, device=logits.device)
    others = logits.unsqueeze(1).expand(-1, c, -1).masked_fill(eye, float("-inf"))
    return logits - torch.logsumexp(others, dim=2)


def cluster_class(rows: torch.Tensor, components: int, discard_rate: float, n_init: int, threads: int = 1) -> torch.Tensor:
    """``cluster_by_cosine``: drop the ``discard_rate`` of rows least cosine-similar to their mean, divide each row by
    its sum, k-means -> ``[K, D]`` float64 centres. Fewer than K rows left (the released code stops there): the rows
    repeated in turn. k-means draws from NumPy's global generator (seeded by the engine, saved by checkpoints); with
    more than 2 ``threads`` its sums are added in the order the threads finish (not bit-reproducible)."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    similarity = cosine_matrix(rows, rows.mean(dim=0, keepdim=True))[:, 0]
    order = torch.sort(similarity, stable=True).indices
    rows = rows[order[int(discard_rate * len(rows)) :]]
    rows = rows / rows.sum(dim=1, keepdim=True)
    if len(rows) < components:
        return rows[torch.arange(components) % len(rows)].clone()
    with threadpool_limits(limits=threads), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on duplicate rows
        km = KMeans(n_clusters=components, n_init=n_init, algorithm="lloyd", random_state=None).fit(rows.numpy())
    return torch.from_numpy(km.cluster_centers_).double()


def merge_prototypes(old: torch.Tensor, new: torch.Tensor, components: int, momentum: float, maximize: bool) -> torch.Tensor:
    """``ele_sum``: per class, prototype k <- momentum p_k + (1 - momentum) c_j, j paired with k by
    ``linear_sum_assignment`` on the cosine matrix (minimised unless ``maximize``)."""
    from scipy.optimize import linear_sum_assignment

    out = torch.empty_like(old)
    for start in range(0, len(old), components):
        o, n = old[start : start + components], new[start : start + components]
        rows, cols = linear_sum_assignment(cosine_matrix(o, n).numpy(), maximize=maximize)
        out[start + rows] = momentum * o[rows] + (1 - momentum) * n[cols]
    return out


def diversity_loss(prototypes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """||cos(M)||_F over the class means M ``[C, D]`` of the prototypes (diagonal included)."""
    means = prototypes.view(num_classes, -1, prototypes.shape[1]).mean(dim=1)
    return torch.linalg.norm(cosine_matrix(means, means))


def train_augment(batch: torch.Tensor, rotation: float, flip: float, padding: int) -> torch.Tensor:
    """RandomRotation(rotation) (nearest, black fill), RandomHorizontalFlip(flip), RandomCrop(own size, padding)
    -- torchvision's transforms, image by image on uint8 ``[B, 3, H, W]`` on its device, drawing from torch's
    generator as the released code's per-image pipeline does (which runs on PIL images)."""
    from torchvision import transforms as T

    steps = T.Compose([T.RandomRotation(rotation), T.RandomHorizontalFlip(flip), T.RandomCrop(tuple(batch.shape[-2:]), padding=padding)])
    return torch.stack([steps(image) for image in batch])


# -- the model and its two optimisers --------------------------------------------------------------------------------
class PIPNetNet(nn.Module):
    """The trunk, the prototypes ``[C*K, D]`` (float64, as the released k-means and Adam keep them) and whether they
    were built yet."""

    def __init__(self, trunk: ResNetTrunk, num_classes: int, components: int) -> None:
        super().__init__()
        self.trunk, self.num_classes = trunk, num_classes
        self.prototypes = nn.Parameter(torch.zeros(num_classes * components, trunk.num_channels, dtype=torch.float64))
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(images).mean(dim=(2, 3))


class TwoOptimizers:
    """The released code's two optimisers as the one object the engine steps and checkpoints: SGD over the trunk (the
    engine's per-batch ``step``) and Adam over the prototypes (stepped by :class:`PrototypeSchedule`)."""

    def __init__(self, sgd: torch.optim.Optimizer, adam: torch.optim.Optimizer) -> None:
        self.sgd, self.adam = sgd, adam

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [*self.sgd.param_groups, *self.adam.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.sgd.zero_grad(set_to_none=set_to_none)
        self.adam.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Any = None) -> Any:
        return self.sgd.step(closure)

    def state_dict(self) -> dict[str, Any]:
        return {"sgd": self.sgd.state_dict(), "adam": self.adam.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sgd.load_state_dict(state["sgd"])
        self.adam.load_state_dict(state["adam"])


class PrototypeSchedule:
    """The per-epoch ``scheduler.step()``: the trunk's MultiStepLR, then the prototype update of the epoch just
    trained (:meth:`PIPNet.update_prototypes`), then Adam's MultiStepLR -- the released loop's order."""

    def __init__(self, method: PIPNet, optimizer: TwoOptimizers, milestones: list[int], gamma: float) -> None:
        self.method, self.optimizer = method, optimizer
        self.sgd = torch.optim.lr_scheduler.MultiStepLR(optimizer.sgd, milestones, gamma)
        self.adam = torch.optim.lr_scheduler.MultiStepLR(optimizer.adam, milestones, gamma)

    def step(self) -> None:
        self.sgd.step()
        self.method.update_prototypes(self.sgd.last_epoch - 1, self.optimizer.adam)
        self.adam.step()

    def state_dict(self) -> dict[str, Any]:
        return {"sgd": self.sgd.state_dict(), "adam": self.adam.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sgd.load_state_dict(state["sgd"])
        self.adam.load_state_dict(state["adam"])


# -- the method ------------------------------------------------------------------------------------------------------
class PIPNet(Method):
    name = "pipnet"
    family, display_name = "Intention methods", "PIP-Net"
    Config = PIPNetConfig

    @classmethod
    def random_weights_config(cls, config: PIPNetConfig) -> PIPNetConfig:
        return config.model_copy(update={"timm_pretrained": False, "timm_checkpoint": None})

    def __init__(self, config: PIPNetConfig, backbone, data, device) -> None:
        super().__init__(config, backbone, data, device)
        backbone_name = getattr(getattr(backbone, "spec", None), "name", None)
        kind = config.trunk if config.trunk != "auto" else ("clip" if backbone_name == TINY_BACKBONE else "timm")
        if kind == "clip":
            trunk, weights = clip_trunk(backbone.model.visual), f"clip:{backbone_name}"
        else:
            try:
                trunk, weights = timm_trunk(config.timm_model, config.timm_pretrained, config.timm_checkpoint)
            except (WeightsNotFoundError, ValueError) as err:  # the shared loader names query2label's keys
                raise type(err)(str(err).replace("query2label", "pipnet")) from err
        self.model = PIPNetNet(trunk, data.num_classes, config.components).to(device)
        self.model.eval()  # prepare() augments only while training
        self.preprocessing = config.preprocessing if config.preprocessing != "auto" else ("clip" if kind == "clip" else "imagenet")
        self.resolved = {"trunk": kind, "trunk_weights": weights, "trunk_channels": trunk.num_channels,
                         "preprocessing": self.preprocessing}
        self.apply_memory_format(self.model.trunk)
        self._trunk = self.maybe_compile(self.model.trunk)
        self._train = data.splits.get("train")
        self._bank: list[torch.Tensor] = []  # the passes' features ``[N, D]`` float32 on the CPU (accumulate)
        self._ready = False

    # -- what is trained ---------------------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        c, trunk = self.config, self.model.trunk
        groups = [{"params": list(getattr(trunk, n).parameters()), "lr": c.lr * f, "name": n} for n, f in STAGE_LR]
        return [*groups, {"params": [self.model.prototypes], "lr": c.lr_prototype, "name": "prototypes"}]

    def configure_optimizers(self, steps_per_epoch: int) -> tuple[TwoOptimizers, PrototypeSchedule]:
        c = self.config
        groups = self.param_groups()
        sgd = torch.optim.SGD(groups[:-1], lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, **self.optimizer_options())
        adam = torch.optim.Adam(groups[-1:], lr=c.lr_prototype, foreach=False)
        optimizer = TwoOptimizers(sgd, adam)
        return optimizer, PrototypeSchedule(self, optimizer, c.milestones, c.gamma)

    def train(self, mode: bool = True) -> None:
        """Training mode (BatchNorm trains, as in the released code); the first call builds the prototypes."""
        if mode and not self._ready:
            self.build_prototypes()
        self.model.train(mode)

    # -- inputs ------------------------------------------------------------------------------------------------
    def model_input(self, images: torch.Tensor, augment: bool) -> torch.Tensor:
        """uint8 ``[B, H, W, 3]`` -> normalised float ``[B, 3, H, W]``, with the train augmentation if ``augment``."""
        c = self.config
        if augment and c.augment:
            batch = to_device(torch.as_tensor(images), self.device).permute(0, 3, 1, 2)
            images = train_augment(batch, c.rotation, c.flip, c.crop_padding).permute(0, 2, 3, 1)
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if self.preprocessing == "imagenet" else (self.backbone.mean, self.backbone.std)
        return to_model_input(images, mean, std, "clip", self.device, self.channels_last)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return self.model_input(images, augment=self.model.training)

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        features = self._trunk(images).mean(dim=(2, 3))
        return prototype_logits(features, self.model.prototypes.detach(), self.num_classes, self.config.temperature)

    # -- training ----------------------------------------------------------------------------------------------
    def training_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.ndim == 1:  # multiclass: one-hot
            labels = F.one_hot(labels.long(), self.num_classes)
        return soft_target_loss(self._logits(images), labels)

    # -- the prototypes ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def feature_pass(self) -> torch.Tensor:
        """Pooled features ``[N, D]`` (float32, CPU) of every train image under the train augmentation, model in eval
        mode, in index order (the released loader's shuffle is undone by the clustering's sort), without autocast."""
        if self._train is None or len(self._train) == 0:
            raise ValueError("pipnet: the prototypes are built from the train split, and it has no images")
        self.model.eval()
        batches = batch_indices(len(self._train), self.config.batch_size)
        out = [self._trunk(self.model_input(x, augment=True)).mean(dim=(2, 3)).float()
               for x, _ in prefetch_batches(self._train.images, None, batches, pin=self.device.type == "cuda")]
        return torch.cat(out).cpu()

    def cluster(self, passes: list[torch.Tensor]) -> torch.Tensor:
        """Every class's K centres from the features of ``passes`` ``[C*K, D]`` float64. A class without rows (no
        train positives) gets the L1-normalised mean feature of the last pass, K times."""
        c = self.config
        # one k-means thread unless the run is on a GPU without deterministic algorithms (the engine's policy)
        threads = torch.get_num_threads() if self.device.type == "cuda" and not torch.are_deterministic_algorithms_enabled() else 1
        labels = torch.as_tensor(self._train.labels)
        y = (F.one_hot(labels.long(), self.num_classes) if labels.ndim == 1 else labels).double()
        centres = []
        for k in range(self.num_classes):
            w = y[:, k]
            keep = (w > 0) & ((w - ONE_THIRD).abs() > 1e-6)
            rows = torch.cat([w[keep, None] * f[keep].double() for f in passes])
            if len(rows) == 0:
                mean = passes[-1].double().mean(dim=0, keepdim=True)
                centres.append((mean / mean.sum()).expand(c.components, -1))
            else:
                centres.append(cluster_class(rows, c.components, c.discard_rate, c.kmeans_n_init, threads))
        return torch.cat(centres)

    @torch.no_grad()
    def build_prototypes(self) -> None:
        """Step 1: the prototypes from a pass of the model as it is (pretrained) before training."""
        first = self.feature_pass()
        self.model.prototypes.copy_(self.cluster([first]).to(self.model.prototypes))
        self._bank = [first] if self.config.feature_bank == "accumulate" else []
        self.model.ready.fill_(True)
        self._ready = True

    def update_prototypes(self, epoch: int, adam: torch.optim.Optimizer) -> None:
        """Steps 2 (after epoch >= 1) and 3 (per ``diversity_steps``) after training epoch ``epoch``."""
        c, prototypes = self.config, self.model.prototypes
        if epoch > 0:
            passes = [*self._bank, self.feature_pass()]
            new = self.cluster(passes).to(prototypes)
            with torch.no_grad():
                prototypes.copy_(merge_prototypes(prototypes.detach().cpu(), new.cpu(), c.components,
                                                  c.prototype_momentum, c.matching == "max-cosine").to(prototypes))
            self._bank = passes if c.feature_bank == "accumulate" else []
        if c.diversity_steps == "every" or (c.diversity_steps == "first" and epoch == 0):
            adam.zero_grad(set_to_none=True)
            with torch.enable_grad():
                diversity_loss(prototypes, self.num_classes).backward()
            adam.step()
            adam.zero_grad(set_to_none=True)

    # -- inference ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        if not self._ready:
            raise RuntimeError("pipnet: the prototypes are not built yet (they are built from the train split when "
                               "training starts, or loaded with a state)")
        z = self._logits(images).double()
        return z if self.task == "multiclass" else softmax_log_odds(z)

    # -- state -------------------------------------------------------------------------------------------------
    def variant_state(self, variant: str) -> dict[str, Any]:
        """What predicts: the weights, BatchNorm statistics and prototypes (not the feature bank)."""
        return {f"model.{k}": v.detach().clone() for k, v in self.model.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        """:meth:`variant_state` and the feature bank (``bank.<i>``, one tensor per pass) that the next epochs
        cluster: a checkpoint resumes exactly."""
        return {**self.variant_state("default"), **{f"bank.{i}": f for i, f in enumerate(self._bank)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Weights, statistics and prototypes; the bank is the state's (none: empty)."""
        model = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
        missing = set(self.model.state_dict()) - set(model)
        if missing:
            raise KeyError(f"{self.name}: state lacks {sorted(missing)[:5]}")
        self.model.load_state_dict(model)
        self._bank = [state[f"bank.{i}"].cpu() for i in range(sum(k.startswith("bank.") for k in state))]
        self._ready = bool(self.model.ready)
