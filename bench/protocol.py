"""Model-selection protocols: the one place that decides which split selects, which threshold applies and which
number selects. No torch: reports import it too.

- ``val-threshold`` (the default): epochs, variants and the decision threshold are chosen on val (macro F1 at the
  val-chosen threshold; accuracy for single-label tasks); test is scored once, after selection.
- ``intclip-code``: the released IntCLIP code's protocol: threshold 0.5, and the epoch selected on **test** by its
  ``avg_scores`` (mean of macro, micro and samples F1 at 0.5 and its own tie-ignoring AP). Marked in every table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from bench import metrics


@dataclass(frozen=True)
class Protocol:
    name: str
    selection_split: Literal["val", "test"]  # the split epochs and variants are selected on
    threshold: float | None  # a fixed decision threshold; None: chosen on val from metrics.THRESHOLD_GRID
    official_ap: bool  # also report the released code's AP (mAP_official)
    title_note: str  # what a table title adds after the protocol name ("" for the default)
    caption: str  # the sentence a paper-style caption gives the protocol
    tie_tolerance: float = 1e-3  # epoch/variant candidates this close to the best are tied (bench.selection)

    def selection_metric(self, task: str, scores: np.ndarray, labels: np.ndarray) -> float:
        """The number an epoch, a variant or a search trial is selected by (higher is better)."""
        if task == "multiclass":
            return metrics.accuracy(scores, labels)
        if self.name == "intclip-code":  # the released code's avg_scores, with its own AP
            m = metrics.multilabel_metrics(scores, labels, 0.5)
            official_map = float(np.mean(metrics.official_average_precision(scores, labels)))
            return (m["macro_f1"] + m["micro_f1"] + m["samples_f1"] + official_map) / 4
        return metrics.macro_f1(scores, labels, metrics.choose_threshold(scores, labels))

    @property
    def selects_on_test(self) -> bool:
        return self.selection_split == "test"


PROTOCOLS: dict[str, Protocol] = {
    "val-threshold": Protocol(
        "val-threshold", "val", None, False, "",
        "Protocol val-threshold: epoch and threshold selected on val; test scored once.",
    ),
    "intclip-code": Protocol(
        "intclip-code", "test", 0.5, True, " (epoch selected on TEST, threshold 0.5: official-code protocol)",
        "Protocol intclip-code: epoch selected on TEST and threshold 0.5, as the official IntCLIP code does.",
        tie_tolerance=0.0,  # the released code keeps the first strictly best epoch: exact ties only, earliest wins
    ),
}
VAL_THRESHOLD = PROTOCOLS["val-threshold"]


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r} (known: {', '.join(PROTOCOLS)})") from None
