"""LaTeX (booktabs) rendering of the paper tables decided in ``reports.layout``.

``to_latex(tables)`` gives table environments to ``\\input`` into a paper (needs ``\\usepackage{booktabs}``);
``standalone=True`` wraps them in a document that compiles on its own with pdflatex.
"""

from __future__ import annotations

import math
import re

from bench.reports.escape import latex as escape
from bench.reports.escape import render_caption
from bench.reports.layout import PaperTable, Row

def _number(value: float, std: float | None, mark: str | None) -> list[str]:
    """A metric cell as three tabular cells: integer part with the decimal point (right-aligned), fraction
    (left-aligned), so every number of a column aligns on its point, and the spread."""
    whole, frac = f"{value:.2f}".split(".")
    whole += "."  # the point belongs to the integer cell: a mark (bold, underline) runs on unbroken
    if mark == "best":
        whole, frac = rf"\textbf{{{whole}}}", rf"\textbf{{{frac}}}"
    elif mark == "second":
        whole, frac = rf"\underline{{{whole}}}", rf"\underline{{{frac}}}"
    spread = rf"{{\scriptsize$\pm${std:.2f}}}" if std is not None else ""
    return [whole, frac, spread]


# one metric column = integer part and point, fraction, spread: numbers align on their decimal points
METRIC_SPEC = "r@{}l@{\\,}l"
MISSING = r"\multicolumn{3}{c}{--}"


def params_text(millions: float | None) -> str:
    """Learnable parameters in millions as a paper prints them: 82.4, 2.05, 0.025 (a probe's 0.0013 is not "0.00"),
    and 0 for a method that learns nothing."""
    if millions is None:
        return "-"
    if millions == 0:
        return "0"
    if millions >= 10:
        return f"{millions:.1f}"
    if millions >= 0.1:
        return f"{millions:.2f}"
    return f"{millions:.{1 - math.floor(math.log10(millions))}f}"  # two significant digits, never 1.2e-05


def _signed(value: float) -> str:
    return f"+{value:.2f}" if value >= 0 else f"$-${abs(value):.2f}"


def _row(table: PaperTable, index: int, row: Row) -> str:
    label = escape(row.label)
    if row.dagger:
        label += r"$^\dagger$"
    cells = [label]
    if table.show_params:
        cells.append(params_text(row.params_m))
    for c, cell in enumerate(row.cells):
        if cell.mean is None:
            cells.append(MISSING)
            continue
        mark = "best" if index in table.best.get(c, ()) else "second" if index in table.second.get(c, ()) else None
        cells.extend(_number(cell.mean, cell.std, mark))
    for c in table.delta_columns:
        cells.append(_signed(row.deltas[c]) if c in row.deltas else "")
    return " & ".join(cells) + r" \\"


def environment(table: PaperTable) -> str:
    """``table`` (one column of a two-column paper) for up to five number columns, else ``table*`` (both)."""
    return "table" if len(table.columns) + len(table.delta_columns) <= 5 else "table*"


def table_latex(table: PaperTable, env: str | None = None) -> str:
    """One booktabs table: column blocks (Test / Val, or one per dataset), family groups, paper rows if any.
    ``env``: the float (default: :func:`environment`)."""
    env = env or environment(table)
    lead = 2 if table.show_params else 1
    n_cols = lead + 3 * len(table.columns) + len(table.delta_columns)
    spec = "l" + ("r" if table.show_params else "") + METRIC_SPEC * len(table.columns) + "r" * len(table.delta_columns)
    top = [""] * lead
    rules = []
    start = lead + 1
    for name, span in table.blocks:
        top.append(rf"\multicolumn{{{3 * span}}}{{c}}{{{escape(name)}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + 3 * span - 1}}}")
        start += 3 * span
    top += [""] * len(table.delta_columns)
    header = ["Method"] + ([r"\#P (M)"] if table.show_params else []) + [rf"\multicolumn{{3}}{{c}}{{{escape(c.label)}}}" for c in table.columns]
    # a Δ names its block (Test, EmotionROI) wherever the table has several, even when only one of them has a Δ
    header += [rf"$\Delta$ {escape(table.columns[c].block)}" if len(table.blocks) > 1 else r"$\Delta$" for c in table.delta_columns]
    label = re.sub(r"[^a-z0-9]+", "-", f"bench-{table.key}-{table.info.get('dataset', '')}-{table.info.get('backbone', '')}-{table.info.get('protocol', '')}".lower())
    lines = [
        rf"\begin{{{env}}}[t]",
        r"\centering",
        rf"\caption{{{_caption_text(table)}}}",
        rf"\label{{tab:{label.strip('-')}}}",
        r"\small",
        r"\setlength{\tabcolsep}{4pt}",
        SHRINK_ONLY + "{%",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(top) + r" \\",
        "".join(rules),
        " & ".join(header) + r" \\",
    ]
    for family in table.families:
        lines.append(r"\midrule")
        lines.append(rf"\multicolumn{{{n_cols}}}{{l}}{{\textit{{{escape(family)}}}}} \\")
        for index, row in enumerate(table.rows):
            if row.family == family:
                lines.append(_row(table, index, row))
    lines += [r"\bottomrule", r"\end{tabular}}", rf"\end{{{env}}}"]
    return "\n".join(lines) + "\n"


# a table wider than the text shrinks to it; a narrower one keeps its natural size (never scaled up)
SHRINK_ONLY = r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}"

LATEX_SYMBOLS = {"quote_open": "``", "quote_close": "''", "delta": r"$\Delta$", "dagger": r"$\dagger$", "ge": r"$\ge$",
                 "plus_minus": r"$\pm$"}


def _caption_text(table: PaperTable) -> str:
    """The caption with every piece of text escaped (names from records included) and the symbols in LaTeX."""
    return render_caption(table.caption, LATEX_SYMBOLS, escape)


def _unique_labels(body: str) -> str:
    """A second table with the same ``\\label`` (two variants of one paper table, e.g. Table 1's) gets ``-2``, ``-3``:
    LaTeX warns on duplicates and ``\\ref`` would point at the first."""
    seen: dict[str, int] = {}

    def unique(match: re.Match) -> str:
        name = match.group(1)
        seen[name] = seen.get(name, 0) + 1
        return match.group(0) if seen[name] == 1 else rf"\label{{{name}-{seen[name]}}}"

    return re.sub(r"\\label\{([^}]*)\}", unique, body)


def to_latex(tables: list[PaperTable], standalone: bool = False) -> str:
    """Every table; with ``standalone`` a complete document (article, landscape, booktabs) for pdflatex."""
    if not tables:
        body = "% no results\n"
    else:
        body = _unique_labels("\n".join(table_latex(t, "table" if standalone else None) for t in tables))
    if not standalone:
        return "% generated by `bench report --format latex`; needs \\usepackage{booktabs} and \\usepackage{graphicx}\n" + body

    return "\n".join(
        [
            r"\documentclass{article}",
            r"\usepackage[utf8]{inputenc}",
            r"\usepackage{booktabs}",
            r"\usepackage{graphicx}",
            r"\usepackage[landscape,margin=1.5cm]{geometry}",
            r"\begin{document}",
            r"\pagestyle{empty}",
            body,
            r"\end{document}",
            "",
        ]
    )
