"""What a suite is: every method x dataset x seed resolved into a :class:`PlannedRun` (config, identity, run id,
the dataset copy it reads), and the triage of those runs against the result store (complete, newer, corrupt,
partial, new). Nothing here trains; :mod:`bench.pipeline.runner` runs one plan, :mod:`bench.pipeline.suite` all of them.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

import bench
from bench.reports.escape import rich_text as escape  # control and bidi characters removed too
from bench.store import store
from bench.config import BenchConfig
from bench.errors import ConfigError
from bench.registry import BACKBONES, DATASETS, METHODS


@dataclass
class PlannedRun:
    """One method x dataset x seed with everything that defines it."""

    run_id: str
    method: str
    dataset: str
    seed: int | None  # None: a deterministic method, run once whatever the suite's seeds
    backbone: str
    identity: dict[str, Any]
    run_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in the result (e.g. how a config was tuned)
    data_key: str | None = None  # which decoded copy of the dataset the run reads (see input_decode); None: the dataset

    @property
    def data(self) -> str:
        return self.data_key or self.dataset

    @property
    def label(self) -> str:
        return f"{self.method} / {self.dataset} / " + ("deterministic" if self.seed is None else f"seed {self.seed}")

    @property
    def torch_seed(self) -> int:
        """The seed generators get (a deterministic method draws nothing, but its code runs seeded all the same)."""
        return 0 if self.seed is None else self.seed


@dataclass
class SuiteOutcome:
    planned: list[PlannedRun] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def backbone_image_size(backbone: str) -> int:
    """The input resolution of a backbone, from its open_clip config (no weights loaded)."""
    from bench.backbones.loader import run_setup
    from bench.backbones.openclip import model_config

    spec = BACKBONES.get(backbone)
    run_setup(spec)
    size = model_config(spec.model_name)["vision_cfg"]["image_size"]  # an hf-hub repo's: from the HF cache
    return int(size[0] if isinstance(size, (list, tuple)) else size)


# torchvision's Resize((S, S)) on a fully decoded PIL image, as the released IntCLIP / Query2Label code resizes: PIL's
# bilinear resize (antialiased: its filter widens with the downscale factor), no JPEG draft decoding
OFFICIAL_DECODE = {"resample": "bilinear", "draft": False}


def input_decode(cfg: BenchConfig, method: str, dataset: str, method_config: Any = None) -> dict[str, Any]:
    """Dataset settings a method's input needs on top of ``[datasets.<dataset>]``: a method with ``preprocessing =
    "official"`` gets the released code's resize (:data:`OFFICIAL_DECODE`) on file-based datasets."""
    fields = DATASETS.get(dataset).Config.model_fields
    method_config = method_config or cfg.method_config(method)
    if getattr(method_config, "preprocessing", None) == "official" and set(OFFICIAL_DECODE) <= set(fields):
        return dict(OFFICIAL_DECODE)
    return {}


def data_key(dataset: str, overrides: dict[str, Any]) -> str:
    """Which decoded copy of ``dataset`` a run reads: the dataset name, plus the settings a method changed."""
    return dataset + "".join(f"@{k}={v}" for k, v in sorted(overrides.items()))


def dataset_adapter(cfg: BenchConfig, name: str, overrides: dict[str, Any] | None = None) -> Any:
    """The adapter of dataset ``name`` with its validated config, its data root and the cache folder."""
    return DATASETS.get(name)(cfg.dataset_config(name, overrides), cfg.data_root(name), cfg.paths.cache / "datasets")


def load_dataset(cfg: BenchConfig, name: str, image_size: int, overrides: dict[str, Any] | None = None):
    return dataset_adapter(cfg, name, overrides).load(image_size)


def check_support(backbone: str, methods: list[str]) -> Any:
    """Every method can run on ``backbone`` (by name and by the towers its open_clip config declares: nothing is
    loaded; an hf-hub repo's config comes from the HF cache), else a ConfigError naming both; returns the spec."""
    from bench.backbones.loader import spec_towers
    from bench.backbones.openclip import unsupported

    spec = BACKBONES.get(backbone)
    towers = spec_towers(spec)
    for method in methods:
        cls = METHODS.get(method)
        if not any(fnmatch.fnmatchcase(backbone, pat) for pat in cls.supported_backbones):
            raise ConfigError(f"method {method!r} does not support backbone {backbone!r} (supports {cls.supported_backbones})")
        reason = unsupported(cls, *towers)
        if reason:
            raise ConfigError(f"method {method!r} cannot run on backbone {backbone!r}: {reason}")
    return spec


def plan_suite(cfg: BenchConfig, datasets: dict[str, Any] | None = None) -> tuple[list[PlannedRun], dict[str, Any]]:
    """Resolve every run of the suite; loads each dataset once (its manifest hash is part of the run id)."""
    suite = cfg.suite
    from bench.backbones.loader import architecture, weights_identity

    spec = check_support(suite.backbone, suite.methods)
    weights = weights_identity(spec, cfg.backbone_pretrained(suite.backbone), cfg.paths.weights)
    backbone = {"name": suite.backbone, "pretrained": cfg.backbone_pretrained(suite.backbone), "weights": weights,
                "architecture": architecture(spec, cfg.backbone_pretrained(suite.backbone))}
    datasets = dict(datasets or {})
    size = backbone_image_size(suite.backbone)
    plans = []
    for dataset in suite.datasets:
        for method in suite.methods:
            method_config = cfg.method_config(method)
            overrides = input_decode(cfg, method, dataset, method_config)
            key = data_key(dataset, overrides)
            if key not in datasets:  # each decoded copy is loaded once
                datasets[key] = load_dataset(cfg, dataset, size, overrides)
            common = {
                "code": {"bench": bench.__version__, "method": METHODS.get(method).version},
                "method": {"name": method, "config": method_config.model_dump(mode="json")},
                "backbone": backbone,
                "dataset": {
                    "name": dataset,
                    "config": cfg.dataset_config(dataset, overrides).model_dump(mode="json"),
                    "manifest_sha256": datasets[key].manifest_sha256,
                },
                "protocol": cfg.protocol.name,
            }
            # a method without randomness of its own, on fixed weights, gives the same scores for every seed: one run
            seeds = [None] if METHODS.get(method).deterministic and weights != "none" else suite.seeds
            for seed in seeds:
                identity = {**common, "seed": seed}
                run_id = store.compute_run_id(identity)
                run_dir = store.runs_dir(cfg.paths.results) / run_id
                plans.append(PlannedRun(run_id, method, dataset, seed, suite.backbone, identity, run_dir, data_key=key))
    return plans, datasets


def triage(plans: list[PlannedRun], console: Console, read_only: str | None = None) -> tuple[SuiteOutcome, list[PlannedRun]]:
    """Split planned runs into complete (skipped) and to-run; corrupt results are moved aside and rerun.
    ``read_only`` (why the store cannot be written): complete runs are reused as ever, and the first run that would
    write (a corrupt result to move aside, a run to do or resume) raises :class:`ConfigError` naming that write."""
    outcome = SuiteOutcome(planned=plans)
    todo = []
    for plan in plans:
        status, reason = store.run_status(plan.run_dir)
        if status == "complete":
            outcome.skipped.append(plan.run_id)
            continue
        if status == "newer":  # a newer harness's record: never rerun, never moved
            outcome.skipped.append(plan.run_id)
            console.print(f"[yellow]{escape(plan.label)}: {escape(str(reason))}; kept as is[/]")
            continue
        if read_only is not None:
            write = {"corrupt": f"moving the corrupt result {plan.run_dir / store.RESULT} aside ({reason})",
                     "partial": f"resuming {plan.label} from its checkpoint in {plan.run_dir}"}.get(
                         status, f"running {plan.label} (its result goes to {plan.run_dir})")
            raise ConfigError(f"paths.results: {read_only}; the first write needed: {write}")
        if status == "corrupt":
            moved = store.quarantine(plan.run_dir)
            console.print(f"[yellow]corrupt result for {escape(plan.label)}: {escape(str(reason))}; kept as {moved.name}, rerunning[/]")
        elif status == "partial":
            console.print(f"[cyan]{escape(plan.label)}: checkpoint found, resuming[/]")
        todo.append(plan)
    return outcome, todo
