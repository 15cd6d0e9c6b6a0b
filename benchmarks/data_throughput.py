"""Data throughput: building the decoded cache (``bench data prepare``) vs. decoding every file (``bench data
verify``), on the same Intentonomy-sized image root, in one run, with the build's peak memory.

By default it generates an Intentonomy-sized root in a temporary folder: ``--n`` train (12,740), 498 val and 1,217
test photo-like JPEGs, ``--px`` (256) on the long side (3:2, one in four portrait, like the ``low/`` images of the
official release), the three annotation jsons in the official format with the 28 real class names. ``--n`` smaller
scales val and test by the same fraction (``--n 3185``: a quarter). ``--root DIR`` measures an existing Intentonomy
root instead (nothing is generated, ``--n`` is ignored).

Then, ``--rounds`` times, alternating, each as its own ``python -m bench`` process (the commands a user runs):

  prepare  ``bench data prepare --size S`` into an empty cache folder: stat + sha256 + decode + resize of every
           image, written into the memory-mapped ``uint8 [N, S, S, 3]`` arrays (the cache built from scratch);
  verify   ``bench data verify``: reread + sha256 + full decode of every image (the decode rate to match);

and once more ``prepare`` reusing the built cache (stat check + memory map, nothing decoded). Printed: each
command's own timing (what it prints: the work, without the interpreter's start-up) and the img/s from it, the
wall time of the process, the process's peak RSS (``ru_maxrss`` of that child from ``os.wait4``), and the ratio
verify / prepare (target: at most 1.5x) and the peak RSS of prepare (target: under 1 GB at 12,740 images, flat
across sizes). The median over rounds is printed beside every round.

Usage: ``python benchmarks/data_throughput.py [--n 12740] [--px 256] [--size 224] [--workers N] [--rounds 1]
[--root DIR] [--dir DIR]``
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

INTENTONOMY = {"train": 12_740, "val": 498, "test": 1_217}


def split_sizes(n_train: int) -> dict[str, int]:
    """Intentonomy's split sizes with train = ``n_train`` and val/test scaled by the same fraction (at least 1)."""
    frac = n_train / INTENTONOMY["train"]
    return {"train": n_train, "val": max(1, round(INTENTONOMY["val"] * frac)),
            "test": max(1, round(INTENTONOMY["test"] * frac))}


def _image(i: int, px: int, seed: int) -> Image.Image:
    """A photo-like image (smooth colour field + texture + grain), ``px`` on its long side, 3:2 or 2:3."""
    rng = np.random.default_rng([seed, i])
    w, h = (px, round(px * 2 / 3)) if i % 4 else (round(px * 2 / 3), px)
    coarse = Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8))
    base = np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
    texture = Image.fromarray(rng.integers(0, 256, (max(1, h // 4), max(1, w // 4)), dtype=np.uint8))
    detail = (np.asarray(texture.resize((w, h), Image.Resampling.BILINEAR), dtype=np.int16) - 128) // 3
    grain = rng.integers(-8, 9, (h, w, 1), dtype=np.int16)
    return Image.fromarray(np.clip(base + detail[..., None] + grain, 0, 255).astype(np.uint8))


def generate(root: Path, sizes: dict[str, int], px: int, workers: int, seed: int = 0) -> int:
    """An Intentonomy root: ``annotations/intentonomy_{split}2020.json`` + ``low/<id>.jpg``; returns the bytes."""
    from bench.datasets.images import read_metadata

    classes = sorted(read_metadata("intentonomy")["classes"], key=lambda c: c["id"])
    categories = [{"id": c["id"], "name": c["key"]} for c in classes]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "low").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    jobs: list[tuple[int, str]] = []
    for split, n in sizes.items():
        images, annotations = [], []
        for k in range(n):
            image_id = f"{split[:2]}{len(jobs):06d}{rng.integers(2**40):010x}"
            filename = f"low/{image_id}.jpg"
            images.append({"id": image_id, "filename": filename, "original_id": f"u{len(jobs)}",
                           "unsplash_url": "https://images.unsplash.com/photo-x"})
            picks = rng.choice(28, size=2, replace=False).tolist()
            if split == "train":
                soft = np.zeros(28)
                soft[picks] = [1 / 3, 2 / 3]
                annotations.append({"id": k, "image_id": image_id, "category_ids_softprob": soft.tolist()})
            else:
                annotations.append({"id": k, "image_id": image_id, "category_ids": picks})
            jobs.append((len(jobs), filename))
        payload = {"info": {"description": "generated by benchmarks/data_throughput.py"}, "images": images,
                   "annotations": annotations, "categories": categories}
        (root / "annotations" / f"intentonomy_{split}2020.json").write_text(json.dumps(payload))

    def make(job: tuple[int, str]) -> int:
        i, filename = job
        _image(i, px, seed).save(root / filename, quality=90)
        return (root / filename).stat().st_size

    with ThreadPoolExecutor(workers) as pool:
        return sum(pool.map(make, jobs))


def stage_profile(root: Path, files: list[str], size: int, out: Path) -> dict[str, float]:
    """Milliseconds per image of each step, one thread, on ``files``: what verify does per file (read + sha256, open
    + full decode) and what prepare does (read + sha256, open + draft decode + RGB, bicubic resize to S, array +
    write at the row's offset), as ``bench.datasets.manifest.decode_image`` and the cache build do them."""
    names = ["read + sha256", "open + full decode", "open + draft decode + RGB", "resize to S (bicubic)",
             "to array + pwrite"]
    steps = dict.fromkeys(names, 0.0)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for k, p in enumerate(files):
            t0 = time.perf_counter()
            data = (root / p).read_bytes()
            hashlib.sha256(data).hexdigest()
            t1 = time.perf_counter()
            with Image.open(io.BytesIO(data)) as im:
                im.load()
            t2 = time.perf_counter()
            with Image.open(io.BytesIO(data)) as im:
                if im.format == "JPEG":
                    im.draft("RGB", (size, size))
                rgb = im.convert("RGB")
            t3 = time.perf_counter()
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
            t4 = time.perf_counter()
            os.pwrite(fd, np.asarray(rgb, dtype=np.uint8), k * size * size * 3)
            t5 = time.perf_counter()
            for name, dt in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                steps[name] += dt
    finally:
        os.close(fd)
        out.unlink(missing_ok=True)
    return {name: 1000 * total / len(files) for name, total in steps.items()}


def run_cli(args: list[str], cwd: Path) -> dict:
    """``python -m bench ARGS`` as a child process: its output, wall seconds, CPU seconds (user + system) and peak
    RSS, from its own rusage."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path}
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"`bench {' '.join(args)}` exited {proc.returncode}:\n{output}")
    return {"output": output, "wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024}  # ru_maxrss is in KiB on Linux


def _seconds(pattern: str, output: str, what: str) -> float:
    m = re.search(pattern, output)
    if m is None:
        raise SystemExit(f"could not find the {what} time in:\n{output}")
    return float(m.group(1))


def _listed(root: Path, split: str) -> list[str]:
    payload = json.loads((root / "annotations" / f"intentonomy_{split}2020.json").read_text())
    return [img["filename"] for img in payload["images"]]


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=INTENTONOMY["train"],
                        help="train images (default 12,740; val and test scale with it)")
    parser.add_argument("--px", type=int, default=256, help="long side of the generated JPEGs (default 256)")
    parser.add_argument("--size", type=int, default=224, help="cached side S (default 224, RN101's input)")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding threads of both commands (default: theirs, all cores)")
    parser.add_argument("--rounds", type=int, default=1, help="prepare/verify pairs, alternating (default 1)")
    parser.add_argument("--sample", type=int, default=300, help="images in the one-thread step profile (default 300)")
    parser.add_argument("--root", type=Path, default=None, help="an existing Intentonomy root (nothing generated)")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp folder, removed)")
    args = parser.parse_args(argv)

    work = args.dir or Path(tempfile.mkdtemp(prefix="bench-data-throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict]] = {"prepare": [], "verify": []}
    try:
        root = args.root
        if root is None:
            root = work / "intentonomy"
            sizes = split_sizes(args.n)
            t = time.perf_counter()
            nbytes = generate(root, sizes, args.px, os.cpu_count() or 1)
            n = sum(sizes.values())
            print(f"generated {n:,} JPEGs ({', '.join(f'{v:,} {k}' for k, v in sizes.items())}), {args.px} px long "
                  f"side, {nbytes / n / 1e3:.1f} kB each, in {time.perf_counter() - t:.1f} s under {root}")
        else:
            root = root.resolve()
            print(f"root: {root}")
        common = ["--dataset", "intentonomy", "--root", str(root), "--no-progress"]
        if args.workers:
            common += ["--workers", str(args.workers)]
        print(f"S={args.size}, workers={args.workers or 'default (all cores)'}, cpu_count={os.cpu_count()}, "
              f"rounds={args.rounds}")

        train = _listed(root, "train")
        sample = train[:: max(1, len(train) // args.sample)][: args.sample]
        steps = stage_profile(root, sample, args.size, work / "profile.bin")

        for r in range(args.rounds):
            cache = work / f"cache-{r}"
            shutil.rmtree(cache, ignore_errors=True)
            cache_set = ["--set", f'paths.cache="{cache}"']
            res = run_cli(["data", "prepare", *common, "--size", str(args.size), *cache_set], work)
            res["seconds"] = _seconds(r"\(built in ([0-9.]+) s\)", res["output"], "prepare")
            cells = re.findall(r"│\s*(?:train|val|test)\s*│\s*([0-9,]+)", res["output"])
            res["images"] = sum(int(x.replace(",", "")) for x in cells)
            rows["prepare"].append(res)
            shutil.rmtree(cache, ignore_errors=True)  # the next verify writes its own manifest elsewhere
            res = run_cli(["data", "verify", *common, *cache_set], work)
            res["seconds"] = _seconds(r"decoded [0-9,]+ images in ([0-9.]+) s", res["output"], "verify")
            res["images"] = int(re.search(r"decoded ([0-9,]+) images", res["output"]).group(1).replace(",", ""))
            rows["verify"].append(res)
            shutil.rmtree(cache, ignore_errors=True)
        cache = work / "cache-reuse"
        shutil.rmtree(cache, ignore_errors=True)
        cache_set = ["--set", f'paths.cache="{cache}"']
        run_cli(["data", "prepare", *common, "--size", str(args.size), *cache_set], work)
        again = run_cli(["data", "prepare", *common, "--size", str(args.size), *cache_set], work)
        if "(reused in" not in again["output"]:
            raise SystemExit(f"the second prepare did not reuse the cache:\n{again['output']}")
        reuse_s = _seconds(r"\(reused in ([0-9.]+) s\)", again["output"], "reuse")
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)

    n = rows["verify"][0]["images"]
    if any(r["images"] != n for r in rows["prepare"]):
        raise SystemExit(f"prepare cached {rows['prepare'][0]['images']} images, verify decoded {n}")
    print(f"\none thread, {len(sample)} train images, ms per image:")
    for name, ms in steps.items():
        print(f"  {name:<28} {ms:7.3f}")
    verify_ms = steps["read + sha256"] + steps["open + full decode"]
    prepare_ms = sum(v for k, v in steps.items() if k != "open + full decode")
    print(f"  verify's work {verify_ms:.3f} ms, prepare's {prepare_ms:.3f} ms: {prepare_ms / verify_ms:.2f}x "
          f"(the resize alone is {steps['resize to S (bicubic)'] / prepare_ms:.0%} of prepare's)")

    rate = {k: [n / r["seconds"] for r in v] for k, v in rows.items()}
    print(f"\n{n:,} images, {args.size} px cache ({n * args.size * args.size * 3 / 2**30:.2f} GiB); each command its "
          "own process (s: the command's own timing; wall and CPU: the whole process, start-up included)")
    print(f"{'command':<46} {'img/s':>8} {'median':>8} {'s':>7} {'wall s':>7} {'CPU ms/img':>10} {'peak RSS':>10}")
    labels = {"prepare": "bench data prepare (sha256 + decode + resize)",
              "verify": "bench data verify (sha256 + full decode)"}
    for k, v in rows.items():
        for i, r in enumerate(v):
            med = f"{statistics.median(rate[k]):8.1f}" if i == 0 else " " * 8
            print(f"{labels[k]:<46} {rate[k][i]:8.1f} {med} {r['seconds']:7.1f} {r['wall']:7.1f} "
                  f"{1000 * r['cpu'] / n:10.3f} {r['peak_rss_mb']:7.0f} MB")
    print(f"{'bench data prepare again (reuses the cache)':<46} {'':>8} {'':>8} {reuse_s:7.2f} {again['wall']:7.1f} "
          f"{'':>10} {again['peak_rss_mb']:7.0f} MB")
    ratios = [v / p for v, p in zip(rate["verify"], rate["prepare"], strict=True)]
    cpu_ratios = [p["cpu"] / v["cpu"] for p, v in zip(rows["prepare"], rows["verify"], strict=True)]
    peak = max(r["peak_rss_mb"] for r in rows["prepare"])
    print(f"ratio verify/prepare img/s: {statistics.median(ratios):.2f}x (per round: "
          f"{', '.join(f'{x:.2f}x' for x in ratios)}; target <= 1.50x); CPU time prepare/verify "
          f"{statistics.median(cpu_ratios):.2f}x; prepare peak RSS {peak:.0f} MB (target < 1024 MB), of which the "
          f"build adds {peak - again['peak_rss_mb']:.0f} MB to the same command reusing the cache")
    return {"prepare": statistics.median(rate["prepare"]), "verify": statistics.median(rate["verify"]),
            "ratio": statistics.median(ratios), "cpu_ratio": statistics.median(cpu_ratios),
            "prepare_peak_rss_mb": peak, "reuse_peak_rss_mb": again["peak_rss_mb"], "reuse_s": reuse_s,
            "steps_ms": steps}


if __name__ == "__main__":
    main()
