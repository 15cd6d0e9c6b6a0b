"""Self-contained HTML reports: sortable tables, per-class bars, training curves and run provenance.

Everything is inline (CSS, a few lines of JS, SVG plots drawn by matplotlib as paths), so a page opens from disk or
any static host and makes no request. Reads result records and the summary only; no torch.
"""

from __future__ import annotations

import io
import json
import re
from collections import defaultdict
from datetime import datetime, timezone
from importlib import resources

import jinja2
import numpy as np
import pandas as pd

from bench.reports.escape import PLOT_RC, UNICODE_SYMBOLS, render_caption
from bench.reports.layout import PaperTable
from bench.reports.significance import format_p
from bench.reports.tables import GROUP_KEYS
from bench.schema import RunResult

PLOT_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def _environment() -> jinja2.Environment:
    loader = jinja2.FunctionLoader(lambda name: resources.files("bench.reports").joinpath("templates", name).read_text())
    env = jinja2.Environment(loader=loader, autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["pct"] = lambda v: "-" if v is None else f"{v:.2f}"
    env.filters["signed"] = lambda v: "" if v is None else f"{v:+.2f}"
    env.filters["slug"] = slug
    env.filters["pvalue"] = lambda v: "" if v is None else format_p(v)
    env.filters["caption"] = lambda c: render_caption(c, UNICODE_SYMBOLS)  # plain text: autoescaped like the rest
    return env


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "x"


def svg(fig) -> str:
    """A matplotlib figure as inline SVG: text drawn as paths, no external references, no timestamp."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "bench", **PLOT_RC}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": "bench"})
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _plain_text(plot):
    """Build the figure with mathtext off: class keys and method names are drawn as written (``$x$`` included)."""
    import functools

    @functools.wraps(plot)
    def wrapped(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(PLOT_RC):
            return plot(*args, **kwargs)

    return wrapped


def _records_of(group_info: dict, records: list[RunResult]) -> list[RunResult]:
    return [
        r
        for r in records
        if r.dataset.name == group_info["dataset"]
        and r.dataset.manifest_sha256 == group_info["manifest_sha256"]
        and r.protocol.name == group_info["protocol"]
        and r.backbone["name"] == group_info["backbone"]
    ]


@_plain_text
def per_class_plot(group_info: dict, records: list[RunResult], run_methods: dict[str, str]) -> str | None:
    """Grouped bars: per-class test F1 (multilabel) or accuracy (multiclass), mean over seeds, one bar per method."""
    from matplotlib.figure import Figure

    runs = _records_of(group_info, records)
    if not runs:
        return None
    key = "f1" if group_info["task"] == "multilabel" else "accuracy"
    by_method: dict[str, list[list[float]]] = defaultdict(list)
    for r in runs:
        values = r.metrics.per_class.get("test", {}).get(key)
        if values:
            by_method[run_methods.get(r.run_id, r.method.name)].append(values)
    if not by_method:
        return None
    classes = runs[0].dataset.class_keys
    methods = list(by_method)
    width = 0.8 / len(methods)
    fig = Figure(figsize=(max(6.0, 0.45 * len(classes) * max(1, len(methods) / 3)), 3.2))
    ax = fig.subplots()
    x = np.arange(len(classes))
    for i, m in enumerate(methods):
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, 100 * np.mean(by_method[m], axis=0), width, label=m, color=PLOT_COLORS[i % len(PLOT_COLORS)])
    ax.set_xticks(x, classes, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(f"test {'F1' if key == 'f1' else 'accuracy'} (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncols=min(4, len(methods)), loc="upper left", frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return svg(fig)


@_plain_text
def curves_plot(group_info: dict, records: list[RunResult], run_methods: dict[str, str]) -> str | None:
    """Val selection metric per epoch, one line per method (mean over seeds) with the seeds' range shaded."""
    from matplotlib.figure import Figure

    curves: dict[str, list[list[float]]] = defaultdict(list)
    split = "val"
    for r in _records_of(group_info, records):
        history = [h for h in r.training.history if "selection_metric" in h]
        if len(history) > 1:
            curves[run_methods.get(r.run_id, r.method.name)].append([100 * h["selection_metric"] for h in history])
            split = history[0].get("selection_split", split)
    if not curves:
        return None
    fig = Figure(figsize=(6.0, 3.0))
    ax = fig.subplots()
    for i, (m, lines) in enumerate(curves.items()):
        n = min(len(line) for line in lines)
        values = np.array([line[:n] for line in lines])
        epochs = np.arange(1, n + 1)
        color = PLOT_COLORS[i % len(PLOT_COLORS)]
        ax.plot(epochs, values.mean(axis=0), label=m, color=color, marker="o", markersize=3)
        if len(lines) > 1:
            ax.fill_between(epochs, values.min(axis=0), values.max(axis=0), color=color, alpha=0.15, linewidth=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{split} selection metric (%)")
    ax.legend(fontsize=7, frameon=False)
    ax.grid(alpha=0.3)
    return svg(fig)


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
    plots: bool = True,
) -> str:
    """One self-contained page: the tables, then per dataset group the per-class bars and training curves, then
    every run's provenance."""
    labels = method_labels(summary)
    groups = []
    if plots:
        for info in groups_of(summary):
            groups.append(
                {
                    "title": f"{info['dataset']} · {info['backbone']} · {info['protocol']} · manifest {str(info['manifest_sha256'])[:12]}",
                    "per_class": per_class_plot(info, records, labels),
                    "curves": curves_plot(info, records, labels),
                }
            )
    return _environment().get_template("page.html.j2").render(
        title=title,
        subtitle=subtitle,
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        tables=tables,
        groups=groups,
        runs=_run_rows(records, labels),
        nav=nav or [],
        history=history or [],
        leaderboard=leaderboard,
    )
