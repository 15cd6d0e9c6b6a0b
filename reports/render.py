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
    renders. Runs on part of the training labels (README "Label efficiency") are left out: they are the
    label-efficiency tables' (:func:`split_inputs`)."""
    records = [r for r in load_records(results, warn) if run_ids is None or r.run_id in run_ids]
    return split_inputs(records, results, bootstrap, ref=ref, test=test, alpha=alpha)[:2]


def split_inputs(records: list, results: Path, bootstrap: int = 1000, *, ref: str | None = ReportConfig().reference,
                 test: str = ReportConfig().test, alpha: float = ReportConfig().alpha) -> tuple[list, pd.DataFrame, pd.DataFrame]:
    """``(records on the whole training split, their summary with the significance columns, the summary of every
    record)``: the main tables' inputs, and the label-efficiency tables' (empty when no run has a label budget)."""
    from bench.reports import compare
    from bench.store import collection

    whole = [r for r in records if r.label_protocol is None]
    summary = collection.summarise(collection.results_frame(whole))
    if bootstrap and ref and not summary.empty:
        summary = compare.add_significance(summary, whole, results, bootstrap, reference=ref, test=test, alpha=alpha)
    every = collection.summarise(collection.results_frame(records)) if len(whole) < len(records) else pd.DataFrame()
    return whole, summary, every


def render_report(cfg: BenchConfig, fmt: ReportFormat, bootstrap: int = 1000, reference: bool = False,
                  standalone: bool = False, warn: Callable[[str], None] | None = None, columns: str | None = None,
                  metrics: Sequence[str] | None = None, tables: Literal["all", "efficiency"] = "all") -> tuple[str, int]:
    """The text of a report on ``cfg``'s result store, and how many runs it covers (the command line's too).
    ``columns`` ("test", "val", "both") and ``metrics`` choose the paper tables' columns (LaTeX, HTML; see
    :class:`bench.reports.layout.TableOptions`). The significance test and the declared reference method it
    compares against come from ``cfg.report``. When the store holds runs on part of the training labels, the
    label-efficiency tables follow the main ones (md, LaTeX, HTML with a curve per dataset; in CSV their rows join
    the summary, with their ``label_protocol`` and ``label_value``); ``tables="efficiency"``: only those tables (CSV:
    one row per method and budget)."""
    from bench.reports.layout import TableOptions

    try:
        options = TableOptions(columns, tuple(metrics) if metrics else None)
    except ValueError as err:
        raise BenchError(str(err)) from None
    from bench.reports import efficiency
    from bench.reports import tables as md

    every = load_records(cfg.paths.results, warn)
    records, summary, labelled = split_inputs(every, cfg.paths.results, bootstrap, ref=cfg.report.reference,
                                              test=cfg.report.test, alpha=cfg.report.alpha)
    eff = efficiency.efficiency_tables(labelled)
    if tables == "efficiency":
        return _efficiency_only(eff, fmt), len(every)
    if fmt == "md":
        main = md.to_markdown(summary) if not summary.empty or not eff else ""
        return main + efficiency.to_markdown(eff), len(every)
    if fmt == "csv":
        budgets = labelled[labelled["label_budget"] != ""] if not labelled.empty else labelled
        return md.to_csv(pd.concat([summary, budgets], ignore_index=True) if len(budgets) else summary), len(every)
    from bench.reports import layout

    paper = layout.paper_tables(summary, reference=reference, options=options)
    if fmt == "latex":
        from bench.reports.latex import to_latex

        return efficiency.attach_latex(to_latex(paper, standalone=standalone), eff), len(every)
    if fmt == "html":
        from bench.reports.html import render_page
        from bench.reports.plots import method_colors

        colors = method_colors([*(summary["method"] if not summary.empty else []), *efficiency.labels(eff)])
        return render_page("bench report", paper, summary, records, subtitle=f"{len(every)} runs in {cfg.paths.results}",
                           colors=colors, efficiency=efficiency.to_html(eff, colors)), len(every)
    raise ValueError(f"format {fmt!r}: expected one of md, csv, latex, html")


def _efficiency_only(eff: list, fmt: str) -> str:
    from bench.reports import efficiency

    if fmt == "html":
        from bench.reports.html import render_page
        from bench.reports.plots import method_colors

        colors = method_colors(efficiency.labels(eff))
        return render_page("bench report: label efficiency", [], pd.DataFrame(), [], colors=colors,
                           efficiency=efficiency.to_html(eff, colors))
    renderers = {"md": efficiency.to_markdown, "csv": efficiency.to_csv, "latex": efficiency.to_latex}
    if fmt not in renderers:
        raise ValueError(f"format {fmt!r}: expected one of md, csv, latex, html")
    return renderers[fmt](eff) or ("No label-efficiency runs.\n" if fmt == "md" else "")
