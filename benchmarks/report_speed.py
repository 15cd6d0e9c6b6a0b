"""How long `bench report --format md` takes over a store, significance included, measured end to end (a fresh
`bench` process each time, imports included): without significance, with a cold significance cache, with a warm one.

    python benchmarks/report_speed.py --results results      # the default store, as `bench run` leaves it

Target (issue 11): under 5 s on 2 CPU cores with significance, over the default store.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def timed(cmd: list[str], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = list((args.results / "runs").glob("*/result.json"))
    if not runs:
        sys.exit(f"{args.results}: no runs (run `bench run --results {args.results}` first)")
    base = [sys.executable, "-m", "bench", "report", "--format", "md", "--results", str(args.results)]
    cache = args.results / ".cache"
    print(f"# {len(runs)} runs in {args.results}; {os.cpu_count()} CPUs; best of {args.repeats}")
    no_sig = timed(base + ["--bootstrap", "0"], args.repeats)
    cold = float("inf")
    for _ in range(args.repeats):
        shutil.rmtree(cache, ignore_errors=True)
        cold = min(cold, timed(base + ["--bootstrap", str(args.bootstrap)], 1))
    warm = timed(base + ["--bootstrap", str(args.bootstrap)], args.repeats)
    print(f"bench report --format md, no significance        : {no_sig:6.2f} s")
    print(f"  + significance ({args.bootstrap} resamples), cold cache  : {cold:6.2f} s  (bootstrap itself ~{cold - no_sig:.2f} s)")
    print(f"  + significance, warm cache (same store state)  : {warm:6.2f} s")


if __name__ == "__main__":
    main()
