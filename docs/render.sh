#!/usr/bin/env bash
# Regenerate the README's pictures from a result store (default: ./results, as `bench run` leaves it):
#   docs/table1.png            Table 1, one column wide (`bench report --format latex --columns test`), compiled by
#                              pdflatex in a two-column 10 pt article and rasterised by pdftoppm
#   docs/leaderboard.png       the leaderboard index page in headless Chromium at 1280 px (second regeneration)
#   docs/score-vs-params.svg   the HTML report's plot of test score against learnable parameters
# Needs Debian's texlive-latex-recommended, poppler-utils and chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
results=${1:-results}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

bench report --results "$results" --format latex --columns test --out "$work/tables.tex"
printf '%s\n' '\documentclass[10pt,twocolumn]{article}' '\usepackage{booktabs}' '\usepackage{graphicx}' \
    '\pagestyle{empty}' '\begin{document}' '\input{tables}' '\end{document}' > "$work/paper.tex"
(cd "$work" && pdflatex -interaction=nonstopmode -halt-on-error paper.tex >/dev/null)
if grep -q "Overfull" "$work/paper.log"; then echo "Table 1 overflows its column" >&2; exit 1; fi
pdftoppm -png -r 200 -f 1 -l 1 -singlefile "$work/paper.pdf" "$work/table1"
python - "$work/table1.png" docs/table1.png <<'PY'
import sys
from PIL import Image, ImageOps
page = Image.open(sys.argv[1]).convert("RGB")
box = ImageOps.invert(page).getbbox()  # the printed area
ImageOps.expand(page.crop(box), border=24, fill="white").save(sys.argv[2])
PY

for _ in 1 2; do bench leaderboard --no-run --results "$results" --site "$work/site" --set leaderboard.bootstrap=200 || true; done
chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
    --disable-sync --no-first-run --user-data-dir="$work/chromium" --hide-scrollbars --window-size=1280,1100 \
    --screenshot=docs/leaderboard.png "file://$work/site/index.html" 2>/dev/null
python - "$results" docs/score-vs-params.svg <<'PY'
import sys
from bench.reports import html, plots, tables
records, _ = tables.load_results(sys.argv[1])
summary = tables.summarise(tables.results_frame(records))
info = html.groups_of(summary)[0]
colors = plots.method_colors(summary["method"])
metric = "macro_f1" if info["task"] == "multilabel" else "accuracy"
open(sys.argv[2], "w").write(plots.params_plot(info, summary, metric, colors, html.display_names(summary)))
PY
ls -l docs/table1.png docs/leaderboard.png docs/score-vs-params.svg
