#!/usr/bin/env bash
# Regenerate the README's pictures from a result store (default: ./results, as `bench run` leaves it):
#   docs/table1.png       page 1 of `bench report --format latex --standalone`, compiled by pdflatex (pdftoppm)
#   docs/leaderboard.png  the leaderboard index page in headless Chromium (second regeneration: change column)
# Needs Debian's texlive-latex-recommended, poppler-utils and chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
results=${1:-results}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

bench report --results "$results" --format latex --standalone --out "$work/tables.tex"
(cd "$work" && pdflatex -interaction=nonstopmode -halt-on-error tables.tex >/dev/null)
pdftoppm -png -r 120 -f 1 -l 1 -singlefile "$work/tables.pdf" "$work/table1"
python - "$work/table1.png" docs/table1.png <<'PY'
import sys
from PIL import Image, ImageOps
page = Image.open(sys.argv[1]).convert("RGB")
box = ImageOps.invert(page).getbbox()  # the printed area
ImageOps.expand(page.crop(box), border=24, fill="white").save(sys.argv[2])
PY

for _ in 1 2; do bench leaderboard --no-run --results "$results" --site "$work/site" --set leaderboard.bootstrap=200 || true; done
chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
    --disable-sync --no-first-run --user-data-dir="$work/chromium" --hide-scrollbars --window-size=1500,1000 \
    --screenshot=docs/leaderboard.png "file://$work/site/index.html" 2>/dev/null
ls -l docs/table1.png docs/leaderboard.png
