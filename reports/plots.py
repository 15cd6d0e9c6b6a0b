"""The report's plots, drawn by matplotlib as inline SVG (text as paths, no external reference, no timestamp).

Every plot of a page, and every page of a leaderboard site, draws a method in the same colour
(:func:`method_colors`): per-class bars, training curves, score against learnable parameters and the history
trend. Reads result records, the summary and the site's history only; no torch.
"""

from __future__ import annotations

import functools
import io
from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import pandas as pd

from bench.reports.escape import PLOT_RC, clean
from bench.reports.tables import METRIC_LABELS
from bench.store.collection import METHOD_ORDER
from bench.store.schema import RunResult

# matplotlib's tab10, then tab20's light shades: 20 methods before a colour repeats
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
)


def method_colors(labels: Iterable[str]) -> dict[str, str]:
    """One colour per method label: the known methods in the paper's order first, then the others by name. Give it
    every label of a site (or page) and each method keeps its colour on every plot drawn with the result. Plots
    key colours by these labels and write ``names`` (label -> display name, e.g. "IntCLIP (released code)") in
    their legends."""

    def order(label: str) -> tuple[int, str]:
        base = label.split(" ")[0]
        return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), label)

    ranked = sorted({str(label) for label in labels}, key=order)
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(ranked)}


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


def _legend_above(ax, n: int) -> None:
    """The legend above the axes, so it never covers a bar or a line."""
    ax.legend(fontsize=7, ncols=min(4, n), loc="lower left", bbox_to_anchor=(0, 1.01), frameon=False, borderaxespad=0)


@_plain_text
def per_class_plot(group_info: dict, records: list[RunResult], run_methods: dict[str, str], colors: dict[str, str],
                   names: dict[str, str] | None = None) -> str | None:
    """Grouped bars: per-class test F1 (multilabel) or accuracy (multiclass), mean over seeds, one bar per method."""
    from matplotlib.figure import Figure

    runs = _records_of(group_info, records)
    key = "f1" if group_info["task"] == "multilabel" else "accuracy"
    by_method: dict[str, list[list[float]]] = defaultdict(list)
    for r in runs:
        values = r.metrics.per_class.get("test", {}).get(key)
        if values:
            by_method[run_methods.get(r.run_id, r.method.name)].append(values)
    if not by_method:
        return None
    classes = runs[0].dataset.class_keys
    methods = sorted(by_method, key=list(colors).index)
    width = 0.8 / len(methods)
    fig = Figure(figsize=(max(6.0, 0.45 * len(classes) * max(1, len(methods) / 3)), 3.2))
    ax = fig.subplots()
    x = np.arange(len(classes))
    for i, m in enumerate(methods):
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, 100 * np.mean(by_method[m], axis=0), width, label=clean(str((names or {}).get(m, m))), color=colors[m])
    ax.set_xticks(x, [clean(str(c)) for c in classes], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(f"test {'F1' if key == 'f1' else 'accuracy'} (%)")
    ax.set_ylim(0, 100)
    _legend_above(ax, len(methods))
    ax.grid(axis="y", alpha=0.3)
    return svg(fig)


@_plain_text
def curves_plot(group_info: dict, records: list[RunResult], run_methods: dict[str, str], colors: dict[str, str],
                names: dict[str, str] | None = None) -> str | None:
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
    for m in sorted(curves, key=list(colors).index):
        lines = curves[m]
        n = min(len(line) for line in lines)
        values = np.array([line[:n] for line in lines])
        epochs = np.arange(1, n + 1)
        ax.plot(epochs, values.mean(axis=0), label=clean(str((names or {}).get(m, m))), color=colors[m], marker="o", markersize=3)
        if len(lines) > 1:
            ax.fill_between(epochs, values.min(axis=0), values.max(axis=0), color=colors[m], alpha=0.15, linewidth=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{split} selection metric (%)")
    _legend_above(ax, len(curves))
    ax.grid(alpha=0.3)
    return svg(fig)


def _group_rows(summary: pd.DataFrame, group_info: dict) -> pd.DataFrame:
    mask = np.ones(len(summary), dtype=bool)
    for key, value in group_info.items():
        mask &= (summary[key] == value).to_numpy()
    return summary[mask]


def _count(value: float) -> str:
    """A parameter count as an axis label: 0, 1k, 10k, 1M, 100M (no mathtext: the plots draw text as written)."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


@_plain_text
def params_plot(group_info: dict, summary: pd.DataFrame, metric: str, colors: dict[str, str],
                names: dict[str, str] | None = None) -> str | None:
    """Test ``metric`` (mean, std as error bars) against learnable parameters, one point per method of the group;
    the x axis is logarithmic above 1k parameters and linear below, so methods that learn nothing sit at 0."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    rows = _group_rows(summary, group_info)
    rows = rows[rows[f"test_{metric}_mean"].notna()] if f"test_{metric}_mean" in rows else rows.iloc[0:0]
    if rows.empty:
        return None
    fig = Figure(figsize=(6.0, 3.2))
    ax = fig.subplots()
    for _, r in rows.sort_values("method", key=lambda s: s.map(list(colors).index)).iterrows():
        x, y = r["params_learnable"], 100 * r[f"test_{metric}_mean"]
        std = r.get(f"test_{metric}_std")
        err = None if std is None or pd.isna(std) or int(r["n"]) < 2 else 100 * std
        ax.errorbar([x], [y], yerr=None if err is None else [err], fmt="o", color=colors[r["method"]], label=clean(str((names or {}).get(r["method"], r["method"]))), capsize=3)
    ax.set_xscale("symlog", linthresh=1e3)
    ax.set_xlim(left=-100)
    top = max(1e4, float(rows["params_learnable"].max()))
    ax.set_xticks([0.0] + [10.0**k for k in range(3, int(np.ceil(np.log10(top))) + 1)])
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _count(v)))
    ax.set_xlabel("learnable parameters")
    ax.set_ylabel(f"test {METRIC_LABELS.get(metric, metric)} (%)")
    _legend_above(ax, len(rows))
    ax.grid(alpha=0.3)
    return svg(fig)


@_plain_text
def history_plot(history: list[dict], dataset: str, colors: dict[str, str],
                 names: dict[str, str] | None = None) -> str | None:
    """The leaderboard's primary metric of every entry of ``dataset`` at each regeneration (oldest first), one line
    per method; an entry that is new, or gone, starts or ends its line there."""
    from matplotlib.figure import Figure

    stamps = [h["stamp"] for h in history]
    lines: dict[str, dict[int, float]] = defaultdict(dict)
    labels: dict[str, str] = {}
    metric = "primary metric"
    for i, h in enumerate(history):
        for key, entry in h.get("entries", {}).items():
            if entry.get("dataset") == dataset:
                lines[key][i] = float(entry["value"])
                labels[key] = entry.get("method", key)
                metric = entry.get("metric", metric)
    if not lines:
        return None
    fig = Figure(figsize=(6.0, 3.0))
    ax = fig.subplots()
    for key in sorted(lines, key=lambda k: (list(colors).index(labels[k]) if labels[k] in colors else len(colors), k)):
        xs = sorted(lines[key])
        color = colors.get(labels[key], "#333333")
        ax.plot(xs, [lines[key][x] for x in xs], marker="o", markersize=3, color=color, label=clean(str((names or {}).get(labels[key], labels[key]))))
    ax.set_xticks(range(len(stamps)), stamps, rotation=30, ha="right", fontsize=7)
    ax.set_xlim(-0.5, len(stamps) - 0.5)
    ax.set_ylabel(f"{metric} (%)")
    _legend_above(ax, len(lines))
    ax.grid(alpha=0.3)
    return svg(fig)
