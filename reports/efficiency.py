"""Label-efficiency tables and curves (README "Label efficiency"): the main metric of each method against its label
budget (training fraction, images per class or observed-label proportion), mean +- std over seeds, per dataset
version x backbone x protocol, in Markdown, CSV, LaTeX and HTML (a table and a curve per dataset).

Built from :func:`bench.store.collection.summarise`'s summary, where each budget of a method is an experiment of
its own (its ``label_budget``); the whole-training-split run of the same experiment (same method, version, config
and weights), when the store has it, is the last column (100%, or "all" for k-shot). Reads no files, no torch.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field

import pandas as pd

from bench.reports import escape
from bench.store.collection import GROUP_KEYS, main_metric

PROTOCOL_TEXT = {"train_fraction": "training fraction", "shots": "training images per class",
                 "label_proportion": "observed training labels"}
EXPERIMENT_KEYS = ["method_name", "method_version", "config_id", "weights_id", "tuned"]  # an experiment, any budget
METRIC_TEXT = {"macro_f1": "Macro F1", "micro_f1": "Micro F1", "samples_f1": "Samples F1", "mAP": "mAP",
               "accuracy": "Acc", "mean_class_accuracy": "Mean-class Acc"}


@dataclass
class Cell:
    mean: float  # fractions
    std: float | None  # None below two seeds
    n: int


@dataclass
class EfficiencyTable:
    """One dataset group x protocol: rows of methods, a column per budget (then the whole split's, if any run)."""

    info: dict
    protocol: str
    metric: str
    split: str
    levels: list[float]
    rows: list[tuple[str, list[Cell | None]]] = field(default_factory=list)  # (method label, a cell per column)
    whole: bool = False  # the last column is the whole training split

    def headers(self) -> list[str]:
        def text(v: float) -> str:
            return f"{v:g}-shot" if self.protocol == "shots" else f"{100 * v:g}%"

        return [text(v) for v in self.levels] + (["all" if self.protocol == "shots" else "100%"] if self.whole else [])

    def title(self) -> str:
        i = self.info
        return (f"Label efficiency: {i['dataset']} (manifest {str(i['manifest_sha256'])[:12]}), backbone {i['backbone']}, "
                f"protocol {i['protocol']}")

    def caption(self) -> str:
        whole = (" The last column is the whole training split." if self.whole else "")
        return (f"{self.split.capitalize()} {METRIC_TEXT.get(self.metric, self.metric)} (%) by {PROTOCOL_TEXT[self.protocol]}, mean "
                f"± std over seeds (subsets drawn per seed; val and test whole).{whole}")


def _cell(row: pd.Series, column: str) -> Cell | None:
    mean = row.get(f"{column}_mean", math.nan)
    if mean is None or pd.isna(mean):
        return None
    std = row.get(f"{column}_std", math.nan)
    return Cell(float(mean), None if std is None or pd.isna(std) else float(std), int(row["n"]))


def efficiency_tables(summary: pd.DataFrame, split: str = "test") -> list[EfficiencyTable]:
    """Every label-efficiency table of ``summary`` (empty when no run has a label budget)."""
    if summary.empty or "label_protocol" not in summary or summary["label_protocol"].isna().all():
        return []
    out = []
    for keys, group in summary.groupby(GROUP_KEYS, sort=False, dropna=False):
        metric, column = main_metric(group), f"{split}_{main_metric(group)}"
        whole = group[group["label_budget"] == ""]
        for protocol in dict.fromkeys(group["label_protocol"].dropna()):
            budgets = group[group["label_protocol"] == protocol]
            table = EfficiencyTable(dict(zip(GROUP_KEYS, keys)), protocol, metric, split, sorted(set(budgets["label_value"])))
            experiments: dict[tuple, list] = {}
            for _, r in budgets.iterrows():
                label = r["method"].replace(f" [{r['label_budget']}]", "")
                entry = experiments.setdefault(tuple(r[k] for k in EXPERIMENT_KEYS), [label, {}])
                entry[1][r["label_value"]] = _cell(r, column)
            for key, (label, cells) in experiments.items():
                match = whole[(whole[EXPERIMENT_KEYS] == pd.Series(key, index=EXPERIMENT_KEYS)).all(axis=1)]
                full = _cell(match.iloc[0], column) if len(match) else None
                table.whole |= full is not None
                table.rows.append((label, [cells.get(v) for v in table.levels] + [full]))
            if not table.whole:
                table.rows = [(label, cells[:-1]) for label, cells in table.rows]
            out.append(table)
    return out


def labels(tables: list[EfficiencyTable]) -> list[str]:
    return list(dict.fromkeys(label for t in tables for label, _ in t.rows))


def _text(cell: Cell | None) -> str:
    if cell is None:
        return "-"
    return f"{100 * cell.mean:.2f}" if cell.std is None else f"{100 * cell.mean:.2f} ± {100 * cell.std:.2f}"


def to_markdown(tables: list[EfficiencyTable]) -> str:
    parts = []
    for t in tables:
        parts += [f"### {escape.markdown(t.title())}\n", escape.markdown(t.caption()) + "\n",
                  "| Method | " + " | ".join(t.headers()) + " |", "|---" + "|---:" * len(t.headers()) + "|"]
        parts += ["| " + " | ".join([escape.markdown(label), *map(_text, cells)]) + " |" for label, cells in t.rows]
        parts.append("")
    return "\n".join(parts) + ("\n" if parts else "")


def records(table: EfficiencyTable) -> list[dict]:
    """One dict per method x column: the group, the protocol, the level (``all`` for the whole split of k-shot,
    1 for a fraction's or proportion's), mean and std (fractions) and n."""
    values = [*table.levels, *(["all" if table.protocol == "shots" else 1.0] if table.whole else [])]
    return [{**table.info, "label_protocol": table.protocol, "method": label, "split": table.split, "metric": table.metric,
             "level": level, "mean": None if c is None else c.mean, "std": None if c is None else c.std,
             "n": None if c is None else c.n}
            for label, cells in table.rows for level, c in zip(values, cells)]


def to_csv(tables: list[EfficiencyTable]) -> str:
    rows = [{k: escape.clean_value(v) for k, v in r.items()} for t in tables for r in records(t)]
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    return buf.getvalue()


def to_latex(tables: list[EfficiencyTable]) -> str:
    """One booktabs table per efficiency table (``\\usepackage{booktabs}`` and ``graphicx``)."""
    from bench.reports.latex import SHRINK_ONLY

    def cell(c: Cell | None) -> str:
        if c is None:
            return "--"
        return f"{100 * c.mean:.2f}" + ("" if c.std is None else rf"{{\scriptsize$\pm${100 * c.std:.2f}}}")

    out = []
    for t in tables:
        key = re.sub(r"[^a-z0-9]+", "-", f"bench-efficiency-{t.protocol}-{t.info['dataset']}-{t.info['backbone']}-{t.info['protocol']}".lower())
        caption = escape.latex(t.title() + ". " + t.caption()).replace("±", r"$\pm$")
        lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}}}",
                 rf"\label{{tab:{key.strip('-')}}}", r"\small", SHRINK_ONLY + "{%", rf"\begin{{tabular}}{{l{'r' * len(t.headers())}}}",
                 r"\toprule", " & ".join(["Method", *(escape.latex(h) for h in t.headers())]) + r" \\", r"\midrule"]
        lines += [" & ".join([escape.latex(label), *map(cell, cells)]) + r" \\" for label, cells in t.rows]
        out.append("\n".join([*lines, r"\bottomrule", r"\end{tabular}}", r"\end{table}"]) + "\n")
    return "\n".join(out)


def attach_latex(document: str, tables: list[EfficiencyTable]) -> str:
    """``document`` (``bench report --format latex``'s text, standalone or not) with the efficiency tables added."""
    if not tables:
        return document
    body = to_latex(tables)
    if r"\end{document}" in document:
        return document.replace(r"\end{document}", body + r"\end{document}")
    return document + "\n" + body


# -- HTML: a table and a curve per dataset group -----------------------------------------------------------------
def curve(table: EfficiencyTable, colors: dict[str, str]) -> str | None:
    """The metric against the budget, one line per method (mean, std as error bars); the whole split's score is
    the point at 100% (fractions, proportions) or a dashed line (k-shot). Inline SVG (:func:`plots.svg`)."""
    import matplotlib
    from matplotlib.figure import Figure

    from bench.reports.plots import PALETTE, svg

    if not table.rows:
        return None
    xs = [*table.levels, *([1.0] if table.whole and table.protocol != "shots" else [])]
    with matplotlib.rc_context(escape.PLOT_RC):  # names drawn as written: no mathtext
        fig = Figure(figsize=(6.0, 3.2))
        ax = fig.subplots()
        for i, (label, cells) in enumerate(table.rows):
            color = colors.get(label, PALETTE[i % len(PALETTE)])
            points = [(x, c) for x, c in zip(xs, cells) if c is not None]
            ax.errorbar([x for x, _ in points], [100 * c.mean for _, c in points], yerr=[100 * (c.std or 0) for _, c in points],
                        marker="o", markersize=4, capsize=3, color=color, label=escape.clean(label))
            if table.protocol == "shots" and table.whole and cells[-1] is not None:
                ax.axhline(100 * cells[-1].mean, color=color, linestyle="--", linewidth=1)
        if table.protocol == "shots" or max(xs) / min(xs) >= 10:
            ax.set_xscale("log", base=2 if table.protocol == "shots" else 10)
        ax.set_xticks(xs, table.headers()[: len(xs)], fontsize=7)
        ax.minorticks_off()
        ax.set_xlabel(PROTOCOL_TEXT[table.protocol] + (" (dashed: all)" if table.protocol == "shots" and table.whole else ""))
        ax.set_ylabel(f"{table.split} {METRIC_TEXT.get(table.metric, table.metric)} (%)")
        ax.legend(fontsize=7, ncols=min(4, len(table.rows)), loc="lower left", bbox_to_anchor=(0, 1.01), frameon=False)
        ax.grid(alpha=0.3)
        return svg(fig)


SECTION = """{% for t, dl, plot in tables %}
<section id="efficiency-{{ loop.index }}">
<h2>{{ t.title() }}</h2>
<div class="scroll">
<table class="sortable" data-table="efficiency">
  <thead><tr><th data-type="text" class="method">Method</th>{% for h in t.headers() %}<th data-type="number">{{ h }}</th>{% endfor %}</tr></thead>
  <tbody>
  {% for label, cells in t.rows %}
  <tr data-method="{{ label }}"><td class="method" data-value="{{ label }}">{{ label }}</td>
    {%- for c in cells %}
    <td data-value="{{ '' if c is none else '%.6f' | format(100 * c.mean) }}">
    {%- if c is none %}-{% else %}{{ '%.2f' | format(100 * c.mean) }}
    {%- if c.std is not none %}<span class="std">±{{ '%.2f' | format(100 * c.std) }}</span>{% endif %}{% endif -%}
    </td>
    {%- endfor %}
  </tr>
  {% endfor %}
  </tbody>
</table>
</div>
<p class="caption">{{ t.caption() }}</p>
<p class="downloads">Download: <a download="efficiency-{{ loop.index }}.csv" href="{{ dl.csv }}">CSV</a><a download="efficiency-{{ loop.index }}.json" href="{{ dl.json }}">JSON</a></p>
{% if plot %}<div class="plots"><figure class="efficiency">{{ plot }}<figcaption>{{ t.caption() }}</figcaption></figure></div>{% endif %}
</section>
{% endfor %}"""


def to_html(tables: list[EfficiencyTable], colors: dict[str, str] | None = None) -> str:
    """The HTML sections (tables with CSV/JSON downloads and curves) for :func:`bench.reports.html.render_page`;
    markup safe to insert as it is (every name autoescaped, control characters removed)."""
    import jinja2
    from markupsafe import Markup

    from bench.reports.downloads import downloads

    if not tables:
        return Markup("")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, finalize=escape.clean_value)
    items = [(t, downloads(records(t)), Markup(curve(t, colors or {}) or "")) for t in tables]
    return Markup(env.from_string(SECTION).render(tables=items))
