"""The paper's table layouts, filled from the summary of the result store (and, on request, the paper's own rows).

- Table 1: every main method of one dataset x backbone x protocol, grouped into families, with the #P column
  (learnable parameters, millions) and Macro/Micro/Samples F1 and mAP on test and val.
- Tables 2-5: IntCLIP's ablations (components, class text, trained layers, fusion), test metrics, built only when
  at least one ablation variant of that table has results beside the full ``intclip``.
- Table 6a: accuracy on the emotion datasets (one column per multiclass dataset).
- Table 6b: HCI with IntCLIP and HLEG (val F1), with the paper's rows, for an Intentonomy group holding ``intclip``.

With the paper's rows (``reference``), every table applies one rule (:func:`paper_delta`): a reproduced row gets a
Δ, reproduced minus paper, only against the paper's row of the same method (variant) on the same backbone
(``paper.PAPER_BACKBONE``); a table shows a Δ column only where some row has a Δ.

Best (bold) and second best (underlined) are computed per column from the numbers as printed (two decimals),
among the reproduced rows only: the paper's rows are a different protocol and are shown for reference. Renderers
(LaTeX, HTML) only format what is decided here. Reads the summary frame only; no torch.
"""

from __future__ import annotations

import math

import pandas as pd

from bench.reports.escape import DAGGER, DELTA, GE, PLUS_MINUS, QUOTE_CLOSE, QUOTE_OPEN, Symbol
from bench.reports.paper import ABLATIONS, PAPER_DATASET, REFERENCE_FAMILIES, TABLE1_REFERENCE, Ablation, reference_frame  # noqa: F401 (re-exported)
from bench.reports.paper import HCI_GENERALISATION, PAPER_BACKBONE, TABLE6A_REFERENCE, backbone_note, paper_backbone
from bench.reports.tables import METRIC_LABELS
from bench.store.collection import FAMILIES, GROUP_KEYS, TABLE_METRICS

from bench.reports.table_model import (  # noqa: F401 (the data model, re-exported for the renderers)
    PRIMARY,
    Cell,
    Column,
    PaperTable,
    Row,
    TableOptions,
)


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




def _cell(row: pd.Series, split: str, metric: str) -> Cell:
    mean = row.get(f"{split}_{metric}_mean", math.nan)
    std = row.get(f"{split}_{metric}_std", math.nan)
    if mean is None or pd.isna(mean):
        return Cell(None)
    return Cell(100 * float(mean), None if pd.isna(std) else 100 * float(std))


def _p_value(row: pd.Series, metric: str) -> float | None:
    p = row.get(f"test_{metric}_p_vs_ref", math.nan)
    return None if p is None or pd.isna(p) else float(p)


def _p_text(row: pd.Series, metric: str) -> str | None:
    text = row.get(f"test_{metric}_p_text")
    return text if isinstance(text, str) else None


TEST_NAMES = {"seed-t": "one-sided t-test over seeds", "bootstrap": "one-sided hierarchical bootstrap over seeds and test images"}


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
        p_text=_p_text(r, primary),
        below_reference=bool(r.get(f"test_{primary}_diff", math.nan) > 0),
        alpha=float(r.get("alpha", 0.05)),
        p_test=r.get("significance_test") if isinstance(r.get("significance_test"), str) else None,
        bootstrap_reference=bool(r.get("reference", False)),
        fragile=r.get("fragile_selections") if isinstance(r.get("fragile_selections"), str) else "",
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


def paper_delta(row: Row, backbone: str, table: str, labels: tuple[str, ...], cells: dict[int, tuple[str, str, str]]) -> None:
    """The Δ rule of every table: ``row`` (a reproduced row on ``backbone``) gets reproduced minus paper in the columns
    ``cells`` (column -> dataset, split, metric) that the paper prints, against the paper row of ``table`` among
    ``labels`` (those of the row's method or variant) whose backbone is ``backbone``; none when there is no such row."""
    label = next((lb for lb in labels if paper_backbone(table, lb) == backbone), None)
    for c, (dataset, split, metric) in cells.items() if label else ():
        value = _paper_value(table, label, split, metric, dataset)
        if value is not None and row.cells[c].mean is not None:
            row.deltas[c] = row.cells[c].mean - value


def _delta_columns(rows: list[Row]) -> list[int]:
    """The columns a table shows a Δ for: those where some row has one (no empty Δ column)."""
    return sorted({c for r in rows for c in r.deltas})


def mark_best(table: PaperTable) -> PaperTable:
    """Bold the best and underline the second best value of every column, compared as printed (two decimals),
    among the reproduced rows; ties share the mark. Rank the reproduced rows by the first column, as printed
    (ties share a rank, the next rank skips: 1, 2, 2, 4)."""
    table.best, table.second = {}, {}
    first = {i: round(r.cells[0].mean, 2) for i, r in enumerate(table.rows) if not r.reference and r.cells and r.cells[0].mean is not None}
    table.ranks = {i: 1 + sum(1 for v in first.values() if v > value) for i, value in first.items()}
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


def _seed_note(rows: list[Row]) -> list[str | Symbol]:
    seeded = [r for r in rows if not r.reference and r.n and not r.deterministic]
    note = " Deterministic methods (no randomness of their own) run once, without std." if any(r.deterministic for r in rows if not r.reference) else ""
    ns = sorted({r.n for r in seeded})
    if not ns:
        return [note]
    if ns == [1]:
        return [" One seed per row (no std)." + note]
    seeds = f" std over {ns[0]} seeds." if len(ns) == 1 else f" std over {ns[0]}-{ns[-1]} seeds (n per row in the HTML report)."
    return [" Mean ", PLUS_MINUS, seeds + note]


def _delta_metric(columns: list[tuple[str, str]]) -> str:
    split, metric = columns[0]
    return f"{split} {METRIC_LABELS[metric]}"


def table1(group: pd.DataFrame, info: dict, reference: bool, options: TableOptions = TableOptions()) -> PaperTable:
    """Table 1 layout for one dataset x backbone x protocol group of the summary (multilabel)."""
    columns = [(split, m) for split in options.splits(("test", "val")) for m in options.metrics_of("multilabel")]
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
        if reference:
            paper_delta(row, info["backbone"], "table1", TABLE1_REFERENCE.get(base_method(r["method"]), ()), {0: (info["dataset"], *columns[0])})
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
        else:
            table.info = {**info, "reference_note": f"The paper reports no numbers for dataset {info['dataset']!r}."}
        table.delta_columns = _delta_columns(table.rows)
    power = [v for v in group.get("significance_power_note", pd.Series(dtype=object)) if isinstance(v, str) and v]
    if power:  # the smallest difference the table's seeds can detect, beside the dagger's test
        table.info = {**table.info, "power_note": power[0]}
    table.caption = _caption(table, "#P: learnable parameters (millions).", _delta_metric(columns))
    return mark_best(table)


def _caption(table: PaperTable, first: str, delta_metric: str) -> list[str | Symbol]:
    info = table.info
    parts: list[str | Symbol] = [
        f"{table.title}. {first}", *_seed_note(table.rows),
        f" Bold: best, underlined: second best among reproduced rows.{_protocol_note(info)}",
    ]
    if info.get("manifest_sha256"):
        parts.append(f" Dataset manifest {str(info['manifest_sha256'])[:12]}.")
    if any(r.reference for r in table.rows):
        parts += [" Rows headed ", QUOTE_OPEN, "Paper", QUOTE_CLOSE, " are the numbers printed in the IntCLIP paper "
                  "(ECCV 2024). ", DELTA, f" (reproduced minus paper, {delta_metric}) is printed only against the paper's row "
                  f"of the same method on the same backbone (the paper's: {backbone_note(table.key)})."]
    if info.get("reference_note"):
        parts.append(" " + info["reference_note"])
    if any(r.dagger for r in table.rows):
        ref = next((r.label for r in table.rows if r.bootstrap_reference), "the declared reference")
        test = next((TEST_NAMES.get(r.p_test, r.p_test) for r in table.rows if r.p_test), TEST_NAMES["seed-t"])
        parts += [" ", DAGGER, f": below {ref}, the reference declared before the results, but not significantly "
                  f"({test}, Holm-corrected, p ", GE, f" {next(r.alpha for r in table.rows if r.dagger):g})."]
    if info.get("power_note") and any(r.p_test for r in table.rows):
        parts.append(" " + info["power_note"])
    fragile = [f"{r.label} {r.fragile}" for r in table.rows if r.fragile]
    if fragile:
        from bench.selection import TOLERANCE

        parts.append(f" Near-tie val selections (margin below the {100 * TOLERANCE:.2f}-point tie tolerance): "
                     + "; ".join(fragile) + ".")
    return parts


def _variant_rows(ablation: Ablation, by_method: dict, columns: list[tuple[str, str]], info: dict, reference: bool) -> list[Row]:
    """The reproduced rows of an ablation-style table (Tables 2-5, 6b): one per row whose method ran, each with its
    Δ against the paper's row (``reference``). No p-values: the significance test compares a table's methods
    against its declared reference over the whole group, not these rows with each other."""
    rows = []
    for label, names, paper_label in ablation.rows:
        present = next((n for n in names if n in by_method), None)
        if present is None:
            continue
        row = _reproduced_row(by_method[present], label, ablation.title, columns, "macro_f1")
        row.method = present
        row.p_value, row.p_text, row.bootstrap_reference = None, None, False
        if reference and paper_label:
            paper_delta(row, info["backbone"], ablation.key, (paper_label,), {0: (info["dataset"], *columns[0])})
        rows.append(row)
    return rows


def ablation_tables(group: pd.DataFrame, info: dict, reference: bool, options: TableOptions = TableOptions()) -> list[PaperTable]:
    """Tables 2-5 for one multilabel group, each only when an ablation variant of it has results."""
    by_method = {base_method(m): r for m, (_, r) in zip(group["method"], group.iterrows()) if m == base_method(m)}
    columns = [(split, m) for split in options.splits(("test",)) for m in options.metrics_of("multilabel")]
    tables = []
    for ablation in ABLATIONS:
        variants = [names for _, names, _ in ablation.rows if any(":" in n for n in names)]
        if not any(n in by_method for names in variants for n in names if ":" in n):
            continue
        rows = _variant_rows(ablation, by_method, columns, info, reference)
        table = PaperTable(
            key=ablation.key,
            title=f"{ablation.title}: {PAPER_DATASET.get(info['dataset'], info['dataset'])}, backbone {info['backbone']}",
            caption=[],
            columns=[Column(METRIC_LABELS[m], split.capitalize()) for split, m in columns],
            rows=rows,
            info=info,
            show_params=True,
        )
        if reference and info["dataset"] == "intentonomy" and any(p for _, _, p in ablation.rows):
            wanted = [p for _, _, p in ablation.rows if p]
            table.rows += _reference_rows(ablation.key, wanted, columns, family="Paper")
        table.delta_columns = _delta_columns(table.rows)
        shown = "Test metrics, as in the paper." if {s for s, _ in columns} == {"test"} else "The paper reports test metrics."
        table.caption = _caption(table, shown, _delta_metric(columns))
        tables.append(mark_best(table))
    return tables


def hci_table(group: pd.DataFrame, info: dict, reference: bool, options: TableOptions = TableOptions()) -> list[PaperTable]:
    """Table 6b (val F1, as the paper) for one Intentonomy multilabel group that holds a run of one of its IntCLIP rows:
    the reproduced rows beside the paper's four (HLEG's only the paper's). Only with the paper's rows (``reference``):
    alone, its one reproducible row repeats Table 1's. Only on the paper's backbone for it (ViT-B/32): elsewhere its
    IntCLIP row would stand beside paper rows it cannot be compared with."""
    if not reference or info["dataset"] != "intentonomy" or info["backbone"] not in set(PAPER_BACKBONE["table6b"].values()):
        return []
    ablation = HCI_GENERALISATION
    by_method = {base_method(m): r for m, (_, r) in zip(group["method"], group.iterrows()) if m == base_method(m)}
    metrics = tuple(m for m in options.metrics or () if m in TABLE_METRICS["multilabel"]) or ("macro_f1", "micro_f1", "samples_f1")
    columns = [(split, m) for split in options.splits(("val",)) for m in metrics]
    rows = _variant_rows(ablation, by_method, columns, info, True)
    if not rows:
        return []
    table = PaperTable(
        key=ablation.key,
        title=f"{ablation.title}: {PAPER_DATASET['intentonomy']}, backbone {info['backbone']}",
        caption=[],
        columns=[Column(METRIC_LABELS[m], split.capitalize()) for split, m in columns],
        rows=rows + _reference_rows(ablation.key, None, columns, family="Paper"),
        info=info,
    )
    table.delta_columns = _delta_columns(table.rows)
    shown = "Val metrics, as in the paper." if {s for s, _ in columns} == {"val"} else "The paper reports val metrics."
    table.caption = _caption(table, shown + " HLEG [33] (with or without HCI) is not implemented in the harness and no "
                             "IntCLIP variant has the paper's HCI-FG sentences: those rows are the paper's only.", _delta_metric(columns))
    return [mark_best(table)]


def emotion_table(summary: pd.DataFrame, reference: bool, options: TableOptions = TableOptions()) -> list[PaperTable]:
    """Table 6a: test accuracy, one column block per multiclass dataset, per backbone x protocol."""
    multiclass = summary[summary["task"] == "multiclass"]
    splits, metrics = options.splits(("test",)), options.metrics_of("multiclass")
    tables = []
    for (backbone, protocol), group in multiclass.groupby(["backbone", "protocol"], sort=False):
        # one block per dataset version: results of different manifests are never mixed into one column
        keys = sorted(dict.fromkeys(zip(group["dataset"], group["manifest_sha256"])), key=lambda k: (k[0] not in PAPER_DATASET, list(PAPER_DATASET).index(k[0]) if k[0] in PAPER_DATASET else 0, k))
        versions = pd.Series([d for d, _ in keys]).value_counts()
        datasets = [d for d, _ in keys]
        columns = [(key, split, m) for key in keys for split in splits for m in metrics]
        suffix = (lambda split: f" ({split})") if len(splits) > 1 else (lambda split: "")
        rows: dict[str, Row] = {}
        for _, r in group.iterrows():
            row = rows.setdefault(
                r["method"],
                Row(label=display_label(r["method"], r.get("display_name")), family=family_of(r["method"], r.get("family")),
                    params_m=r["params_learnable"] / 1e6, cells=[Cell(None) for _ in columns], method=r["method"]),
            )
            for c, (key, split, m) in enumerate(columns):
                if key == (r["dataset"], r["manifest_sha256"]):
                    row.cells[c] = _shown_cell(r, split, m)
            row.n = int(r["n"])
            if len(keys) == 1:  # the test compares within one dataset
                row.p_value, row.p_text = _p_value(r, "accuracy"), _p_text(r, "accuracy")
                row.below_reference = bool(r.get("test_accuracy_diff", math.nan) > 0)
                row.alpha = float(r.get("alpha", 0.05))
                row.p_test = r.get("significance_test") if isinstance(r.get("significance_test"), str) else None
                row.bootstrap_reference = bool(r.get("reference", False))
            row.deterministic = bool(r.get("deterministic", False))
            row.experiment_id = r.get("experiment_id")
        family_order = [f for f, _ in FAMILIES]
        body = sorted(rows.values(), key=lambda row: family_order.index(row.family) if row.family in family_order else len(family_order))
        table = PaperTable(
            key="table6a",
            title=f"Image emotion recognition accuracy (as the paper's Table 6a), backbone {backbone}",
            caption=[],
            columns=[Column(METRIC_LABELS[m] + suffix(split), PAPER_DATASET.get(d, d) + (f" [{h[:8]}]" if versions[d] > 1 else ""))
                     for (d, h), split, m in columns],
            rows=list(body),
            info={"backbone": backbone, "protocol": protocol, "dataset": ",".join(datasets), "task": "multiclass", "manifest_sha256": ""},
        )
        if reference and {"emotionroi", "fi"} & set(datasets):  # (a second version of a dataset gets no paper row)
            _emotion_reference(table, body, columns, backbone)
        shown = "Test accuracy (%)." if (splits, metrics) == (("test",), ("accuracy",)) else "Percent; the paper reports test accuracy."
        table.caption = _caption(table, shown, delta_metric="test accuracy")
        tables.append(mark_best(table))
    return tables


def _emotion_reference(table: PaperTable, body: list[Row], columns: list[tuple], backbone: str) -> None:
    """The paper's Table 6a rows (test accuracy) and, by :func:`paper_delta`, reproduced minus paper for IntCLIP."""
    ref = reference_frame()
    ref = ref[ref["table"] == "table6a"]
    paper_columns = [c for c, ((d, _), split, m) in enumerate(columns) if (split, m) == ("test", "accuracy") and d in ("emotionroi", "fi")]
    for method, g in ref.groupby("method", sort=False):
        values = dict(zip(g["dataset"], g["value"]))
        cells = [Cell(values.get(d)) if c in paper_columns else Cell(None) for c, ((d, _), _, _) in enumerate(columns)]
        table.rows.append(Row(label=method, family="Paper", params_m=None, cells=cells, reference=True))
    for row in body:
        paper_delta(row, backbone, "table6a", TABLE6A_REFERENCE.get(base_method(row.method), ()),
                    {c: (columns[c][0][0], "test", "accuracy") for c in paper_columns})
    table.delta_columns = _delta_columns(table.rows)


def paper_tables(summary: pd.DataFrame, reference: bool = False, options: TableOptions = TableOptions()) -> list[PaperTable]:
    """Every table of the report: Table 1 and its ablations per multilabel group, then Table 6a."""
    if summary.empty:
        return []
    tables = []
    for keys, group in summary.groupby(GROUP_KEYS, sort=False, dropna=False):
        info = dict(zip(GROUP_KEYS, keys))
        if info["task"] != "multilabel":
            continue
        tables.append(table1(group, info, reference, options))
        tables.extend(ablation_tables(group, info, reference, options))
        tables.extend(hci_table(group, info, reference, options))
    tables.extend(emotion_table(summary, reference, options))
    return tables
