"""Self-contained HTML reports: sortable, ranked tables with CSV/JSON downloads, the plots of ``reports.plots`` (one
colour per method), the leaderboard's history and run provenance.

Everything is inline (CSS, a few lines of JS, SVG plots drawn by matplotlib as paths), so a page opens from disk or
any static host and makes no request. Reads result records and the summary only; no torch.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from importlib import resources

import jinja2
import pandas as pd

from bench.reports import plots
from bench.reports.downloads import downloads, table_records
from bench.reports.escape import UNICODE_SYMBOLS, clean_value, render_caption
from bench.reports.latex import params_text
from bench.reports.layout import PRIMARY, PaperTable
from bench.reports.significance import format_p
from bench.store.collection import GROUP_KEYS
from bench.store.schema import RunResult

def _environment() -> jinja2.Environment:
    loader = jinja2.FunctionLoader(lambda name: resources.files("bench.reports").joinpath("templates", name).read_text())
    env = jinja2.Environment(loader=loader, autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined,
                             finalize=clean_value)  # no control or bidi character from a record reaches the page
    env.filters["pct"] = lambda v: "-" if v is None else f"{v:.2f}"
    env.filters["params"] = params_text  # as the LaTeX tables print them: 0.000012, 0.41, 82.4, 0
    env.filters["signed"] = lambda v: "" if v is None else f"{v:+.2f}"
    env.filters["slug"] = slug
    env.filters["pvalue"] = lambda v: "" if v is None else format_p(v)
    env.filters["caption"] = lambda c: render_caption(c, UNICODE_SYMBOLS)  # plain text: autoescaped like the rest
    return env


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "x"


def _run_rows(records: list[RunResult], run_methods: dict[str, str]) -> list[dict]:
    rows = []
    for r in sorted(records, key=lambda r: (r.dataset.name, r.backbone["name"], run_methods.get(r.run_id, r.method.name), -1 if r.seed is None else r.seed)):
        env = r.env
        rows.append(
            {
                "run_id": r.run_id,
                "method": run_methods.get(r.run_id, r.method.name),
                "dataset": r.dataset.name,
                "backbone": r.backbone["name"],
                "seed": r.seed,
                "protocol": r.protocol.name,
                "git": f"{str(env.get('git_sha') or '?')[:10]}{' (dirty)' if env.get('git_dirty') else ''}",
                "device": env.get("device", "?"),
                "best_epoch": r.training.best_epoch,
                "seconds": r.timing.get("seconds_total"),
                "finished": r.timing.get("finished_at", ""),
                "details": json.dumps(
                    {
                        "method": r.method.model_dump(),
                        "backbone": r.backbone,
                        "dataset": {"name": r.dataset.name, "manifest_sha256": r.dataset.manifest_sha256, "config": r.dataset.config, "split_sizes": r.dataset.split_sizes},
                        "protocol": r.protocol.model_dump(),
                        "params": r.params.model_dump(),
                        "env": env,
                        "timing": r.timing,
                        "extra": r.extra,
                    },
                    indent=2,
                    default=str,
                ),
            }
        )
    return rows


def groups_of(summary: pd.DataFrame) -> list[dict]:
    if summary.empty:
        return []
    return [dict(zip(GROUP_KEYS, keys)) for keys, _ in summary.groupby(GROUP_KEYS, sort=False, dropna=False)]


def method_labels(summary: pd.DataFrame) -> dict[str, str]:
    """run id -> the method label of the summary (which separates configs), for plots and run lists."""
    out = {}
    for _, row in summary.iterrows():
        for run_id in str(row.get("run_ids", "")).split(","):
            out[run_id] = row["method"]
    return out


def _run_downloads(runs: list[dict]) -> dict[str, str]:
    return downloads([{k: v for k, v in r.items() if k != "details"} for r in runs])


def display_names(summary: pd.DataFrame) -> dict[str, str]:
    """method label -> the name tables print ("IntCLIP (released code)" for ``intclip-official``), for legends."""
    from bench.reports.layout import display_label

    return {r["method"]: display_label(r["method"], r.get("display_name")) for _, r in summary.iterrows()}


def _group_plots(summary: pd.DataFrame, records: list[RunResult], labels: dict[str, str], colors: dict[str, str],
                 names: dict[str, str], per_run: bool) -> list[dict]:
    """Per dataset group: score against learnable parameters (from the summary), and with ``per_run`` the per-class
    bars and training curves (from the records)."""
    groups = []
    for info in groups_of(summary):
        metric = PRIMARY.get(info["task"], "macro_f1")
        groups.append({
            "title": f"{info['dataset']} · {info['backbone']} · {info['protocol']} · manifest {str(info['manifest_sha256'])[:12]}",
            "params": plots.params_plot(info, summary, metric, colors, names),
            "per_class": plots.per_class_plot(info, records, labels, colors, names) if per_run else None,
            "curves": plots.curves_plot(info, records, labels, colors, names) if per_run else None,
        })
    return groups


def render_page(
    title: str,
    tables: list[PaperTable],
    summary: pd.DataFrame,
    records: list[RunResult],
    *,
    subtitle: str = "",
    nav: list[tuple[str, str]] | None = None,
    history: list[dict] | None = None,
    leaderboard: dict | None = None,
    plots_per_run: bool = True,
    colors: dict[str, str] | None = None,
    efficiency: str = "",
) -> str:
    """One self-contained page: the tables (each with CSV/JSON downloads), then per dataset group the plots, the
    leaderboard's history (table and trend per dataset), then every run's provenance. ``colors``: method label ->
    colour, shared by every page of a site (default: from this page's summary). ``efficiency``: the label-efficiency
    sections (:func:`bench.reports.efficiency.to_html`), after the tables."""
    labels = method_labels(summary)
    colors = colors or plots.method_colors(summary["method"] if not summary.empty else [])
    names = display_names(summary)
    groups = _group_plots(summary, records, labels, colors, names, plots_per_run)
    history = history or []
    datasets = list(dict.fromkeys(summary["dataset"])) if not summary.empty else []
    trends = [(d, plots.history_plot(history, d, colors, names)) for d in datasets] if history else []
    runs = _run_rows(records, labels)
    return _environment().get_template("page.html.j2").render(
        title=title,
        subtitle=subtitle,
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        tables=[(t, downloads(table_records(t))) for t in tables],
        groups=groups,
        runs=runs,
        runs_download=_run_downloads(runs) if runs else None,
        nav=nav or [],
        history=[_history_row(h) for h in reversed(history)],
        trends=[(d, s) for d, s in trends if s],
        leaderboard=leaderboard,
        efficiency=efficiency,
    )


def _history_row(h: dict) -> dict:
    return {"stamp": h["stamp"], "entries": len(h.get("entries", {})), "regressions": len(h.get("regressions", [])),
            "git": str(h.get("git_sha") or "")[:10]}
