"""The Python API, for notebooks and scripts: the same runs, records and reports as the ``bench`` command.

    import bench

    runs = bench.load_results("results")          # one row per run: method, dataset, seed, every val/test metric
    table = bench.summarize(runs)                  # mean, std, 95% CI and n per method (the report's numbers)
    new = bench.run(methods=["dualcoop", "zeroshot"], seeds=[0, 1], executor="serial")
    print(bench.report("results", format="md"))   # or "csv", "latex", "html": the text `bench report` writes

Metrics are fractions in [0, 1] (as the records store them); the reports print them as percentages. Records that
do not validate (or whose artifacts are damaged) are skipped with a :class:`RuntimeWarning` naming them, as the
command line skips them with a message.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from bench.config import ReportConfig, load_config
from bench.reports.render import load_records, render_report



def load_results(results: Path | str = "results") -> pd.DataFrame:
    """Every valid run in the result store at ``results`` as a DataFrame, one row per run: ``run_id``, ``method``,
    ``dataset``, ``backbone``, ``protocol``, ``seed``, parameter counts and every val/test metric (``test_macro_f1``,
    ``val_mAP``, ... as fractions)."""
    from bench.store import collection

    return collection.results_frame(load_records(results))


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Per dataset x backbone x protocol x experiment: ``n`` (runs) and the mean, std (ddof=1) and 95% t half-width
    of every metric (``test_macro_f1_mean``, ``..._std``, ``..._ci95``), in the report's row order (what
    `bench report --format csv --bootstrap 0` writes)."""
    from bench.store import collection

    return collection.summarise(runs)


def run(
    methods: Iterable[str] | None = None,
    dataset: str | Iterable[str] | None = None,
    seeds: Iterable[int] | None = None,
    *,
    backbone: str | None = None,
    config: Path | str | None = None,
    results: Path | str | None = None,
    executor: Literal["ray", "serial"] | None = None,
    overrides: dict[str, Any] | None = None,
    limit: int | None = None,
    quiet: bool = True,
) -> pd.DataFrame:
    """Run what is missing of a suite (as `bench run`) and return its runs as :func:`load_results` rows.

    ``config`` is a bench.toml (default: ./bench.toml, else the built-in defaults: the synthetic dataset and the tiny
    CLIP); ``overrides`` sets any dotted key (``{"methods.dualcoop.epochs": 2}``). Complete runs are reused, never
    redone. ``limit`` is smoke mode (``--limit``, ``suite.limit``): at most that many images per split, in runs of
    their own, marked ``[limit N]`` in the frame's ``method`` and ``limit`` columns. Metrics are fractions. Failed
    runs are not in the frame; ``frame.attrs["failed"]`` is a dict mapping their run ids to the error message (empty
    when none failed)."""
    from rich.console import Console

    from bench.store import collection
    from bench.workflows.suite import run_suite

    from bench.overrides import command_overrides

    datasets = None if dataset is None else [dataset] if isinstance(dataset, str) else list(dataset)
    values = command_overrides(results, values=overrides, methods=None if methods is None else list(methods),
                               datasets=datasets, seeds=None if seeds is None else list(seeds), backbone=backbone,
                               executor=executor, limit=limit)
    cfg = load_config(config, values)
    outcome = run_suite(cfg, Console(stderr=True, quiet=quiet))
    wanted = {p.run_id for p in outcome.planned}
    frame = collection.results_frame([r for r in load_records(cfg.paths.results) if r.run_id in wanted])
    frame.attrs["failed"] = dict(outcome.failed)
    return frame


def report(results: Path | str = "results", format: Literal["md", "csv", "latex", "html"] = "md", *, bootstrap: int = 1000,
           reference: bool = False, standalone: bool = False, columns: str | None = None,
           metrics: Sequence[str] | None = None, ref: str | None = ReportConfig().reference,
           test: str = ReportConfig().test) -> str:
    """The text `bench report --format <format>` writes for the store at ``results``: Markdown or CSV summaries, the
    paper's tables in LaTeX (``standalone``: a whole document) or one self-contained HTML page (``reference``: with
    the paper's rows; LaTeX and HTML). ``bootstrap`` resamples for the significance column (0: none); ``columns`` and
    ``metrics`` choose the paper tables' columns, as ``--columns``/``--metrics`` do. ``ref`` is the method every
    other is tested against, declared before the results (``None``: no p-values); ``test`` is ``"seed-t"``
    (calibrated) or ``"bootstrap"``, as ``--ref``/``--test`` do."""
    cfg = load_config(None, {"paths.results": str(Path(results).resolve()), "report.reference": ref, "report.test": test},
                      sections=False)
    return render_report(cfg, format, bootstrap, reference, standalone, columns=columns, metrics=metrics)[0]
