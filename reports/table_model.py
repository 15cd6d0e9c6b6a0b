"""The data model of a paper table (what the layouts in :mod:`bench.reports.layout` fill and the renderers
format): the options that choose splits and metrics, cells, rows, columns and the table. No torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.reports.escape import Symbol
from bench.store.collection import TABLE_METRICS
from bench.store.schema import PRIMARY  # noqa: F401  (re-exported by layout)

MULTILABEL_COLUMNS = ("macro_f1", "micro_f1", "samples_f1", "mAP")
SPLIT_CHOICES = ("test", "val", "both")


@dataclass(frozen=True)
class TableOptions:
    """What the tables show. ``columns``: "test", "val" or "both" splits in every table (None: as the paper, Table 1
    test and val, Tables 2-6a test). ``metrics``: the metric columns, in this order (None: the paper's); a table
    keeps those of its task (Macro/Micro/Samples F1 and mAP for multi-label tables, accuracy and mean-class
    accuracy for Table 6a) and its default when none of them is of its task."""

    columns: str | None = None
    metrics: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.columns is not None and self.columns not in SPLIT_CHOICES:
            raise ValueError(f"columns {self.columns!r}: expected one of {', '.join(SPLIT_CHOICES)}")
        known = list(dict.fromkeys(m for task in TABLE_METRICS.values() for m in task))
        unknown = [m for m in self.metrics or () if m not in known]
        if unknown:
            raise ValueError(f"metrics {', '.join(map(repr, unknown))}: expected some of {', '.join(known)}")

    def splits(self, paper: tuple[str, ...]) -> tuple[str, ...]:
        if self.columns is None:
            return paper
        return ("test", "val") if self.columns == "both" else (self.columns,)

    def metrics_of(self, task: str) -> tuple[str, ...]:
        default = MULTILABEL_COLUMNS if task == "multilabel" else (PRIMARY[task],)
        chosen = tuple(m for m in self.metrics or () if m in TABLE_METRICS[task])
        return chosen or default


@dataclass
class Cell:
    mean: float | None  # percent
    std: float | None = None


@dataclass
class Row:
    label: str
    family: str
    params_m: float | None
    cells: list[Cell]
    reference: bool = False
    method: str | None = None  # the summary's method label (reproduced rows)
    n: int | None = None
    p_value: float | None = None  # the report's test vs the table's declared reference, Holm-corrected
    p_text: str | None = None  # how the tables print it ("0.012", "<= 0.006", "ref", "n/a: one run each ...")
    p_test: str | None = None  # the test's name ("seed-t", "bootstrap")
    below_reference: bool = False  # its mean (test, main metric) is below the declared reference's
    alpha: float = 0.05  # the report's significance level ([report] alpha)

    @property
    def dagger(self) -> bool:
        """Below the declared reference, but not significantly (p >= alpha): the one-sided test cannot tell them
        apart. A row above the reference gets no mark: the test asks only whether the reference is better."""
        return self.below_reference and self.p_value is not None and self.p_value >= self.alpha
    fragile: str = ""  # its runs' val selections with a margin inside the tie tolerance ("seed 1: threshold (...)")
    deterministic: bool = False  # a method without randomness, run once (n = 1)
    experiment_id: str | None = None  # the summary row's identity (method, version, config, weights)
    deltas: dict[int, float] = field(default_factory=dict)  # column -> reproduced minus paper (points)
    run_ids: list[str] = field(default_factory=list)
    bootstrap_reference: bool = False  # the declared reference: the row every other row's p-value compares against
    change: float | None = None  # leaderboard: primary metric now minus at the previous regeneration (points)
    regression: bool = False  # leaderboard: a drop larger than the configured tolerance


@dataclass
class Column:
    label: str  # metric label, e.g. "Macro F1"
    block: str  # header block, e.g. "Test" or "EmotionROI"


@dataclass
class PaperTable:
    key: str  # table1, table2, ..., table6a
    title: str
    caption: list[str | Symbol]
    columns: list[Column]
    rows: list[Row]
    info: dict = field(default_factory=dict)
    delta_columns: list[int] = field(default_factory=list)
    show_params: bool = True
    best: dict[int, set[int]] = field(default_factory=dict)  # column -> row indices
    second: dict[int, set[int]] = field(default_factory=dict)
    ranks: dict[int, int] = field(default_factory=dict)  # row index -> rank by the first column (reproduced rows)

    @property
    def families(self) -> list[str]:
        return list(dict.fromkeys(r.family for r in self.rows))

    @property
    def blocks(self) -> list[tuple[str, int]]:
        """Header blocks over the metric columns: (name, number of adjacent columns), e.g. [("Test", 4), ("Val", 4)]."""
        out: list[tuple[str, int]] = []
        for column in self.columns:
            if out and out[-1][0] == column.block:
                out[-1] = (column.block, out[-1][1] + 1)
            else:
                out.append((column.block, 1))
        return out
