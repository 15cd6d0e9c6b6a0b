"""Significance columns for the summary tables: every row of a table tested against the table's declared reference
method, from the records (the seed-level test) or the stored scores (the bootstrap). Reads result files only; no
torch. The tests themselves live in :mod:`bench.reports.significance` and :mod:`bench.reports.seed_tests`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import get_args

import numpy as np
import pandas as pd

from bench.store import store
from bench.config import ReportConfig
from bench.io import atomic_write_bytes
from bench.reports.significance import format_p, holm_bounds
from bench.reports.tables import METRIC_LABELS
from bench.store.collection import GROUP_KEYS, main_metric
from bench.store.schema import RunResult

DEFAULTS = ReportConfig()  # the declared reference (the paper's method, intclip), the test and alpha of bench.toml's [report]
TESTS = get_args(ReportConfig.model_fields["test"].annotation)


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
    *, reference: str | None = DEFAULTS.reference, test: str = DEFAULTS.test, alpha: float = DEFAULTS.alpha,
) -> pd.DataFrame:
    """Test every row of each table against the table's **declared** reference method (``reference``: fixed
    before any result exists, never picked on val or test), one-sided ("the reference is better"), on the test
    scores, Holm-corrected over the compared rows.

    ``test``:
      * ``"seed-t"`` (the default; calibrated at 3, 5 and 10 seeds, see benchmarks/significance_calibration.py): one
        number per run (its test score, which carries that run's image-level noise): Welch's t over seeds; a
        one-sample t where one side is a single run (a deterministic method); no test (``n/a`` and why) outside
        what the calibration covers (:func:`bench.reports.seed_tests.seed_test`);
      * ``"bootstrap"``: the hierarchical bootstrap over seeds and test images (anti-conservative at few seeds:
        the calibration shows its false-positive rate).

    Adds per row ``reference`` (bool), and for the main metric and mAP (or accuracy): ``test_<m>_p_vs_ref``
    (adjusted), ``test_<m>_p_raw``, ``test_<m>_p_bound`` (True: only ``p <=`` the value is known: a bootstrap at
    its resample floor), ``test_<m>_diff`` (reference minus row, test, fraction) and ``test_<m>_p_text`` (what the
    tables print: ``"0.012"``, ``"<= 0.006"``, ``"ref"``, or why there is no test, in words); per table
    ``significance_note`` (the sentence under it, with the minimum detectable difference); and
    ``significance_test``, ``significance_reference``, ``bootstrap_n``, ``bootstrap_seed``, ``alpha``.
    Bootstrap results are cached per comparison group under ``<results>/.cache/significance/``, keyed by that
    group's runs (a new or rewritten run recomputes its own group only)."""
    if test not in TESTS:
        raise ValueError(f"significance test {test!r}: expected one of {', '.join(TESTS)}")
    if summary.empty or n_boot <= 0:
        return summary
    summary = summary.copy()
    summary["reference"] = False
    summary["significance_note"] = pd.Series([""] * len(summary), index=summary.index, dtype=object)
    by_id = {r.run_id: r for r in records}
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
            values = _bootstrap_values(group, ref_index, metric_names, results, by_id, n_boot, seed)
        else:
            values = _seed_values(group, ref_index, others, metric_names, by_id)
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
        if test == "seed-t":
            _set(summary, group.index, "significance_power_note", power_note(group, primary, alpha).strip())
    summary["significance_test"] = test
    summary["significance_reference"] = reference or ""
    summary["bootstrap_n"] = n_boot
    summary["bootstrap_seed"] = seed
    summary["alpha"] = alpha
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


def _seed_values(group, ref_index, others, metric_names, by_id) -> dict:
    """The seed-level test of every other row against the reference (see :func:`add_significance`)."""
    from bench.reports.seed_tests import seed_test

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


def _bootstrap_values(group, ref_index, metric_names, results, by_id, n_boot, seed) -> dict:
    """The hierarchical bootstrap of every other row against the reference (cached per group, see
    :func:`_group_cache`)."""
    from bench.reports.significance import compare_to_reference

    ref_ids = group.loc[ref_index, "run_ids"]
    key = "|".join(sorted(group["run_ids"])) + f"|ref={ref_ids}|{','.join(metric_names)}"
    path, values = _group_cache(key, results, n_boot, seed)
    if values is None:
        from bench.errors import CorruptResultError

        try:  # the scores were checked when the records were read; one changed since gives words, not a crash
            methods = {row["run_ids"]: _run_scores(results, by_id, row["run_ids"]) for _, row in group.iterrows()}
        except CorruptResultError:
            unreadable = {"p": math.nan, "bound": False, "diff": math.nan, "why": "scores unreadable"}
            return {i: {m: dict(unreadable) for m in metric_names} for i in group.index if i != ref_index}
        compared = compare_to_reference(methods, ref_ids, metric_names, n_boot=n_boot, seed=seed)
        values = {ids: {m: {"p": out[m]["p_value"], "bound": out[m]["p_bound"], "diff": out[m]["diff"], "why": ""}
                        for m in metric_names} for ids, out in compared.items()}
        if path is not None:
            _write_cache(path, {"key": key, "values": values})
    return {i: values[group.loc[i, "run_ids"]] for i in group.index if i != ref_index}


def _group_note(group: pd.DataFrame, reference: str, primary: str, test: str, n_boot: int, seed: int, alpha: float) -> str:
    """The sentence under one table: the test, its declared reference, what a p means and the smallest difference
    the table's seeds can detect (the seed-level test's)."""
    metric = METRIC_LABELS.get(primary, primary)
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
    return note + (power_note(group, primary, alpha) if test == "seed-t" else "")


def power_note(group: pd.DataFrame, primary: str, alpha: float) -> str:
    """The sentence with the smallest difference the seed-level test detects at the table's seed count and spread
    (empty without seeded rows)."""
    from bench.reports.seed_tests import seed_mdd

    seeded = group[~group["deterministic"].astype(bool) & (group["n"] > 1)]
    stds = seeded[f"test_{primary}_std"].dropna() if f"test_{primary}_std" in seeded else pd.Series(dtype=float)
    if not len(stds) or int(seeded["n"].min()) < 2:
        return ""
    n, std = int(seeded["n"].min()), float(stds.median())
    mdd = seed_mdd(std, n, alpha)
    if math.isnan(mdd):
        return ""
    return (f" With {n} seeds and the table's median seed std of {100 * std:.2f} points, the smallest difference this "
            f"test detects with power 0.8 at alpha {alpha:g} is about {100 * mdd:.1f} points.")


def _group_cache(key: str, results: Path, n_boot: int, seed: int) -> tuple[Path | None, dict | None]:
    """The cache file of one comparison group and its values (``None``: not cached yet). The file's name hashes the
    group's key (its rows' run ids, the reference, the metrics), each of its runs' scores.npz size and mtime, the
    resamples, the seed and the bootstrap's version: a new, removed or rewritten score file of this group gives a
    new file, while other groups keep theirs. ``(None, None)`` when a score file cannot be stat'ed (no caching)."""
    import hashlib
    import json

    from bench.reports import significance

    digest = hashlib.sha256(f"{n_boot}|{seed}|{significance.VERSION}|{key}".encode())
    for run_id in sorted(r for part in key.split("|ref=")[0].split("|") for r in part.split(",")):
        try:
            st = (store.runs_dir(results) / run_id / store.SCORES).stat()
        except OSError:
            return None, None
        digest.update(f"{run_id}:{st.st_size}:{st.st_mtime_ns};".encode())
    path = Path(results) / ".cache" / "significance" / f"{digest.hexdigest()[:24]}.json"
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return path, None
    if not isinstance(payload, dict) or payload.get("key") != key or not isinstance(payload.get("values"), dict):
        return path, None  # a foreign or damaged file: recompute and overwrite
    return path, payload["values"]


def _write_cache(path: Path, payload: dict) -> None:
    import json

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(payload).encode())
    except OSError:
        pass  # a read-only store: no cache, same numbers
