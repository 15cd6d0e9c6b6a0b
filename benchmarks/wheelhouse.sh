#!/usr/bin/env bash
# Wheels the GPU machine lacks for benchmarks/gpu_check.sh (its image has torch, torchvision, timm, numpy, PIL,
# huggingface_hub, regex, safetensors, tqdm, rich, typer, but not open_clip, pydantic or ftfy), for CPython 3.12
# on x86-64 Linux (about 4.4 MB). Run here, in the repository root; the folder is git-ignored through
# .git/info/exclude. The project itself needs no wheel: gpu_check.sh imports it from the carried checkout.
#   bash benchmarks/wheelhouse.sh [DIR]        (default DIR: .whl)
set -euo pipefail
dir=${1:-.whl}
mkdir -p "$dir"
grep -qx "/$dir/" .git/info/exclude 2>/dev/null || echo "/$dir/" >> .git/info/exclude
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# pure-Python packages, then pydantic's compiled core (the version this pydantic pins)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d "$dir" "open_clip_torch==3.3.0" "ftfy==6.3.1" "wcwidth==0.7.0" "pydantic==2.13.4" "pydantic_core==2.46.4" \
  "annotated_types==0.7.0" "typing_inspection==0.4.2" "typing_extensions==4.16.0"
ls -la "$dir"
