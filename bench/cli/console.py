"""The summary tables ``bench run`` and ``bench tune`` print, fitted to the terminal's width.

The report's rows (:func:`bench.reports.tables.table_rows`) as rich tables whose number cells never wrap: the whole
table when it fits, else one table per split (test, then val), and a split whose columns still do not fit is cut
into tables of as many metric columns as fit, each repeating the method, #P and n columns. A long method label
wraps inside its column (at most ``LABEL_WIDTH`` wide); a number never does.
"""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

LABEL_WIDTH = 30
FIXED = 3  # Method, #P (M), n: repeated in every table


def fitted_tables(summary: Any, width: int) -> list[Table]:
    """Rich tables of ``summary`` (:func:`bench.store.collection.summarise`), none wider than ``width``
    (unless a single metric column with the fixed ones does not fit: then that one, as narrow as it gets)."""
    from bench.reports import escape, tables

    out = []
    for (_, header, rows), full in zip(tables.table_rows(summary), tables.rich_tables(summary)):
        rows = [[escape.rich_text(r[0]), r[1], r[2].replace(" (deterministic)", " (det.)"), *r[FIXED:]] for r in rows]
        metric = list(range(FIXED, len(header)))
        whole = _table(str(full.title), header, rows, metric, strip="")
        if _width(whole) <= width:
            parts = [whole]
        else:
            parts = []
            for split in ("test", "val"):
                columns = [i for i in metric if _split_of(header[i]) == split]
                parts += _pack(f"{full.title} · {split}", header, rows, columns, split, width)
        if full.caption:
            parts[-1].caption, parts[-1].caption_justify = full.caption, "left"
        out += parts
    return out


def _split_of(name: str) -> str:
    """The split a column reports (``p vs ref`` compares test scores)."""
    return "val" if name.startswith("val ") else "test"


def _pack(title: str, header: list[str], rows: list[list[str]], columns: list[int], split: str,
          width: int) -> list[Table]:
    """Tables of one split: the fewest that fit ``width``, with the metric columns shared out evenly, in order."""
    for count in range(1, len(columns) + 1):
        size = -(-len(columns) // count)
        parts = [_table(title, header, rows, columns[i:i + size], split) for i in range(0, len(columns), size)]
        if all(_width(t) <= width for t in parts) or size == 1:
            return parts
    return []


def _table(title: str, header: list[str], rows: list[list[str]], columns: list[int], strip: str) -> Table:
    table = Table(title=title, title_justify="left")
    longest = max([len(header[0])] + [len(r[0]) for r in rows])
    table.add_column(header[0], overflow="fold", min_width=min(longest, 12), max_width=LABEL_WIDTH)
    for i in [*range(1, FIXED), *columns]:
        name = header[i].removeprefix(f"{strip} ") if strip else header[i]
        table.add_column(name, justify="right", no_wrap=True,
                         min_width=max(len(name), *(len(r[i]) for r in rows)) if rows else len(name))
    for r in rows:
        table.add_row(*(r[i] for i in [*range(FIXED), *columns]))
    return table


def _width(table: Table) -> int:
    """The width ``table`` takes when nothing constrains it."""
    console = Console(file=io.StringIO(), width=10_000)
    return Measurement.get(console, console.options, table).maximum
