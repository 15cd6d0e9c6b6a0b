"""What a suite is: every method x dataset x seed resolved into a :class:`PlannedRun` (config, identity, run id,
the dataset copy it reads). Nothing here trains, prints or writes; :mod:`bench.workflows.suite` triages the plans
against the store and runs what is missing, :mod:`bench.pipeline.runner` runs one.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench
from bench.store import store
from bench.config import BenchConfig
from bench.errors import ConfigError
from bench.pipeline.labels import LabelPlan
from bench.pipeline.limit import LimitPlan
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
    aliases: list[str] = field(default_factory=list)  # other names of the suite that resolved to this run's identity
    data_key: str | None = None  # which decoded copy of the dataset the run reads (see input_decode); None: the dataset

    @property
    def data(self) -> str:
        return self.data_key or self.dataset

    @property
    def names(self) -> list[str]:
        """Every name the suite gave this run: the method, then its aliases."""
        return [self.method, *self.aliases]

    @property
    def dataset_label(self) -> str:
        """The dataset, and the label-efficiency level the run trains at (bench.pipeline.labels), if any."""
        level, limit = self.identity.get("labels"), self.identity.get("limit")
        return (self.dataset + (f" @ {level['protocol']} {level['value']}" if level else "")
                + (f" (limit {limit['n']})" if limit else ""))

    @property
    def label(self) -> str:
        method = self.method + (f" (= {', '.join(self.aliases)})" if self.aliases else "")
        return f"{method} / {self.dataset_label} / " + ("deterministic" if self.seed is None else f"seed {self.seed}")

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
    planned: dict[str, PlannedRun] = {}
    labels = LabelPlan(suite)  # the label-efficiency levels (README "Label efficiency"), if the suite sets one
    limit = LimitPlan(suite)  # smoke mode (README "Smoke mode"): N images per split, if the suite sets a limit
    for dataset in suite.datasets:
        for method in suite.methods:
            method_config = cfg.method_config(method)
            overrides = input_decode(cfg, method, dataset, method_config)
            key = data_key(dataset, overrides)
            if key not in datasets:  # each decoded copy is loaded once
                datasets[key] = load_dataset(cfg, dataset, size, overrides)
            common = {
                "code": {"bench": bench.__version__, "method": METHODS.get(method).version},
                "method": method_identity(method, method_config),
                "backbone": backbone,
                "dataset": {
                    "name": dataset,
                    "config": cfg.dataset_config(dataset, overrides).model_dump(mode="json"),
                    "manifest_sha256": datasets[key].manifest_sha256,
                },
                "protocol": cfg.protocol.name,
            }
            data = limit.data(key, datasets[key])  # the label levels apply to the limited training split
            for level in labels.levels_for(method, dataset, data):  # [None]: the whole training split
                # a method without randomness of its own, on fixed weights, gives the same scores for every seed: one
                # run (on a label level the seed draws the subset: one per seed)
                seeds = [None] if METHODS.get(method).deterministic and weights != "none" and level is None else suite.seeds
                for seed in seeds:
                    identity = {**common, "seed": seed, **labels.identity(level, key, data, seed),
                                **limit.identity(key, datasets[key])}
                    canonical = store.compute_run_id(identity)
                    if canonical in planned:  # another name of the suite resolved to this config: one run, both names
                        planned[canonical].aliases.append(method)
                        continue
                    run_id = _stored_id(cfg.paths.results, identity, method)
                    run_dir = store.runs_dir(cfg.paths.results) / run_id
                    planned[canonical] = PlannedRun(run_id, method, dataset, seed, suite.backbone, identity, run_dir, data_key=key)
    return list(planned.values()), datasets


def method_identity(method: str, config: Any) -> dict[str, Any]:
    """What identifies a method in a run's identity: its registered base name and its resolved config. A variant's
    name is not part of it: ``intclip:no-sa`` and ``intclip:fusion-add`` resolve to one config, so they are one
    experiment, trained once per seed and reported under each name."""
    return {"name": method.partition(":")[0], "config": config.model_dump(mode="json")}


def experiment_key(method: str, config: Any) -> str:
    """A short key of :func:`method_identity`: equal for two names that train the same experiment."""
    return store.compute_run_id(method_identity(method, config))


def _stored_id(results: Path, identity: dict[str, Any], method: str) -> str:
    """The run id of ``identity``; for a variant whose run a store written before 0.2.1 holds under the identity
    with the variant's name (complete), that run's id, so old stores are read, never rerun."""
    run_id = store.compute_run_id(identity)
    if ":" in method and not (store.runs_dir(results) / run_id / store.RESULT).is_file():
        legacy = store.compute_run_id({**identity, "method": {**identity["method"], "name": method}})
        if (store.runs_dir(results) / legacy / store.RESULT).is_file():
            return legacy
    return run_id
