"""The results collection every report starts from: the store's valid records as one frame (one row per run), and
the summary (one row per experiment: mean +- std (ddof=1) over seeds, 95% t-interval, n).

A table is one dataset version (name *and* manifest hash) x protocol x backbone; a row within it averages only
runs of one experiment: the same method name, method version, method config and backbone weights (checkpoint hash
or open_clip tag). Where two rows of a table would share a method label, each label says what differs
(``zeroshot [weights: none]``, ``dualcoop [v2]``, ``dualcoop [config 1a2b3c4d]``). A deterministic method (run once,
seed None) shows n = 1, marked "deterministic". A run that several names resolved to (``intclip:no-sa`` and
``intclip:fusion-add`` train one config) appears once under each name. Reads result files only; never imports torch.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bench.errors import CorruptResultError
from bench.store import store
from bench.store.schema import MULTICLASS_METRICS, RunResult, main_metric_of

TABLE_METRICS = {"multilabel": ("macro_f1", "micro_f1", "samples_f1", "mAP"), "multiclass": MULTICLASS_METRICS}
GROUP_KEYS = ["dataset", "manifest_sha256", "protocol", "backbone", "task"]
# Table 1 families in the paper's order of presentation (reference points first, the proposed method last), for
# records that do not declare their family; rows follow this order, other methods after, by name.
FAMILIES = (
    ("Reference points", ("label-prior", "zeroshot", "linear-probe")),
    ("Multi-label methods", ("dualcoop", "query2label")),
    ("Intention methods", ("hleg", "labcr", "pipnet")),
    ("IntCLIP", ("intclip", "intclip-official")),
)
METHOD_ORDER = tuple(name for _, members in FAMILIES for name in members)
# one row = one experiment; label_budget: the label-efficiency level ("train_fraction=0.1", "shots=4",
# "label_proportion=0.5"; "" for the whole training split, which leaves a row's experiment id as it always was)
IDENTITY_KEYS = ["method_name", "method_version", "config_id", "weights_id", "tuned", "label_budget", "limit"]  # limit: smoke mode


def load_results(results: Path) -> tuple[list[RunResult], list[CorruptResultError]]:
    """Every valid record under ``results`` and the errors of the invalid ones: a record whose scores.npz is
    missing, damaged, unreadable or not finite, or whose metrics do not recompute from its scores
    (:func:`bench.store.store.iter_checked`), is skipped, never ranked, and the report does not crash."""
    good, bad = [], []
    for run_dir, rec in store.iter_checked(results):
        if isinstance(rec, CorruptResultError):
            bad.append(rec)
            continue
        later = [n for n in store.read_aliases(run_dir) if n != rec.method.name and n not in rec.method.aliases]
        if later:  # names later suites gave this run (aliases.json), merged in memory
            rec.method.aliases = [*rec.method.aliases, *later]
        good.append(rec)
    return good, bad


def results_frame(records: list[RunResult]) -> pd.DataFrame:
    """One row per run and name (a run that several names resolved to is one row under each) with the table
    metrics of val and test and the parameter counts."""
    rows = []
    for r, name in ((r, name) for r in records for name in dict.fromkeys([r.method.name, *r.method.aliases])):
        level = r.label_protocol
        budget = "" if level is None else f"{level.protocol}={level.value:g}"
        limit = "" if getattr(r, "limit", None) is None else f"limit {r.limit.n}"  # smoke mode: "" for the whole dataset
        row = {
            "run_id": r.run_id,
            "method": name + (" (tuned)" if "tuning" in r.extra else "") + (f" [{budget}]" if budget else "") + (f" [{limit}]" if limit else ""),
            "method_name": name,
            "method_version": r.method.version,
            "config_id": store.compute_run_id(r.method.config)[:8],
            "weights_id": r.weights_id,
            "tuned": "tuning" in r.extra,
            "family": r.method.family,
            "display_name": r.method.display_name if name == r.method.name else None,  # an alias: its own name
            "main_metric": main_metric_of(r.dataset.task, r.dataset.main_metric),
            "backbone": r.backbone["name"],
            "dataset": r.dataset.name,
            "manifest_sha256": r.dataset.manifest_sha256,
            "protocol": r.protocol.name,
            "task": r.dataset.task,
            "seed": r.seed,
            "params_learnable": r.params.learnable,
            "params_total": r.params.total,
            "fragile": _fragile(r),
            "label_budget": budget,
            "limit": limit,
            "label_protocol": None if level is None else level.protocol,
            "label_value": math.nan if level is None else float(level.value),
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
    frame = _label_experiments(frame if "label_budget" in frame else frame.assign(label_budget="", label_protocol=None,
                                                                                  label_value=math.nan))
    frame = frame if "limit" in frame else frame.assign(limit="")
    order = {name: i for i, name in enumerate(METHOD_ORDER)}
    frame = frame.assign(_order=[order.get(m, len(order)) for m in frame["method_name"]])
    frame = frame.sort_values(["_order", "method", "seed"], kind="stable", na_position="first").drop(columns="_order")
    for keys, group in frame.groupby(GROUP_KEYS + IDENTITY_KEYS, sort=False, dropna=False):
        row = dict(zip(GROUP_KEYS + IDENTITY_KEYS, keys))
        row["method"] = group["method"].iloc[0]
        row["experiment_id"] = store.compute_run_id({k: str(row[k]) for k in IDENTITY_KEYS if k not in ("label_budget", "limit") or row[k]})[:12]
        row["label_protocol"], row["label_value"] = group["label_protocol"].iloc[0], group["label_value"].iloc[0]
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


def main_metric(group: pd.DataFrame) -> str:
    """The score a table ranks by: its dataset's declared main metric, else macro F1 (multi-label) or accuracy."""
    declared = group["main_metric"].dropna() if "main_metric" in group else pd.Series(dtype=object)
    return main_metric_of(group["task"].iloc[0], str(declared.iloc[0]) if len(declared) else None)
