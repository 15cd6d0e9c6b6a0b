"""Label-efficiency subsets of a training split: the maths, no harness (numpy only).

- :func:`nested_fractions`: seeded subsets holding a fraction of the training images, stratified by iterative
  stratification (Sechidis, Tsoumakas and Vlahavas, "On the stratification of multi-label data", ECML PKDD 2011,
  Algorithm 1; single-label data is the one-label case: plain per-class stratification) and nested: each fraction
  is drawn from what the next smaller one left, with the targets of the whole split, so it contains every smaller
  one; a local search (swaps that lower the squared deviation) then brings each class's positive count within
  about half an image of ``fraction x count``.
- :func:`k_shot`: ``k`` images per class (single-label data), nested in ``k`` (one permutation per class).
- :func:`partial_mask`: DualCoOp's partial-label setting: each (image, class) label observed with probability
  ``p``, independently (the released code: ``torch.rand(N, C) < p``); unobserved labels become :data:`UNOBSERVED`
  (-1, the released code's value), which a loss that takes a mask ignores.

Every draw comes from ``numpy.random.default_rng(SeedSequence([seed, stream]))``: the same seed gives the same
subset on any machine, a different seed a different one, and the three protocols use separate streams.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from .base import DatasetError, Split

UNOBSERVED = -1.0  # a training label the partial-label protocol hides (DualCoOp's released code uses -1 too)
FRACTION_STREAM, SHOTS_STREAM, PARTIAL_STREAM = 0x46524143, 0x53484F54, 0x50415254  # "FRAC", "SHOT", "PART"


def generator(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), stream]))


def as_multihot(labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """``bool [N, C]``: multi-hot labels as they are, class indices ``[N]`` one-hot."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        n_cls = int(num_classes if num_classes is not None else labels.max() + 1)
        return np.eye(n_cls, dtype=bool)[labels.astype(np.int64)]
    return labels > 0.5


def subset_size(fraction: float, n: int) -> int:
    """``fraction x n`` rounded half up (``round`` would round 0.5 to even)."""
    return int(np.floor(fraction * n + 0.5))


# -- iterative stratification (Sechidis et al. 2011, Algorithm 1) ----------------------------------------------
def _choose(label_desire: np.ndarray, size_desire: np.ndarray, rng: np.random.Generator) -> int:
    """The fold that most wants an example of the label: largest label desire, then largest size desire, then
    at random."""
    if len(label_desire) == 2:  # (the nested fractions' case, written out: it runs once per example)
        for a, b in ((label_desire[0], label_desire[1]), (size_desire[0], size_desire[1])):
            if a != b:
                return 0 if a > b else 1
        return int(rng.integers(2))
    best = np.flatnonzero(label_desire == label_desire.max())
    if len(best) > 1:
        best = best[size_desire[best] == size_desire[best].max()]
    return int(best[rng.integers(len(best))] if len(best) > 1 else best[0])


def stratify(labels: np.ndarray, size_desire: Sequence[float], label_desire: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:
    """Assign each example of ``labels`` (``bool [N, C]``) to one of ``k`` folds; returns the fold per example.

    ``size_desire[j]`` is how many examples fold ``j`` wants, ``label_desire[j, l]`` how many positives of label
    ``l``. Repeatedly the label with the fewest examples left (ties at random) is taken, and each of its examples
    (in random order) goes to the fold that wants that label most (ties: the fold that wants most examples, then
    at random), which then wants one example and one positive of each of its labels less. Examples without any
    label go last, each to the fold that wants most examples."""
    y = np.asarray(labels, dtype=bool)
    c = np.asarray(size_desire, dtype=np.float64).copy()
    cl = np.asarray(label_desire, dtype=np.float64).copy()
    n = len(y)
    fold = np.full(n, -1, dtype=np.int64)
    left = y.sum(axis=0).astype(np.int64)
    order = rng.permutation(n)
    remaining = np.ones(n, dtype=bool)
    while (left > 0).any():
        rarest = np.flatnonzero(left == left[left > 0].min())
        label = int(rarest[rng.integers(len(rarest))])
        for i in order[y[order, label] & remaining[order]]:
            j = _choose(cl[:, label], c, rng)
            fold[i], remaining[i] = j, False
            cl[j] -= y[i]
            c[j] -= 1
            left -= y[i]
    for i in order[remaining[order]]:  # no label at all: by size only
        j = _choose(c, c, rng)
        fold[i] = j
        c[j] -= 1
    return fold


def _deviation(y: np.ndarray, chosen: np.ndarray, target: np.ndarray) -> np.ndarray:
    return y[chosen].sum(axis=0) - target


def _fix_size(chosen: np.ndarray, movable: np.ndarray, y: np.ndarray, target: np.ndarray, size: int,
              order: np.ndarray) -> None:
    """Make ``chosen`` (in place) hold exactly ``size`` examples, adding (or dropping one of the ``movable``) one
    example at a time: the one whose move leaves the smallest squared deviation of the per-label counts from
    ``target``, the earliest in ``order`` among equals."""
    while chosen.sum() != size:
        adding = chosen.sum() < size
        candidates = order[~chosen[order]] if adding else order[chosen[order] & movable[order]]
        deviation = _deviation(y, chosen, target)
        cost = ((deviation[None, :] + y[candidates] * (1 if adding else -1)) ** 2).sum(axis=1)
        chosen[candidates[int(np.argmin(cost))]] = adding


def _refine(chosen: np.ndarray, movable: np.ndarray, y: np.ndarray, target: np.ndarray, order: np.ndarray,
            patterns: tuple[np.ndarray, np.ndarray]) -> None:
    """Swap a ``movable`` chosen example for an unchosen one (in place) while a swap lowers the squared deviation
    of the per-label counts from ``target``: the best swap each time, over distinct label patterns (the earliest
    example in ``order`` of each; ``patterns``: the distinct rows of ``y`` and each example's row among them). The
    size is kept; the deviation falls strictly, so this ends."""
    rows, code = patterns
    while True:
        out_idx, in_idx = order[chosen[order] & movable[order]], order[~chosen[order]]
        if not len(out_idx) or not len(in_idx):
            return
        d = _deviation(y, chosen, target)
        out_codes, out_first = np.unique(code[out_idx], return_index=True)
        in_codes, in_first = np.unique(code[in_idx], return_index=True)
        out_patterns, in_patterns = rows[out_codes], rows[in_codes]
        # ||d - a + b||^2 - ||d||^2 for every pair (a taken out, b put in)
        left = d[None, :] - out_patterns
        change = ((left**2).sum(axis=1)[:, None] + 2 * left @ in_patterns.T + (in_patterns**2).sum(axis=1)[None, :]
                  - (d**2).sum())
        i, j = np.unravel_index(int(np.argmin(change)), change.shape)
        if change[i, j] >= -1e-9:
            return
        chosen[out_idx[out_first[i]]], chosen[in_idx[in_first[j]]] = False, True


def nested_fractions(labels: np.ndarray, fractions: Sequence[float], seed: int) -> dict[float, np.ndarray]:
    """Sorted training indices of each fraction, nested (each contains every smaller one) and stratified.

    The smallest fraction is drawn from the whole split; each larger one adds images drawn from what is left, by
    :func:`stratify` with two folds (taken, left) whose wanted positives are the whole split's ``fraction x count``
    minus what the smaller subsets already hold. Then images are added or dropped, one at a time, to exactly
    ``fraction x N`` (rounded half up), and swapped with left images while a swap brings the per-class counts closer
    to ``fraction x count`` (squared deviation; only the images this fraction added move, so the smaller subsets
    stay inside): on the synthetic data and an Intentonomy-sized random one every class ends within 0.5 of its
    target. A fraction's subset depends on the seed and on the smaller fractions it is nested in (those of
    ``fractions`` below it), nothing else."""
    y = as_multihot(labels).astype(np.float64)
    n = len(y)
    totals = y.sum(axis=0)
    rng = generator(seed, FRACTION_STREAM)
    patterns = np.unique(y, axis=0, return_inverse=True)
    patterns = (patterns[0], patterns[1].reshape(-1))
    chosen = np.zeros(n, dtype=bool)
    out = {}
    for fraction in sorted({float(f) for f in fractions}):
        if not 0 < fraction <= 1:
            raise ValueError(f"train fraction {fraction} outside (0, 1]")
        size, target = subset_size(fraction, n), fraction * totals
        pool = np.flatnonzero(~chosen)
        want = size - int(chosen.sum())
        wanted = target - y[chosen].sum(axis=0)
        fold = stratify(y[pool] > 0, [want, len(pool) - want], np.stack([wanted, y[pool].sum(axis=0) - wanted]), rng)
        movable = np.zeros(n, dtype=bool)
        movable[pool] = True  # the smaller subsets stay as they are: nested
        chosen[pool[fold == 0]] = True
        order = rng.permutation(n)
        _fix_size(chosen, movable, y, target, size, order)
        _refine(chosen, movable, y, target, order, patterns)
        out[fraction] = np.flatnonzero(chosen)
    return out


# -- k-shot (single-label) ------------------------------------------------------------------------------------
def k_shot(labels: np.ndarray, shots: Sequence[int], seed: int, class_names: Sequence[str], dataset: str) -> dict[int, np.ndarray]:
    """Sorted training indices holding ``k`` images of every class, for each ``k`` of ``shots``: the first ``k`` of
    one seeded permutation per class, so ``k`` images are among ``k' > k``'s. Class-index labels only."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DatasetError(f"{dataset}: k-shot subsets need single-label data (class indices), got labels of shape {labels.shape}")
    rng = generator(seed, SHOTS_STREAM)
    members = [rng.permutation(np.flatnonzero(labels == c)) for c in range(len(class_names))]
    out = {}
    for k in sorted({int(s) for s in shots}):
        short = [f"{name!r} ({len(m)})" for name, m in zip(class_names, members) if len(m) < k]
        if short:
            raise DatasetError(f"{dataset}: {k}-shot needs {k} training images per class; too few in {', '.join(short)}")
        out[k] = np.sort(np.concatenate([m[:k] for m in members]))
    return out


# -- partial labels (DualCoOp) --------------------------------------------------------------------------------
def partial_mask(shape: tuple[int, int], proportion: float, seed: int) -> np.ndarray:
    """``bool [N, C]``: True where a label is observed, each with probability ``proportion``, independently."""
    if not 0 < proportion <= 1:
        raise ValueError(f"label proportion {proportion} outside (0, 1]")
    return generator(seed, PARTIAL_STREAM).random(shape) < proportion


def hide_labels(labels: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Multi-hot ``labels`` with the unobserved entries set to :data:`UNOBSERVED` (float32)."""
    return np.where(observed, np.asarray(labels, dtype=np.float32), np.float32(UNOBSERVED)).astype(np.float32)


# -- identities ------------------------------------------------------------------------------------------------
def indices_sha256(indices: np.ndarray) -> str:
    """sha256 of the sorted indices as little-endian int64: the subset's identity."""
    return hashlib.sha256(np.sort(np.asarray(indices, dtype="<i8")).tobytes()).hexdigest()


def mask_sha256(observed: np.ndarray) -> str:
    """sha256 of the mask's shape and its bits (row-major): the partial labels' identity."""
    observed = np.asarray(observed, dtype=bool)
    return hashlib.sha256(repr(observed.shape).encode() + np.packbits(observed, axis=None).tobytes()).hexdigest()


def subset_split(split: Split, indices: np.ndarray, observed: np.ndarray | None = None) -> Split:
    """The rows ``indices`` of ``split`` (a copy), with the labels ``observed`` masks hidden (multi-hot only)."""
    indices = np.asarray(indices, dtype=np.int64)
    labels = split.labels[indices]
    if observed is not None:
        labels = hide_labels(labels, observed)
    return Split(np.ascontiguousarray(split.images[indices]), labels, [split.ids[i] for i in indices])
