"""Summary -> tables: Markdown, CSV and the console's rich tables of :func:`bench.store.collection.summarise`'s
summary (one table per dataset version x protocol x backbone), with the metric labels every format uses.
Reads no files and never imports torch.
"""

from __future__ import annotations

import io
import math

import pandas as pd

from bench.reports import escape
from bench.store.collection import GROUP_KEYS, TABLE_METRICS, main_metric

METRIC_LABELS = {
    "macro_f1": "Macro F1",
    "micro_f1": "Micro F1",
    "samples_f1": "Samples F1",
    "mAP": "mAP",
    "accuracy": "Acc",
    "mean_class_accuracy": "Mean-class Acc",
    "mAP_official": "mAP (code's AP)",
}


def _cell(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{100 * mean:.2f}" if math.isnan(std) else f"{100 * mean:.2f} ± {100 * std:.2f}"


def table_rows(summary: pd.DataFrame) -> list[tuple[dict, list[str], list[list[str]]]]:
    """(group keys, header, rows) per dataset/protocol/backbone group; numbers in percent (none for no runs)."""
    if summary.empty:
        return []
    tables = []
    for keys, group in summary.groupby(GROUP_KEYS, sort=False, dropna=False):
        info = dict(zip(GROUP_KEYS, keys))
        metric_keys = TABLE_METRICS[info["task"]]
        p_column = f"test_{main_metric(group)}_p_text"
        official = "test_mAP_official_mean" in group and group["test_mAP_official_mean"].notna().any()
        if official:  # the released code's own AP (ties ordered by its sort), which its epoch selection used
            metric_keys = (*metric_keys, "mAP_official")
        header = ["Method", "#P (M)", "n"] + [
            f"{split} {METRIC_LABELS[m]}" for split in ("test", "val") for m in metric_keys
        ] + ([f"p vs ref ({METRIC_LABELS.get(main_metric(group), main_metric(group))})"] if p_column in group else [])
        rows = []
        for _, r in group.iterrows():
            n = f"{r['n']} (deterministic)" if r.get("deterministic", False) else str(r["n"])
            cells = [r["method"], f"{r['params_learnable'] / 1e6:.3f}", n]
            for split in ("test", "val"):
                cells += [_cell(r.get(f"{split}_{m}_mean", math.nan), r.get(f"{split}_{m}_std", math.nan)) for m in metric_keys]
            if p_column in group:
                text = r.get(p_column)
                cells.append(text if isinstance(text, str) else "-")
            rows.append(cells)
        tables.append((info, header, rows))
    return tables


def _title(info: dict, esc=str) -> str:
    """A group's heading; ``esc`` escapes the names from the records for the output format."""
    from bench.protocol import PROTOCOLS

    known = PROTOCOLS.get(info["protocol"])
    protocol = esc(info["protocol"]) + (known.title_note if known else "")
    return (f"{esc(info['dataset'])} (manifest {esc(str(info['manifest_sha256'])[:12])}), backbone {esc(info['backbone'])}, "
            f"protocol {protocol}")


def to_markdown(summary: pd.DataFrame) -> str:
    """One Markdown table per group; mean ± std over seeds in percent."""
    if summary.empty:
        return "No results.\n"
    parts = []
    note = significance_note(summary)
    for info, header, rows in table_rows(summary):
        parts.append(f"### {_title(info, escape.markdown)}\n")
        parts.append("| " + " | ".join(header) + " |")
        parts.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        parts.extend("| " + " | ".join([escape.markdown(r[0]), *r[1:]]) + " |" for r in rows)
        parts.append("")
    if note:
        parts.append(note + "\n")
    fragile = fragile_note(summary)
    if fragile:
        parts.append(escape.markdown(fragile) + "\n")
    return "\n".join(parts) + "\n"


def fragile_note(summary: pd.DataFrame) -> str:
    """The sentence that flags val selections sitting on near-ties (empty when there are none)."""
    from bench.selection import TOLERANCE

    if summary.empty or "fragile_selections" not in summary:
        return ""
    flagged = [f"{r['method']} {r['fragile_selections']}" for _, r in summary.iterrows() if r["fragile_selections"]]
    if not flagged:
        return ""
    return (f"Near-tie selections (a candidate outside the tie set is within the {100 * TOLERANCE:.2f}-point tie "
            f"tolerance of the chosen one; another machine's float kernels may choose differently): " + "; ".join(flagged) + ".")


def to_csv(summary: pd.DataFrame) -> str:
    """The full summary (every metric's mean, std, ci95, n), fractions not percent."""
    buf = io.StringIO()
    summary.map(escape.clean_value).to_csv(buf, index=False)  # text cells without control characters
    return buf.getvalue()


def rich_tables(summary: pd.DataFrame) -> list:
    """The Markdown tables as rich tables, for the terminal."""
    from rich.table import Table

    tables = []
    for info, header, rows in table_rows(summary):
        table = Table(title=_title(info, escape.rich_text), title_justify="left")
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i == 0 else "right", no_wrap=i == 0)
        for r in rows:
            table.add_row(escape.rich_text(r[0]), *[c.replace(" (deterministic)", " (det.)") if i == 1 else c for i, c in enumerate(r[1:])])
        if any("(deterministic)" in r[2] for r in rows):
            table.caption, table.caption_justify = "det.: a deterministic method (no randomness of its own), run once", "left"
        tables.append(table)
    return tables


def significance_note(summary: pd.DataFrame) -> str:
    """The sentences that say how the p-values were computed, one per distinct table note (empty when none)."""
    if summary.empty or "significance_note" not in summary:
        return ""
    return " ".join(n for n in dict.fromkeys(summary["significance_note"]) if n)
