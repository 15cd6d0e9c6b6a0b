"""Smoke mode (README "Smoke mode"): ``suite.limit = N`` (``--limit N``) runs on at most ``N`` images of every split
(train, val and test), for a quick look at a method on a real dataset; never a result to report.

Each split's subset is seeded (:data:`LIMIT_SEED`, the same for every method and seed of a suite, so the rows of a
limited table are scored on the same images) and stratified with the label-efficiency maths of
:mod:`bench.datasets.subsets`: first one image of every class that has a positive in the split (the rarest class
first) while ``N`` allows, then the rest by iterative stratification towards ``N / size x`` each class's count,
brought to exactly ``N`` images and refined by swaps (the covering images stay). A split of at most ``N`` images is
kept whole.

A limit adds ``identity["limit"]`` (``N``, the seed, each split's size and the hash of its sorted indices), so a
limited run has its own run id and never mixes with full runs (a suite without a limit adds nothing: its run ids
are the ones it always had); the run draws the subsets again and refuses to run when they no longer match. A
label-efficiency protocol applies to the limited training split (``suite.shots`` is refused when ``N`` cannot hold
``k`` images per class).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from bench.datasets import subsets
from bench.errors import BenchError, ConfigError

LIMIT_SEED = 0  # every limited run of a suite reads the same images, whatever its training seed
LIMIT_STREAM = 0x4C494D54  # "LIMT": a stream of its own, apart from the label-efficiency protocols'


def limit_indices(labels: np.ndarray, size: int, seed: int, split: str) -> np.ndarray:
    """Sorted indices of ``size`` rows of ``labels`` (class indices or multi-hot), seeded and stratified: every
    class with a positive keeps one (rarest first) while ``size`` allows, the rest drawn towards each class's
    proportional count. All rows when ``size`` is at least their number."""
    y = subsets.as_multihot(labels).astype(np.float64)
    n = len(y)
    if size >= n:
        return np.arange(n)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), LIMIT_STREAM, zlib.crc32(split.encode())]))
    counts = y.sum(axis=0)
    chosen = np.zeros(n, dtype=bool)
    for c in np.lexsort((rng.random(len(counts)), counts)):  # rarest class first, ties at random
        if chosen.sum() >= size:
            break
        if counts[c] > 0 and not y[chosen, c].any():
            chosen[rng.choice(np.flatnonzero(y[:, c] > 0))] = True
    movable = ~chosen  # the covering images stay
    target = size / n * counts
    pool = np.flatnonzero(~chosen)
    want = size - int(chosen.sum())
    if want > 0:
        wanted = np.maximum(target - y[chosen].sum(axis=0), 0)
        fold = subsets.stratify(y[pool] > 0, [want, len(pool) - want], np.stack([wanted, y[pool].sum(axis=0) - wanted]), rng)
        chosen[pool[fold == 0]] = True
    order = rng.permutation(n)
    rows, code = np.unique(y, axis=0, return_inverse=True)
    subsets._fix_size(chosen, movable, y, target, size, order)
    subsets._refine(chosen, movable, y, target, order, (rows, code.reshape(-1)))
    return np.flatnonzero(chosen)


def draw(data: Any, size: int, seed: int = LIMIT_SEED) -> dict[str, np.ndarray]:
    """Each split's limited indices."""
    return {name: limit_indices(split.labels, size, seed, name) for name, split in data.splits.items()}


def limit_entry(size: int, seed: int, full: dict[str, int], drawn: dict[str, np.ndarray]) -> dict[str, Any]:
    """What a limit adds to a run's identity (and its record)."""
    return {"n": int(size), "seed": int(seed),
            "split_sizes": {k: len(v) for k, v in drawn.items()}, "split_sizes_full": dict(full),
            "sha256": {k: subsets.indices_sha256(v) for k, v in drawn.items()}}


def _limited(data: Any, drawn: dict[str, np.ndarray]) -> Any:
    return dataclasses.replace(data, splits={k: subsets.subset_split(s, drawn[k]) for k, s in data.splits.items()})


class LimitPlan:
    """A suite's limit (``None``: none) and each dataset copy's limited data, drawn once."""

    def __init__(self, suite: Any) -> None:
        self.size: int | None = getattr(suite, "limit", None)
        self._shots = max(suite.shots or [0])
        self._drawn: dict[str, tuple[Any, dict[str, Any]]] = {}

    def data(self, key: str, data: Any) -> Any:
        """The data the suite's runs of ``key`` read (the limited splits, or ``data`` itself without a limit)."""
        return data if self.size is None else self._get(key, data)[0]

    def identity(self, key: str, data: Any) -> dict[str, Any]:
        """``{"limit": ...}`` for the suite's runs of ``key`` (nothing without a limit)."""
        return {} if self.size is None else {"limit": self._get(key, data)[1]}

    def _get(self, key: str, data: Any) -> tuple[Any, dict[str, Any]]:
        if key not in self._drawn:
            need = self._shots * data.num_classes
            if self._shots and self.size < need:
                raise ConfigError(f"suite.limit = {self.size} keeps {self.size} training images of {data.name!r}: too few "
                                  f"for suite.shots = {self._shots} ({self._shots} x {data.num_classes} classes = {need}); "
                                  "raise the limit or use suite.train_fraction")
            drawn = draw(data, self.size)
            entry = limit_entry(self.size, LIMIT_SEED, {k: len(s) for k, s in data.splits.items()}, drawn)
            self._drawn[key] = (_limited(data, drawn), entry)
        return self._drawn[key]


def apply_limit(identity: dict[str, Any], data: Any) -> tuple[Any, dict[str, Any] | None]:
    """``data`` with the splits a run's identity limits it to, and what the record keeps of the limit; ``(data,
    None)`` for a run without one. The subsets are drawn again and must hash to the identity's."""
    entry = identity.get("limit")
    if entry is None:
        return data, None
    drawn = draw(data, entry["n"], entry["seed"])
    again = limit_entry(entry["n"], entry["seed"], {k: len(s) for k, s in data.splits.items()}, drawn)
    if again["sha256"] != entry["sha256"]:
        raise BenchError(f"{data.name}: the limit = {entry['n']} subsets (seed {entry['seed']}) are not the ones planned "
                         "(their hashes differ: did the dataset's splits change since the suite was planned?)")
    return _limited(data, drawn), entry


def limit_cache_dir(cache: Path, record: dict[str, Any] | None) -> Path:
    """The shared cache folder of a limited run: its own, so a method's caches of a split (keyed by name and size)
    never mix a limited split with another."""
    if record is None:
        return cache
    digest = hashlib.sha256(json.dumps(record["sha256"], sort_keys=True).encode()).hexdigest()
    return cache / "limited" / digest[:16]
