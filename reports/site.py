"""The leaderboard site: an index page and one page per dataset, a dated history of every regeneration, each
entry's change since the previous regeneration and the regressions beyond a tolerance.

History lives in ``<site>/history/<stamp>.json`` (one file per regeneration, never rewritten): the primary metric of
every entry (dataset version x backbone x protocol x method), in percent. Reads result records only; no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from bench.errors import BenchError
from bench.io import atomic_write_bytes
from bench.reports import layout
from bench.reports import plots
from bench.reports.html import render_page, slug
from bench.store.schema import RunResult, main_metric_of

HISTORY = "history"


@dataclass
class SiteOutcome:
    stamp: str
    previous: str | None
    entries: dict[str, dict]
    changes: dict[str, float]
    regressions: list[dict]
    pages: list[Path] = field(default_factory=list)


def entry_key(dataset: str, manifest: str, backbone: str, protocol: str, method: str, experiment: str | None = None) -> str:
    """One leaderboard entry: a table (dataset version, backbone, protocol) and one experiment in it (method,
    version, config, weights: ``experiment_id``), so history compares a row only with the same experiment. The method
    part is the registry name, not the row label: a label grows ``[weights: ...]`` when another experiment of the
    method joins the table, and the entry must stay the same."""
    return f"{dataset}@{str(manifest)[:12]} / {backbone} / {protocol} / {layout.base_method(method)} #{experiment or '?'}"


def primary_metric(row: pd.Series, metric: str) -> str:
    """The leaderboard's metric for a summary row: ``metric`` unless ``auto``, then the dataset's main metric."""
    if metric != "auto":
        return metric
    declared = row.get("main_metric")
    return main_metric_of(row["task"], declared if isinstance(declared, str) and declared else None)


def snapshot(summary: pd.DataFrame, metric: str, split: str) -> dict[str, dict]:
    """Every entry's primary metric mean (percent) and n."""
    entries = {}
    for _, r in summary.iterrows():
        name = primary_metric(r, metric)
        value = r.get(f"{split}_{name}_mean")
        if value is None or pd.isna(value):
            continue
        key = entry_key(r["dataset"], r["manifest_sha256"], r["backbone"], r["protocol"], r["method"], r.get("experiment_id"))
        entries[key] = {"value": round(100 * float(value), 4), "n": int(r["n"]), "metric": f"{split} {name}", "dataset": r["dataset"], "method": r["method"]}
    return entries


def load_history(site: Path) -> list[dict]:
    """Every regeneration recorded under ``site/history``, oldest first; a damaged file is an error naming it."""
    out = []
    folder = site / HISTORY
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text())
            record["entries"]  # noqa: B018 (the one key every record needs)
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise BenchError(f"{path}: not a leaderboard history record ({err}); move it aside to regenerate") from None
        out.append(record)
    return sorted(out, key=lambda r: (str(r.get("generated_at", "")), str(r.get("stamp", ""))))


def compare(current: dict[str, dict], previous: dict[str, dict] | None, tolerance: float) -> tuple[dict[str, float], list[dict]]:
    """Change of each entry present both times, and the entries that dropped by more than ``tolerance`` points."""
    if not previous:
        return {}, []
    changes = {k: round(v["value"] - previous[k]["value"], 4) for k, v in current.items() if k in previous}
    regressions = [
        {"key": k, "change": c, "before": previous[k]["value"], "after": current[k]["value"]} for k, c in changes.items() if c < -tolerance
    ]
    return changes, regressions


def _stamp(now: datetime, folder: Path) -> str:
    stamp = now.strftime("%Y-%m-%dT%H%M%SZ")
    candidate, i = stamp, 1
    while (folder / f"{candidate}.json").exists():
        candidate, i = f"{stamp}_{i:02d}", i + 1  # sorts after the plain stamp
    return candidate


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode())


def _annotate(tables: list[layout.PaperTable], changes: dict[str, float], regressed: set[str]) -> None:
    """Put each entry's change and regression flag on its table rows."""
    for table in tables:
        info = table.info
        if table.key == "table6a" and len(table.columns) > 1:
            continue  # two versions of the dataset side by side: no single change per row
        for row in table.rows:
            if row.reference or row.method is None:
                continue
            key = entry_key(info["dataset"], info["manifest_sha256"], info["backbone"], info["protocol"], row.method, row.experiment_id)
            row.change = changes.get(key)
            row.regression = key in regressed


def _tables_per_dataset(summary: pd.DataFrame, options: layout.TableOptions = layout.TableOptions()) -> dict[str, list[layout.PaperTable]]:
    """The paper tables of each dataset on its own (Table 6a gets one column, so each row has one change)."""
    out = {}
    for dataset, part in summary.groupby("dataset", sort=False):
        tables = layout.paper_tables(part.reset_index(drop=True), options=options)
        for t in tables:
            if t.key == "table6a":
                t.info["manifest_sha256"] = part["manifest_sha256"].iloc[0]
                t.info["dataset"] = dataset
        out[dataset] = tables
    return out


def build_site(
    site: Path,
    records: list[RunResult],
    summary: pd.DataFrame,
    *,
    tolerance: float,
    metric: str = "auto",
    split: str = "test",
    git_sha: str | None = None,
    now: datetime | None = None,
) -> SiteOutcome:
    """Regenerate ``site``: compare with the latest history record, write the new record, then the pages."""
    now = now or datetime.now(timezone.utc)
    history = load_history(site)
    previous = history[-1] if history else None
    entries = snapshot(summary, metric, split)
    changes, regressions = compare(entries, previous["entries"] if previous else None, tolerance)
    stamp = _stamp(now, site / HISTORY)
    record = {
        "stamp": stamp,
        "generated_at": now.isoformat(),
        "git_sha": git_sha,
        "metric": metric,
        "split": split,
        "tolerance": tolerance,
        "previous": previous["stamp"] if previous else None,
        "entries": entries,
        "changes": changes,
        "regressions": regressions,
    }
    _write(site / HISTORY / f"{stamp}.json", json.dumps(record, indent=2) + "\n")
    outcome = SiteOutcome(stamp, record["previous"], entries, changes, regressions)

    regressed = {r["key"] for r in regressions}
    lb = {"tolerance": tolerance, "previous": record["previous"], "regressions": regressions}
    per_dataset = _tables_per_dataset(summary) if not summary.empty else {}
    nav = [("index.html", "Overview")] + [(f"{slug(d)}.html", d) for d in per_dataset]
    subtitle = f"primary metric: {split} {metric if metric != 'auto' else 'macro F1 (accuracy for single-label datasets)'}; regeneration {stamp}"
    index_tables = []  # the overview: each dataset's main table on the leaderboard's split (the pages have both)
    for dataset, tables in (_tables_per_dataset(summary, layout.TableOptions(split)) if not summary.empty else {}).items():
        main = [t for t in tables if t.key in ("table1", "table6a")]
        _annotate(main, changes, regressed)
        index_tables += main
    colors = plots.method_colors(summary["method"] if not summary.empty else [])  # one colour per method, every page
    everything = history + [record]
    index = render_page("Leaderboard", index_tables, summary, [], subtitle=subtitle, nav=nav, history=everything,
                        leaderboard=lb, plots_per_run=False, colors=colors)
    _write(site / "index.html", index)
    outcome.pages.append(site / "index.html")
    for dataset, tables in per_dataset.items():
        _annotate(tables, changes, regressed)
        part = summary[summary["dataset"] == dataset].reset_index(drop=True)
        runs = [r for r in records if r.dataset.name == dataset]
        page = render_page(f"Leaderboard: {dataset}", tables, part, runs, subtitle=subtitle, nav=nav, leaderboard=lb,
                           history=everything, colors=colors)
        path = site / f"{slug(dataset)}.html"
        _write(path, page)
        outcome.pages.append(path)
    return outcome
