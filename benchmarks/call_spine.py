"""How many of the project's files a command crosses: run a ``bench`` command in-process under a profiler hook and
count the project files whose functions are called and the distinct caller-file -> callee-file edges (a call from
one project file into another). Run it on two checkouts to compare layouts:

    python benchmarks/call_spine.py --repo . -- run --methods intclip --dataset synthetic ...
    python benchmarks/call_spine.py --repo /tmp/old-checkout -- run ...

Prints ratios and the counts, so the number does not depend on the machine."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

FOLDERS = ("bench", "methods", "datasets", "reports")


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1], help="the checkout to trace")
    cli.add_argument("args", nargs=argparse.REMAINDER, help="the bench command after --")
    opts = cli.parse_args()
    repo = opts.repo.resolve()
    sys.path.insert(0, str(repo))  # this checkout's bench, not the installed one
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    roots = tuple(str(repo / f) + os.sep for f in FOLDERS)
    files: set[str] = set()
    edges: set[tuple[str, str]] = set()

    def hook(frame, event, arg):
        if event != "call":
            return
        callee = frame.f_code.co_filename
        if not callee.startswith(roots):
            return
        files.add(callee)
        caller = frame.f_back
        while caller is not None and not caller.f_code.co_filename.startswith(roots):
            caller = caller.f_back  # through library frames (typer, torch) to the project file that led here
        if caller is not None and caller.f_code.co_filename != callee:
            edges.add((caller.f_code.co_filename, callee))

    import bench  # noqa: F401
    try:
        from bench.cli.app import main as bench_main  # the layout with subpackages
    except ImportError:
        from bench.cli import main as bench_main  # the flat layout
    args = [a for a in opts.args if a != "--"]
    sys.argv = ["bench", *args]
    sys.setprofile(hook)
    try:
        bench_main()
    except SystemExit:
        pass
    finally:
        sys.setprofile(None)
    rel = sorted(os.path.relpath(f, repo) for f in files)
    print(f"{repo}: {len(rel)} project files called, {len(edges)} distinct cross-file call edges")
    for f in rel:
        print("  ", f)


if __name__ == "__main__":
    main()
