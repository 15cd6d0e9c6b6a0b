"""How the store-wide commands scale with the number of records (issue 27): one generated store per size, each command
timed end to end in a fresh `bench` process (imports included) with its peak RSS, and the ratio to the smallest size.

    python benchmarks/report_scaling.py                       # 100, 1,000 and 5,000 records (minutes at 5,000)
    python benchmarks/report_scaling.py --sizes 50,200 --n-test 300

Records are written by tests/conftest.py's ``make_run`` (real scores, labels and metrics, so every record validates)
with the test set enlarged to ``--n-test`` images of ``--classes`` classes: ``--methods`` methods (``intclip``, the
declared reference, among them) x ``--seeds`` seeds per comparison group, as many groups (backbones) as the size
needs. Commands: a cold `bench report --format md --test bootstrap` (significance cache removed), the same warm, `bench
report --format html`, `bench validate` and, with ``--leaderboard``, `bench leaderboard --no-run`.

Targets (issue 27, 2 CPU cores): cold significance report over 5,000 records under 10 s and at most 3x the
100-record time; validate over 5,000 under 30 s; peak memory within 2x of the 100-record run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(results: Path, n_records: int, args: argparse.Namespace) -> None:
    """``n_records`` runs in ``results``: groups (one backbone each) of methods x seeds."""
    sys.path.insert(0, str(ROOT))
    from tests import conftest

    conftest.N_TEST, conftest.N_CLASSES = args.n_test, args.classes
    if args.positive_rate is not None:  # conftest's labels are 35% positive; Intentonomy's about 6% (1.7 of 28)
        conftest.labels = lambda task, n, seed=0: _labels(n, args.classes, args.positive_rate, seed)
    methods = ["intclip", *(f"method{i}" for i in range(1, args.methods))]
    per_group = len(methods) * args.seeds
    made = 0
    for group in range(-(-n_records // per_group)):
        for method in methods:
            for seed in range(args.seeds):
                if made == n_records:
                    return
                quality = 0.5 + 0.02 * (method == "intclip") + 0.001 * group
                conftest.make_run(results, method, seed, backbone=f"RN{group}", quality=quality)
                made += 1


def _labels(n: int, classes: int, rate: float, seed: int):
    """Multilabel [n, classes] float32 labels with ``rate`` positives, every class and image with at least one."""
    import numpy as np

    rng = np.random.default_rng(1000 + seed)
    y = (rng.random((n, classes)) < rate).astype(np.float32)
    y[np.arange(n), np.arange(n) % classes] = 1.0
    return y


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process; a failure stops the benchmark with its output."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 3):  # leaderboard exits 3 on a flagged regression
        sys.exit(f"{' '.join(cmd)} exited {proc.returncode}:\n{out.decode(errors='replace')[-3000:]}")
    return seconds, usage.ru_maxrss / 1024  # Linux: KiB


def measure(results: Path, args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    bench = [sys.executable, "-m", "bench"]
    report = [*bench, "report", "--results", str(results), "--bootstrap", str(args.bootstrap)]
    commands = {
        "report md, bootstrap, cold": [*report, "--format", "md", "--test", "bootstrap"],
        "report md, bootstrap, warm": [*report, "--format", "md", "--test", "bootstrap"],
        "report html": [*report, "--format", "html", "--out", str(results.parent / "report.html")],
        "validate": [*bench, "validate", "--results", str(results)],
    }
    if args.leaderboard:
        commands["leaderboard --no-run"] = [*bench, "leaderboard", "--no-run", "--results", str(results),
                                            "--site", str(results.parent / "site")]
    out = {}
    for name, cmd in commands.items():
        if name.endswith("cold"):
            shutil.rmtree(results / ".cache", ignore_errors=True)
        out[name] = timed(cmd)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,5000", help="comma-separated record counts (first: the base)")
    parser.add_argument("--n-test", type=int, default=1000, help="test images per run")
    parser.add_argument("--classes", type=int, default=28)
    parser.add_argument("--positive-rate", type=float, default=None,
                        help="fraction of positive labels (default: tests/conftest.py's 0.35)")
    parser.add_argument("--methods", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--leaderboard", action="store_true", help="also time `bench leaderboard --no-run`")
    parser.add_argument("--work", type=Path, default=Path("/tmp/report_scaling"), help="where the stores are made")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sizes = [int(s) for s in args.sizes.split(",")]
    table: dict[int, dict[str, tuple[float, float]]] = {}
    for n in sizes:
        results = args.work / f"n{n}" / "results"
        if not (results / "runs").is_dir() or len(list((results / "runs").iterdir())) != n:
            shutil.rmtree(results.parent, ignore_errors=True)
            t0 = time.perf_counter()
            build(results, n, args)
            print(f"# built {n} records in {time.perf_counter() - t0:.0f} s ({results})", flush=True)
        table[n] = measure(results, args)
    print(f"# {os.cpu_count()} CPUs; {args.n_test} test images x {args.classes} classes per run; "
          f"{args.methods} methods x {args.seeds} seeds per group; {args.bootstrap} resamples")
    base = table[sizes[0]]
    print("| command | records | seconds | x base | peak RSS MiB | x base |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in base:
        for n in sizes:
            sec, rss = table[n][name]
            print(f"| {name} | {n} | {sec:.2f} | {sec / base[name][0]:.2f} | {rss:.0f} | {rss / base[name][1]:.2f} |")


if __name__ == "__main__":
    main()
