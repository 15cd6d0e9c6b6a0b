"""The label-efficiency protocols of a suite (README "Label efficiency"): the label levels a suite plans, what a
level adds to a run's identity, and the training split a run then trains on. The subset and mask maths is
:mod:`bench.datasets.subsets`.

A level is a training fraction (``suite.train_fraction``), a number of images per class (``suite.shots``) or a
probability that a training label is observed (``suite.label_proportion``). Val and test are never reduced. A
fraction or proportion of 1 is the ordinary run: it adds nothing to the identity, so its run id is the one a suite
without these protocols gives (and shares its run). A level adds ``identity["labels"]``: the protocol, its value,
the hash of the sorted training indices (and of the observed-label mask), so the subset is part of the run id; the
run recomputes the subset from the seed and refuses to train when it no longer matches. A method with nothing to
train (``trainer = "none"``) never reads the training split: it runs once, as without a protocol.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.datasets import subsets
from bench.datasets.base import DatasetError
from bench.errors import BenchError, ConfigError
from bench.registry import METHODS

PROTOCOLS = ("train_fraction", "shots", "label_proportion")


@dataclass(frozen=True)
class LabelLevel:
    """One point of a label-efficiency curve."""

    protocol: str  # one of PROTOCOLS
    value: float | int
    nested_in: tuple[float, ...] = ()  # train_fraction: the suite's smaller fractions, which this subset contains

    @classmethod
    def of(cls, entry: dict[str, Any]) -> LabelLevel:
        """The level an identity's ``labels`` entry describes."""
        return cls(entry["protocol"], entry["value"], tuple(entry.get("nested_in", ())))


def label_levels(suite: Any) -> list[LabelLevel | None]:
    """The suite's levels in increasing order; ``None`` is the whole training split with every label (no protocol
    set, or a fraction or proportion of 1)."""
    for protocol in PROTOCOLS:
        values = sorted(getattr(suite, protocol) or [])
        if values:
            return [None if protocol != "shots" and v == 1 else
                    LabelLevel(protocol, v, tuple(x for x in values if x < v) if protocol == "train_fraction" else ())
                    for v in values]
    return [None]


def check_level(level: LabelLevel, method: str, dataset: str, task: str) -> None:
    """A ConfigError naming the key, the dataset or the method when ``level`` cannot apply to them."""
    if level.protocol == "shots" and task != "multiclass":
        raise ConfigError(f"suite.shots: dataset {dataset!r} is multi-label; k-shot subsets take k images per class of "
                          "single-label data (use suite.train_fraction: stratified subsets of multi-label data)")
    if level.protocol == "label_proportion":
        if task != "multilabel":
            raise ConfigError(f"suite.label_proportion: dataset {dataset!r} is single-label; partial labels hide "
                              "labels of multi-label data")
        if not METHODS.get(method).partial_labels:
            able = [n for n in METHODS.names() if METHODS.get(n).partial_labels]
            raise ConfigError(f"suite.label_proportion: method {method!r} cannot ignore unobserved labels (its loss takes "
                              f"no mask); methods that can: {', '.join(able) or 'none'}")


def select(level: LabelLevel, data: Any, seed: int, chain: tuple[float, ...] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """``(sorted training indices, observed-label mask or None)`` of ``level`` on ``data`` for ``seed``. ``chain``:
    the fractions to draw together (default: the level's own nesting), of which the level's is one."""
    train = data.splits["train"]
    n = len(train)
    if level.protocol == "train_fraction":
        if subsets.subset_size(level.value, n) == 0:
            raise ConfigError(f"suite.train_fraction: {level.value} of the {n} training images of {data.name!r} is no image")
        drawn = subsets.nested_fractions(train.labels, chain or (*level.nested_in, level.value), seed)
        return drawn[float(level.value)], None
    if level.protocol == "shots":
        try:
            return subsets.k_shot(train.labels, [level.value], seed, [c.key for c in data.classes], data.name)[int(level.value)], None
        except DatasetError as err:
            raise ConfigError(f"suite.shots: {err}") from None
    return np.arange(n), subsets.partial_mask((n, data.num_classes), float(level.value), seed)


def entry_of(level: LabelLevel, indices: np.ndarray, observed: np.ndarray | None) -> dict[str, Any]:
    """What ``level`` adds to a run's identity (and its record)."""
    entry: dict[str, Any] = {"protocol": level.protocol, "value": level.value, "nested_in": list(level.nested_in),
                             "n_train": len(indices), "train_sha256": subsets.indices_sha256(indices)}
    if observed is not None:
        entry |= {"observed": float(observed.mean()), "observed_sha256": subsets.mask_sha256(observed)}
    return entry


class LabelPlan:
    """A suite's label levels and their identities (each subset drawn once per dataset copy and seed)."""

    def __init__(self, suite: Any) -> None:
        self.levels = label_levels(suite)
        self._fractions = tuple(sorted(suite.train_fraction or ()))
        self._drawn: dict[tuple, tuple[np.ndarray, np.ndarray | None]] = {}

    def levels_for(self, method: str, dataset: str, data: Any) -> list[LabelLevel | None]:
        """The levels ``method`` runs at on ``dataset`` (checked); a method that trains nothing runs once."""
        if self.levels == [None] or METHODS.get(method).trainer == "none":
            return [None]
        for level in self.levels:
            if level is not None:
                check_level(level, method, dataset, data.task)
        return self.levels

    def identity(self, level: LabelLevel | None, key: str, data: Any, seed: int | None) -> dict[str, Any]:
        """``{"labels": ...}`` for a run at ``level`` (nothing for the whole split)."""
        if level is None:
            return {}
        if (key, level, seed) not in self._drawn:
            if level.protocol == "train_fraction":  # the suite's whole chain at once: each fraction's subset is the same
                chain = self._fractions
                for value, indices in subsets.nested_fractions(data.splits["train"].labels, chain, seed).items():
                    self._drawn[(key, dataclasses.replace(level, value=value, nested_in=tuple(f for f in chain if f < value)), seed)] = (indices, None)
            self._drawn.setdefault((key, level, seed), select(level, data, seed))
        return {"labels": entry_of(level, *self._drawn[(key, level, seed)])}


def apply_labels(identity: dict[str, Any], method: str, data: Any, seed: int) -> tuple[Any, dict[str, Any] | None]:
    """``data`` with the training split a run's identity names (val and test as they are), and what the record
    keeps of it; ``(data, None)`` for a run on the whole split. The subset is drawn again from the seed and must
    hash to the identity's."""
    entry = identity.get("labels")
    if entry is None:
        return data, None
    level = LabelLevel.of(entry)
    check_level(level, method, data.name, data.task)
    indices, observed = select(level, data, seed)
    drawn = entry_of(level, indices, observed)
    if any(drawn.get(k) != entry.get(k) for k in ("train_sha256", "observed_sha256")):
        raise BenchError(f"{data.name}: the {level.protocol} = {level.value} training subset of seed {seed} is not the one "
                         "planned (its hash differs: did the training split change since the suite was planned?)")
    train = subsets.subset_split(data.splits["train"], indices, observed)
    record = {**entry, "seed": seed, "n_train_full": len(data.splits["train"])}
    return dataclasses.replace(data, splits={**data.splits, "train": train}), record


def cache_dir(cache: Path, record: dict[str, Any] | None) -> Path:
    """The shared cache folder of a run: a subset's own folder under ``cache`` (a method's caches of "the training
    split", e.g. the linear probe's frozen features keyed by split name and size, never mix two subsets)."""
    return cache if record is None else cache / "label-subsets" / record["train_sha256"][:16]
