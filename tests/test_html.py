"""The HTML report in headless Chromium: it sorts by the clicked column as the numbers say and makes no request."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import app
from storegen import make_run

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
    assert not re.search(r"""(?:src|href)=["'](?!#|[a-z0-9-]+\.html)""", html)  # no external resource or link
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
    heads[0].click()  # text column: alphabetical
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
