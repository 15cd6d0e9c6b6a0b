"""Publication tables from a hand-made result store: LaTeX (compiled with pdflatex), bold/underline placement,
the paper's reference rows and the reproduced-minus-paper column, ablation and emotion tables, the CLI."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from bench.cli.app import app
from bench.reports import compare, layout, tables
from bench.store import collection
from bench.reports.latex import escape, to_latex
from tests.conftest import build_store, make_run

# Chosen test/val values (fractions) per method; every seed gets the same, so std = 0 and the ranking is exact.
VALUES = {
    "intclip": {"test": {"macro_f1": 0.40, "micro_f1": 0.50}, "val": {"macro_f1": 0.38}},
    "dualcoop": {"test": {"macro_f1": 0.38, "micro_f1": 0.52}, "val": {"macro_f1": 0.41}},
    "linear-probe": {"test": {"macro_f1": 0.30, "micro_f1": 0.45}, "val": {"macro_f1": 0.39}},
}


def _store(root: Path, extra_methods=(), seeds=(0, 1)) -> Path:
    build_store(root, VALUES, seeds, per_run=lambda m, s: {**VALUES[m], "params": (15_751_809, 57_000_000)})
    build_store(root, extra_methods, seeds, test={"macro_f1": 0.35}, val={"macro_f1": 0.36})
    return root


def _summary(root: Path, bootstrap: int = 0):
    records, bad = collection.load_results(root)
    assert not bad
    summary = collection.summarise(collection.results_frame(records))
    return compare.add_significance(summary, records, root, bootstrap) if bootstrap else summary


def _cells(tex: str, label: str) -> list[str]:
    line = next(line for line in tex.splitlines() if line.startswith(label + " &") or line.startswith(label + "$^\\dagger$ &"))
    assert line.endswith(" \\\\")
    raw = [c.strip() for c in line.removesuffix(" \\\\").split(" & ")]
    return raw[:2] + _joined_numbers(raw[2:])


def _joined_numbers(cells: list[str]) -> list[str]:
    """A metric is three tabular cells (integer part with the point, fraction, spread): one logical cell again, as
    written before the split ("\\textbf{40.00}{\\scriptsize$\\pm$0.10}", "-" when missing). Delta cells follow."""
    out, i = [], 0
    while i < len(cells):
        cell = cells[i]
        whole = re.fullmatch(r"(?:\\(textbf|underline)\{)?(\d+)\.\}?", cell)
        if cell == r"\multicolumn{3}{c}{--}":
            out.append("-")
            i += 1
        elif whole is None:  # a delta (or an empty delta cell)
            out.append(cell)
            i += 1
        else:
            frac, spread = cells[i + 1 : i + 3]
            mark = whole[1]
            number = rf"\{mark}{{{whole[2]}.{frac[len(mark) + 2:-1]}}}" if mark else f"{whole[2]}.{frac}"
            out.append(number + spread)
            i += 3
    return out


def _two_column_article(folder: Path, after: str = "Text.") -> str:
    """Compile ``folder/tables.tex`` \\input into a two-column 10 pt article (``after``: what follows it); assert
    that pdflatex succeeds with no overfull box and no float too large; return the log."""
    (folder / "paper.tex").write_text("\n".join([
        r"\documentclass[10pt,twocolumn]{article}", r"\usepackage{booktabs}", r"\usepackage{graphicx}",
        r"\pagestyle{empty}", r"\begin{document}", r"\input{tables}", after, r"\end{document}", ""]))
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"], cwd=folder,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:]
    log = (folder / "paper.log").read_text(errors="replace")
    assert "Overfull" not in log and "Float too large" not in log, log[log.find("Overfull"):][:500]
    return log


def test_bold_best_and_underlined_second_follow_the_numbers(tmp_path):
    tex = to_latex(layout.paper_tables(_summary(_store(tmp_path))))
    # columns: label, #P, test macro, test micro, test samples, test mAP, val macro, ...
    intclip, dualcoop, probe = (_cells(tex, m) for m in ("intclip", "dualcoop", "linear-probe"))
    assert intclip[2].startswith(r"\textbf{40.00}") and dualcoop[2].startswith(r"\underline{38.00}") and probe[2].startswith("30.00")
    assert dualcoop[3].startswith(r"\textbf{52.00}") and intclip[3].startswith(r"\underline{50.00}") and probe[3].startswith("45.00")
    assert dualcoop[6].startswith(r"\textbf{41.00}") and probe[6].startswith(r"\underline{39.00}") and intclip[6].startswith("38.00")
    assert intclip[1] == "15.8"  # #P in millions
    assert r"{\scriptsize$\pm$0.00}" in intclip[2]  # mean +- std over the two seeds
    # families in the paper's order: reference points, multi-label methods, IntCLIP
    order = [tex.index(r"\textit{" + f + "}") for f in ("Reference points", "Multi-label methods", "IntCLIP")]
    assert order == sorted(order)


def test_ties_share_the_mark_and_paper_rows_are_never_marked(tmp_path):
    _store(tmp_path)
    make_run(tmp_path, "query2label", 0, test={"macro_f1": 0.40}, val={"macro_f1": 0.2})
    tex = to_latex(layout.paper_tables(_summary(tmp_path), reference=True))
    assert _cells(tex, "query2label")[2].startswith(r"\textbf{40.00}") and _cells(tex, "intclip")[2].startswith(r"\textbf{40.00}")
    assert _cells(tex, "dualcoop")[2].startswith(r"\underline{38.00}")
    paper = _cells(tex, "LabCR")
    assert paper[1:4] == ["56.2", "34.63", "48.51"] and not any("textbf" in c or "underline" in c for c in paper)


def test_reference_rows_and_reproduced_minus_paper(tmp_path):
    tex = to_latex(layout.paper_tables(_summary(_store(tmp_path)), reference=True))
    # IntCLIP RN101 in the paper: test macro F1 38.40 -> 40.00 - 38.40 = +1.60; DualCoOp 31.06 -> 38.00 - 31.06 = +6.94
    assert _cells(tex, "intclip")[-1] == "+1.60"
    assert _cells(tex, "dualcoop")[-1] == "+6.94"
    assert _cells(tex, "linear-probe")[-1] == ""  # no paper counterpart
    assert _cells(tex, "Query2Label")[:4] == ["Query2Label", "82.4", "32.12", "44.64"]
    assert _cells(tex, "Intentonomy")[5] == "-"  # the paper prints no mAP for it
    assert r"\textit{Paper: IntCLIP}" in tex and "reproduced minus paper" in tex


def test_reference_on_a_dataset_the_paper_lacks_says_so(tmp_path):
    make_run(tmp_path, "intclip", 0, dataset="synthetic", backbone="tiny-clip")
    (table,) = layout.paper_tables(_summary(tmp_path), reference=True)
    from bench.reports.escape import UNICODE_SYMBOLS, render_caption

    caption = render_caption(table.caption, UNICODE_SYMBOLS)
    assert not any(r.reference for r in table.rows) and "no numbers for dataset 'synthetic'" in caption


def test_ablation_tables_appear_only_with_their_variants(tmp_path):
    _store(tmp_path, extra_methods=("intclip:no-sa", "intclip:single-none"))
    paper = layout.paper_tables(_summary(tmp_path), reference=True)
    keys = [t.key for t in paper]
    assert keys == ["table1", "table2", "table4", "table5"]  # no Table 3 variant ran; no 6b off ViT-B/32
    table2 = paper[1]
    assert [r.label for r in table2.rows if not r.reference] == ["w/o SA", "Full IntCLIP"]
    # paper Table 2: w/o SA 35.15 -> 35.00 - 35.15 = -0.15
    assert table2.rows[0].deltas[0] == pytest.approx(35.0 - 35.15)
    assert "intclip:no-sa" not in [r.method for r in paper[0].rows]  # ablations stay out of Table 1
    assert [r.label for r in paper[3].rows] == ["Add", "SA (IntCLIP)"]
    assert "$-$0.15" in to_latex(paper)


def test_emotion_accuracy_table_with_paper_rows(tmp_path):
    for dataset, acc in (("emotionroi", 0.70), ("fi", 0.80)):
        for seed in (0, 1):
            make_run(tmp_path, "intclip", seed, dataset=dataset, task="multiclass", test={"accuracy": acc})
            make_run(tmp_path, "linear-probe", seed, dataset=dataset, task="multiclass", test={"accuracy": acc - 0.1})
    (table,) = layout.paper_tables(_summary(tmp_path), reference=True)
    assert table.key == "table6a" and [c.block for c in table.columns] == ["EmotionROI", "FI"]
    intclip = next(r for r in table.rows if r.label == "intclip")
    # paper IntCLIP (R101): EmotionROI 71.05, FI 78.93
    assert intclip.deltas == pytest.approx({0: 70.0 - 71.05, 1: 80.0 - 78.93})
    assert table.best == {0: {table.rows.index(intclip)}, 1: {table.rows.index(intclip)}}
    assert {"ECWA", "CGLF-Net", "IntCLIP (R101)"} <= {r.label for r in table.rows if r.reference}


def test_different_manifests_make_different_tables(tmp_path):
    make_run(tmp_path, "intclip", 0, manifest="a" * 64, test={"macro_f1": 0.4})
    make_run(tmp_path, "intclip", 1, manifest="b" * 64, test={"macro_f1": 0.2})
    paper = layout.paper_tables(_summary(tmp_path))
    assert sorted(t.rows[0].cells[0].mean for t in paper) == pytest.approx([20.0, 40.0])
    assert {t.info["manifest_sha256"] for t in paper} == {"a" * 64, "b" * 64}


def _test_values(root, method, metric="macro_f1"):
    return [r.metrics.test[metric] for r in collection.load_results(root)[0] if r.method.name == method]


def test_significance_compares_against_the_declared_reference(tmp_path):
    """The default test is the seed-level t-test against the declared reference (intclip), never the val-best."""
    from scipy import stats

    for seed in (0, 1, 2):
        make_run(tmp_path, "intclip", seed, quality=0.6, config={"lr": 1})
        make_run(tmp_path, "intclip-official", seed, quality=0.6, config={"lr": 1}, val={"macro_f1": 0.99})  # best on val
        make_run(tmp_path, "label-prior", seed, quality=0.0)
    summary = _summary(tmp_path, bootstrap=200).set_index("method")
    assert summary.index[summary["reference"]].tolist() == ["intclip"]  # declared, although another is best on val
    assert set(summary["significance_test"]) == {"seed-t"} and set(summary["significance_reference"]) == {"intclip"}
    ref = {m: _test_values(tmp_path, "intclip", m) for m in ("macro_f1", "mAP")}
    raw = {}
    for metric in ("macro_f1", "mAP"):
        assert summary.loc["intclip-official", f"test_{metric}_diff"] == 0.0  # the very same scores
        for other in ("intclip-official", "label-prior"):
            expected = stats.ttest_ind(ref[metric], _test_values(tmp_path, other, metric), equal_var=False, alternative="greater").pvalue
            assert summary.loc[other, f"test_{metric}_p_raw"] == pytest.approx(expected)
            raw[other] = expected
        assert summary.loc["intclip-official", f"test_{metric}_p_raw"] == pytest.approx(0.5)
        # Holm over the two comparisons: the smallest raw p doubles, the other is max(itself, that)
        assert summary.loc["label-prior", f"test_{metric}_p_vs_ref"] == pytest.approx(2 * raw["label-prior"])
        assert not summary.loc["label-prior", f"test_{metric}_p_bound"]  # a t-test has no resample floor
        assert summary.loc["intclip", f"test_{metric}_p_text"] == "ref"
        assert pd.isna(summary.loc["intclip", f"test_{metric}_p_vs_ref"])
    assert summary.loc["label-prior", "test_macro_f1_p_text"] == f"{min(1.0, 2 * raw['label-prior']):.3f}" or raw["label-prior"] < 0.0005
    note = summary["significance_note"].iloc[0]
    assert "declared reference intclip" in note and "never chosen on val or test" in note
    assert "smallest difference this test detects with power 0.8" in note and "With 3 seeds" in note
    md = tables.to_markdown(summary.reset_index())
    assert md.count("| ref |") == 1 and "t-test" in md and "NaN" not in md and "nan" not in md
    (table,) = layout.paper_tables(summary.reset_index())  # the LaTeX/HTML caption says it too
    assert "smallest difference this test detects with power 0.8" in "".join(map(str, table.caption))


def test_significance_without_the_declared_reference_says_why(tmp_path):
    for seed in (0, 1):
        make_run(tmp_path, "dualcoop", seed, quality=0.6)
        make_run(tmp_path, "label-prior", seed, quality=0.0)
    summary = _summary(tmp_path, bootstrap=100)
    assert not summary["reference"].any()
    assert set(summary["test_macro_f1_p_text"]) == {"-"}
    assert "No p-values: the declared reference intclip has no runs in this table." in tables.to_markdown(summary)
    summary = compare.add_significance(collection.summarise(collection.results_frame(collection.load_results(tmp_path)[0])),
                                      collection.load_results(tmp_path)[0], tmp_path, 100, reference="dualcoop")
    assert summary.set_index("method").loc["label-prior", "test_macro_f1_p_text"] not in ("-", "ref")


def test_single_runs_get_no_seed_test_and_the_bootstrap_prints_floor_bounds(tmp_path):
    """Two single runs: the default test has nothing calibrated to offer and says so; the bootstrap test (one run
    each: the paired bootstrap over test images) gives p at its floor of 1 / (n_boot + 1), a bound, printed as such
    after Holm's correction."""
    make_run(tmp_path, "linear-probe", 0, quality=0.8)
    make_run(tmp_path, "label-prior", 0, quality=0.0)
    make_run(tmp_path, "zeroshot", 0, quality=0.0)
    records = collection.load_results(tmp_path)[0]
    summary = compare.add_significance(collection.summarise(collection.results_frame(records)), records, tmp_path, 200,
                                      reference="linear-probe").set_index("method")
    assert set(summary.loc[["label-prior", "zeroshot"], "test_macro_f1_p_text"]) == {"n/a (one run each)"}
    assert summary.loc[["label-prior", "zeroshot"], "test_macro_f1_p_vs_ref"].isna().all()
    summary = compare.add_significance(collection.summarise(collection.results_frame(records)), records, tmp_path, 200,
                                      reference="linear-probe", test="bootstrap").set_index("method")
    for other in ("label-prior", "zeroshot"):
        assert summary.loc[other, "test_macro_f1_p_raw"] == pytest.approx(1 / 201)
        assert summary.loc[other, "test_macro_f1_p_bound"]
        assert summary.loc[other, "test_macro_f1_p_text"] == "<= 0.010"  # 2/201 = 0.00995, rounded up


def test_bootstrap_test_on_identical_methods(tmp_path):
    for seed in (0, 1):
        make_run(tmp_path, "intclip", seed, quality=0.6, config={"lr": 1})
        make_run(tmp_path, "intclip-official", seed, quality=0.6, config={"lr": 1})  # the very same scores
        make_run(tmp_path, "label-prior", seed, quality=0.0)
    records = collection.load_results(tmp_path)[0]
    summary = compare.add_significance(collection.summarise(collection.results_frame(records)), records, tmp_path, 200,
                                      test="bootstrap").set_index("method")
    assert summary.index[summary["reference"]].tolist() == ["intclip"]
    for metric in ("macro_f1", "mAP"):  # each resample recomputes both
        # same scores: only the seed resampling moves the difference, symmetric around 0
        assert summary.loc["intclip-official", f"test_{metric}_p_vs_ref"] >= 0.5
        assert summary.loc["intclip-official", f"test_{metric}_diff"] == 0.0
        assert summary.loc["label-prior", f"test_{metric}_p_raw"] < 0.01
        # Holm over the two comparisons: the smallest raw p doubles
        assert summary.loc["label-prior", f"test_{metric}_p_vs_ref"] == pytest.approx(2 * summary.loc["label-prior", f"test_{metric}_p_raw"])
        assert pd.isna(summary.loc["intclip", f"test_{metric}_p_vs_ref"])
    assert set(summary["bootstrap_n"]) == {200} and set(summary["bootstrap_seed"]) == {0}
    assert "hierarchical bootstrap" in summary["significance_note"].iloc[0]


def test_escape():
    assert escape("a_b & 50% #1 {x} ~^\\") == r"a\_b \& 50\% \#1 \{x\} \textasciitilde{}\textasciicircum{}\textbackslash{}"


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed (.ci/run installs it)")
def test_standalone_latex_compiles_with_pdflatex(tmp_path):
    results = _store(tmp_path / "results", extra_methods=("intclip:no-sa",))
    out = tmp_path / "tables.tex"
    res = CliRunner().invoke(app, ["report", "--results", str(results), "--format", "latex", "--reference", "--standalone", "--bootstrap", "50", "--out", str(out)])
    assert res.exit_code == 0, res.output
    tex = out.read_text()
    assert tex.startswith(r"\documentclass") and r"\usepackage{booktabs}" in tex and tex.count(r"\begin{tabular}") == 3
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", out.name], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "tables.pdf").stat().st_size > 1000
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", "-layout", "tables.pdf", "-"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
        assert re.search(r"intclip†?\s+15\.8\s+40\.00", text) and "Query2Label" in text


def test_report_cli_rejects_bad_options(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["report", "--results", str(tmp_path), "--format", "pdf"])
    assert res.exit_code == 2 and "'pdf' is not one of" in res.output
    res = runner.invoke(app, ["report", "--results", str(tmp_path), "--format", "html", "--standalone"])
    assert res.exit_code != 0 and "--standalone" in str(res.exception or res.output)


@pytest.mark.slow
def test_reports_and_the_site_never_import_torch(tmp_path):
    import sys

    results = _store(tmp_path / "results")
    code = f"""
import sys
from typer.testing import CliRunner
from bench.cli.app import app
runner = CliRunner()
for fmt in ("md", "csv", "latex", "html"):
    assert runner.invoke(app, ["report", "--results", r"{results}", "--format", fmt, "--bootstrap", "20", "--out", r"{tmp_path}/r." + fmt]).exit_code == 0
res = runner.invoke(app, ["leaderboard", "--no-run", "--results", r"{results}", "--site", r"{tmp_path}/site", "--set", 'leaderboard.methods=["intclip"]', "--set", 'leaderboard.datasets=["intentonomy"]', "--set", 'leaderboard.backbone="RN101"'])
assert res.exit_code == 0, res.output
print(sorted(m for m in ("torch", "open_clip", "timm", "torchvision") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _declare(results: Path, method: str, **fields) -> None:
    """Rewrite the stored records of ``method`` as a harness that declares ``fields`` would write them."""
    import json

    for path in (results / "runs").glob("*/result.json"):
        data = json.loads(path.read_text())
        if data["method"]["name"] == method:
            for key, value in fields.items():
                section, name = key.split(".")
                data[section][name] = value
            path.write_text(json.dumps(data))


def test_a_new_method_lands_in_the_family_it_declares_and_datasets_choose_their_main_metric(tmp_path):
    for seed in (0, 1):
        make_run(tmp_path, "intclip", seed, test={"macro_f1": 0.40}, val={"macro_f1": 0.40, "mAP": 0.30}, quality=0.2)
        make_run(tmp_path, "prior-knn", seed, test={"macro_f1": 0.30}, val={"macro_f1": 0.30, "mAP": 0.50}, quality=0.6)
    (table,) = layout.paper_tables(_summary(tmp_path))
    assert next(r for r in table.rows if r.label == "prior-knn").family == "Other methods"  # an old record: unknown
    _declare(tmp_path, "prior-knn", **{"method.family": "Multi-label methods", "method.display_name": "Prior kNN"})
    (table,) = layout.paper_tables(_summary(tmp_path))
    assert [(r.label, r.family) for r in table.rows] == [("Prior kNN", "Multi-label methods"), ("intclip", "IntCLIP")]  # its display name
    # the reference row is the declared one (intclip) whatever the scores; the p-values follow the dataset's main
    # metric: macro F1 by default, mAP where the dataset says so
    summary = _summary(tmp_path, bootstrap=50).set_index("method")
    assert summary.loc["intclip", "reference"] and not summary.loc["prior-knn", "reference"]
    assert "test_macro_f1_p_text" in summary and "p vs ref (Macro F1)" in tables.to_markdown(summary.reset_index())
    for method in ("intclip", "prior-knn"):
        _declare(tmp_path, method, **{"dataset.main_metric": "mAP"})
    summary = _summary(tmp_path, bootstrap=50).set_index("method")
    assert summary.loc["intclip", "reference"] and set(summary["main_metric"]) == {"mAP"}
    assert summary.loc["intclip", "test_mAP_p_text"] == "ref" and "p vs ref (mAP)" in tables.to_markdown(summary.reset_index())
    from bench.reports.site import snapshot

    entries = snapshot(summary.reset_index(), "auto", "test")
    assert {e["metric"] for e in entries.values()} == {"test mAP"}


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed (.ci/run installs it)")
def test_latex_is_paper_ready_in_a_two_column_article(tmp_path):
    """Was: registry slugs as names, "± 0.00" on single runs, "0.00" M for the linear probe, narrow tables scaled up
    by \\resizebox, and the \\input version 88.8 pt too wide for a two-column 10 pt article (the Δ column fell off)."""
    from bench.store import store

    results = tmp_path / "results"
    names = {"intclip": "IntCLIP", "intclip-official": "IntCLIP (released code)", "dualcoop": "DualCoOp",
             "linear-probe": "CLIP linear probe"}
    params = {"intclip": (409_000, 57_000_000), "intclip-official": (505_000, 57_000_000),
              "dualcoop": (25_000, 57_000_000), "linear-probe": (1_300, 38_000_000)}
    for method, display in names.items():
        for seed in ((0,) if method == "dualcoop" else (0, 1)):
            rec = make_run(results, method, seed, params=params[method], quality=0.5 + 0.05 * seed)
            rec.method.display_name = display
            run_dir = store.runs_dir(results) / rec.run_id
            store.write_result(run_dir, rec, store.read_scores(run_dir))
    res = CliRunner().invoke(app, ["report", "--results", str(results), "--format", "latex", "--reference",
                                   "--bootstrap", "0", "--out", str(tmp_path / "tables.tex")])
    assert res.exit_code == 0, res.output
    tex = (tmp_path / "tables.tex").read_text()
    for display in names.values():
        assert f"\n{display} &" in tex or f"\n{display}$^\\dagger$ &" in tex, display
    assert "\nlinear-probe &" not in tex and "\nintclip-official &" not in tex
    assert _cells(tex, "CLIP linear probe")[1] == "0.0013" and _cells(tex, "DualCoOp")[1] == "0.025"
    assert not any("pm" in c for c in _cells(tex, "DualCoOp")[2:])  # one run: no spread printed
    assert any("pm" in c for c in _cells(tex, "IntCLIP")[2:])
    assert r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}" in tex
    _two_column_article(tmp_path)


def test_columns_and_metrics_choose_the_paper_tables_columns(tmp_path):
    results = _store(tmp_path / "results", extra_methods=("intclip:no-sa",))
    runner = CliRunner()
    res = runner.invoke(app, ["report", "--results", str(results), "--format", "latex", "--bootstrap", "0",
                              "--columns", "val", "--metrics", "mAP,macro_f1"])
    assert res.exit_code == 0, res.output
    tex = res.stdout
    # Table 1, 2 and 5 (the no-sa variant is in both): val only, mAP then Macro F1, in that order
    assert tex.count(r"\multicolumn{6}{c}{Val}") == 3 and "Test" not in tex
    header = next(line for line in tex.splitlines() if line.startswith("Method &"))
    assert header == r"Method & \#P (M) & \multicolumn{3}{c}{mAP} & \multicolumn{3}{c}{Macro F1} \\"
    # dualcoop's val macro F1 (0.41) is the best of the column, intclip's 0.38 the last
    spread = r"{\scriptsize$\pm$0.00}"  # two seeds, the same values
    assert _cells(tex, "dualcoop")[3] == r"\textbf{41.00}" + spread and _cells(tex, "intclip")[3] == "38.00" + spread
    # two number columns: a single-column float; the default Table 1 (eight columns) spans both columns
    assert tex.count(r"\begin{table}[t]") == 3 and r"\begin{table*}" not in tex
    default = runner.invoke(app, ["report", "--results", str(results), "--format", "latex", "--bootstrap", "0"]).stdout
    assert r"\begin{table*}[t]" in default and r"\begin{table}[t]" in default  # Table 1 both, Table 2 (test) one
    # bad choices name the value and what is allowed
    res = runner.invoke(app, ["report", "--results", str(results), "--format", "latex", "--metrics", "macro_f1,top5"])
    assert res.exit_code == 1 and "metrics 'top5': expected some of macro_f1, micro_f1, samples_f1, mAP" in str(res.exception)
    res = runner.invoke(app, ["report", "--results", str(results), "--format", "latex", "--columns", "train"])
    assert res.exit_code == 2 and "'train' is not one of" in res.output
    res = runner.invoke(app, ["report", "--results", str(results), "--format", "md", "--columns", "test"])
    assert res.exit_code == 1 and "--columns and --metrics apply to --format latex and html" in str(res.exception)
    # the Python API takes the same choices
    from bench.api import report

    assert report(results, format="latex", bootstrap=0, columns="val", metrics=["mAP", "macro_f1"]) == tex


def test_numbers_align_on_their_decimal_point(tmp_path):
    """Each metric is an integer cell ending in the point (right-aligned) and a fraction cell (left-aligned),
    dcolumn's idea with no package: 9.50 and 40.00 line up at the point, and the spread sits after the fraction."""
    make_run(tmp_path, "intclip", 0, test={"macro_f1": 0.095})
    make_run(tmp_path, "intclip", 1, test={"macro_f1": 0.095})
    make_run(tmp_path, "dualcoop", 0, test={"macro_f1": 0.40})
    make_run(tmp_path, "dualcoop", 1, test={"macro_f1": 0.42})
    tex = to_latex(layout.paper_tables(_summary(tmp_path), options=layout.TableOptions("test", ("macro_f1",))))
    assert r"\begin{tabular}{lrr@{}l@{\,}l}" in tex
    assert r"\textbf{41.} & \textbf{00} & {\scriptsize$\pm$1.41}" in tex
    assert next(line for line in tex.splitlines() if line.startswith("intclip &")).endswith(
        r"& \underline{9.} & \underline{50} & {\scriptsize$\pm$0.00} \\")


def _dagger_shown(table) -> tuple[bool, bool]:
    from bench.reports.escape import DAGGER

    return DAGGER in table.caption, any(r.dagger for r in table.rows)


def test_the_dagger_is_explained_exactly_when_a_row_carries_it(tmp_path):
    for seed in (0, 1, 2):  # the default test needs 3 seeds a side
        make_run(tmp_path, "intclip", seed, quality=0.6, config={"lr": 1})
        make_run(tmp_path, "intclip-official", seed, quality=0.59, config={"lr": 1})  # a little below: not significantly
        make_run(tmp_path, "label-prior", seed, quality=0.0)  # far below: significantly
        make_run(tmp_path, "query2label", seed, quality=0.7)  # above the reference: the one-sided test says nothing
        make_run(tmp_path, "intclip:no-sa", seed, quality=0.6, config={"lr": 1})
    summary = _summary(tmp_path, bootstrap=200).set_index("method")
    assert 0 < summary.loc["intclip-official", "test_macro_f1_diff"] and summary.loc["intclip-official", "test_macro_f1_p_vs_ref"] >= 0.05
    assert summary.loc["label-prior", "test_macro_f1_p_vs_ref"] < 0.05
    assert summary.loc["query2label", "test_macro_f1_diff"] < 0 and summary.loc["query2label", "test_macro_f1_p_vs_ref"] >= 0.05
    paper = layout.paper_tables(summary.reset_index())
    assert [t.key for t in paper] == ["table1", "table2", "table5"]
    assert [_dagger_shown(t) for t in paper] == [(True, True), (False, False), (False, False)]  # ablations: no p
    tex = to_latex(paper)
    captions = [line for line in tex.splitlines() if line.startswith(r"\caption{")]
    assert [r"$\dagger$" in c for c in captions] == [True, False, False]
    marked = [line.split(" & ")[0] for line in tex.splitlines() if r"$^\dagger$ &" in line]
    assert marked == ["intclip-official$^\\dagger$"]  # the copy that is not the declared reference (intclip)


@pytest.mark.skipif(not (shutil.which("pdflatex") and shutil.which("pdftoppm")), reason="pdflatex/pdftoppm not installed (.ci/run installs them)")
def test_single_column_table1_renders_inside_its_column(tmp_path):
    """`--columns test` Table 1 with the paper's rows and the Δ column in a two-column 10 pt article: pdflatex
    reports no overfull box, and on the rendered page (a PNG a person can open: tmp_path/page-1.png) every dark
    pixel of the table lies inside the left text column."""
    from PIL import Image

    results = _store(tmp_path / "results")
    out = tmp_path / "tables.tex"
    res = CliRunner().invoke(app, ["report", "--results", str(results), "--format", "latex", "--reference", "--bootstrap", "0",
                                   "--columns", "test", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_text().count(r"\begin{table}[t]") == 1
    # the caption's ± is LaTeX's (it was printed as the escaped text "$\pm$")
    assert r"Mean $\pm$ std over 2 seeds." in out.read_text() and r"\$\textbackslash{}pm\$" not in out.read_text()
    log = _two_column_article(tmp_path, r"\typeout{GEOMETRY \the\oddsidemargin\space\the\hoffset\space\the\columnwidth}")
    subprocess.run(["pdftoppm", "-png", "-r", "72", "-f", "1", "-l", "1", "paper.pdf", "page"], cwd=tmp_path, check=True, timeout=60)
    page = Image.open(next(tmp_path.glob("page-*1.png"))).convert("L")
    dark = page.point(lambda v: 255 if v < 128 else 0).getbbox()
    assert dark is not None
    # the left column, from LaTeX's own geometry (points; 72.27 pt = 1 in = 72 px here)
    odd, hoffset, column = (float(v) for v in re.search(r"GEOMETRY ([\d.]+)pt ([-\d.]+)pt ([\d.]+)pt", log).groups())
    start = (72.27 + odd + hoffset) * 72 / 72.27
    end = start + column * 72 / 72.27
    assert start - 2 <= dark[0] and dark[2] <= end + 2, (dark, start, end)
    assert dark[2] - dark[0] > 0.9 * (end - start)  # it does fill the column (drawn at all, and shrunk to it)


def test_learnable_parameters_print_as_a_paper_prints_them():
    from bench.reports.latex import params_text

    values = (0, 0.000012, 0.00078, 0.0013, 0.025, 0.409, 1.16, 82.4, None)
    assert [params_text(v) for v in values] == ["0", "0.000012", "0.00078", "0.0013", "0.025", "0.41", "1.16", "82.4", "-"]


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed (.ci/run installs it)")
def test_every_paper_table_fits_a_two_column_article(tmp_path):
    """Table 1, the four ablation tables and Table 6a, with the paper's rows and Δ, all `\\input` into a two-column
    10 pt article: pdflatex reports no overfull box and no float too large, and each table is in the PDF."""
    from bench.store import store
    from bench.reports.paper import ABLATIONS

    results = tmp_path / "results"
    variants = sorted({n for a in ABLATIONS for _, names, _ in a.rows for n in names})
    for method in ["label-prior", "zeroshot", "linear-probe", "dualcoop", "query2label", "intclip-official", *variants]:
        for seed in (0, 1):
            rec = make_run(results, method, seed, quality=0.4 + 0.01 * seed, params=(409_000, 57_000_000))
            if ":" in method:
                rec.method.display_name = f"IntCLIP ({method.split(':')[1]})"
            store.write_result(store.runs_dir(results) / rec.run_id, rec, store.read_scores(store.runs_dir(results) / rec.run_id))
    for dataset in ("emotionroi", "fi"):
        for method in ("zeroshot", "linear-probe", "intclip"):
            make_run(results, method, 0, dataset=dataset, task="multiclass", manifest=dataset[0] * 64)
    res = CliRunner().invoke(app, ["report", "--results", str(results), "--format", "latex", "--reference", "--bootstrap", "0",
                                   "--out", str(tmp_path / "tables.tex")])
    assert res.exit_code == 0, res.output
    tex = (tmp_path / "tables.tex").read_text()
    assert tex.count(r"\begin{tabular}") == 6  # Table 1, Tables 2-5, Table 6a (6b only on ViT-B/32: test_paper_reference)
    labels = re.findall(r"\\label\{([^}]*)\}", tex)
    assert len(labels) == 6 and len(set(labels)) == 6, labels  # \ref finds each table (LaTeX warns on a duplicate)
    log = _two_column_article(tmp_path)
    assert "multiply defined" not in log
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", "paper.pdf", "-"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
        for title in ("Main comparison", "Component ablation", "Class text", "Image encoder", "Fusion of the two branches", "Image emotion recognition"):
            assert title in text, title
