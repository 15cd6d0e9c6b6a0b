"""Result records -> summary tables: mean +- std (ddof=1) over seeds, 95% t-interval, n; Markdown and CSV.

Runs are grouped by dataset *and* manifest hash *and* protocol *and* backbone, so results of different dataset
versions or protocols are never averaged together. Reads result files only; never imports torch.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd

from bench import store
from bench.errors import CorruptResultError
from bench.schema import MULTICLASS_METRICS, RunResult

TABLE_METRICS = {"multilabel": ("macro_f1", "micro_f1", "samples_f1", "mAP"), "multiclass": MULTICLASS_METRICS}
METRIC_LABELS = {
    "macro_f1": "Macro F1",
    "micro_f1": "Micro F1",
    "samples_f1": "Samples F1",
    "mAP": "mAP",
    "accuracy": "Acc",
    "mean_class_accuracy": "Mean-class Acc",
}
GROUP_KEYS = ["dataset", "manifest_sha256", "protocol", "backbone", "task"]


def load_results(results: Path) -> tuple[list[RunResult], list[CorruptResultError]]:
    """Every valid record under ``results`` and the errors of the invalid ones."""
    good, bad = [], []
    for _, rec in store.iter_results(results):
        (bad if isinstance(rec, CorruptResultError) else good).append(rec)
    return good, bad


def results_frame(records: list[RunResult]) -> pd.DataFrame:
    """One row per run with the table metrics of val and test and the parameter counts."""
    rows = []
    for r in records:
        row = {
            "run_id": r.run_id,
            "method": r.method.name + (" (tuned)" if "tuning" in r.extra else ""),
            "config_id": store.compute_run_id(r.method.config)[:8],
            "backbone": r.backbone["name"],
            "dataset": r.dataset.name,
            "manifest_sha256": r.dataset.manifest_sha256,
            "protocol": r.protocol.name,
            "task": r.dataset.task,
            "seed": r.seed,
            "params_learnable": r.params.learnable,
            "params_total": r.params.total,
        }
        for split in ("val", "test"):
            for key, value in getattr(r.metrics, split).items():
                row[f"{split}_{key}"] = value
        rows.append(row)
    return pd.DataFrame(rows)


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Per group x method: mean, std (ddof=1), 95% t half-width and n of every metric column."""
    from scipy import stats

    if frame.empty:
        return pd.DataFrame()
    metric_cols = [c for c in frame.columns if c.startswith(("val_", "test_"))]
    out = []
    # runs of one method with different configs (a tuned refit, an edited bench.toml) are never averaged together
    frame = frame.copy()
    configs = frame.groupby(GROUP_KEYS + ["method"], dropna=False)["config_id"].transform("nunique")
    frame.loc[configs > 1, "method"] = frame["method"] + " [" + frame["config_id"] + "]"
    for keys, group in frame.groupby(GROUP_KEYS + ["method"], sort=False, dropna=False):
        row = dict(zip(GROUP_KEYS + ["method"], keys))
        row["n"] = len(group)
        row["seeds"] = ",".join(str(s) for s in sorted(group["seed"]))
        row["run_ids"] = ",".join(group["run_id"])
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


def _cell(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{100 * mean:.2f}" if math.isnan(std) else f"{100 * mean:.2f} ± {100 * std:.2f}"


def table_rows(summary: pd.DataFrame) -> list[tuple[dict, list[str], list[list[str]]]]:
    """(group keys, header, rows) per dataset/protocol/backbone group; numbers in percent."""
    tables = []
    for keys, group in summary.groupby(GROUP_KEYS, sort=False, dropna=False):
        info = dict(zip(GROUP_KEYS, keys))
        metric_keys = TABLE_METRICS[info["task"]]
        p_column = f"test_{metric_keys[0]}_p_vs_best"
        header = ["Method", "#P (M)", "n"] + [
            f"{split} {METRIC_LABELS[m]}" for split in ("test", "val") for m in metric_keys
        ] + ([f"p vs best ({METRIC_LABELS[metric_keys[0]]})"] if p_column in group else [])
        rows = []
        for _, r in group.iterrows():
            cells = [r["method"], f"{r['params_learnable'] / 1e6:.3f}", str(r["n"])]
            for split in ("test", "val"):
                cells += [_cell(r.get(f"{split}_{m}_mean", math.nan), r.get(f"{split}_{m}_std", math.nan)) for m in metric_keys]
            if p_column in group:
                p = r.get(p_column, math.nan)
                cells.append("best" if pd.isna(p) else f"{p:.3f}")
            rows.append(cells)
        tables.append((info, header, rows))
    return tables


def _title(info: dict) -> str:
    protocol = info["protocol"] + (" (epoch selected on TEST, threshold 0.5: official-code protocol)" if info["protocol"] == "intclip-code" else "")
    return f"{info['dataset']} (manifest {info['manifest_sha256'][:12]}), backbone {info['backbone']}, protocol {protocol}"


def to_markdown(summary: pd.DataFrame) -> str:
    """One Markdown table per group; mean ± std over seeds in percent."""
    if summary.empty:
        return "No results.\n"
    parts = []
    for info, header, rows in table_rows(summary):
        parts.append(f"### {_title(info)}\n")
        parts.append("| " + " | ".join(header) + " |")
        parts.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        parts.extend("| " + " | ".join(r) + " |" for r in rows)
        parts.append("")
    return "\n".join(parts) + "\n"


def to_csv(summary: pd.DataFrame) -> str:
    """The full summary (every metric's mean, std, ci95, n), fractions not percent."""
    buf = io.StringIO()
    summary.to_csv(buf, index=False)
    return buf.getvalue()


def rich_tables(summary: pd.DataFrame) -> list:
    """The Markdown tables as rich tables, for the terminal."""
    from rich.table import Table

    tables = []
    for info, header, rows in table_rows(summary):
        table = Table(title=_title(info), title_justify="left")
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i == 0 else "right", no_wrap=i == 0)
        for r in rows:
            table.add_row(*r)
        tables.append(table)
    return tables


def add_significance(summary: pd.DataFrame, records: list[RunResult], results: Path, n_boot: int = 1000) -> pd.DataFrame:
    """Add ``test_<metric>_p_vs_best`` (macro F1 and mAP, or accuracy): a paired bootstrap over test images of
    every method against the best one of its group (by the mean test macro F1, or accuracy), from the stored
    scores; each resample recomputes the metric."""
    from bench.reports.significance import RunScores, paired_bootstrap

    if summary.empty:
        return summary
    summary = summary.copy()
    by_id = {r.run_id: r for r in records}

    def runs_of(row: pd.Series) -> list[RunScores]:
        out = []
        for run_id in row["run_ids"].split(","):
            scores = store.read_scores(store.runs_dir(results) / run_id)
            out.append(RunScores(scores["test_scores"], scores["test_labels"], by_id[run_id].protocol.threshold))
        return out

    for _, group in summary.groupby(GROUP_KEYS, sort=False, dropna=False):
        primary = "macro_f1" if group["task"].iloc[0] == "multilabel" else "accuracy"
        best_index = group[f"test_{primary}_mean"].idxmax()
        best = runs_of(group.loc[best_index])
        for index, row in group.iterrows():
            if index == best_index:
                continue
            other = runs_of(row)
            for metric in ("macro_f1", "mAP") if primary == "macro_f1" else ("accuracy",):
                summary.loc[index, f"test_{metric}_p_vs_best"] = paired_bootstrap(best, other, metric, n_boot)["p_value"]
    return summary
