"""``bench reproduce intclip-eccv2024``: every run the paper's tables need, planned, checked, run and reported.

A preset names, per table of the paper, the methods x datasets x backbones to run (Table 1: the main comparison on
Intentonomy, RN101 and IntCLIP on ViT-B/32; Tables 2-5: IntCLIP's ablation variants; Table 6a: EmotionROI and FI;
Table 6b: IntCLIP with its HCI sentences on ViT-B/32, the runs of Table 1, and HLEG with and without them),
over the preset's seeds, under the protocol the command line chooses. The plan is printed with an estimate of its
GPU-hours; ``bench doctor``'s checks gate the real thing; only runs without a complete result are run (the store
is the usual one, so a rerun resumes); one HTML page (and, where pdflatex is installed, one PDF) puts every
reproduced table beside the paper's numbers and the differences.

``--scale tiny`` runs the same plan on the tiny CLIP, one seed and one epoch per method: the end-to-end test of the
whole path on generated Intentonomy- and EmotionROI/FI-shaped roots.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config import BenchConfig, load_config
from bench.errors import BenchError, ConfigError


@dataclass(frozen=True)
class Job:
    """One suite of a paper table: methods x datasets on one backbone."""

    table: str
    methods: tuple[str, ...]
    datasets: tuple[str, ...]
    backbone: str


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    seeds: tuple[int, ...]
    jobs: tuple[Job, ...]

    @property
    def tables(self) -> list[str]:
        return list(dict.fromkeys(j.table for j in self.jobs))


def _ablation_methods(key: str) -> tuple[str, ...]:
    from bench.reports.paper import ABLATIONS

    ablation = next(a for a in ABLATIONS if a.key == key)
    # a row the full method stands for (Table 4's dual/semantic layers) reuses its runs rather than a copy of them
    return tuple(dict.fromkeys("intclip" if "intclip" in names else names[0] for _, names, _ in ablation.rows))


def _hci_methods() -> tuple[str, ...]:
    """Table 6b's runnable rows: those with a method (IntCLIP (HCI), HLEG [33], HLEG [33] + HCI); IntCLIP (HCI-FG) has none."""
    from bench.reports.paper import HCI_GENERALISATION

    return tuple(dict.fromkeys(names[0] for _, names, _ in HCI_GENERALISATION.rows if names))


TABLE1 = ("label-prior", "zeroshot", "linear-probe", "dualcoop", "query2label", "hleg", "labcr", "pipnet", "intclip",
          "intclip-official")
INTCLIP_ECCV2024 = Preset(
    "intclip-eccv2024",
    "IntCLIP (ECCV 2024): Tables 1-5 and 6b on Intentonomy, Table 6a on EmotionROI and FI",
    (0, 1, 2),
    (
        Job("1", TABLE1, ("intentonomy",), "RN101"),
        Job("1", ("zeroshot", "intclip"), ("intentonomy",), "ViT-B-32"),
        *(Job(k[-1], _ablation_methods(f"table{k[-1]}"), ("intentonomy",), "RN101") for k in ("t2", "t3", "t4", "t5")),
        Job("6a", ("zeroshot", "linear-probe", "intclip"), ("emotionroi", "fi"), "RN101"),
        Job("6b", _hci_methods(), ("intentonomy",), "ViT-B-32"),  # the paper's IntCLIP (HCI) is its ViT-B/32 row
    ),
)
PRESETS = {INTCLIP_ECCV2024.name: INTCLIP_ECCV2024}

# Measured anchor (SPEC 9): the released IntCLIP code, RN101, on an NVIDIA H200: 770 img/s training (batch 64),
# 2,780 img/s eval. An upper bound for methods whose image side is frozen (DualCoOp, the linear probe's features).
ANCHOR_TRAIN, ANCHOR_EVAL = 770.0, 2780.0
# The anchor's images are already decoded on the GPU; a run here reads the decoded-image cache, built once per
# dataset x input size (x decode) on the CPU by `bench data prepare` (or the first run) at about the decode rate
# `bench data verify` measures (1,074 img/s on 2 cores for Intentonomy's 256 px JPEGs; benchmarks/data_throughput.py).
DECODE_RATE = 1000.0
# split sizes of the real datasets, for an estimate before the data is there (Intentonomy's official files; EmotionROI
# 1,188/792 official, val carved from train; FI 23,308 images split by [datasets.fi] fractions)
KNOWN_SIZES = {"intentonomy": (12740, 498, 1217), "emotionroi": (1188, 0, 792), "fi": (23308, 0, 0)}


def select(preset: Preset, tables: list[str] | None) -> list[Job]:
    if not tables:
        return list(preset.jobs)
    unknown = [t for t in tables if t not in preset.tables]
    if unknown:
        raise ConfigError(f"--tables {','.join(unknown)}: {preset.name} has tables {', '.join(preset.tables)}")
    return [j for j in preset.jobs if j.table in tables]


def _scale(jobs: list[Job], scale: str) -> list[Job]:
    """``tiny``: every job on the tiny CLIP (jobs that become the same suite are merged)."""
    if scale == "paper":
        return jobs
    merged: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for j in jobs:
        merged.setdefault((j.table, j.datasets), []).extend(j.methods)
    return [Job(t, tuple(dict.fromkeys(m)), d, "tiny-clip") for (t, d), m in merged.items()]


def job_config(config: Path | None, job: Job, seeds: tuple[int, ...], overrides: dict[str, Any], scale: str) -> BenchConfig:
    """The config of one job: the user's file, the job's suite, the seeds, the protocol and ``--set`` overrides; at
    ``tiny`` scale one epoch per method."""
    values = {**overrides, "suite.methods": list(job.methods), "suite.datasets": list(job.datasets),
              "suite.backbone": job.backbone, "suite.seeds": list(seeds)}
    if scale == "tiny":
        probe = load_config(config, values, sections=False)
        for method in job.methods:
            if "epochs" in type(probe.method_config(method, job.backbone)).model_fields:
                values.setdefault(f"methods.{method}.epochs", 1)
    cfg = load_config(config, values)
    if scale == "paper" and _embedded_default(cfg):
        # the embedded default's [methods.*] cut epochs for 2 CPU cores: the paper's runs take each method's own
        # settings (its defaults are the paper's and the released code's), whatever else that file says
        cfg = load_config(config, values | {f"methods.{m}": {} for m in cfg.methods})
    return cfg


def _embedded_default(cfg: BenchConfig) -> bool:
    """Whether ``cfg`` was read from the packaged default (no bench.toml, or the repository's copy of it)."""
    from bench.config import DEFAULT_CONFIG

    return cfg.builtin or (cfg.source is not None and cfg.source.is_file() and cfg.source.read_bytes() == DEFAULT_CONFIG.read_bytes())


@dataclass
class PlanRow:
    table: str
    backbone: str
    dataset: str
    method: str
    runs: int
    done: int  # complete records of these names and seeds already in the store
    epochs: int
    hours: float | None
    basis: str
    shared: str | None = None  # the table whose runs these are (the same runs serve several tables)
    images: int = 0  # the dataset's images (train + val + test), for its decoded-image cache


@dataclass
class Plan:
    rows: list[PlanRow] = field(default_factory=list)
    configs: list[BenchConfig] = field(default_factory=list)
    run_ids: set[str] = field(default_factory=set)

    @property
    def hours(self) -> float:
        return sum(r.hours or 0.0 for r in self.rows)

    @property
    def runs(self) -> int:
        return sum(r.runs for r in self.rows if r.shared is None)

    def caches(self) -> dict[tuple[str, int], int]:
        """(dataset, input size) -> images of each decoded-image cache the plan reads (built once, then reused)."""
        from bench.pipeline.plan import backbone_image_size

        out: dict[tuple[str, int], int] = {}
        for r in self.rows:
            size = backbone_image_size(r.backbone)
            out[(r.dataset, size)] = max(out.get((r.dataset, size), 0), r.images)
        return out


def _sizes(cfg: BenchConfig, dataset: str) -> tuple[int, int, int] | None:
    from bench.pipeline.plan import dataset_adapter

    adapter = dataset_adapter(cfg, dataset)
    try:
        paths = adapter.listing().paths
        return tuple(len(paths.get(s, [])) for s in ("train", "val", "test"))  # type: ignore[return-value]
    except BenchError:
        pass
    known = KNOWN_SIZES.get(dataset)
    if known and dataset == "fi":
        f = cfg.dataset_config(dataset).fractions
        return tuple(round(known[0] * x) for x in f)  # type: ignore[return-value]
    return known


def _stored(results: Path) -> list:
    """The store's readable records, read once per plan (rows look runs up in them)."""
    from bench.store import store

    return [rec for _, rec in store.iter_results(results) if not isinstance(rec, BenchError)]


def _seconds_per_image(records: list, method: str, backbone: str) -> tuple[float, str] | None:
    """Seconds per training image (each epoch's eval included) from the store's earlier runs of ``method`` on
    ``backbone`` (the median)."""
    rates = []
    devices = set()
    for rec in records:
        if method not in (rec.method.name, *rec.method.aliases) or rec.backbone.get("name") != backbone:
            continue
        if not str(rec.env.get("device", "")).startswith("cuda"):
            continue  # GPU-hours: a CPU run's timing says nothing about them
        seconds, epochs = rec.timing.get("seconds_train_and_eval"), rec.training.epochs_run
        n = rec.dataset.split_sizes.get("train", 0)
        if seconds and epochs and n:
            rates.append(seconds / (epochs * n))
            devices.add(str(rec.env.get("device", "?")))
    if not rates:
        return None
    return statistics.median(rates), f"store: {len(rates)} GPU run(s) on {', '.join(sorted(devices))}"


def estimate(records: list, method: str, backbone: str, sizes: tuple[int, int, int] | None, epochs: int, runs: int) -> tuple[float | None, str]:
    """GPU-hours of ``runs`` runs and what the estimate rests on (``records``: the store's, for measured rates)."""
    if sizes is None:
        return None, "dataset size unknown"
    train, val, test = sizes
    measured = _seconds_per_image(records, method, backbone)
    if measured is not None:
        per_image, basis = measured
        seconds = max(epochs, 1) * train * per_image
    elif epochs:
        seconds = epochs * (train / ANCHOR_TRAIN + val / ANCHOR_EVAL) + test / ANCHOR_EVAL
        basis = "anchor (H200)" + ("" if method.startswith("intclip") else ", upper bound")
    else:
        seconds = (train + val + test) / ANCHOR_EVAL
        basis = "anchor (H200), eval only"
    return runs * seconds / 3600, basis


def _done(records: list, key: tuple[str, str, str, str], seeds: list[int | None]) -> int:
    """Records for ``key`` = (method, dataset, backbone, protocol) and these seeds (the real run triages by run id)."""
    method, rest = key[0], key[1:]
    return len({rec.seed for rec in records if rec.seed in seeds and method in (rec.method.name, *rec.method.aliases)
                and (rec.dataset.name, rec.backbone.get("name"), rec.protocol.name) == rest})


def make_plan(config: Path | None, preset: Preset, tables: list[str] | None, scale: str, overrides: dict[str, Any]) -> Plan:
    """Every job's config and one row per table x backbone x dataset x method with its runs and estimate."""
    from bench.pipeline.plan import experiment_key
    from bench.registry import METHODS

    seeds = (0,) if scale == "tiny" else preset.seeds
    plan = Plan()
    first: dict[tuple[str, str, str], tuple[str, str]] = {}  # (backbone, dataset, experiment) -> (table, name) planning it
    stored: dict[Path, list] = {}
    for job in _scale(select(preset, tables), scale):
        cfg = job_config(config, job, seeds, overrides, scale)
        plan.configs.append(cfg)
        if cfg.paths.results not in stored:  # every job shares one store: read it once
            stored[cfg.paths.results] = _stored(cfg.paths.results)
        records = stored[cfg.paths.results]
        fixed = cfg.backbone_pretrained(job.backbone) != "none"
        for dataset in job.datasets:
            sizes = _sizes(cfg, dataset)
            for method in job.methods:
                run_seeds: list[int | None] = [None] if METHODS.get(method).deterministic and fixed else list(seeds)
                epochs = int(getattr(cfg.method_config(method, job.backbone), "epochs", 0) or 0)
                # one experiment = one config: names that resolve to the same config (a variant equal to another,
                # or the runs of another table) share their runs, counted once
                key = (job.backbone, dataset, experiment_key(method, cfg.method_config(method, job.backbone)))
                owner_table, owner = first.setdefault(key, (job.table, method))
                shared = owner_table if (owner_table, owner) != (job.table, method) else None
                same = f"= Table {owner_table}" + (f" {owner}" if owner != method else "")
                hours, basis = (0.0, same) if shared else estimate(records, method, job.backbone, sizes, epochs, len(run_seeds))
                done = _done(records, (method, dataset, job.backbone, cfg.protocol.name), run_seeds)
                plan.rows.append(PlanRow(job.table, job.backbone, dataset, method, len(run_seeds), done, epochs, hours, basis,
                                         shared, sum(sizes) if sizes else 0))
    return plan


def print_plan(plan: Plan, preset: Preset, console) -> None:
    from bench.reports.escape import rich_text as escape
    from rich.table import Table

    unknown = sum(1 for r in plan.rows if r.hours is None)
    hours = f"about {plan.hours:.1f} GPU-hours" + (f" (+ {unknown} rows of unknown size)" if unknown else "")
    tables = list(dict.fromkeys(r.table for r in plan.rows))
    scope = preset.title if tables == preset.tables else f"{preset.name}: Table{'s' if len(tables) > 1 else ''} {', '.join(tables)}"
    protocol = plan.configs[0].protocol.name if plan.configs else "?"
    table = Table(title=f"{scope} (protocol {protocol}): {plan.runs} runs, {hours}", title_justify="left")
    for col, justify in (("table", "left"), ("backbone", "left"), ("dataset", "left"), ("method", "left"), ("runs", "right"),
                         ("done", "right"), ("epochs", "right"), ("GPU-h", "right"), ("estimate from", "left")):
        table.add_column(col, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for r in plan.rows:
        hours = "?" if r.hours is None else f"{r.hours:.2f}"
        table.add_row(r.table, r.backbone, r.dataset, escape(r.method), str(r.runs), str(r.done),
                      str(r.epochs or "-"), hours, escape(r.basis))
    console.print(table)
    caches = plan.caches()
    decode_minutes = sum(caches.values()) / DECODE_RATE / 60
    console.print(f"decoded-image caches: {len(caches)} (dataset x input size: "
                  f"{', '.join(f'{d} {s}px' for d, s in caches)}), about {decode_minutes:.0f} CPU-minutes to build once at "
                  f"~{DECODE_RATE:,.0f} img/s (bench data prepare; an existing cache is reused), not in the GPU-hours",
                  highlight=False)
    console.print("anchor: the released IntCLIP code's RN101 training step on an NVIDIA H200 (770 img/s train, 2,780 img/s "
                  "eval, images on the GPU; SPEC 9), an upper bound for methods with a frozen image side; store: the "
                  "median seconds per training image of this store's earlier GPU runs of that method and backbone "
                  "(CPU runs ignored), with the GPUs named; "
                  "= Table N (name): the same runs (one config) serve that table or name, counted once.", highlight=False)
    if "6b" in tables:
        console.print("Table 6b: IntCLIP (HCI), HLEG [33] (hleg) and HLEG [33] + HCI (hleg:hci) run; no IntCLIP variant has "
                      "the paper's HCI-FG sentences, so that row is the paper's only.", highlight=False)


def gate(plan: Plan, console, ray_address: str | None = None) -> list:
    """``bench doctor``'s checks for every job (data, weights, devices, cluster, disk); returns what is missing."""
    from bench.workflows import doctor

    found: dict[tuple[str, str], Any] = {}
    for cfg in plan.configs:
        for check in doctor.run_checks(cfg, ray_address):
            found.setdefault((check.area, check.item), check)
    checks = list(found.values())
    doctor.render(checks, console)
    return doctor.missing(checks)


def run_all(plan: Plan, console, ray_address: str | None = None) -> dict[str, str]:
    """Run what is missing of every job; returns the failures (run id -> message) and fills ``plan.run_ids``."""
    from bench.workflows.suite import run_suite

    failed: dict[str, str] = {}
    for cfg in plan.configs:
        outcome = run_suite(cfg, console, ray_address)
        plan.run_ids |= {p.run_id for p in outcome.planned}
        failed.update(outcome.failed)
    return failed


def write_report(plan: Plan, folder: Path, preset: Preset, bootstrap: int = 1000) -> list[Path]:
    """One HTML page (and a PDF where pdflatex is installed) with every reproduced table beside the paper's
    numbers and the reproduced-minus-paper differences, from the plan's runs only."""
    import shutil
    import subprocess
    import tempfile

    from bench.reports.render import report_inputs
    from bench.io import atomic_write_bytes, atomic_write_text
    from bench.reports import layout
    from bench.reports.html import render_page
    from bench.reports.latex import to_latex

    results = plan.configs[0].paths.results
    declared = plan.configs[0].report  # the paper's method, IntCLIP, unless bench.toml declares another
    records, summary = report_inputs(results, bootstrap, run_ids=plan.run_ids, ref=declared.reference,
                                     test=declared.test, alpha=declared.alpha)
    paper = layout.paper_tables(summary, reference=True)
    written = [folder / f"{preset.name}.html", folder / f"{preset.name}.tex"]
    atomic_write_text(written[0], render_page(preset.title, paper, summary, records, subtitle=f"{len(records)} runs in {results}"))
    atomic_write_text(written[1], to_latex(paper, standalone=True))
    if shutil.which("pdflatex"):
        with tempfile.TemporaryDirectory() as work:
            shutil.copy(written[1], Path(work) / "tables.tex")
            done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "tables.tex"], cwd=work,
                                  capture_output=True, text=True, timeout=300)
            if done.returncode == 0:
                atomic_write_bytes(folder / f"{preset.name}.pdf", (Path(work) / "tables.pdf").read_bytes())
                written.append(folder / f"{preset.name}.pdf")
    return written
