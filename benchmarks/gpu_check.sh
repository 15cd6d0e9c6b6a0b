#!/usr/bin/env bash
# Every GPU measurement of benchmarks/RESULTS.md in one run, for a machine without network: writes its numbers to
# $OUT (default /tmp/bench-gpu-check): env.txt, throughput.{txt,json}, packing.{txt,json}, epoch.{txt,json},
# compile.{txt,json}.
# DEVICE (default cuda) and the *_ARGS variables exist for a smoke test on a CPU, e.g.
#   DEVICE=cpu THROUGHPUT_ARGS="--backbone tiny-clip --batch 8" PACKING_ARGS="--counts 1,2" EPOCH_ARGS="--n 64"
#   COMPILE_ARGS="--backbone tiny-clip --batch 8 --steps 1" bash benchmarks/gpu_check.sh
#
# Needs open_clip, pydantic and ftfy as wheels in .whl/ (bash benchmarks/wheelhouse.sh, here); the project is
# imported from the checkout (PYTHONPATH), so nothing is built there. At most 9 minutes (BUDGET_S=540) on one GPU:
#   throughput (RN101, batch 64 and 256, reference vs project: IntCLIP-official, DualCoOp, Q2L) ~2 min
#   packing    (1, 2 and 4 DualCoOp / IntCLIP trials sharing the GPU, RN101 batch 64)           <= 3 min
#   epoch      (12,740 generated JPEGs: DataLoader + full decode vs the decoded cache)          ~2.5 min
#   compile    (project path under torch.compile, IntCLIP-official, batch 64; the time left)    <= 5 min
# Through the device tool: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/bench-gpu-check}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
if ! python3 -c "import open_clip, pydantic" 2>/dev/null; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "no .whl/: run bash benchmarks/wheelhouse.sh first" | tee "$OUT/env.txt"; exit 1; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch, open_clip; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'open_clip', open_clip.__version__)"
  nproc
} 2>&1 | tee "$OUT/env.txt"

budget=${BUDGET_S:-540}  # leave the device tool's 600 s limit some room
left() { echo $(( budget - SECONDS > 10 ? budget - SECONDS : 10 )); }
timeout 240 python3 benchmarks/throughput.py --device "$DEVICE" ${THROUGHPUT_ARGS:---full --methods intclip-official,dualcoop,query2label} --json "$OUT/throughput.json" 2>&1 | tee "$OUT/throughput.txt"
timeout 180 python3 benchmarks/packing.py --device "$DEVICE" ${PACKING_ARGS:---counts 1,2,4} --json "$OUT/packing.json" 2>&1 | tee "$OUT/packing.txt"
timeout "$(left)" python3 benchmarks/epoch.py --device "$DEVICE" ${EPOCH_ARGS:---full} --json "$OUT/epoch.json" 2>&1 | tee "$OUT/epoch.txt"
# optional: what torch.compile adds (compiling takes minutes; cut off when the budget runs out)
timeout "$(left)" python3 benchmarks/throughput.py --device "$DEVICE" ${COMPILE_ARGS:---full --batch 64} \
  --methods intclip-official --compile default --no-augment --json "$OUT/compile.json" 2>&1 | tee "$OUT/compile.txt"
echo "total ${SECONDS} s"
ls -la "$OUT"
