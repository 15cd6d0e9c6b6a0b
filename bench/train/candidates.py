"""The engine's val selection while it trains: every (epoch, eval variant) whose selection metric is within the
protocol's tie tolerance of the best so far keeps a CPU copy of its state, so the tie rule
(:func:`bench.selection.epoch_selection`: the earliest epoch, then the variant's order) can choose among them once
training ends. A candidate that falls out of the band can never be chosen again and is dropped.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from bench.selection import Selection, epoch_selection

if TYPE_CHECKING:
    from bench.methods.base import Method


@dataclass
class Candidate:
    """One (epoch, eval variant) still within the tie tolerance of the best selection metric, with its state."""

    epoch: int
    variant: str
    metric: float
    state: Any  # a CPU copy of Method.variant_state(variant)


@dataclass
class BestSoFar:
    """The val selection so far: the candidates within the tie tolerance of the best metric."""

    candidates: list[Candidate] = field(default_factory=list)

    @property
    def top(self) -> float:
        """The highest selection metric so far (its candidate is always kept: it is within the tolerance of itself)."""
        return max((c.metric for c in self.candidates), default=-math.inf)

    @property
    def top_epoch(self) -> int:
        """The epoch of the highest selection metric so far (early stopping counts from it)."""
        return max(self.candidates, key=lambda c: (c.metric, -c.epoch)).epoch

    def add(self, epoch: int, variant: str, metric: float, state: Any, tolerance: float) -> None:
        """Keep ``(epoch, variant)`` if it is within ``tolerance`` of the best (itself included), and drop those the
        new best leaves behind."""
        top = max(self.top, metric)
        if metric >= top - tolerance:
            self.candidates.append(Candidate(epoch, variant, metric, _on_cpu(state)))
        self.candidates = [c for c in self.candidates if c.metric >= top - tolerance]

    def choose(self, method: Method, history: list[dict[str, Any]], tolerance: float) -> tuple[Selection | None, Candidate | None]:
        """The tie rule over every (epoch, variant) of the history; the Selection and the kept candidate it chose
        (``(None, None)`` when no epoch ran)."""
        selection = epoch_selection(history, list(method.eval_variants()), tolerance)
        if selection is None:
            return None, None
        epoch, variant = selection.chosen
        kept = {(c.epoch, c.variant): c for c in self.candidates}
        if (epoch, variant) not in kept:  # cannot happen: a candidate is dropped only once it is out of every tie set
            raise RuntimeError(f"{method.name}: the selected epoch {epoch} ({variant}) was not kept")
        return selection, kept[(epoch, variant)]

    def to_checkpoint(self) -> dict[str, Any]:
        """The checkpoint's ``best`` entry (plain dicts and tensors: ``torch.load(weights_only=True)`` reads it)."""
        return {"candidates": [asdict(c) for c in self.candidates]}

    @classmethod
    def from_checkpoint(cls, best: dict[str, Any]) -> BestSoFar:
        return cls([Candidate(**c) for c in best.get("candidates", [])])


def _on_cpu(state: Any) -> Any:
    """A copy of a (nested) state with every tensor on the CPU: kept candidates do not hold accelerator memory."""
    if isinstance(state, dict):
        return {k: _on_cpu(v) for k, v in state.items()}
    if torch.is_tensor(state):
        return state.detach().to("cpu", copy=True)
    return copy.deepcopy(state)
