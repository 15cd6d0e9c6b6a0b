"""The HTML report in headless Chromium: it sorts by the clicked column as the numbers say and makes no request."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli.app import app
from tests.conftest import make_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

# test micro F1 (fractions) chosen so that each column gives a different order
RUNS = {
    "intclip": {"macro_f1": 0.40, "micro_f1": 0.50},
    "dualcoop": {"macro_f1": 0.38, "micro_f1": 0.52},
    "linear-probe": {"macro_f1": 0.30, "micro_f1": 0.45},
    "label-prior": {"macro_f1": 0.20, "micro_f1": 0.47},
}


@pytest.fixture
def report_page(tmp_path) -> Path:
    results = tmp_path / "results"
    for method, test in RUNS.items():
        for seed in (0, 1):
            make_run(results, method, seed, test=test)
    out = tmp_path / "report.html"
    res = CliRunner().invoke(app, ["report", "--results", str(results), "--format", "html", "--bootstrap", "50", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_page_is_self_contained(report_page):
    html = report_page.read_text()
    assert "<script src" not in html and "<link" not in html and "@import" not in html
    assert not re.search(r"url\((?!#)", html)  # only the SVGs' own clip paths
    assert not re.search(r"""(?:src|href)=["'](?!#|[a-z0-9-]+\.html|data:)""", html)  # no external resource or link
    assert html.count("<svg") >= 2  # per-class bars and training curves, inline
    assert "cccccccccc" in html  # provenance: the runs' git sha


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _methods(driver) -> list[str]:
    rows = driver.find_elements("css selector", "table[data-table='table1'] tbody tr:not(.family)")
    return [r.get_attribute("data-method") for r in rows]


def test_clicking_a_header_sorts_by_its_numbers_and_no_request_leaves(browser, report_page):
    from selenium.webdriver.common.by import By

    url = report_page.resolve().as_uri()
    browser.get(url)
    assert _methods(browser) == ["label-prior", "linear-probe", "dualcoop", "intclip"]  # grouped: families in order
    heads = browser.find_elements(By.CSS_SELECTOR, "table[data-table='table1'] thead tr:last-child th")
    labels = [h.text.strip(" ↕▲▼") for h in heads]
    micro = heads[labels.index("Micro F1")]  # the first Micro F1 is the test block's
    micro.click()
    assert _methods(browser) == ["dualcoop", "intclip", "label-prior", "linear-probe"]  # 52 > 50 > 47 > 45
    assert micro.get_attribute("aria-sort") == "descending"
    micro.click()
    assert _methods(browser) == ["linear-probe", "label-prior", "intclip", "dualcoop"]
    heads[labels.index("Macro F1")].click()
    assert _methods(browser) == ["intclip", "dualcoop", "linear-probe", "label-prior"]  # 40 > 38 > 30 > 20
    heads[labels.index("Method")].click()  # text column: alphabetical
    assert _methods(browser) == ["dualcoop", "intclip", "label-prior", "linear-probe"]
    # bold best / underlined second in the page too
    best = browser.find_elements(By.CSS_SELECTOR, "table[data-table='table1'] tr[data-method='intclip'] td.best")
    assert best and best[0].text.startswith("40.00")

    requests = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requests.append(message["params"]["request"]["url"])
    assert requests and all(u == url or u.startswith("data:") for u in requests), requests
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources == []


@pytest.mark.slow
def test_one_colour_per_method_on_every_plot_and_page(tmp_path, monkeypatch):
    """Every plot draws a method in the colour the page (or the site) gives it: the per-class bars, the training
    curves, score against parameters and the history trend take one mapping, and each draws with it."""
    from bench.reports import plots, site
    from bench.store import collection

    colors = {"intclip": "#123456", "dualcoop": "#abcdef"}
    results = tmp_path / "results"
    for method in colors:
        make_run(results, method, 0, test=RUNS[method])
        make_run(results, method, 1, test=RUNS[method])
    records, _ = collection.load_results(results)
    summary = collection.summarise(collection.results_frame(records))
    info = dict(zip(collection.GROUP_KEYS, summary.loc[0, collection.GROUP_KEYS]))
    history = [{"stamp": s, "entries": {m: {"value": 40.0, "dataset": "intentonomy", "method": m, "metric": "test macro_f1"} for m in colors}} for s in ("a", "b")]
    drawn = {
        "per_class": plots.per_class_plot(info, records, {}, colors),
        "curves": plots.curves_plot(info, records, {}, colors),
        "params": plots.params_plot(info, summary, "macro_f1", colors),
        "history": plots.history_plot(history, "intentonomy", colors),
    }
    for name, svg in drawn.items():
        assert svg and "#123456" in svg and "#abcdef" in svg, name
        assert plots.PALETTE[0] not in svg, name  # nothing drawn in a colour of its own
    # a site's pages share one mapping: the overview's (score vs parameters only) and the dataset page's
    seen = []
    real = plots.params_plot
    monkeypatch.setattr(plots, "params_plot", lambda info, summary, metric, colors, names=None: seen.append(dict(colors)) or real(info, summary, metric, colors, names))
    make_run(results, "linear-probe", 0, dataset="fi", task="multiclass")
    records, _ = collection.load_results(results)
    summary = collection.summarise(collection.results_frame(records))
    site.build_site(tmp_path / "site", records, summary, tolerance=1.0)
    assert len(seen) == 4 and all(s == seen[0] for s in seen)  # index: 2 groups, then one page per dataset
    assert seen[0] == plots.method_colors(["linear-probe", "dualcoop", "intclip"])
    assert plots.method_colors(["intclip", "zeroshot"]) == plots.method_colors(["zeroshot", "intclip"])


def _table1_download(html: str, kind: str) -> str:
    from urllib.parse import unquote

    href = re.search(rf'download="table1-1\.{kind}" href="data:[^;]+;charset=utf-8,([^"]+)"', html).group(1)
    return unquote(href)


def test_ranks_and_downloads_carry_the_table_numbers(report_page):
    import io

    import pandas as pd

    html = report_page.read_text()
    ranks = dict(re.findall(r'data-method="([a-z-]+)">\s*<td class="rank" data-value="(\d*)"', html))
    assert ranks == {"label-prior": "4", "linear-probe": "3", "dualcoop": "2", "intclip": "1"}  # test macro F1
    frame = pd.read_csv(io.StringIO(_table1_download(html, "csv"))).set_index("method")
    assert frame.loc["intclip", "Test Macro F1"] == 40.0 and frame.loc["dualcoop", "Test Micro F1"] == 52.0
    assert frame.loc["intclip", "rank"] == 1 and frame.loc["label-prior", "n"] == 2
    rows = {r["method"]: r for r in json.loads(_table1_download(html, "json"))}
    assert rows["linear-probe"]["Test Macro F1"] == 30.0 and rows["linear-probe"]["family"] == "Reference points"
    assert 'download="runs.csv"' in html and "Test score against learnable parameters" in html


def test_tied_rows_share_a_rank():
    from bench.reports.layout import Cell, Column, PaperTable, Row, mark_best

    rows = [Row(m, "f", 1.0, [Cell(v)]) for m, v in (("a", 40.001), ("b", 38.0), ("c", 39.999), ("d", 20.0))]
    rows.append(Row("paper", "Paper", 1.0, [Cell(90.0)], reference=True))
    table = mark_best(PaperTable("table1", "t", [], [Column("Macro F1", "Test")], rows))
    assert table.ranks == {0: 1, 2: 1, 1: 3, 3: 4}  # 40.00 twice as printed; the paper row is not ranked


LB = ["--set", 'leaderboard.methods=["dualcoop","intclip","linear-probe","label-prior"]', "--set", 'leaderboard.datasets=["intentonomy"]',
      "--set", 'leaderboard.backbone="RN101"', "--set", "leaderboard.seeds=[0,1]", "--set", "leaderboard.bootstrap=0"]


@pytest.fixture
def leaderboard_site(tmp_path) -> Path:
    results, site = tmp_path / "results", tmp_path / "site"
    for method, test in RUNS.items():
        for seed in (0, 1):
            make_run(results, method, seed, test=test, params=(82_000_000 if method == "dualcoop" else 1_000, 1))
    for _ in range(2):  # two regenerations: the history has a trend
        res = CliRunner().invoke(app, ["leaderboard", "--no-run", "--results", str(results), "--site", str(site), *LB])
        assert res.exit_code == 0, res.output
    return site


@pytest.mark.slow
def test_the_leaderboard_overview_has_ranks_plots_trend_and_downloads(leaderboard_site):
    html = (leaderboard_site / "index.html").read_text()
    assert "Val" not in re.search(r"<thead>.*?</thead>", html, re.S).group(0)  # the overview: test split only
    assert html.count('<figure class="trend">') == 1 and "intentonomy: the leaderboard's primary metric" in html
    assert "Test score against learnable parameters" in html and 'download="table1-1.csv"' in html
    # #P as the LaTeX tables print it (it was "%.3f": 0.001 for 1,000 parameters, 82.000)
    assert '">0.0010</td>' in html and '">82.0</td>' in html and ">0.001</td>" not in html


@pytest.mark.parametrize("width", [1280, 800])
def test_pages_never_overflow_and_wide_tables_scroll_inside(browser, report_page, leaderboard_site, width):
    from selenium.webdriver.common.by import By

    browser.set_window_size(width, 900)
    for page in (report_page, leaderboard_site / "index.html", leaderboard_site / "intentonomy.html"):
        browser.get(page.resolve().as_uri())
        inner = browser.execute_script("return window.innerWidth")
        assert abs(inner - width) <= 20, inner
        overflow = browser.execute_script("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, (page.name, width, overflow)
        for wrapper in browser.find_elements(By.CSS_SELECTOR, "div.scroll"):
            last = wrapper.find_elements(By.CSS_SELECTOR, "thead tr:last-child th")[-1]
            browser.execute_script("arguments[0].scrollLeft = arguments[0].scrollWidth", wrapper)
            right = browser.execute_script("return arguments[0].getBoundingClientRect().right", last)
            assert right <= inner + 1, (page.name, width, last.text)  # the last column is reachable
    # at 800 px the report's Table 1 (test and val blocks) is wider than the page: it scrolls in its wrapper
    browser.get(report_page.resolve().as_uri())
    wrapper = browser.find_element(By.CSS_SELECTOR, "div.scroll")
    wide = browser.execute_script("return arguments[0].scrollWidth > arguments[0].clientWidth", wrapper)
    assert wide == (width == 800)
