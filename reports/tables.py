"""Result records -> summary tables: mean +- std (ddof=1) over seeds, 95% t-interval, n; Markdown and CSV.

A table is one dataset version (name *and* manifest hash) x protocol x backbone; a row within it averages only
runs of one experiment: the same method name, method version, method config and backbone weights (checkpoint hash
or open_clip tag). Where two rows of a table would share a method label, each label says what differs
(``zeroshot [weights: none]``, ``dualcoop [v2]``, ``dualcoop [config 1a2b3c4d]``). A deterministic method (run once,
seed None) shows n = 1, marked "deterministic". Reads result files only; never imports torch.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd

from bench.store import store
from bench.errors import CorruptResultError
from bench.reports import escape
from bench.store.schema import MULTICLASS_METRICS, RunResult

TABLE_METRICS = {"multilabel": ("macro_f1", "micro_f1", "samples_f1", "mAP"), "multiclass": MULTICLASS_METRICS}
METRIC_LABELS = {
    "macro_f1": "Macro F1",
    "micro_f1": "Micro F1",
    "samples_f1": "Samples F1",
    "mAP": "mAP",
    "accuracy": "Acc",
    "mean_class_accuracy": "Mean-class Acc",
    "mAP_official": "mAP (code's AP)",
}
GROUP_KEYS = ["dataset", "manifest_sha256", "protocol", "backbone", "task"]
# Table 1 families in the paper's order of presentation (reference points first, the proposed method last), for
# records that do not declare their family; rows follow this order, other methods after, by name.
FAMILIES = (
    ("Reference points", ("label-prior", "zeroshot", "linear-probe")),
    ("Multi-label methods", ("dualcoop", "query2label")),
    ("IntCLIP", ("intclip", "intclip-official")),
)
METHOD_ORDER = tuple(name for _, members in FAMILIES for name in members)
IDENTITY_KEYS = ["method_name", "method_version", "config_id", "weights_id", "tuned"]  # one row = one experiment


def load_results(results: Path) -> tuple[list[RunResult], list[CorruptResultError]]:
    """Every valid record under ``results`` and the errors of the invalid ones: a record whose scores.npz is
    missing, damaged, unreadable or not finite, or whose metrics do not recompute from its scores
    (:func:`bench.store.store.iter_checked`), is skipped, never ranked, and the report does not crash."""
    good, bad = [], []
    for _, rec in store.iter_checked(results):
        (bad if isinstance(rec, CorruptResultError) else good).append(rec)
    return good, bad


def results_frame(records: list[RunResult]) -> pd.DataFrame:
    """One row per run with the table metrics of val and test and the parameter counts."""
    rows = []
    for r in records:
        row = {
            "run_id": r.run_id,
            "method": r.method.name + (" (tuned)" if "tuning" in r.extra else ""),
            "method_name": r.method.name,
            "method_version": r.method.version,
            "config_id": store.compute_run_id(r.method.config)[:8],
            "weights_id": r.weights_id,
            "tuned": "tuning" in r.extra,
            "family": r.method.family,
            "display_name": r.method.display_name,
            "main_metric": r.dataset.main_metric or ("macro_f1" if r.dataset.task == "multilabel" else "accuracy"),
            "backbone": r.backbone["name"],
            "dataset": r.dataset.name,
            "manifest_sha256": r.dataset.manifest_sha256,
            "protocol": r.protocol.name,
            "task": r.dataset.task,
            "seed": r.seed,
            "params_learnable": r.params.learnable,
            "params_total": r.params.total,
            "fragile": _fragile(r),
        }
        for split in ("val", "test"):
            for key, value in getattr(r.metrics, split).items():
                row[f"{split}_{key}"] = value
        rows.append(row)
    return pd.DataFrame(rows)


def _fragile(record: RunResult) -> str:
    """The run's val selections whose margin is inside their tie tolerance, e.g. ``threshold (margin 0.04 pt)``."""
    from bench.selection import fragile_selections

    stored = {k: v.model_dump() for k, v in record.selections.items()}
    tuned = record.extra.get("tuning", {}).get("selection") if isinstance(record.extra.get("tuning"), dict) else None
    if isinstance(tuned, dict):
        stored["config"] = tuned
    return "; ".join(f"{s.get('what', '?')} (margin {100 * s['margin']:.2f} pt)" for s in fragile_selections(stored))


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Per group x method: mean, std (ddof=1), 95% t half-width and n of every metric column."""
    from scipy import stats

    if frame.empty:
        return pd.DataFrame()
    metric_cols = [c for c in frame.columns if c.startswith(("val_", "test_"))]
    out = []
    frame = _label_experiments(frame)
    order = {name: i for i, name in enumerate(METHOD_ORDER)}
    frame = frame.assign(_order=[order.get(m, len(order)) for m in frame["method_name"]])
    frame = frame.sort_values(["_order", "method", "seed"], kind="stable", na_position="first").drop(columns="_order")
    for keys, group in frame.groupby(GROUP_KEYS + IDENTITY_KEYS, sort=False, dropna=False):
        row = dict(zip(GROUP_KEYS + IDENTITY_KEYS, keys))
        row["method"] = group["method"].iloc[0]
        row["experiment_id"] = store.compute_run_id({k: str(row[k]) for k in IDENTITY_KEYS})[:12]
        row["family"] = group["family"].iloc[0]
        row["display_name"] = group["display_name"].iloc[0] if "display_name" in group else None
        row["main_metric"] = group["main_metric"].iloc[0]
        row["n"] = len(group)
        seeds = group["seed"]
        row["deterministic"] = bool(seeds.isna().all())
        row["seeds"] = "deterministic" if row["deterministic"] else ",".join(str(int(s)) for s in sorted(seeds.dropna()))
        row["run_ids"] = ",".join(group["run_id"])
        fragile = group[group["fragile"].astype(bool)] if "fragile" in group else group.iloc[:0]
        row["fragile_selections"] = "; ".join(
            f"{'deterministic' if pd.isna(f['seed']) else 'seed ' + str(int(f['seed']))}: {f['fragile']}" for _, f in fragile.iterrows())
        row["params_learnable"] = int(group["params_learnable"].iloc[0])
        row["params_total"] = int(group["params_total"].iloc[0])
        for col in metric_cols:
            values = group[col].dropna()
            n = len(values)
            std = float(values.std(ddof=1)) if n > 1 else math.nan
            row[f"{col}_mean"] = float(values.mean()) if n else math.nan
            row[f"{col}_std"] = std
            row[f"{col}_ci95"] = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else math.nan
        out.append(row)
    return pd.DataFrame(out)


def _label_experiments(frame: pd.DataFrame) -> pd.DataFrame:
    """Method labels that tell apart the experiments of one method in one table: each label gets the parts of its
    identity (weights, version, config) in which the method's experiments differ, e.g. ``zeroshot [weights: none]``."""
    frame = frame.copy()
    labels = frame["method"].astype(object).copy()
    for _, group in frame.groupby(GROUP_KEYS + ["method"], sort=False, dropna=False):
        if len(group.drop_duplicates(IDENTITY_KEYS)) == 1:
            continue
        for index, r in group.iterrows():
            parts = []
            if group["weights_id"].nunique() > 1:
                parts.append(f"weights: {_short_weights(r['weights_id'])}")
            if group["method_version"].nunique() > 1:
                parts.append(f"v{r['method_version']}")
            if group["config_id"].nunique() > 1:
                parts.append(f"config {r['config_id']}")
            labels[index] = f"{r['method']} [{', '.join(parts)}]"
    frame["method"] = labels
    return frame


def _short_weights(weights_id: str) -> str:
    """``sha256:<64 hex>`` -> ``sha256:1a2b3c4d``; tags and ``none`` as they are."""
    kind, _, value = str(weights_id).partition(":")
    return f"{kind}:{value[:8]}" if kind == "sha256" else (value if kind == "tag" else str(weights_id))


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


def main_metric(group: pd.DataFrame) -> str:
    """The score a table ranks by: its dataset's declared main metric, else macro F1 (multi-label) or accuracy."""
    declared = group["main_metric"].dropna() if "main_metric" in group else pd.Series(dtype=object)
    if len(declared):
        return str(declared.iloc[0])
    return "macro_f1" if group["task"].iloc[0] == "multilabel" else "accuracy"


def significance_note(summary: pd.DataFrame) -> str:
    """The sentences that say how the p-values were computed, one per distinct table note (empty when none)."""
    if summary.empty or "significance_note" not in summary:
        return ""
    return " ".join(n for n in dict.fromkeys(summary["significance_note"]) if n)
