"""Val selections with a tie rule: candidates within :data:`TOLERANCE` of the best are tied, and a fixed rule that
looks at no metric picks among them. No torch: reports import it too.

Every selection the harness makes on val goes through :func:`select`: the decision threshold (tied thresholds: the
one nearest 0.5, then the lower), the linear probe's C (the smallest: the strongest regularisation), the epoch and
weight variant of a trained method (the earliest epoch, then the variant's order) and the refit's config in
``bench tune`` (the earliest trial: the paper's defaults are trial 0). Differences below the tolerance are within
what another machine's float kernels or one val image can move, so letting them decide would make the choice a
property of the machine. Each record stores what was chosen, the tie set and the **margin**: the chosen
candidate's value minus the best value outside the tie set. A margin below the tolerance means a candidate just
outside the tie set is nearly as good as the chosen one (a near-tie at the edge of the tie set): reports flag it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

TOLERANCE = 1e-3  # 0.1 percentage points of the selection metric (a fraction in [0, 1])

RULES = {
    "threshold": "nearest 0.5, then lower",
    "C": "smallest C",
    "epoch": "earliest epoch, then variant order",
    "config": "earliest trial",
}


@dataclass(frozen=True)
class Selection:
    """One val selection: what was chosen among which candidates, and how safely."""

    what: str  # "threshold", "C", "epoch" or "config"
    chosen: Any  # the chosen candidate's key (a threshold, a C, an epoch or [epoch, variant], a trial id)
    value: float  # its val selection metric
    best: float  # the best val selection metric of any candidate
    tie_set: list  # the keys within the tolerance of the best, in the tie rule's order (chosen first)
    margin: float | None  # value minus the best value outside the tie set; None when every candidate tied
    tolerance: float
    rule: str
    candidates: int

    @property
    def fragile(self) -> bool:
        """A candidate outside the tie set is within the tolerance of the chosen one."""
        return self.margin is not None and self.margin < self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fragile": self.fragile}


def select(
    candidates: Sequence[tuple[Hashable, float]],
    what: str,
    prefer: Callable[[Any], Any],
    tolerance: float = TOLERANCE,
) -> Selection:
    """Pick among ``(key, value)`` candidates (higher value is better) with the tie rule.

    Args:
        candidates: at least one ``(key, value)``; NaN values are never chosen (unless all are NaN).
        what: what is selected (names the rule in :data:`RULES`).
        prefer: sort key of the tie-break: the tied candidate with the smallest ``prefer(key)`` is chosen. It must
            not depend on any metric.
        tolerance: candidates with ``value >= best - tolerance`` are tied.

    Returns:
        The :class:`Selection`.
    """
    if not candidates:
        raise ValueError(f"no candidates to select the {what} from")
    values = [(k, -math.inf if v is None or math.isnan(v) else float(v)) for k, v in candidates]
    best = max(v for _, v in values)
    tied = sorted((kv for kv in values if kv[1] >= best - tolerance), key=lambda kv: prefer(kv[0]))
    chosen, value = tied[0]
    outside = [v for _, v in values if v < best - tolerance and math.isfinite(v)]  # NaN candidates never count
    margin = value - max(outside) if outside else None
    return Selection(
        what=what,
        chosen=_plain(chosen),
        value=value,
        best=best,
        tie_set=[_plain(k) for k, _ in tied],
        margin=margin,
        tolerance=tolerance,
        rule=RULES.get(what, what),
        candidates=len(values),
    )


def _plain(key: Any) -> Any:
    """A key as JSON holds it (tuples become lists; numpy scalars Python numbers)."""
    if isinstance(key, tuple):
        return [_plain(k) for k in key]
    if hasattr(key, "item"):
        return key.item()
    return key


def threshold_preference(threshold: float) -> tuple[float, float]:
    """Tied thresholds: the one nearest 0.5, then the lower (on the grid step, so 0.45 and 0.55 tie on distance)."""
    return (round(abs(threshold - 0.5), 9), threshold)


def epoch_selection(history: Sequence[dict[str, Any]], variants: Sequence[str], tolerance: float = TOLERANCE) -> Selection | None:
    """The tie rule over every (epoch, weight variant) of a training history (each entry's ``selection_metric``, or
    ``variant_metrics`` where a method scores several variants): the earliest epoch within the tolerance of the
    best, then the variant's order in ``variants``. None for an empty history."""
    candidates = []
    for h in history:
        per_variant = h.get("variant_metrics") or {variants[0] if variants else "default": h["selection_metric"]}
        candidates += [((int(h["epoch"]), v), float(m)) for v, m in per_variant.items()]
    if not candidates:
        return None
    order = {v: i for i, v in enumerate(variants)}
    return select(candidates, "epoch", lambda key: (key[0], order.get(key[1], len(order))), tolerance)


def fragile_selections(selections: dict[str, dict]) -> list[dict]:
    """The stored selections of one record whose margin is inside their tolerance."""
    return [s for s in (selections or {}).values() if s.get("margin") is not None and s["margin"] < s.get("tolerance", TOLERANCE)]
