"""``bench doctor``: what a real run needs, checked before it starts, with the command that fixes each gap.

Checks, for the suite a config (and the command line) describes: every dataset's root, annotation files and
manifest (``bench data verify``); the backbone's weights (:mod:`bench.workflows.weights`); the CUDA devices and their free
memory against ``engine.device``; the Ray cluster (reachable, its nodes' CPUs/GPUs against each method's
per-trial request) or the embedded one; free disk for each dataset's decoded cache at the backbone's resolution
and for the result store. Nothing is trained, downloaded or written (a check that would need to write says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bench.config import BenchConfig
from bench.errors import BenchError

Status = Literal["ok", "warn", "missing"]


@dataclass
class Check:
    area: str  # data, weights, device, ray, disk
    item: str
    status: Status
    detail: str
    fix: str = ""


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _dataset_checks(cfg: BenchConfig, name: str, image_size: int) -> tuple[list[Check], int]:
    """Root, annotation files (the adapter's listing) and manifest of dataset ``name``; and the bytes its decoded
    cache needs at ``image_size`` (0 when unknown)."""
    from bench.datasets.images import ImageFileDataset
    from bench.datasets.manifest import Manifest
    from bench.pipeline.plan import dataset_adapter

    adapter = dataset_adapter(cfg, name)
    if not isinstance(adapter, ImageFileDataset):
        return [Check("data", name, "ok", "generated on the fly (no files needed)")], 0
    fetch = {"intentonomy": f"bench data download --dataset intentonomy --root /data/{name}"}.get(
        name, f"bench data import --dataset {name} --from ARCHIVE --root /data/{name}")
    try:
        listing = adapter.listing()
    except BenchError as err:
        first = str(err).splitlines()[0]
        return [Check("data", name, "missing", first, fix=fetch + f"  (then [paths.data] {name} = \"/data/{name}\")")], 0
    n = sum(len(p) for p in listing.paths.values())
    sizes = ", ".join(f"{s} {len(p):,}" for s, p in listing.paths.items())
    checks = [Check("data", f"{name} annotations", "ok", f"{listing.root}: {sizes}")]
    path = adapter.manifest_path(listing)
    manifest = Manifest.read(path) if path.is_file() else None
    verify = f"bench data verify --dataset {name}"
    if manifest is None:  # never verified, damaged, or of another format: verify writes it
        checks.append(Check("data", f"{name} images", "missing", "not verified yet (no readable manifest)", fix=verify))
        return checks, n * image_size * image_size * 3
    counts = manifest.counts()
    if {s: c["images"] for s, c in counts.items()} != {s: len(p) for s, p in listing.paths.items()}:
        checks.append(Check("data", f"{name} images", "missing", "the manifest lists other images than the annotation files (stale)", fix=verify))
        return checks, n * image_size * image_size * 3
    bad = {s: c["missing"] + c["corrupt"] for s, c in counts.items() if c["missing"] + c["corrupt"]}
    held = [s for s in bad if s != "train"]
    status: Status = "missing" if held else "warn" if bad else "ok"
    detail = "every image decodes" if not bad else "missing/corrupt: " + ", ".join(f"{s} {k:,}" for s, k in bad.items())
    checks.append(Check("data", f"{name} images", status, f"{detail} (manifest {manifest.sha256()[:12]})", fix=fetch if held else ""))
    return checks, n * image_size * image_size * 3


def _weights_checks(cfg: BenchConfig, backbone: str) -> list[Check]:
    from bench.workflows.weights import weights_status

    state = weights_status(cfg, backbone)
    return [Check("weights", backbone, "ok" if state.present else "missing", state.detail, fix=state.fix)]


def _device_checks(cfg: BenchConfig) -> list[Check]:
    import torch

    wanted = cfg.engine.device
    if not torch.cuda.is_available():
        if wanted.startswith("cuda"):
            return [Check("device", wanted, "missing", "engine.device asks for CUDA; torch sees no CUDA device",
                          fix="run on a GPU machine, or set engine.device = \"auto\" (CPU: the real suite takes days)")]
        return [Check("device", "cpu", "warn", f"no CUDA device (torch {torch.__version__}); CPU runs only the tiny suite in minutes",
                      fix="run the real suite on a GPU machine")]
    checks = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        name = torch.cuda.get_device_name(i)
        checks.append(Check("device", f"cuda:{i}", "ok", f"{name}, {_gib(free)} free of {_gib(total)}"))
    return checks


def _ray_checks(cfg: BenchConfig, ray_address: str | None, connect: bool) -> list[Check]:
    import os

    if cfg.suite.executor != "ray":
        return [Check("ray", "executor", "ok", "serial executor: no cluster needed")]
    address = ray_address or os.environ.get("RAY_ADDRESS") or cfg.ray.address
    requests = {m: cfg.ray.trial_resources(m) for m in cfg.suite.methods}
    if address is None:
        import torch

        cpus, gpus = cfg.ray.num_cpus or os.cpu_count() or 1, cfg.ray.num_gpus if cfg.ray.num_gpus is not None else torch.cuda.device_count()
        nodes = [{"CPU": float(cpus), "GPU": float(gpus)}]
        where = f"embedded cluster on this machine ({cpus} CPUs, {gpus} GPUs)"
    elif not connect:
        return [Check("ray", address, "warn", "not contacted (--no-connect)")]
    else:
        from bench.ray.executor import cluster_nodes

        try:
            nodes = cluster_nodes(cfg, address)
        except BenchError as err:
            return [Check("ray", address, "missing", str(err).splitlines()[0], fix="ray start --head (on the head node), or check the address")]
        where = f"{address}: {len(nodes)} alive node(s), " + ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes)
    checks = [Check("ray", "cluster", "ok", where)]
    for method, r in sorted(requests.items()):
        fits = any(n.get("CPU", 0) >= r.cpu and n.get("GPU", 0) >= r.gpu and all(n.get(k, 0) >= v for k, v in r.custom.items()) for n in nodes)
        if not fits:
            checks.append(Check("ray", method, "missing", f"asks for {r.cpu:g} CPU, {r.gpu:g} GPU per trial; no node has that",
                                fix=f"lower [ray.resources.{method}] or add a node that has it"))
    return checks


def _disk_checks(cfg: BenchConfig, cache_need: int) -> list[Check]:
    from bench.io import free_bytes

    checks = []
    for label, folder, need in (("cache", cfg.paths.cache, cache_need), ("results", cfg.paths.results, 1 << 30)):
        probe = Path(folder)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = free_bytes(probe)
        ok = free >= need
        checks.append(Check("disk", f"{label} {folder}", "ok" if ok else "missing",
                            f"{_gib(free)} free, {_gib(need)} needed" + (" (decoded caches of the suite's datasets)" if label == "cache" else ""),
                            fix="" if ok else f"free space there or point paths.{label} at a larger disk"))
    return checks


def run_checks(cfg: BenchConfig, ray_address: str | None = None, connect: bool = True) -> list[Check]:
    """Every check for ``cfg``'s suite, in the order the table prints them."""
    from bench.pipeline.plan import backbone_image_size

    suite = cfg.suite
    try:
        size = backbone_image_size(suite.backbone)
    except BenchError:
        size = 224
    checks: list[Check] = []
    need = 0
    for name in suite.datasets:
        found, n = _dataset_checks(cfg, name, size)
        checks += found
        need += n
    checks += _weights_checks(cfg, suite.backbone)
    checks += _device_checks(cfg)
    checks += _ray_checks(cfg, ray_address, connect)
    checks += _disk_checks(cfg, need)
    return checks


def render(checks: list[Check], console) -> None:
    """A table on a terminal; one line per check for logs and pipes (no cell wrapped across lines)."""
    from bench.reports.escape import rich_text as escape
    from rich.table import Table

    colour = {"ok": "green", "warn": "yellow", "missing": "red"}
    if not console.is_terminal:
        for c in checks:
            fix = f" -> {escape(c.fix)}" if c.fix else ""
            console.print(f"[{colour[c.status]}]{c.status:<7}[/] {c.area:<7} {escape(c.item)}: {escape(c.detail)}{fix}",
                          soft_wrap=True, highlight=False)
        return

    table = Table(title="bench doctor", title_justify="left", expand=False)
    for col in ("area", "item", "status", "detail", "fix"):
        table.add_column(col, overflow="fold")
    for c in checks:
        table.add_row(c.area, escape(c.item), f"[{colour[c.status]}]{c.status}[/]", escape(c.detail), escape(c.fix))
    console.print(table)


def missing(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.status == "missing"]
