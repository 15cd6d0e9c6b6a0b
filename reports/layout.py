"""The paper's table layouts, filled from the summary of the result store (and, on request, the paper's own rows).

- Table 1: every main method of one dataset x backbone x protocol, grouped into families, with the #P column
  (learnable parameters, millions) and Macro/Micro/Samples F1 and mAP on test and val.
- Tables 2-5: IntCLIP's ablations (components, class text, trained layers, fusion), test metrics, built only when
  at least one ablation variant of that table has results beside the full ``intclip``.
- Table 6a: accuracy on the emotion datasets (one column per multiclass dataset).

Best (bold) and second best (underlined) are computed per column from the numbers as printed (two decimals),
among the reproduced rows only: the paper's rows are a different protocol and are shown for reference. Renderers
(LaTeX, HTML) only format what is decided here. Reads the summary frame only; no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

import pandas as pd

from bench.reports.escape import DAGGER, DELTA, GE, QUOTE_CLOSE, QUOTE_OPEN, Symbol
from bench.reports.tables import FAMILIES, GROUP_KEYS, METRIC_LABELS

PRIMARY = {"multilabel": "macro_f1", "multiclass": "accuracy"}
MULTILABEL_COLUMNS = ("macro_f1", "micro_f1", "samples_f1", "mAP")
PAPER_DATASET = {"intentonomy": "Intentonomy", "emotionroi": "EmotionROI", "fi": "FI", "synthetic": "Synthetic intentions"}  # and their order

# Paper rows of Table 1 that a reproduced method corresponds to (dataset intentonomy), by backbone for IntCLIP.
TABLE1_REFERENCE = {
    "query2label": {"*": "Query2Label"},
    "dualcoop": {"*": "DualCoOp"},
    "intclip": {"RN101": "IntCLIP (RN101)", "ViT-B-32": "IntCLIP (ViT-B/32)"},
    "intclip-official": {"RN101": "IntCLIP (RN101)", "ViT-B-32": "IntCLIP (ViT-B/32)"},
}
REFERENCE_FAMILIES = {"multi-label": "Paper: multi-label methods", "intention": "Paper: intention methods", "ours": "Paper: IntCLIP"}


@dataclass(frozen=True)
class Ablation:
    key: str
    title: str
    rows: tuple[tuple[str, tuple[str, ...], str | None], ...]  # (label, method names (first present wins), paper label)


# The paper's "w/o HCI" row (Table 2) has the numbers of its "Consolidation" row (Table 3): consolidated names.
ABLATIONS = (
    Ablation(
        "table2",
        "Component ablation (Table 2)",
        (
            ("w/o HCI", ("intclip:consolidated",), "w/o HCI"),
            ("w/o SA", ("intclip:no-sa",), "w/o SA"),
            ("w/o SIE, SA", ("intclip:no-sie-sa",), "w/o SIE, SA"),
            ("Full IntCLIP", ("intclip",), "Full IntCLIP"),
        ),
    ),
    Ablation(
        "table3",
        "Class text (Table 3)",
        (
            ("Fine-grained names", ("intclip:no-hci",), "Fine-Grained"),
            ("Consolidated names", ("intclip:consolidated",), "Consolidation"),
            # the shipped sentences are 5-11 words, 24 of 28 of 6-9: the paper's 6-9-word row is the like-for-like one
            # (the paper's best row, 11-15 words, is the sentence set behind its Full IntCLIP numbers: not the shipped one)
            ("HCI sentences (6-9 words)", ("intclip",), "HCI by LLM 6-9"),
        ),
    ),
    Ablation(
        "table4",
        "Image encoder: branches x trained layers (Table 4)",
        tuple(
            (f"{b.capitalize()} / {t_label}", (f"intclip:{b}-{t}",) + (("intclip",) if (b, t) == ("dual", "semantic") else ()), f"{b.capitalize()} / {t_ref}")
            for b in ("single", "dual")
            for t, t_label, t_ref in (("none", "none trained", "none trained"), ("all", "all trained", "all trained"), ("semantic", "semantic layers", "semantic layers"))
        ),
    ),
    Ablation(
        "table5",
        "Fusion of the two branches (Table 5)",
        (
            ("Add", ("intclip:fusion-add", "intclip:no-sa"), None),
            ("Concat + MLP", ("intclip:fusion-concat-mlp",), None),
            ("SA (IntCLIP)", ("intclip",), None),
        ),
    ),
)


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
    p_value: float | None = None  # hierarchical bootstrap vs the group's reference (best on val), Holm-corrected
    deterministic: bool = False  # a method without randomness, run once (n = 1)
    experiment_id: str | None = None  # the summary row's identity (method, version, config, weights)
    deltas: dict[int, float] = field(default_factory=dict)  # column -> reproduced minus paper (points)
    run_ids: list[str] = field(default_factory=list)
    bootstrap_reference: bool = False  # the row every other row's p-value compares against
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


def base_method(label: str) -> str:
    """"intclip:no-sa (tuned) [abc]" -> "intclip:no-sa"."""
    return label.split(" ")[0]


def family_of(label: str, declared: str | None = None) -> str:
    """The Table 1 group of a row: what the method declares (``Method.family``, in its records), else the known
    members of :data:`FAMILIES` (records written before methods declared it), else "Other methods"."""
    if isinstance(declared, str) and declared:
        return declared
    name = base_method(label)
    root = name.split(":")[0]
    for family, members in FAMILIES:
        if name in members or root in members:
            return family
    return "Other methods"


@cache
def reference_frame() -> pd.DataFrame:
    """The paper's numbers (percent), shipped with the package (copied from shared/reference)."""
    with resources.files("bench.reports").joinpath("reference/intclip_eccv2024_tables.csv").open() as f:
        return pd.read_csv(f)


def _cell(row: pd.Series, split: str, metric: str) -> Cell:
    mean = row.get(f"{split}_{metric}_mean", math.nan)
    std = row.get(f"{split}_{metric}_std", math.nan)
    if mean is None or pd.isna(mean):
        return Cell(None)
    return Cell(100 * float(mean), None if pd.isna(std) else 100 * float(std))


def _p_value(row: pd.Series, metric: str) -> float | None:
    p = row.get(f"test_{metric}_p_vs_ref", math.nan)
    return None if p is None or pd.isna(p) else float(p)


def display_label(label: str, display_name: object = None) -> str:
    """A row's label for a paper: the method's display name ("IntCLIP (released code)") for its registry name,
    keeping what the label adds ("(tuned)", "[weights: none]")."""
    if not isinstance(display_name, str) or not display_name:
        return label
    return display_name + label[len(base_method(label)):]


def _shown_cell(r: pd.Series, split: str, metric: str) -> Cell:
    """A summary row's cell as a table shows it: no spread for one run or a deterministic method (no "± 0.00")."""
    cell = _cell(r, split, metric)
    return Cell(cell.mean, None) if int(r["n"]) == 1 or bool(r.get("deterministic", False)) else cell


def _reproduced_row(r: pd.Series, label: str, family: str, columns: list[tuple[str, str]], primary: str) -> Row:
    return Row(
        label=label,
        family=family,
        params_m=r["params_learnable"] / 1e6,
        cells=[_shown_cell(r, split, metric) for split, metric in columns],
        method=r["method"],
        n=int(r["n"]),
        deterministic=bool(r.get("deterministic", False)),
        experiment_id=r.get("experiment_id"),
        p_value=_p_value(r, primary),
        bootstrap_reference=bool(r.get("reference", False)),
        run_ids=str(r.get("run_ids", "")).split(",") if r.get("run_ids") else [],
    )


def _reference_rows(table: str, methods: list[str] | None, columns: list[tuple[str, str]], family: str | None = None, dataset: str = "intentonomy") -> list[Row]:
    ref = reference_frame()
    ref = ref[(ref["table"] == table) & (ref["dataset"] == dataset)]
    rows = []
    for method, group in ref.groupby("method", sort=False):
        if methods is not None and method not in methods:
            continue
        values = {(s, m): v for s, m, v in zip(group["split"], group["metric"], group["value"])}
        params = group["params_M"].dropna()
        rows.append(
            Row(
                label=method,
                family=family or REFERENCE_FAMILIES.get(group["group"].iloc[0], "Paper"),
                params_m=float(params.iloc[0]) if len(params) else None,
                cells=[Cell(values.get(c)) for c in columns],
                reference=True,
            )
        )
    return rows


def _paper_value(table: str, method: str, split: str, metric: str, dataset: str = "intentonomy") -> float | None:
    ref = reference_frame()
    hit = ref[(ref["table"] == table) & (ref["method"] == method) & (ref["split"] == split) & (ref["metric"] == metric) & (ref["dataset"] == dataset)]
    return float(hit["value"].iloc[0]) if len(hit) else None


def mark_best(table: PaperTable) -> PaperTable:
    """Bold the best and underline the second best value of every column, compared as printed (two decimals),
    among the reproduced rows; ties share the mark."""
    table.best, table.second = {}, {}
    for c in range(len(table.columns)):
        values = {i: round(r.cells[c].mean, 2) for i, r in enumerate(table.rows) if not r.reference and r.cells[c].mean is not None}
        ranked = sorted(set(values.values()), reverse=True)
        if not ranked:
            continue
        table.best[c] = {i for i, v in values.items() if v == ranked[0]}
        if len(ranked) > 1:
            table.second[c] = {i for i, v in values.items() if v == ranked[1]}
    return table


def _protocol_note(info: dict) -> str:
    from bench.protocol import PROTOCOLS

    protocol = PROTOCOLS.get(info.get("protocol", ""))
    return f" {protocol.caption}" if protocol else f" Protocol {info.get('protocol')}."


def _seed_note(rows: list[Row]) -> str:
    seeded = [r for r in rows if not r.reference and r.n and not r.deterministic]
    note = " Deterministic methods (no randomness of their own) run once, without std." if any(r.deterministic for r in rows if not r.reference) else ""
    ns = sorted({r.n for r in seeded})
    if not ns:
        return note
    if ns == [1]:
        return " One seed per row (no std)." + note
    seeds = f" Mean $\\pm$ std over {ns[0]} seeds." if len(ns) == 1 else f" Mean $\\pm$ std over {ns[0]}-{ns[-1]} seeds (n per row in the HTML report)."
    return seeds + note


def table1(group: pd.DataFrame, info: dict, reference: bool) -> PaperTable:
    """Table 1 layout for one dataset x backbone x protocol group of the summary (multilabel)."""
    columns = [(split, m) for split in ("test", "val") for m in MULTILABEL_COLUMNS]
    ablation_only = {m for a in ABLATIONS for _, names, _ in a.rows for m in names if ":" in m}
    rows = []
    family_rank = {family: i for i, (family, _) in enumerate(FAMILIES)}
    member_rank = {name: j for _, members in FAMILIES for j, name in enumerate(members)}

    def rank(label: str, declared: str | None) -> int:  # family first (declared ones too), then the paper's order
        name = base_method(label)
        family = family_of(label, declared)
        return 100 * family_rank.get(family, len(FAMILIES)) + member_rank.get(name, member_rank.get(name.split(":")[0], 99))

    group = group.assign(_order=[rank(m, f) for m, f in zip(group["method"], group.get("family", [None] * len(group)))])
    for _, r in group.sort_values("_order", kind="stable").iterrows():
        if base_method(r["method"]) in ablation_only:
            continue
        label = display_label(r["method"], r.get("display_name"))
        row = _reproduced_row(r, label, family_of(r["method"], r.get("family")), columns, "macro_f1")
        if reference and info["dataset"] == "intentonomy":
            paper = TABLE1_REFERENCE.get(base_method(r["method"]), {})
            paper_label = paper.get(info["backbone"], paper.get("*"))
            value = _paper_value("table1", paper_label, "test", "macro_f1") if paper_label else None
            if value is not None and row.cells[0].mean is not None:
                row.deltas[0] = row.cells[0].mean - value
        rows.append(row)
    table = PaperTable(
        key="table1",
        title=f"Main comparison: {PAPER_DATASET.get(info['dataset'], info['dataset'])}, backbone {info['backbone']}",
        caption=[],
        columns=[Column(METRIC_LABELS[m], split.capitalize()) for split, m in columns],
        rows=rows,
        info=info,
    )
    if reference:
        if info["dataset"] == "intentonomy":
            table.rows += _reference_rows("table1", None, columns)
            table.delta_columns = [0]
        else:
            table.info = {**info, "reference_note": f"The paper reports no numbers for dataset {info['dataset']!r}."}
    table.caption = _caption(table, "#P: learnable parameters (millions).")
    return mark_best(table)


def _caption(table: PaperTable, first: str, delta_metric: str = "test Macro F1") -> list[str | Symbol]:
    info = table.info
    parts: list[str | Symbol] = [
        f"{table.title}. {first}{_seed_note(table.rows)}"
        f" Bold: best, underlined: second best among reproduced rows.{_protocol_note(info)}"
    ]
    if info.get("manifest_sha256"):
        parts.append(f" Dataset manifest {str(info['manifest_sha256'])[:12]}.")
    if any(r.reference for r in table.rows):
        parts += [" Rows headed ", QUOTE_OPEN, "Paper", QUOTE_CLOSE, " are the numbers printed in the IntCLIP paper "
                  "(ECCV 2024); ", DELTA, f": reproduced minus paper, {delta_metric}."]
    if info.get("reference_note"):
        parts.append(" " + info["reference_note"])
    if any(r.p_value is not None and r.p_value >= 0.05 for r in table.rows):
        parts += [" ", DAGGER, ": not significantly below the reference row (best on val): one-sided hierarchical "
                  "bootstrap over seeds and test images, Holm-corrected, p ", GE, " 0.05."]
    return parts


def ablation_tables(group: pd.DataFrame, info: dict, reference: bool) -> list[PaperTable]:
    """Tables 2-5 for one multilabel group, each only when an ablation variant of it has results."""
    by_method = {base_method(m): r for m, (_, r) in zip(group["method"], group.iterrows()) if m == base_method(m)}
    columns = [("test", m) for m in MULTILABEL_COLUMNS]
    tables = []
    for ablation in ABLATIONS:
        variants = [names for _, names, _ in ablation.rows if any(":" in n for n in names)]
        if not any(n in by_method for names in variants for n in names if ":" in n):
            continue
        rows = []
        for label, names, paper_label in ablation.rows:
            present = next((n for n in names if n in by_method), None)
            if present is None:
                continue
            row = _reproduced_row(by_method[present], label, ablation.title, columns, "macro_f1")
            row.method = present
            row.p_value, row.bootstrap_reference = None, False  # the bootstrap compares against the best of the whole group
            if reference and paper_label and info["dataset"] == "intentonomy":
                value = _paper_value(ablation.key, paper_label, "test", "macro_f1")
                if value is not None and row.cells[0].mean is not None:
                    row.deltas[0] = row.cells[0].mean - value
            rows.append(row)
        table = PaperTable(
            key=ablation.key,
            title=f"{ablation.title}: {PAPER_DATASET.get(info['dataset'], info['dataset'])}, backbone {info['backbone']}",
            caption=[],
            columns=[Column(METRIC_LABELS[m], "Test") for _, m in columns],
            rows=rows,
            info=info,
            show_params=True,
        )
        if reference and info["dataset"] == "intentonomy" and any(p for _, _, p in ablation.rows):
            wanted = [p for _, _, p in ablation.rows if p]
            table.rows += _reference_rows(ablation.key, wanted, columns, family="Paper")
            table.delta_columns = [0]
        table.caption = _caption(table, "Test metrics, as in the paper.")
        tables.append(mark_best(table))
    return tables


def emotion_table(summary: pd.DataFrame, reference: bool) -> list[PaperTable]:
    """Table 6a: test accuracy, one column per multiclass dataset, per backbone x protocol."""
    multiclass = summary[summary["task"] == "multiclass"]
    tables = []
    for (backbone, protocol), group in multiclass.groupby(["backbone", "protocol"], sort=False):
        # one column per dataset version: results of different manifests are never mixed into one column
        keys = sorted(dict.fromkeys(zip(group["dataset"], group["manifest_sha256"])), key=lambda k: (k[0] not in PAPER_DATASET, list(PAPER_DATASET).index(k[0]) if k[0] in PAPER_DATASET else 0, k))
        versions = pd.Series([d for d, _ in keys]).value_counts()
        datasets = [d for d, _ in keys]
        blocks = [PAPER_DATASET.get(d, d) + (f" [{m[:8]}]" if versions[d] > 1 else "") for d, m in keys]
        rows: dict[str, Row] = {}
        for _, r in group.iterrows():
            row = rows.setdefault(
                r["method"],
                Row(label=display_label(r["method"], r.get("display_name")), family=family_of(r["method"], r.get("family")),
                    params_m=r["params_learnable"] / 1e6, cells=[Cell(None) for _ in keys], method=r["method"]),
            )
            row.cells[keys.index((r["dataset"], r["manifest_sha256"]))] = _shown_cell(r, "test", "accuracy")
            row.n = int(r["n"])
            if len(keys) == 1:  # the bootstrap compares within one dataset
                row.p_value = _p_value(r, "accuracy")
                row.bootstrap_reference = bool(r.get("reference", False))
            row.deterministic = bool(r.get("deterministic", False))
            row.experiment_id = r.get("experiment_id")
        family_order = [f for f, _ in FAMILIES]
        body = sorted(rows.values(), key=lambda row: family_order.index(row.family) if row.family in family_order else len(family_order))
        table = PaperTable(
            key="table6a",
            title=f"Image emotion recognition accuracy (as the paper's Table 6a), backbone {backbone}",
            caption=[],
            columns=[Column("Acc", b) for b in blocks],
            rows=list(body),
            info={"backbone": backbone, "protocol": protocol, "dataset": ",".join(datasets), "task": "multiclass", "manifest_sha256": ""},
        )
        if reference and {"emotionroi", "fi"} & set(datasets):  # (a second version of a dataset gets no paper row)
            ref = reference_frame()
            ref = ref[ref["table"] == "table6a"]
            for method, g in ref.groupby("method", sort=False):
                values = dict(zip(g["dataset"], g["value"]))
                table.rows.append(Row(label=method, family="Paper", params_m=None, cells=[Cell(values.get(d)) for d in datasets], reference=True))
            paper = "IntCLIP (R101)"
            for row in body:
                if base_method(row.method).split(":")[0] in ("intclip", "intclip-official") and backbone == "RN101":
                    for c, d in enumerate(datasets):
                        value = _paper_value("table6a", paper, "test", "accuracy", d)
                        if value is not None and row.cells[c].mean is not None:
                            row.deltas[c] = row.cells[c].mean - value
            table.delta_columns = [c for c, d in enumerate(datasets) if d in ("emotionroi", "fi")]
        table.caption = _caption(table, "Test accuracy (%).", delta_metric="test accuracy")
        tables.append(mark_best(table))
    return tables


def paper_tables(summary: pd.DataFrame, reference: bool = False) -> list[PaperTable]:
    """Every table of the report: Table 1 and its ablations per multilabel group, then Table 6a."""
    if summary.empty:
        return []
    tables = []
    for keys, group in summary.groupby(GROUP_KEYS, sort=False, dropna=False):
        info = dict(zip(GROUP_KEYS, keys))
        if info["task"] != "multilabel":
            continue
        tables.append(table1(group, info, reference))
        tables.extend(ablation_tables(group, info, reference))
    tables.extend(emotion_table(summary, reference))
    return tables
