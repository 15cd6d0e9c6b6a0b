"""Every table of an HTML page as CSV and JSON, downloadable from the page itself (``data:`` links, so a page stays
one self-contained file): the numbers as the table shows them, with their spread, rank, p-value and Δ."""

from __future__ import annotations

import csv
import io
import json
from urllib.parse import quote

from bench.reports.escape import clean, clean_value
from bench.reports.layout import PaperTable


def table_records(table: PaperTable) -> list[dict]:
    """One dict per row of ``table``: rank, method, family, whether it is a paper row, learnable parameters
    (millions), n, then per column ``<block> <label>`` (mean, percent) and ``... std``, the p-value and each Δ."""
    out = []
    for index, row in enumerate(table.rows):
        record: dict = {
            "rank": table.ranks.get(index),
            "method": row.label,
            "family": row.family,
            "paper_row": row.reference,
            "params_M": row.params_m,
            "n": row.n,
        }
        for column, cell in zip(table.columns, row.cells):
            name = f"{column.block} {column.label}"
            record[name] = None if cell.mean is None else round(cell.mean, 4)
            record[f"{name} std"] = None if cell.std is None else round(cell.std, 4)
        record["p_vs_ref"] = row.p_value
        for c in table.delta_columns:
            record[f"delta {table.columns[c].block} {table.columns[c].label}"] = None if c not in row.deltas else round(row.deltas[c], 4)
        if row.change is not None or row.regression:
            record["change"] = row.change
            record["regression"] = row.regression
        out.append(record)
    return out


def to_csv(records: list[dict]) -> str:
    records = [{clean(k): v for k, v in r.items()} for r in records]  # no control character in a header or cell
    fields = list(dict.fromkeys(k for r in records for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if r.get(k) is None else clean_value(r.get(k)) for k in fields} for r in records)
    return buf.getvalue()


def to_json(records: list[dict]) -> str:
    return json.dumps(records, indent=1) + "\n"


def data_uri(text: str, mime: str) -> str:
    return f"data:{mime};charset=utf-8,{quote(text, safe='')}"


def downloads(records: list[dict]) -> dict[str, str]:
    """``{"csv": <data: link>, "json": <data: link>}`` for a table's records."""
    return {"csv": data_uri(to_csv(records), "text/csv"), "json": data_uri(to_json(records), "application/json")}
