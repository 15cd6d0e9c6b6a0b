"""The paper's reference rows in the report tables: the shipped numbers (Table 6b included), Table 6b's layout, and
the one Δ rule of every table (reproduced minus the paper's row of the same method on the same backbone; no Δ
column where no row has one). Expected values are computed by hand from reports/reference/intclip_eccv2024_tables.csv."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from bench.cli.app import app
from bench.reports import layout
from bench.reports.escape import UNICODE_SYMBOLS, render_caption
from bench.reports.latex import METRIC_SPEC, to_latex
from bench.reports.paper import reference_frame
from tests.conftest import REPO, SHARED
from tests.conftest import make_run
from tests.reports.test_reports import _cells, _summary, _two_column_article

RULE = "is printed only against the paper's row of the same method on the same backbone"


def _caption(table) -> str:
    return render_caption(table.caption, UNICODE_SYMBOLS)


def _tables(root: Path) -> dict[tuple[str, str], layout.PaperTable]:
    return {(t.key, t.info["backbone"]): t for t in layout.paper_tables(_summary(root), reference=True)}


def _row(table, label: str, reference: bool = False):
    return next(r for r in table.rows if r.label == label and r.reference == reference)


def _header(tex: str, title: str) -> str:
    """The column-header line ("Method & ...") of the table whose caption starts with ``title``."""
    block = tex[tex.index(r"\caption{" + title):]
    return next(line for line in block.splitlines() if line.startswith("Method &"))


def test_the_shipped_reference_has_table_6b_as_the_shared_copy():
    shipped = pd.read_csv(REPO / "reports" / "reference" / "intclip_eccv2024_tables.csv")
    if (SHARED / "reference" / "intclip_eccv2024_tables.csv").is_file():
        pd.testing.assert_frame_equal(shipped, pd.read_csv(SHARED / "reference" / "intclip_eccv2024_tables.csv"))
    ref = reference_frame()  # what the package loads
    six_b = ref[ref["table"] == "table6b"]
    assert len(six_b) == 12 and set(six_b["split"]) == {"val"} and set(six_b["dataset"]) == {"intentonomy"}
    assert list(dict.fromkeys(six_b["method"])) == ["IntCLIP (HCI)", "IntCLIP (HCI-FG)", "HLEG [33]", "HLEG [33] + HCI"]
    values = {(m, k): v for m, k, v in zip(six_b["method"], six_b["metric"], six_b["value"])}
    assert values[("HLEG [33] + HCI", "macro_f1")] == 36.47 and values[("IntCLIP (HCI-FG)", "samples_f1")] == 50.14
    # its HCI row is Table 1's IntCLIP (ViT-B/32) val row: Table 6b's backbone is ViT-B/32
    vit = ref[(ref["table"] == "table1") & (ref["method"] == "IntCLIP (ViT-B/32)") & (ref["split"] == "val")]
    assert {k: values[("IntCLIP (HCI)", k)] for k in ("macro_f1", "micro_f1", "samples_f1")} == \
        {k: v for k, v in zip(vit["metric"], vit["value"]) if k != "mAP"}


def test_a_delta_on_the_papers_backbone_equals_the_hand_computed_difference(tmp_path):
    for seed in (0, 1):
        make_run(tmp_path, "dualcoop", seed, test={"macro_f1": 0.38}, val={"macro_f1": 0.40})
        make_run(tmp_path, "intclip", seed, test={"macro_f1": 0.40}, val={"macro_f1": 0.39})
        make_run(tmp_path, "intclip:no-sa", seed, test={"macro_f1": 0.35}, val={"macro_f1": 0.36})
        make_run(tmp_path, "intclip", seed, backbone="ViT-B-32", test={"macro_f1": 0.42}, val={"macro_f1": 0.43, "micro_f1": 0.50})
        make_run(tmp_path, "intclip", seed, dataset="emotionroi", task="multiclass", manifest="e" * 64, test={"accuracy": 0.70})
    tables = _tables(tmp_path)
    rn101, vit = tables[("table1", "RN101")], tables[("table1", "ViT-B-32")]
    # Table 1 (test macro F1): DualCoOp 38.00 - 31.06, IntCLIP (RN101) 40.00 - 38.40, IntCLIP (ViT-B/32) 42.00 - 40.15
    assert _row(rn101, "dualcoop").deltas == pytest.approx({0: 6.94})
    assert _row(rn101, "intclip").deltas == pytest.approx({0: 1.60})
    assert _row(vit, "intclip").deltas == pytest.approx({0: 1.85})
    # Table 2 (test macro F1): w/o SA 35.00 - 35.15, Full IntCLIP 40.00 - 38.40
    table2 = tables[("table2", "RN101")]
    assert _row(table2, "w/o SA").deltas == pytest.approx({0: -0.15}) and _row(table2, "Full IntCLIP").deltas == pytest.approx({0: 1.60})
    # Table 6a (test accuracy): EmotionROI 70.00 - 71.05
    assert _row(tables[("table6a", "RN101")], "intclip").deltas == pytest.approx({0: -1.05})
    # Table 6b (val macro F1) on ViT-B-32: 43.00 - 41.55; off ViT-B/32 (the paper's backbone for it) no Table 6b
    six_b = tables[("table6b", "ViT-B-32")]
    assert _row(six_b, "IntCLIP (HCI)").deltas == pytest.approx({0: 1.45}) and six_b.delta_columns == [0]
    assert ("table6b", "RN101") not in tables
    tex = to_latex(list(tables.values()))
    assert "+6.94" in tex and "+1.85" in tex and "+1.45" in tex and "$-$1.05" in tex


@pytest.mark.slow
def test_no_delta_off_the_papers_backbone_and_no_empty_delta_column(tmp_path):
    for seed in (0, 1):
        for method in ("dualcoop", "query2label", "intclip", "intclip:no-sa"):
            make_run(tmp_path, method, seed, backbone="tiny-clip", test={"macro_f1": 0.38})
        make_run(tmp_path, "intclip", seed, backbone="tiny-clip", dataset="emotionroi", task="multiclass", manifest="e" * 64, test={"accuracy": 0.70})
    tables = layout.paper_tables(_summary(tmp_path), reference=True)
    assert [t.key for t in tables] == ["table1", "table2", "table5", "table6a"]  # no 6b off ViT-B/32
    for table in tables:  # a tiny-CLIP run is never compared with the paper's RN101 or ViT-B/32 rows
        assert table.delta_columns == [] and not any(r.deltas for r in table.rows), table.key
        if table.key != "table5":  # (the paper prints no numbers for Table 5) the paper's rows are still there
            assert any(r.reference for r in table.rows) and RULE in _caption(table), table.key
    tex = to_latex(tables)
    for title in ("Main comparison", "Component ablation", "Image emotion recognition"):
        assert r"$\Delta$" not in _header(tex, title), title
    assert r"\begin{tabular}{lr" + METRIC_SPEC * 8 + "}" in tex  # Table 1: #P and eight metrics, no Δ column
    assert len(_cells(tex, "dualcoop")) == 2 + 8  # label, #P, eight metrics: no empty Δ cell
    html = tmp_path / "report.html"
    res = CliRunner().invoke(app, ["report", "--results", str(tmp_path), "--format", "html", "--reference", "--bootstrap", "0", "--out", str(html)])
    assert res.exit_code == 0, res.output
    assert "Δ paper" not in html.read_text()


def test_the_caption_states_the_rule_with_each_tables_backbones(tmp_path):
    for seed in (0, 1):
        make_run(tmp_path, "intclip", seed, backbone="ViT-B-32")
        make_run(tmp_path, "intclip:no-sa", seed, backbone="ViT-B-32")
    tables = _tables(tmp_path)
    assert (f"Δ (reproduced minus paper, test Macro F1) {RULE} (the paper's: RN101 for DualCoOp, Query2Label, HLEG, "
            "LabCR, PIP-Net and IntCLIP (RN101); ViT-B-32 for IntCLIP (ViT-B/32)).") in _caption(tables[("table1", "ViT-B-32")])
    assert f"Δ (reproduced minus paper, test Macro F1) {RULE} (the paper's: RN101)." in _caption(tables[("table2", "ViT-B-32")])
    assert f"Δ (reproduced minus paper, val Macro F1) {RULE} (the paper's: ViT-B-32)." in _caption(tables[("table6b", "ViT-B-32")])
    # Table 2 on ViT-B-32: the paper's ablations are RN101, so no Δ even for the full IntCLIP
    assert tables[("table2", "ViT-B-32")].delta_columns == [] and tables[("table1", "ViT-B-32")].delta_columns == [0]
    tex = to_latex(list(tables.values()))
    assert r"$\Delta$ (reproduced minus paper, val Macro F1) is printed only against the paper" in tex


def test_table_6b_has_the_papers_rows_beside_the_reproduced_one(tmp_path):
    for seed in (0, 1):
        make_run(tmp_path, "intclip", seed, backbone="ViT-B-32", val={"macro_f1": 0.43, "micro_f1": 0.50, "samples_f1": 0.52})
        make_run(tmp_path, "dualcoop", seed, backbone="RN101")  # an Intentonomy group without IntCLIP: no Table 6b
    tables = layout.paper_tables(_summary(tmp_path), reference=True)
    assert sorted((t.key, t.info["backbone"]) for t in tables) == [("table1", "RN101"), ("table1", "ViT-B-32"), ("table6b", "ViT-B-32")]
    six_b = next(t for t in tables if t.key == "table6b")
    assert six_b.title == "Generalization of HCI (the paper's Table 6b): Intentonomy, backbone ViT-B-32"
    assert [(c.block, c.label) for c in six_b.columns] == [("Val", "Macro F1"), ("Val", "Micro F1"), ("Val", "Samples F1")]
    assert [r.label for r in six_b.rows if not r.reference] == ["IntCLIP (HCI)"]  # no variant is HCI-FG, HLEG is not here
    assert [r.label for r in six_b.rows if r.reference] == ["IntCLIP (HCI)", "IntCLIP (HCI-FG)", "HLEG [33]", "HLEG [33] + HCI"]
    assert [c.mean for c in _row(six_b, "HLEG [33] + HCI", reference=True).cells] == [36.47, 48.2, 48.64]
    assert [c.mean for c in _row(six_b, "IntCLIP (HCI)").cells] == pytest.approx([43.0, 50.0, 52.0])
    assert "HLEG [33] (with or without HCI) is not implemented in the harness" in _caption(six_b)
    tex = to_latex(tables)
    assert _cells(tex, "HLEG [33] + HCI")[1:] == ["-", "36.47", "48.20", "48.64", ""]
    assert _cells(tex, "IntCLIP (HCI)")[-1] == "+1.45"  # 43.00 - 41.55
    assert "(the paper's Table 6b)" not in to_latex(layout.paper_tables(_summary(tmp_path)))  # only with --reference
    html = tmp_path / "report.html"
    res = CliRunner().invoke(app, ["report", "--results", str(tmp_path), "--format", "html", "--reference", "--bootstrap", "0", "--out", str(html)])
    assert res.exit_code == 0, res.output
    page = html.read_text()
    assert "Generalization of HCI (the paper&#39;s Table 6b)" in page and "HLEG [33] + HCI" in page and "+1.45" in page


def test_reproduce_plans_table_6b_with_the_runs_of_table_1(tmp_path):
    from bench.workflows.reproduce import INTCLIP_ECCV2024, Job, make_plan

    assert Job("6b", ("intclip", "hleg", "hleg:hci"), ("intentonomy",), "ViT-B-32") in INTCLIP_ECCV2024.jobs
    assert "6b" in INTCLIP_ECCV2024.tables
    results = {"paths.results": str(tmp_path / "results")}
    alone = make_plan(None, INTCLIP_ECCV2024, ["6b"], "paper", results).rows
    assert [(r.table, r.backbone, r.method, r.runs, r.shared) for r in alone] == [
        ("6b", "ViT-B-32", m, 3, None) for m in ("intclip", "hleg", "hleg:hci")]
    plan = make_plan(None, INTCLIP_ECCV2024, ["1", "6b"], "paper", results)
    six_b = {r.method: r.shared for r in plan.rows if r.table == "6b"}
    # IntCLIP (HCI) is Table 1's ViT-B/32 IntCLIP: counted once; HLEG on ViT-B/32 and HLEG + HCI are 6b's own
    assert six_b == {"intclip": "1", "hleg": None, "hleg:hci": None}
    table1 = sum(r.runs for r in plan.rows if r.table == "1")
    assert plan.runs == table1 + 6


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed (.ci/run installs it)")
def test_table_6b_fits_a_two_column_article(tmp_path):
    for seed in (0, 1):
        make_run(tmp_path / "results", "intclip", seed, backbone="ViT-B-32")
    (tmp_path / "tables.tex").write_text(to_latex(layout.paper_tables(_summary(tmp_path / "results"), reference=True)))
    _two_column_article(tmp_path)
