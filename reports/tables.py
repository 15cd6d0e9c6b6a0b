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

import numpy as np
import pandas as pd

from bench import store
from bench.io import atomic_write_bytes
from bench.reports.significance import format_p, holm_bounds
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


DEFAULT_REFERENCE = "intclip"  # the paper's method: the reference every table declares unless told otherwise
TESTS = ("seed-t", "bootstrap")


def _reference_row(group: pd.DataFrame, reference: str) -> tuple[object | None, str]:
    """The index of the declared reference's row in one table, or None and why (in words)."""
    exact = group.index[group["method"] == reference]
    if len(exact) == 1:
        return exact[0], ""
    plain = group.index[(group["method_name"] == reference) & ~group["tuned"].astype(bool)]
    if len(plain) == 1:
        return plain[0], ""
    if len(plain) > 1 or len(exact) > 1:
        return None, f"the declared reference {reference} has several experiments here (name one: --ref 'LABEL')"
    return None, f"the declared reference {reference} has no runs in this table"


def add_significance(
    summary: pd.DataFrame, records: list[RunResult], results: Path, n_boot: int = 1000, seed: int = 0,
    *, reference: str | None = DEFAULT_REFERENCE, test: str = "seed-t", alpha: float = 0.05,
) -> pd.DataFrame:
    """Test every row of each table against the table's **declared** reference method (``reference``: fixed
    before any result exists, never picked on val or test), one-sided ("the reference is better"), on the test
    scores, Holm-corrected over the compared rows.

    ``test``:
      * ``"seed-t"`` (the default; calibrated at 3, 5 and 10 seeds, see benchmarks/significance_calibration.py): one
        number per run (its test score, which carries that run's image-level noise): Welch's t over seeds; a
        one-sample t where one side is a single run (a deterministic method); no test (``n/a`` and why) outside
        what the calibration covers (:func:`bench.reports.significance.seed_test`);
      * ``"bootstrap"``: the hierarchical bootstrap over seeds and test images (anti-conservative at few seeds:
        the calibration shows its false-positive rate).

    Adds per row ``reference`` (bool), and for the main metric and mAP (or accuracy): ``test_<m>_p_vs_ref``
    (adjusted), ``test_<m>_p_raw``, ``test_<m>_p_bound`` (True: only ``p <=`` the value is known: a bootstrap at
    its resample floor), ``test_<m>_diff`` (reference minus row, test, fraction) and ``test_<m>_p_text`` (what the
    tables print: ``"0.012"``, ``"<= 0.006"``, ``"ref"``, or why there is no test, in words); per table
    ``significance_note`` (the sentence under it, with the minimum detectable difference); and
    ``significance_test``, ``significance_reference``, ``bootstrap_n``, ``bootstrap_seed``, ``alpha``.
    Bootstrap results are cached per store state under ``<results>/.cache/``."""
    if test not in TESTS:
        raise ValueError(f"significance test {test!r}: expected one of {', '.join(TESTS)}")
    if summary.empty or n_boot <= 0:
        return summary
    summary = summary.copy()
    summary["reference"] = False
    summary["significance_note"] = pd.Series([""] * len(summary), index=summary.index, dtype=object)
    by_id = {r.run_id: r for r in records}
    cache_path, cached = _significance_cache(summary, results, n_boot, seed) if test == "bootstrap" else (None, {})
    fresh: dict[str, dict] = {}
    for _, group in summary.groupby(GROUP_KEYS, sort=False, dropna=False):
        primary = main_metric(group)
        extra = "mAP" if group["task"].iloc[0] == "multilabel" else "accuracy"
        metric_names = tuple(dict.fromkeys((primary, extra)))
        ref_index, why = (None, "no reference declared") if not reference else _reference_row(group, reference)
        if ref_index is None:
            for index in group.index:
                _set(summary, index, f"test_{primary}_p_text", "-")
            summary.loc[group.index, "significance_note"] = f"No p-values: {why}."
            continue
        summary.loc[ref_index, "reference"] = True
        others = [i for i in group.index if i != ref_index]
        if test == "bootstrap":
            values = _bootstrap_values(summary, group, ref_index, metric_names, results, by_id, n_boot, seed, cached, fresh)
        else:
            values = _seed_values(summary, group, ref_index, others, metric_names, results, by_id, n_boot, seed)
        for metric in metric_names:
            raw = [values[i][metric]["p"] for i in others]
            adjusted, bounds = holm_bounds(raw, [values[i][metric]["bound"] for i in others])
            for i, p_adj, bound in zip(others, adjusted, bounds):
                v = values[i][metric]
                _set(summary, i, f"test_{metric}_p_raw", float(v["p"]))
                _set(summary, i, f"test_{metric}_p_vs_ref", float(p_adj))
                _set(summary, i, f"test_{metric}_p_bound", bool(bound))
                _set(summary, i, f"test_{metric}_diff", float(v["diff"]))
                _set(summary, i, f"test_{metric}_p_text", format_p(p_adj, bound) if v["why"] == "" else f"n/a ({v['why']})")
            _set(summary, ref_index, f"test_{metric}_p_text", "ref")
        summary.loc[group.index, "significance_note"] = _group_note(group, summary.loc[ref_index, "method"], primary,
                                                                    test, n_boot, seed, alpha)
    summary["significance_test"] = test
    summary["significance_reference"] = reference or ""
    summary["bootstrap_n"] = n_boot
    summary["bootstrap_seed"] = seed
    summary["alpha"] = alpha
    if fresh and cache_path is not None:
        _write_cache(cache_path, {**cached, **fresh})
    return summary


def _set(summary: pd.DataFrame, index, column: str, value) -> None:
    """``summary.loc[index, column] = value``; a new column starts as floats (NaN) for numbers, else as objects
    (None), so neither a bool nor a text lands in a column of another dtype."""
    if column not in summary:
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        summary[column] = np.nan if numeric else pd.Series([None] * len(summary), index=summary.index, dtype=object)
    summary.loc[index, column] = value


def _run_scores(results: Path, by_id: dict, ids: str) -> list:
    from bench.reports.significance import RunScores

    out = []
    for run_id in ids.split(","):
        scores = store.read_scores(store.runs_dir(results) / run_id)
        out.append(RunScores(scores["test_scores"], scores["test_labels"], by_id[run_id].protocol.threshold, scores.get("test_logits")))
    return out


def _seed_values(summary, group, ref_index, others, metric_names, results, by_id, n_boot, seed) -> dict:
    """The seed-level test of every other row against the reference (see :func:`add_significance`)."""
    from bench.reports.significance import seed_test

    ref_ids = group.loc[ref_index, "run_ids"]
    out: dict = {}
    for i in others:
        ids = group.loc[i, "run_ids"]
        out[i] = {}
        for metric in metric_names:
            a = [by_id[r].metrics.test[metric] for r in ref_ids.split(",")]
            b = [by_id[r].metrics.test[metric] for r in ids.split(",")]
            diff = float(np.mean(a) - np.mean(b))
            p, why = seed_test(a, b)  # NaN and a reason where the calibration does not cover the seed counts
            out[i][metric] = {"p": p, "bound": False, "diff": diff, "why": why}
    return out


def _bootstrap_values(summary, group, ref_index, metric_names, results, by_id, n_boot, seed, cached, fresh) -> dict:
    """The hierarchical bootstrap of every other row against the reference (cached per store state)."""
    from bench.reports.significance import compare_to_reference

    ref_ids = group.loc[ref_index, "run_ids"]
    key = "|".join(sorted(group["run_ids"])) + f"|ref={ref_ids}|{','.join(metric_names)}"
    values = cached.get(key)
    if values is None:
        methods = {row["run_ids"]: _run_scores(results, by_id, row["run_ids"]) for _, row in group.iterrows()}
        compared = compare_to_reference(methods, ref_ids, metric_names, n_boot=n_boot, seed=seed)
        values = {ids: {m: {"p": out[m]["p_value"], "bound": out[m]["p_bound"], "diff": out[m]["diff"], "why": ""}
                        for m in metric_names} for ids, out in compared.items()}
        fresh[key] = values
    return {i: values[group.loc[i, "run_ids"]] for i in group.index if i != ref_index}


def _group_note(group: pd.DataFrame, reference: str, primary: str, test: str, n_boot: int, seed: int, alpha: float) -> str:
    """The sentence under one table: the test, its declared reference, what a p means and the smallest difference
    the table's seeds can detect."""
    from bench.reports.significance import seed_mdd

    metric = METRIC_LABELS.get(primary, primary)
    seeded = group[~group["deterministic"].astype(bool) & (group["n"] > 1)]
    stds = seeded[f"test_{primary}_std"].dropna() if f"test_{primary}_std" in seeded else pd.Series(dtype=float)
    if test == "bootstrap":
        how = (f"one-sided hierarchical bootstrap of {metric} (seeds and test images resampled; {n_boot} resamples, "
               f"seed {seed}; a p at the resample floor prints as a bound, <=)")
        scope = " Its false-positive rate depends on the mix of seed and image noise (benchmarks/RESULTS.md)."
    else:
        how = (f"one-sided t-test of {metric} over the runs' test scores (Welch's between seeded methods, one-sample "
               f"against a single-run method)")
        scope = (" The test holds its level (false-positive rate <= 0.05, benchmarks/RESULTS.md) with 3 or more seeds "
                 "on each seeded side; elsewhere it prints n/a and why.")
    note = (f"p vs ref: {how} against the declared reference {reference} (fixed before any result, never chosen on "
            f"val or test), Holm-corrected over the compared rows; p < {alpha:g} reads as \"the reference is "
            f"better\".{scope}")
    if len(stds) and int(seeded["n"].min()) >= 2:
        n = int(seeded["n"].min())
        std = float(stds.median())
        mdd = seed_mdd(std, n, alpha)
        if not math.isnan(mdd):
            note += (f" With {n} seeds and the table's median seed std of {100 * std:.2f} points, the smallest "
                     f"difference this test detects with power 0.8 at alpha {alpha:g} is about {100 * mdd:.1f} points.")
    return note


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
    """The sentences that say how the p-values were computed, one per distinct table note (empty when none)."""
    if summary.empty or "significance_note" not in summary:
        return ""
    return " ".join(n for n in dict.fromkeys(summary["significance_note"]) if n)
