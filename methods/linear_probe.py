"""CLIP linear probe (SPEC 3.4).

Frozen CLIP image embeddings (the pooled, projected output of the plain visual tower), computed once per
backbone weights, preprocessing, dataset version and split and cached; L2-regularised logistic regression
(one-vs-rest for multilabel, multinomial for multiclass) on standardised features (mean and std of train), fitted
to convergence by Newton's method (sklearn's ``newton-cholesky``, gradient tolerance 1e-8; ``lbfgs`` at its default
tolerance stops where 1e-7 of input noise moves the weights by 2%), with C chosen on val from a log-spaced grid
1e-6..1e4 (half-decade steps; optionally refined by bisection in log space) with the tie rule of
:mod:`bench.selection`: the smallest C within the tolerance of the best val metric. The fitted weights are mapped
back to the raw features, so the scores are ``x W^T + b`` on the cached embeddings. Test is never looked at.
Learnable parameters: (D + 1) x C.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, PositiveFloat

from bench.train.batches import batch_indices, prefetch_batches
from bench.io import atomic_write
from bench.methods.base import Method, MethodConfig


class LinearProbeConfig(MethodConfig):
    c_grid: list[PositiveFloat] = Field(default_factory=lambda: [10.0 ** (e / 2) for e in range(-12, 9)], min_length=1)
    refine_steps: int = Field(default=0, ge=0)  # bisection steps in log10 C around the chosen grid point
    max_iter: int = Field(default=10000, gt=0)
    tol: PositiveFloat = 1e-8  # Newton's stopping tolerance on the gradient


def logits(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """float64 logits ``x W^T + b``."""
    return np.asarray(x, dtype=np.float64) @ weight.T + bias


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(standardised float64 features, train mean, train std with constant features given 1)."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    return (x - mean) / scale, mean, scale


class ProbeFit:
    """The probe's fit on given features (no torch): standardise, Newton to convergence at each C of the grid
    (optionally bisected), C by the tie rule on val. Used by :class:`LinearProbe` and by the perturbation test."""

    def __init__(self, config: LinearProbeConfig, task: str, num_classes: int) -> None:
        self.config, self.task, self.num_classes = config, task, num_classes
        self._iterations = 0  # the most solver iterations any fit needed (max_iter: it stopped unconverged)
        self._unconverged: set[float] = set()  # the Cs where some fit reached max_iter

    def fit(self, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """(weight [C, D], bias [C], fit info with the C selection under ``selections``)."""
        from bench.protocol import VAL_THRESHOLD
        from bench.selection import select

        z, mean, scale = _standardise(x_train)  # once: every C is fitted on the same standardised features
        tried: dict[float, float] = {}  # log10 C -> val selection metric
        fitted: dict[float, tuple[np.ndarray, np.ndarray]] = {}  # log10 C -> weights and bias on the raw features

        def score(log_c: float) -> float:
            if log_c not in tried:
                w, b = self._fit_standardised(z, y_train, 10.0**log_c)
                fitted[log_c] = (w / scale, b - (w / scale) @ mean)
                tried[log_c] = VAL_THRESHOLD.selection_metric(self.task, self.scores(x_val, *fitted[log_c]), y_val)
            return tried[log_c]

        def choose() -> tuple[Any, float]:  # the tie rule over every C tried so far: the smallest within the tolerance
            by_c = {10.0**g: g for g in tried}
            selection = select([(c, tried[g]) for c, g in sorted(by_c.items())], "C", lambda c: c)
            return selection, by_c[selection.chosen]

        grid = sorted(np.log10(self.config.c_grid).tolist())
        for g in grid:
            score(g)
        best = choose()[1]
        i = grid.index(min(grid, key=lambda g: abs(g - best)))
        lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        for _ in range(self.config.refine_steps):  # bisection in log space around the chosen point
            score((lo + best) / 2)
            score((best + hi) / 2)
            best = choose()[1]
            lo, hi = max(lo, best - (hi - lo) / 4), min(hi, best + (hi - lo) / 4)
        selection, log_c = choose()
        weight, bias = fitted[log_c]  # the chosen C's fit (not fitted again)
        return weight, bias, {
            "C": selection.chosen,
            "val_selection_metric": selection.value,
            "c_tried": len(tried),
            "max_solver_iterations": self._iterations,
            "converged": not self._unconverged,
            "unconverged_C": sorted(self._unconverged),
            "selections": {"C": selection.to_dict()},
        }

    def scores(self, x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
        """Probabilities (a numerically stable sigmoid/softmax: no overflow for large logits)."""
        from scipy.special import expit, softmax

        z = logits(x, weight, bias)
        return (softmax(z, axis=1) if self.task == "multiclass" else expit(z)).astype(np.float32)

    def _solver(self, c: float):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=c, solver="newton-cholesky", tol=self.config.tol, max_iter=self.config.max_iter)

    def _count(self, clf, c: float) -> None:
        iterations = int(np.max(clf.n_iter_))
        self._iterations = max(self._iterations, iterations)
        if iterations >= self.config.max_iter:
            self._unconverged.add(c)

    def _fit_standardised(self, x: np.ndarray, y: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
        if self.task == "multiclass":
            clf = self._solver(c)
            clf.fit(x, y)
            self._count(clf, c)
            weight = np.zeros((self.num_classes, x.shape[1]))
            bias = np.full(self.num_classes, -1e4)  # classes absent from train are never predicted
            weight[clf.classes_] = clf.coef_ if len(clf.classes_) > 2 else np.vstack([-clf.coef_, clf.coef_])
            bias[clf.classes_] = clf.intercept_ if len(clf.classes_) > 2 else np.array([-clf.intercept_[0], clf.intercept_[0]])
            return weight, bias
        weight = np.zeros((self.num_classes, x.shape[1]))
        bias = np.zeros(self.num_classes)
        for k in range(self.num_classes):
            yk = y[:, k] > 0.5
            if yk.all() or not yk.any():  # one-valued class in train: a constant at its (clipped) train prior
                prior = np.clip(yk.mean(), 1e-4, 1 - 1e-4)
                bias[k] = np.log(prior / (1 - prior))
                continue
            clf = self._solver(c)
            clf.fit(x, yk)
            self._count(clf, c)
            weight[k], bias[k] = clf.coef_[0], clf.intercept_[0]
        return weight, bias


class LinearProbe(Method):
    name = "linear-probe"
    Config = LinearProbeConfig
    trainer = "fit"
    version = "2"  # 2: standardised features, Newton to convergence, half-decade grid to 1e4, the C tie rule
    deterministic = True  # frozen features, Newton from zero: no random numbers
    family, display_name = "Reference points", "CLIP linear probe"

    def __init__(self, config, backbone, data, device) -> None:
        super().__init__(config, backbone, data, device)
        self.model.requires_grad_(False)
        self.apply_memory_format()
        self.weight: np.ndarray | None = None  # [C, D]
        self.bias: np.ndarray | None = None  # [C]

    def learnable_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {}  # the probe's weights are fitted by sklearn, not torch parameters; counted below

    def param_counts(self) -> dict[str, int]:
        dim = self._feature_dim()
        learnable = (dim + 1) * self.num_classes
        return {"learnable": learnable, "total": learnable + sum(p.numel() for p in self.model.visual.parameters())}

    def _feature_dim(self) -> int:
        with torch.no_grad():
            size = self.backbone.image_size
            return int(self.model.encode_image(torch.zeros(1, 3, size, size, device=self.device)).shape[-1])

    # -- features ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _encode(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        """fp32 embeddings of every image (no autocast: the cached features are the reference math's)."""
        self.model.eval()
        pin = self.device.type == "cuda"
        batches = prefetch_batches(images, None, batch_indices(len(images), batch_size), pin=pin)
        out = [self.model.encode_image(self.prepare(x)).float() for x, _ in batches]
        return torch.cat(out).cpu().numpy()

    def features(self, split_name: str, images: np.ndarray, manifest: str, cache_dir: Path | None, batch_size: int) -> np.ndarray:
        """Frozen embeddings of one split, read from / written to the shared feature cache."""
        if cache_dir is None:
            return self._encode(images, batch_size)
        key = hashlib.sha256(
            repr((self.backbone.describe(), self.config.preprocessing, manifest, split_name, len(images))).encode()
        ).hexdigest()[:20]
        name = self.backbone.spec.name.replace("/", "--").replace(":", "-")  # hf-hub:org/name: one file name
        path = cache_dir / "features" / f"{name}-{split_name}-{key}.npy"
        if path.is_file():
            try:
                feats = np.load(path, allow_pickle=False)  # never unpickles: a planted object array is refused
                if feats.ndim == 2 and len(feats) == len(images) and feats.dtype == np.float32:
                    return feats
            except (OSError, ValueError, EOFError):
                pass  # damaged or not ours: computed again and replaced below
        feats = self._encode(images, batch_size)
        atomic_write(path, lambda fh: np.save(fh, feats))
        return feats

    # -- fitting -----------------------------------------------------------------------------------------------
    def fit(self, data, ctx) -> dict[str, Any]:
        feats = {
            s: self.features(s, data.splits[s].images, data.manifest_sha256, ctx.cache_dir, ctx.eval_batch_size)
            for s in ("train", "val")
        }
        fitter = ProbeFit(self.config, self.task, self.num_classes)
        self.weight, self.bias, info = fitter.fit(feats["train"], data.splits["train"].labels, feats["val"], data.splits["val"].labels)
        return info

    def split_scores(self, split, data, ctx) -> np.ndarray | None:
        """Val/test scores from the cached frozen features: the images are encoded once per split."""
        if self.weight is None:
            return None
        feats = self.features(split, data.splits[split].images, data.manifest_sha256, ctx.cache_dir, ctx.eval_batch_size)
        return logits(feats, self.weight, self.bias)

    @torch.no_grad()
    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            raise RuntimeError("linear-probe: predict() before fit()")
        x = self.model.encode_image(images).float().cpu().numpy()
        return torch.from_numpy(logits(x, self.weight, self.bias))
