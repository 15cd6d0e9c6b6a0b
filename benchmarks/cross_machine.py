"""The default suite's spread across CPU kernels on this machine, and the reference file with the tolerances it implies.

Runs the embedded default suite (`bench run`, the shipped bench.toml) once per variant, each into its own results
and cache folder (the frozen features are recomputed under each variant's kernels):

  default             as the machine picks (here: AVX-512 ATen kernels, OpenBLAS's own core type, MKL's dispatch)
  openblas-prescott   OPENBLAS_CORETYPE=Prescott: numpy/scipy/sklearn's BLAS on its oldest x86-64 kernels
  avx2                ATEN_CPU_CAPABILITY=avx2, MKL_ENABLE_INSTRUCTIONS=AVX2, OPENBLAS_CORETYPE=Haswell: what an
                      AVX2-only CPU (or one where these libraries dispatch differently, e.g. another vendor's) runs
  threads-2           two intra-op threads per trial instead of one (another order of float reductions)

and prints, per method x split x metric, the default's value and each variant's difference from it. With
``--write-reference FILE`` it writes the cross-machine reference (`bench crosscheck` compares a fresh run with it):
the default's numbers, the machine and its torch/BLAS build, and per method the tolerance of all its numbers

    tolerance = max(FLOOR, FACTOR x the largest |difference| of any of the method's numbers under any variant)

A trained method's numbers move when a kernel changes the last bits of one step: training then diverges by chance,
much as another seed would, so every number of the method gets the method's largest measured move (pooled over its
8 numbers and the variants: one number's own two or three differences are too few to size its tail). FACTOR (3)
allows for another machine's kernels moving a number further than the emulated ones did; FLOOR (0.25 points) for
the one-image flips a kernel this machine cannot emulate may cause where no variant here moved anything (one of
400 synthetic test images changes a 12-class macro F1 by up to about 0.2 points).

  python benchmarks/cross_machine.py --out /tmp/xm                           # measure (about 4 min per variant)
  python benchmarks/cross_machine.py --out /tmp/xm --write-reference bench/assets/default_reference.json
  python benchmarks/cross_machine.py --out /tmp/xm --no-run --write-reference ...   # from folders already run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FLOOR, FACTOR = 0.25, 3.0
VARIANTS: dict[str, tuple[dict[str, str], list[str]]] = {
    "default": ({}, []),
    "openblas-prescott": ({"OPENBLAS_CORETYPE": "Prescott"}, []),
    "avx2": ({"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "OPENBLAS_CORETYPE": "Haswell"}, []),
    "threads-2": ({}, ["--set", "ray.resources.default.cpu=2"]),
}


def run_variant(name: str, out: Path) -> float:
    env_extra, args = VARIANTS[name]
    folder = out / name
    env = {**os.environ, **env_extra, "HF_HUB_OFFLINE": "1"}
    cmd = ["bench", "run", "--results", str(folder / "results"), "--no-progress",
           "--set", f'paths.cache="{(folder / "cache").as_posix()}"', *args]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    (folder / "run.log").parent.mkdir(parents=True, exist_ok=True)
    (folder / "run.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"variant {name}: bench run failed ({done.returncode}); see {folder / 'run.log'}")
    return time.perf_counter() - t0


def machine() -> dict:
    import numpy as np
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    blas = {}
    try:
        from threadpoolctl import threadpool_info

        blas = {f"{i['internal_api']}": f"{i.get('version')} ({i.get('architecture')})" for i in threadpool_info()}
    except ImportError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "numpy": np.__version__,
            "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(), "blas": blas,
            "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="One folder per variant goes here.")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="Comma-separated, from: " + ", ".join(VARIANTS))
    parser.add_argument("--no-run", action="store_true", help="Use the folders already under --out.")
    parser.add_argument("--write-reference", type=Path, help="Write the cross-machine reference here.")
    args = parser.parse_args(argv)
    from bench import __version__
    from bench.workflows.crosscheck import METRICS, SPLITS, table_of

    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    if names[0] != "default":
        raise SystemExit("the first variant must be 'default' (the others are compared with it)")
    seconds = {}
    for name in names:
        if not args.no_run:
            print(f"running {name} ...", flush=True)
            seconds[name] = run_variant(name, args.out)
    tables = {name: table_of(args.out / name / "results") for name in names}
    base = tables["default"]
    print(f"\n{'method':<18} {'split':<5} {'metric':<11} {'default':>8} " + " ".join(f"{n:>18}" for n in names[1:]))
    rows = {}
    worst = 0.0
    for method, row in base.items():
        rows[method] = {"n": row["n"], "run_ids": row["run_ids"]}
        cells = {}
        for split in SPLITS:
            for metric in METRICS:
                value = row[split][metric]
                diffs = {n: tables[n][method][split][metric] - value for n in names[1:] if method in tables[n]}
                cells[split, metric] = (value, diffs)
                print(f"{method:<18} {split:<5} {metric:<11} {value:8.2f} " + " ".join(f"{diffs.get(n, float('nan')):+18.2f}" for n in names[1:]))
        moved = max((abs(d) for _, diffs in cells.values() for d in diffs.values()), default=0.0)
        worst = max(worst, moved)
        tolerance = round(max(FLOOR, FACTOR * moved), 2)
        for split in SPLITS:
            rows[method][split] = {
                metric: {"value": value, "spread": round(max((abs(d) for d in diffs.values()), default=0.0), 6),
                         "tolerance": tolerance, "variants": {n: round(d, 6) for n, d in diffs.items()}}
                for (s_, metric), (value, diffs) in cells.items() if s_ == split
            }
        rows[method]["largest_move"] = round(moved, 6)
    print(f"\nlargest difference of any variant from the default: {worst:.2f} points")
    if seconds:
        print("seconds per variant: " + ", ".join(f"{n} {s:.0f}" for n, s in seconds.items()))
    if args.write_reference:
        reference = {
            "what": "The embedded default suite's table (bench run with the shipped bench.toml): mean over seeds in "
                    "percent; tolerance = max(%.2f, %.1f x the largest difference of any CPU-kernel variant)." % (FLOOR, FACTOR),
            "made": {"date": dt.date.today().isoformat(), "bench": __version__, "machine": machine()["cpu"],
                     "build": machine(), "command": "python benchmarks/cross_machine.py --out DIR --write-reference FILE",
                     "variants": {n: {"env": VARIANTS[n][0], "args": VARIANTS[n][1]} for n in names}},
            "rows": rows,
        }
        args.write_reference.write_text(json.dumps(reference, indent=1) + "\n")
        print(f"wrote {args.write_reference}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
