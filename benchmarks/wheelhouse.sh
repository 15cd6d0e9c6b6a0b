#!/usr/bin/env bash
# The wheels the GPU machine lacks for benchmarks/gpu_check.sh, into .whl/ (git-ignored), for the device tool's
# `carry` (64 MiB at most for the whole working tree; this is about 10 MB).
#
# The device image has torch, torchvision, timm, numpy, pillow, pandas, scipy, scikit-learn, matplotlib, jinja2,
# filelock, rich, typer, regex, huggingface_hub, safetensors, tqdm and typing-extensions (KINDS.md of the device
# tool), but not open_clip, ftfy, wcwidth or pydantic; the benchmarks import neither ray nor optuna. Its Python
# is 3.12 (3.12.3 when last seen), this machine's 3.11, so:
#   - the pure-Python wheels (py3-none-any): open_clip_torch, ftfy, wcwidth, pydantic, annotated_types,
#     typing_inspection, typing_extensions (pydantic needs a newer one than some images have);
#   - pydantic_core is NOT pure Python (a Rust extension) and cannot be avoided (every method config is a
#     pydantic model), so it is carried as manylinux x86-64 wheels for CPython 3.11, 3.12 and 3.13 (about 2 MB
#     each); gpu_check.sh installs with `pip --find-links .whl NAME...`, so pip picks the one build that fits the
#     device's Python (several builds of one package in one `pip install .whl/*.whl` would conflict).
# Versions: the ones installed here (the package index this machine sees served them), so the command works
# against that index whatever it holds; pydantic_core is the version this pydantic pins.
#   bash benchmarks/wheelhouse.sh [DIR]        (default DIR: .whl; PYTHON=python3.11 to read versions elsewhere)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.whl}
py=${PYTHON:-python3}
pure=(open_clip_torch ftfy wcwidth pydantic annotated_types typing_inspection typing_extensions)
pins=()
for name in "${pure[@]}" pydantic_core; do
  version=$("$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name") || {
    echo "wheelhouse: $name is not installed here (pip install -e . first)" >&2; exit 1; }
  pins+=("$name==$version")
done
echo "wheelhouse: ${pins[*]}"
rm -rf "$dir.part" && mkdir -p "$dir.part"
# pure-Python wheels: no platform tags needed; --no-deps: every requirement is named above or on the device
"$py" -m pip download -q --no-deps --only-binary=:all: -d "$dir.part" "${pins[@]:0:${#pure[@]}}"
core=${pins[-1]}
for pyver in 3.11 3.12 3.13; do
  "$py" -m pip download -q --no-deps --only-binary=:all: --implementation cp --python-version "$pyver" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dir.part" "$core"
done
# every wheel pure Python except pydantic_core's builds, and no two versions of one package
bad=$(ls "$dir.part" | grep -v -e '-py3-none-any\.whl$' -e '^pydantic_core-.*-cp31[123]-cp31[123]-manylinux.*x86_64\.whl$' || true)
[ -z "$bad" ] || { echo "wheelhouse: unexpected wheels: $bad" >&2; exit 1; }
count=$(ls "$dir.part"/*.whl | wc -l)
[ "$count" -eq $(( ${#pure[@]} + 3 )) ] || { echo "wheelhouse: expected $(( ${#pure[@]} + 3 )) wheels, got $count" >&2; exit 1; }
size=$(du -sm "$dir.part" | cut -f1)
[ "$size" -lt 64 ] || { echo "wheelhouse: $size MiB, over the 64 MiB carry limit" >&2; exit 1; }
rm -rf "$dir" && mv "$dir.part" "$dir"
ls -la "$dir"
echo "wheelhouse: $count wheels, $(du -sh "$dir" | cut -f1) in $dir"
