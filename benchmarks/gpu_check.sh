#!/usr/bin/env bash
# Every GPU measurement of benchmarks/RESULTS.md, in two calls of the device tool that fit its lease (15 minutes
# of device time per task, a machine start included; at most 10 minutes a command):
#
#   part 1 (BUDGET_S=420, run with timeout_s=450)             part 2 (BUDGET_S=330, run with timeout_s=360)
#     setup     wheels from .whl/ when missing, env       ~15 s   setup     the same                        ~15 s
#     main      throughput.py --full: IntCLIP-official and  150 s   compile   throughput.py --compile default: 315 s
#               DualCoOp, train b64/b256 (+ augmentation              reference vs project eager vs project
#               inside the step), eval b100, agreement,                compiled, IntCLIP-official, train b64,
#               text side                                             eval b100; compile time = the first calls
#     variants  fp16 / bf16 / bf16+channels_last, both paths 70 s
#               (IntCLIP-official, DualCoOp, b64, eval b100)
#     epoch     a cached Intentonomy-sized epoch (12,740      55 s
#               images, RN101, b64; cache build timed)
#     packing   1, 2, 4 DualCoOp trials on the GPU (a process  85 s
#               each: start, CUDA context, RN101 build)
#     q2l       Query2Label's throughput (the time left)    rest
#
# Each section runs under `timeout` with min(its cap, the budget left) and is skipped when under 15 s is left;
# every script rewrites its JSON after each figure, so a section cut off keeps what it measured, and
# budget.json (part 2: budget2.json) records each section's start, seconds and exit status (124: cut off) as it
# goes. What comes back from $OUT (the device tool returns at most 8 files): partN.log (all output), the budget
# file and one JSON per section.
#
#   bash benchmarks/wheelhouse.sh                 # here, once: .whl/ (git-ignored, ~8 MB)
#   device tool: run(command="bash benchmarks/gpu_check.sh --part 1", carry=[".whl"], timeout_s=450)
#                run(command="bash benchmarks/gpu_check.sh --part 2", carry=[".whl"], timeout_s=360)
#   bash benchmarks/gpu_check.sh --dry-run        # on a CPU: both parts at tiny sizes, same order and budgets,
#                                                 # wheels installed to a temp folder and every module that is
#                                                 # not on the device image blocked (proves the wheel list)
# Options: --part 1|2|all (default: all), --dry-run, --out DIR (default: $OUT, else /tmp/bench-gpu-check).
set -uo pipefail
cd "$(dirname "$0")/.."
part=all dry=0 out=${OUT:-/tmp/bench-gpu-check}
while [ $# -gt 0 ]; do
  case $1 in
    --part) part=$2; shift 2 ;;
    --dry-run) dry=1; shift ;;
    --out) out=$2; shift 2 ;;
    *) echo "gpu_check.sh: unknown argument $1 (--part 1|2|all, --dry-run, --out DIR)" >&2; exit 2 ;;
  esac
done
case $part in 1|2|all) ;; *) echo "gpu_check.sh: --part 1, 2 or all" >&2; exit 2 ;; esac
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
WHEELS=(open_clip_torch ftfy wcwidth pydantic pydantic_core annotated_types typing_inspection typing_extensions)

# The device image's packages (KINDS.md of the device tool, read 2026-11-17): used by --dry-run only.
DEVICE_PACKAGES="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers
flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2
joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch
mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti
nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx
onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint
packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil
pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov
pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server
tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric
torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"

# -- sizes: the GPU's, or tiny ones for the dry run on a CPU ------------------------------------------------------
if [ $dry = 1 ]; then
  DEVICE=cpu
  TINY="--device cpu --backbone tiny-clip --threads 1 --steps 1 --rounds 2 --warmup 1"
  MAIN_ARGS="$TINY --batch 8 --eval-batch 10 --methods intclip-official,dualcoop --sections main"
  VARIANT_ARGS="$TINY --batch 8 --eval-batch 10 --methods intclip-official,dualcoop --sections variants"
  EPOCH_ARGS="--device cpu --n 96 --distinct 4 --batch 16 --workers 2 --threads 1 --cache-only"
  PACKING_ARGS="--device cpu --methods dualcoop --counts 1,2 --steps 1 --warmup 1"
  Q2L_ARGS="$TINY --batch 8 --eval-batch 10 --methods query2label --sections main,randaugment --no-train-augment"
  # inductor's C++ code generation on 2 shared cores took 146-216 s cold for the training step alone (load 6-8):
  # the dry run checks the compile path (dynamo + AOTAutograd) with aot_eager; DRY_COMPILE_BACKEND=inductor for
  # the real compiler
  COMPILE_ARGS="$TINY --batch 8 --eval-batch 10 --methods intclip-official --compile default --compile-backend ${DRY_COMPILE_BACKEND:-aot_eager}"
else
  DEVICE=cuda
  MAIN_ARGS="--device cuda --full --methods intclip-official,dualcoop --sections main"
  VARIANT_ARGS="--device cuda --full --batch 64 --rounds 3 --methods intclip-official,dualcoop --sections variants"
  EPOCH_ARGS="--device cuda --full --cache-only --distinct 128"
  PACKING_ARGS="--device cuda --methods dualcoop --counts 1,2,4 --steps 20 --warmup 3"
  Q2L_ARGS="--device cuda --full --batch 64 --methods query2label --sections main,randaugment --no-train-augment"
  COMPILE_ARGS="--device cuda --full --batch 64 --rounds 3 --methods intclip-official --compile default"
fi

# -- wheels: installed when the image lacks them (always, into a temp folder, for the dry run) -------------------
site=/tmp/bench-gpu-site
if [ $dry = 1 ]; then
  site=$(mktemp -d /tmp/bench-gpu-dry-site.XXXXXX)
  sim=$(mktemp -d /tmp/bench-gpu-dry-sim.XXXXXX)
  cat > "$sim/sitecustomize.py" <<'PY'
# gpu_check.sh --dry-run: a module whose distribution is neither on the device image (nor needed by one of its
# packages, which come with their own requirements there) nor in .whl/ fails to import
import importlib.abc, importlib.metadata as md, os, re, sys
_norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
_device = [_norm(d) for d in os.environ["BENCH_DEVICE_DISTS"].split()]
_allowed = set(_device) | {_norm(d) for d in os.environ["BENCH_WHEEL_DISTS"].split()}
_todo = list(_device)
while _todo:  # the requirements of the image's packages, as installed here
    try:
        requires = md.requires(_todo.pop()) or []
    except md.PackageNotFoundError:
        continue
    for req in requires:
        if "extra ==" in req:
            continue
        name = _norm(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0])
        if name not in _allowed:
            _allowed.add(name)
            _todo.append(name)
_owner = md.packages_distributions()
class _DeviceOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        dists = _owner.get(name) if "." not in name else None
        if dists and not any(_norm(d) in _allowed for d in dists):
            raise ModuleNotFoundError(f"gpu_check --dry-run: {name!r} ({', '.join(dists)}) is not on the device image "
                                      "and not in .whl/ (benchmarks/wheelhouse.sh)", name=name)
        return None
sys.meta_path.insert(0, _DeviceOnly())
PY
  export BENCH_DEVICE_DISTS="$DEVICE_PACKAGES" BENCH_WHEEL_DISTS="${WHEELS[*]} intent-bench"
  export TORCHINDUCTOR_CACHE_DIR="$sim/inductor"  # a cold compile, as on a fresh device machine
fi
setup() {
  date -u
  if [ $dry = 1 ] || ! python3 -c "import open_clip, pydantic, ftfy" 2>/dev/null; then
    ls .whl/*.whl >/dev/null 2>&1 || { echo "no .whl/: run bash benchmarks/wheelhouse.sh first"; return 1; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
      --find-links .whl "${WHEELS[@]}" 2>&1 | grep -v "is ignored" || true
    export PYTHONPATH="$PYTHONPATH:$site"
    [ $dry = 1 ] && export PYTHONPATH="$sim:$PYTHONPATH"
  fi
  python3 - <<'PY' || return 1
import os, sys, torch, open_clip, pydantic, pydantic_core
print("python", sys.version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda, "| open_clip",
      open_clip.__version__, "from", os.path.dirname(open_clip.__file__), "| pydantic", pydantic.__version__,
      "core", pydantic_core.__version__)
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), "| bf16", torch.cuda.is_bf16_supported())
print("cpus", os.cpu_count())
PY
  [ $DEVICE = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  return 0
}

budget_file=$out/budget.json
sections_json=""
record() {  # name, cap, start, seconds, status -> budget.json (rewritten after every section)
  sections_json="${sections_json:+$sections_json,}{\"section\": \"$1\", \"cap_s\": $2, \"start_s\": $3, \"seconds\": $4, \"status\": \"$5\"}"
  printf '{"part": "%s", "dry_run": %s, "budget_s": %s, "elapsed_s": %s, "sections": [%s]}\n' \
    "$current_part" "$([ $dry = 1 ] && echo true || echo false)" "$budget" "$SECONDS" "$sections_json" > "$budget_file.part"
  mv "$budget_file.part" "$budget_file"
}
section() {  # name cap command...  (run under min(cap, budget left - 5 s); skipped under 15 s)
  local name=$1 cap=$2; shift 2
  local left=$(( budget - SECONDS - 5 )) start=$SECONDS
  local limit=$(( cap < left ? cap : left ))
  if [ $limit -lt 15 ]; then
    echo "== $name: skipped, ${left} s of the budget left"; record "$name" "$cap" "$start" 0 "skipped"; return
  fi
  echo "== $name (at ${start} s, limit ${limit} s): $*"
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  local status=$([ $rc = 0 ] && echo ok || { [ $rc = 124 ] || [ $rc = 137 ] && echo "cut off ($rc)" || echo "failed ($rc)"; })
  echo "== $name: $status after $(( SECONDS - start )) s"
  record "$name" "$cap" "$start" $(( SECONDS - start )) "$status"
}

run_part() {
  current_part=$1
  SECONDS=0
  sections_json=""
  if [ "$1" = 1 ]; then
    budget=${BUDGET_S:-420}
    budget_file=$out/budget.json
    setup || { record setup 0 0 "$SECONDS" failed; return 1; }
    record setup 0 0 "$SECONDS" ok
    section main 150 python3 benchmarks/throughput.py $MAIN_ARGS --json "$out/throughput.json"
    section variants 70 python3 benchmarks/throughput.py $VARIANT_ARGS --json "$out/variants.json"
    section epoch 55 python3 benchmarks/epoch.py $EPOCH_ARGS --json "$out/epoch.json"
    section packing 85 python3 benchmarks/packing.py $PACKING_ARGS --json "$out/packing.json"
    section q2l 120 python3 benchmarks/throughput.py $Q2L_ARGS --json "$out/q2l.json"
  else
    budget=${BUDGET_S:-330}
    budget_file=$out/budget2.json
    setup || { record setup 0 0 "$SECONDS" failed; return 1; }
    record setup 0 0 "$SECONDS" ok
    section compile 315 python3 benchmarks/throughput.py $COMPILE_ARGS --json "$out/compile.json"
  fi
  echo "part $1: ${SECONDS} s of its ${budget} s budget"
}

status=0
for p in 1 2; do
  [ "$part" = all ] || [ "$part" = $p ] || continue
  run_part $p 2>&1 | tee "$out/part$p.log"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
done
[ $dry = 1 ] && rm -rf "$site" "$sim"
ls -la "$out"
exit $status
