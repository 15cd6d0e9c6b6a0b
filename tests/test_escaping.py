"""Names from records reach every output format as text, never as markup: LaTeX, Markdown, HTML, plots, terminal.

Was: LaTeX escaped only ``& % # _`` (a backbone named ``\\input{/etc/hostname}`` was executed by pdflatex through the
caption), Markdown wrote ``<script>`` and ``|`` raw, and the HTML report crashed on ``$...$`` in class keys.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench import store
from bench.cli import app
from bench.reports import escape
from tests.storegen import make_run

runner = CliRunner()
HOSTILE_METHOD = "evil<script>alert(1)</script>|[/]*x*_y_`z`"
HOSTILE_BACKBONE = r"\input{/etc/hostname}"
HOSTILE_DATASET = r"data$\pm${x}^~&%#_<b>"
HOSTILE_CLASSES = ["$x^2$", r"$\undefinedmacro{$", "c|d", "<i>e</i>", "f_g&h"]
SPECIALS = "\\ $ { } ^ ~ & % # _ < > |"


def _hostile_store(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    for method, seed in (("intclip", 0), ("intclip", 1), ("dualcoop", 0)):
        rec = make_run(results, method, seed, dataset="intentonomy", backbone="RN101")
        run_dir = store.runs_dir(results) / rec.run_id
        if method == "intclip":
            rec.method.name = HOSTILE_METHOD
            rec.method.display_name = HOSTILE_METHOD
        rec.backbone["name"] = HOSTILE_BACKBONE
        rec.backbone["weights_id"] = "tag:" + SPECIALS
        rec.dataset.name = HOSTILE_DATASET
        rec.dataset.class_keys = list(HOSTILE_CLASSES)
        store.write_result(run_dir, rec, store.read_scores(run_dir))
    return results


def _report(results: Path, fmt: str, out: Path, *extra: str) -> str:
    res = runner.invoke(app, ["report", "--results", str(results), "--format", fmt, "--bootstrap", "20", "--out", str(out), *extra])
    assert res.exit_code == 0, res.output
    return out.read_text()


def test_latex_escape_covers_every_special():
    assert escape.latex(SPECIALS) == (r"\textbackslash{} \$ \{ \} \textasciicircum{} \textasciitilde{} \& \% \# \_ "
                                      r"\textless{} \textgreater{} \textbar{}")


def test_latex_report_typesets_hostile_names_literally(tmp_path):
    results = _hostile_store(tmp_path)
    tex = _report(results, "latex", tmp_path / "t.tex", "--standalone")
    assert r"\input{" not in tex and "<script>" not in tex
    assert r"\textbackslash{}input\{/etc/hostname\}" in tex  # in the caption, where it used to be executed
    assert r"data\$\textbackslash{}pm\$\{x\}\textasciicircum{}\textasciitilde{}\&\%\#\_\textless{}b\textgreater{}" in tex
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed (.ci/run installs it)")
    proc = subprocess.run(["pdflatex", "-no-shell-escape", "-interaction=nonstopmode", "-halt-on-error", "t.tex"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "/etc/hostname" not in proc.stdout.split("(./t.tex")[-1].split("\n")[0]  # never opened as input
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", "t.pdf", "-"], cwd=tmp_path, capture_output=True, text=True).stdout
        flat = re.sub(r"\s+", "", text)
        assert r"\input{/etc/hostname}" in flat and "evil<script>alert(1)</script>" in flat


def test_markdown_report_keeps_its_columns_and_carries_no_html(tmp_path):
    results = _hostile_store(tmp_path)
    md = _report(results, "md", tmp_path / "t.md")
    assert "<script>" not in md and "<b>" not in md
    assert r"evil\<script\>alert(1)\</script\>\|\[/\]\*x\*\_y\_\`z\`" in md
    rows = [line for line in md.splitlines() if line.startswith("|")]
    widths = {len(re.findall(r"(?<!\\)\|", line)) for line in rows}
    assert len(rows) >= 4 and len(widths) == 1  # every row has as many cell borders as the header


def test_html_report_escapes_names_and_draws_math_looking_class_keys(tmp_path):
    results = _hostile_store(tmp_path)
    page = _report(results, "html", tmp_path / "t.html")
    assert "<script>alert(1)</script>" not in page and "<b>" not in page and "<i>e</i>" not in page
    assert "evil&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<svg" in page  # the per-class plot was drawn with the class keys as written


def test_terminal_tables_print_markup_brackets_as_text(tmp_path):
    """`bench run` ends with rich tables of its runs: a name with rich markup ([/], [red]) is printed as written."""
    from rich.console import Console

    from bench.reports import tables

    results = _hostile_store(tmp_path)
    records, bad = tables.load_results(results)
    assert not bad
    console = Console(record=True, width=400, file=open("/dev/null", "w"))
    for table in tables.rich_tables(tables.summarise(tables.results_frame(records))):
        console.print(table)
    text = console.export_text()
    assert HOSTILE_METHOD in text and r"backbone \input{/etc/hostname}" in text
