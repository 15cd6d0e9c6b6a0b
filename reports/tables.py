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

from bench import store
from bench.io import atomic_write_bytes
from bench.reports.significance import format_p
from bench.errors import CorruptResultError
from bench.reports import escape
from bench.schema import MULTICLASS_METRICS, RunResult

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
    """Every valid record under ``results`` and the errors of the invalid ones (a record whose scores.npz is
    missing, damaged or unreadable is invalid: it is skipped, never ranked, and the report does not crash)."""
    good, bad = [], []
    for _, rec in store.iter_results(results, verify=True):
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
        p_column = f"test_{metric_keys[0]}_p_vs_ref"
        official = "test_mAP_official_mean" in group and group["test_mAP_official_mean"].notna().any()
        if official:  # the released code's own AP (ties ordered by its sort), which its epoch selection used
            metric_keys = (*metric_keys, "mAP_official")
        header = ["Method", "#P (M)", "n"] + [
            f"{split} {METRIC_LABELS[m]}" for split in ("test", "val") for m in metric_keys
        ] + ([f"p vs ref ({METRIC_LABELS[metric_keys[0]]})"] if "reference" in group else [])
        rows = []
        for _, r in group.iterrows():
            n = f"{r['n']} (deterministic)" if r.get("deterministic", False) else str(r["n"])
            cells = [r["method"], f"{r['params_learnable'] / 1e6:.3f}", n]
            for split in ("test", "val"):
                cells += [_cell(r.get(f"{split}_{m}_mean", math.nan), r.get(f"{split}_{m}_std", math.nan)) for m in metric_keys]
            if "reference" in group:
                p = r.get(p_column, math.nan)
                cells.append("ref" if r["reference"] else format_p(p, r.get("bootstrap_n")))
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
        table = Table(title=_title(info, escape.rich_text), title_justify="left")
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i == 0 else "right", no_wrap=i == 0)
        for r in rows:
            table.add_row(escape.rich_text(r[0]), *[c.replace(" (deterministic)", " (det.)") if i == 1 else c for i, c in enumerate(r[1:])])
        if any("(deterministic)" in r[2] for r in rows):
            table.caption, table.caption_justify = "det.: a deterministic method (no randomness of its own), run once", "left"
        tables.append(table)
    return tables


SIGNIFICANCE_NOTE = (
    "p vs ref: one-sided hierarchical bootstrap (seeds and test images resampled together) of each method against "
    "the reference method of its table (the best mean val {metric}, its dataset's main metric; never chosen on "
    "test), Holm-corrected over the "
    "compared methods; {n_boot} resamples, seed {seed}."
)


def add_significance(
    summary: pd.DataFrame, records: list[RunResult], results: Path, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Add, per table, ``reference`` (the row with the best mean val main metric: the dataset's, else macro F1 or
    accuracy) and for every other row ``test_<metric>_p_vs_ref`` (Holm-adjusted), ``test_<metric>_p_raw`` and
    ``test_<metric>_diff`` (reference minus row, test) for macro F1 and mAP (or accuracy): a hierarchical bootstrap
    from the stored scores (mAP on the stored logits where the store has them); beside it the seed-level one-sided
    Welch test on the main metric, ``test_<main>_p_seed_welch`` (NaN with fewer than 2 runs on a side). Also ``bootstrap_n`` and ``bootstrap_seed``. Results are
    cached per store state under ``<results>/.cache/`` (keyed by the runs' score files, resamples and seed)."""
    from bench.reports.significance import RunScores, compare_to_reference, seed_welch

    if summary.empty or n_boot <= 0:
        return summary
    summary = summary.copy()
    by_id = {r.run_id: r for r in records}
    cache_path, cached = _significance_cache(summary, results, n_boot, seed)
    fresh: dict[str, dict[str, float]] = {}

    def runs_of(row: pd.Series) -> list[RunScores]:
        out = []
        for run_id in row["run_ids"].split(","):
            scores = store.read_scores(store.runs_dir(results) / run_id)
            out.append(
                RunScores(scores["test_scores"], scores["test_labels"], by_id[run_id].protocol.threshold, scores.get("test_logits"))
            )
        return out

    summary["reference"] = False
    for _, group in summary.groupby(GROUP_KEYS, sort=False, dropna=False):
        primary = main_metric(group)
        metric_names = ("macro_f1", "mAP") if group["task"].iloc[0] == "multilabel" else ("accuracy",)
        if primary not in metric_names:
            metric_names = (primary, *metric_names)
        ref_index = group[f"val_{primary}_mean"].idxmax()
        summary.loc[ref_index, "reference"] = True
        if len(group) < 2:
            continue
        ref_ids = group.loc[ref_index, "run_ids"]
        key = "|".join(sorted(group["run_ids"])) + f"|ref={ref_ids}"
        values = cached.get(key)
        if values is None:  # rows are keyed by their run ids (unique per row, stable across store reads)
            methods = {row["run_ids"]: runs_of(row) for _, row in group.iterrows()}
            compared = compare_to_reference(methods, ref_ids, metric_names, n_boot=n_boot, seed=seed)
            values = {
                ids: {f"test_{m}_{field}": float(out[m][source]) for m in metric_names
                      for field, source in (("p_vs_ref", "p_holm"), ("p_raw", "p_value"), ("diff", "diff"))}
                for ids, out in compared.items()
            }
            fresh[key] = values
        ref_values = [by_id[r].metrics.test[primary] for r in ref_ids.split(",")]
        for index, row in group.iterrows():
            for column, value in values.get(row["run_ids"], {}).items():
                summary.loc[index, column] = value
            if index != ref_index:  # the seed-level test beside it: one-sided Welch over the runs' test scores
                row_values = [by_id[r].metrics.test[primary] for r in row["run_ids"].split(",")]
                summary.loc[index, f"test_{primary}_p_seed_welch"] = seed_welch(ref_values, row_values)
    summary["bootstrap_n"] = n_boot
    summary["bootstrap_seed"] = seed
    if fresh and cache_path is not None:
        _write_cache(cache_path, {**cached, **fresh})
    return summary


def _significance_cache(summary: pd.DataFrame, results: Path, n_boot: int, seed: int) -> tuple[Path | None, dict]:
    """The cache file for this store state (every listed run's scores.npz size and mtime, resamples, seed) and what
    it holds. The store is the key: a new, removed or rewritten score file gives a new file."""
    import hashlib
    import json

    from bench.reports import significance

    digest = hashlib.sha256(f"{n_boot}|{seed}|{significance.VERSION}".encode())
    for run_id in sorted(r for ids in summary["run_ids"] for r in ids.split(",")):
        try:
            st = (store.runs_dir(results) / run_id / store.SCORES).stat()
        except OSError:
            return None, {}
        digest.update(f"{run_id}:{st.st_size}:{st.st_mtime_ns};".encode())
    path = Path(results) / ".cache" / f"significance-{digest.hexdigest()[:20]}.json"
    try:
        return path, json.loads(path.read_text())
    except (OSError, ValueError):
        return path, {}


def _write_cache(path: Path, payload: dict) -> None:
    import json

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(payload).encode())
    except OSError:
        pass  # a read-only store: no cache, same numbers


def main_metric(group: pd.DataFrame) -> str:
    """The score a table ranks by: its dataset's declared main metric, else macro F1 (multi-label) or accuracy."""
    declared = group["main_metric"].dropna() if "main_metric" in group else pd.Series(dtype=object)
    if len(declared):
        return str(declared.iloc[0])
    return "macro_f1" if group["task"].iloc[0] == "multilabel" else "accuracy"


def significance_note(summary: pd.DataFrame) -> str:
    """The sentence that says how the p-values were computed (empty when there are none)."""
    if summary.empty or "bootstrap_n" not in summary:
        return ""
    names = {"macro_f1": "macro F1", "mAP": "mAP", "accuracy": "accuracy"}
    used = sorted(dict.fromkeys(summary["main_metric"].dropna())) if "main_metric" in summary else []
    metric = " / ".join(names.get(m, m) for m in used) if used else "macro F1 (accuracy for single-label datasets)"
    return SIGNIFICANCE_NOTE.format(metric=metric, n_boot=int(summary["bootstrap_n"].iloc[0]), seed=int(summary["bootstrap_seed"].iloc[0]))
