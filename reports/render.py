"""A report's inputs and text: the store's valid records (the skipped ones warned about), their summary with the
significance columns against the declared reference, and the rendered Markdown, CSV, LaTeX or HTML. What
``bench report``, the Python API, ``bench reproduce`` and ``bench crosscheck`` render from."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import pandas as pd

from bench.config import BenchConfig, ReportConfig
from bench.errors import BenchError

ReportFormat = Literal["md", "csv", "latex", "html"]


def load_records(results: Path | str, warn: Callable[[str], None] | None = None) -> list:
    from bench.store import collection

    records, bad = collection.load_results(Path(results))
    for err in bad:
        message = f"skipped {'result' if type(err).__name__ == 'NewerRecordError' else 'corrupt result'}: {err}"
        if warn is None:
            warnings.warn(message, RuntimeWarning, stacklevel=3)
        else:
            warn(message)
    return records


def report_inputs(results: Path, bootstrap: int = 1000, warn: Callable[[str], None] | None = None,
                  run_ids: set[str] | None = None, *, ref: str | None = ReportConfig().reference,
                  test: str = ReportConfig().test, alpha: float = ReportConfig().alpha) -> tuple[list, pd.DataFrame]:
    """The records of the store at ``results`` (only ``run_ids`` when given) and their summary, with the
    significance columns against the declared reference ``ref`` (``test``, see
    :func:`bench.reports.compare.add_significance`) unless ``bootstrap`` is 0 or ``ref`` None: what every report
    renders."""
    from bench.reports import compare
    from bench.store import collection

    records = [r for r in load_records(results, warn) if run_ids is None or r.run_id in run_ids]
    summary = collection.summarise(collection.results_frame(records))
    if bootstrap and ref and not summary.empty:
        summary = compare.add_significance(summary, records, results, bootstrap, reference=ref, test=test, alpha=alpha)
    return records, summary


def render_report(cfg: BenchConfig, fmt: ReportFormat, bootstrap: int = 1000, reference: bool = False,
                  standalone: bool = False, warn: Callable[[str], None] | None = None, columns: str | None = None,
                  metrics: Sequence[str] | None = None) -> tuple[str, int]:
    """The text of a report on ``cfg``'s result store, and how many runs it covers (the command line's too).
    ``columns`` ("test", "val", "both") and ``metrics`` choose the paper tables' columns (LaTeX, HTML; see
    :class:`bench.reports.layout.TableOptions`). The significance test and the declared reference method it
    compares against come from ``cfg.report``."""
    from bench.reports.layout import TableOptions

    try:
        options = TableOptions(columns, tuple(metrics) if metrics else None)
    except ValueError as err:
        raise BenchError(str(err)) from None
    from bench.reports import tables

    records, summary = report_inputs(cfg.paths.results, bootstrap, warn, ref=cfg.report.reference,
                                     test=cfg.report.test, alpha=cfg.report.alpha)
    if fmt == "md":
        return tables.to_markdown(summary), len(records)
    if fmt == "csv":
        return tables.to_csv(summary), len(records)
    from bench.reports import layout

    paper = layout.paper_tables(summary, reference=reference, options=options)
    if fmt == "latex":
        from bench.reports.latex import to_latex

        return to_latex(paper, standalone=standalone), len(records)
    if fmt == "html":
        from bench.reports.html import render_page

        return render_page("bench report", paper, summary, records, subtitle=f"{len(records)} runs in {cfg.paths.results}"), len(records)
    raise ValueError(f"format {fmt!r}: expected one of md, csv, latex, html")


