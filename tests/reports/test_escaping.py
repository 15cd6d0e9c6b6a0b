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

from bench.store import store
from bench.cli.app import app
from bench.reports import escape
from tests.conftest import make_run

runner = CliRunner()
HOSTILE_METHOD = "evil<script>alert(1)</script>|[/]*x*_y_`z`"
HOSTILE_BACKBONE = r"\input{/etc/hostname}"
HOSTILE_DATASET = r"data$\pm${x}^~&%#_<b>"
HOSTILE_CLASSES = ["$x^2$", r"$\undefinedmacro{$", "c|d", "<i>e</i>", "f_g&h"]
SPECIALS = "\\ $ { } ^ ~ & % # _ < > |"


def _store_named(tmp_path: Path, name: str | None, display: str, backbone: str, dataset: str, classes: list[str],
                 weights_id: str | None = None) -> Path:
    """Two intclip runs (renamed ``name`` where given, shown as ``display``) and a DualCoOp run, every record naming
    the backbone, dataset and classes given."""
    results = tmp_path / "results"
    for method, seed in (("intclip", 0), ("intclip", 1), ("dualcoop", 0)):
        rec = make_run(results, method, seed, dataset="intentonomy", backbone="RN101")
        run_dir = store.runs_dir(results) / rec.run_id
        if method == "intclip":
            rec.method.name = name or rec.method.name
            rec.method.display_name = display
        rec.backbone["name"] = backbone
        if weights_id is not None:
            rec.backbone["weights_id"] = weights_id
        rec.dataset.name = dataset
        rec.dataset.class_keys = list(classes)
        store.write_result(run_dir, rec, store.read_scores(run_dir))
    return results


def _hostile_store(tmp_path: Path) -> Path:
    return _store_named(tmp_path, HOSTILE_METHOD, HOSTILE_METHOD, HOSTILE_BACKBONE, HOSTILE_DATASET, HOSTILE_CLASSES,
                        weights_id="tag:" + SPECIALS)


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


@pytest.mark.slow
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
    from bench.store import collection

    results = _hostile_store(tmp_path)
    records, bad = collection.load_results(results)
    assert not bad
    console = Console(record=True, width=400, file=open("/dev/null", "w"))
    for table in tables.rich_tables(collection.summarise(collection.results_frame(records))):
        console.print(table)
    text = console.export_text()
    assert HOSTILE_METHOD in text and r"backbone \input{/etc/hostname}" in text


# ---------------------------------------------------------------------------------------------------------------
# Control characters (issue 24): every escaping function, the CSV writers and the terminal tables remove them
# ---------------------------------------------------------------------------------------------------------------

ESC_SEQ = "\x1b[2J\x1b]0;pwned\x07"  # clear the screen, then set the terminal's title
CONTROLS = {"esc": ESC_SEQ, "bel": "\x07", "nul": "\x00", "c1-csi": "\u009b31m", "del": "\x7f", "nel": "\x85",
            "bidi-override": "\u202egpj.exe", "bidi-isolate": "\u2066x\u2069", "marks": "\u200e\u200f\u061c"}
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")
HOSTILE_DISPLAY = f"Int{ESC_SEQ}CLIP\u202e\x00\u009b"
CONTROL_CLASSES = [f"a{ESC_SEQ}", "b\x07", "c\x1b[31m", "d\u202ex", "e\x85\u009b"]


@pytest.mark.parametrize("kind", sorted(CONTROLS))
@pytest.mark.parametrize("fn", ["clean", "latex", "markdown", "html", "rich_text", "caption"])
def test_every_escaping_function_removes_control_characters(fn, kind):
    text = f"id-{CONTROLS[kind]}-end"
    if fn == "caption":
        out = escape.render_caption(["a ", escape.QUOTE_OPEN, text, escape.QUOTE_CLOSE], escape.UNICODE_SYMBOLS)
    else:
        out = getattr(escape, fn)(text)
    assert not CONTROL.search(out), repr(out)
    assert out.startswith("id-") and out.endswith("-end") if fn != "caption" else "id-" in out


def test_clean_keeps_text_and_turns_line_breaks_into_spaces_unless_multiline():
    assert escape.clean(f"run{ESC_SEQ}-1\u202e") == "run[2J]0;pwned-1"  # the controls go, the printable rest stays
    assert escape.clean("a\r\nb\tc\nd\re\u2028f") == "a b c d e f"
    assert escape.clean("a\r\nb\tc\rd\x0be", multiline=True) == "a\nb\tc\nd\ne"
    assert escape.clean("Ünïcødé · 日本語 ±Δ") == "Ünïcødé · 日本語 ±Δ"
    assert escape.rich_text("line 1\x1b[2J\nline [red]2") == "line 1[2J\nline \\[red]2"  # messages keep their lines
    assert escape.clean_value(0.5) == 0.5 and escape.clean_value(None) is None


def _control_store(tmp_path: Path) -> Path:
    return _store_named(tmp_path, None, HOSTILE_DISPLAY, f"RN{ESC_SEQ}101", f"intentonomy\u202e{ESC_SEQ}", CONTROL_CLASSES)


def test_latex_report_with_control_characters_compiles(tmp_path):
    """Was: ESC and BEL from a display name or class name went raw into the .tex ("Unicode character ^^[")."""
    tex = _report(_control_store(tmp_path), "latex", tmp_path / "t.tex", "--standalone")
    assert not CONTROL.search(tex) and "Int[2J]0;pwnedCLIP" in tex
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed (.ci/run installs it)")
    proc = subprocess.run(["pdflatex", "-no-shell-escape", "-interaction=nonstopmode", "-halt-on-error", "t.tex"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]


@pytest.mark.parametrize("fmt", ["md", "csv"])
def test_markdown_and_csv_reports_carry_no_control_character(tmp_path, fmt):
    text = _report(_control_store(tmp_path), fmt, tmp_path / f"t.{fmt}")
    assert not CONTROL.search(text), sorted(set(CONTROL.findall(text)))
    assert "0;pwned" in text  # the names are there, without their controls


def test_html_downloads_and_captions_carry_no_control_character(tmp_path):
    """The page's CSV downloads and its captions are cleaned here (``downloads.to_csv``, ``render_caption``)."""
    from urllib.parse import unquote

    page = _report(_control_store(tmp_path), "html", tmp_path / "t.html")
    links = [unquote(m) for m in re.findall(r'href="data:text/csv;charset=utf-8,([^"]+)"', page)]
    captions = re.findall(r'<p class="caption">(.*?)</p>', page, flags=re.S)
    assert links and captions and "Int[2J]0;pwnedCLIP" in "".join(links)
    assert not CONTROL.search("".join(links + captions))


def _html_with_finalize(tmp_path: Path, monkeypatch) -> str:
    """The page as ``reports/html.py`` writes it once its Jinja environment has ``finalize=escape.clean_value``."""
    import jinja2

    init = jinja2.Environment.__init__
    monkeypatch.setattr(jinja2.Environment, "__init__",
                        lambda self, *a, **k: init(self, *a, **{"finalize": escape.clean_value, **k}))
    return _report(_control_store(tmp_path), "html", tmp_path / "t.html")


def test_clean_value_as_the_template_finalize_cleans_the_page_and_keeps_its_plots(tmp_path, monkeypatch):
    page = _html_with_finalize(tmp_path, monkeypatch)
    assert not CONTROL.search(page.replace("\n", " ").replace("\t", " ")), sorted(set(CONTROL.findall(page)))
    assert page.count("<svg") >= 2 and "&lt;svg" not in page and "Int[2J]0;pwnedCLIP" in page


def test_html_report_carries_no_control_character(tmp_path):
    page = _report(_control_store(tmp_path), "html", tmp_path / "t.html")
    assert not CONTROL.search(page.replace("\n", " ").replace("\t", " ")), sorted(set(CONTROL.findall(page)))


def test_terminal_tables_carry_no_control_character(tmp_path):
    """Was: rich drops only BEL/BS/VT/FF/CR itself, so ``ESC[2J`` in a display name cleared the screen."""
    import io

    from rich.console import Console

    from bench.cli import console as console_tables
    from bench.reports import tables
    from bench.store import collection

    records, bad = collection.load_results(_control_store(tmp_path))
    assert not bad
    buf = io.StringIO()
    console = Console(file=buf, width=300, color_system=None, force_terminal=False)
    summary = collection.summarise(collection.results_frame(records))
    for table in [*tables.rich_tables(summary), *console_tables.fitted_tables(summary, 100)]:
        console.print(table)
    assert not CONTROL.search(buf.getvalue().replace("\n", " ")) and "0;pwned" in buf.getvalue()
