"""bench.toml: typed, validated once at the edge, overridable from the CLI.

Without a config file the built-in defaults are ``bench/default.toml``, the repository's ``bench.toml`` shipped in
the package (tests keep the two identical, whole); the pydantic defaults below are what a section a config file
leaves out gets. Relative paths resolve against the config file's folder (the current folder for the built-in
defaults). Per-method and per-dataset sections are
validated by the registered method's / adapter's own ``Config`` class, so an unknown key anywhere fails with its
dotted path, e.g. ``bench.toml: methods.linear-probe.c_gird: unknown key``.
"""

from __future__ import annotations

import difflib
import re
import typing
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from bench.errors import ConfigError
from bench.overrides import set_dotted

#: The built-in defaults: the repository's bench.toml, shipped in the package (tests keep the two identical), so a
#: command run from any folder without a bench.toml runs the same experiment as from the repository.
DEFAULT_CONFIG = Path(__file__).resolve().parent / "default.toml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class SuiteConfig(_Strict):
    """What ``bench run`` runs: methods x datasets x seeds on one backbone."""

    methods: list[str] = Field(
        default_factory=lambda: ["label-prior", "zeroshot", "linear-probe", "dualcoop", "intclip", "intclip-official", "query2label"]
    )
    datasets: list[str] = Field(default_factory=lambda: ["synthetic"])
    backbone: str = "tiny-clip"
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    executor: Literal["ray", "serial"] = "ray"
    # label efficiency (README "Label efficiency"), at most one; unset: the whole training split. train_fraction:
    # seeded stratified nested subsets; shots: k images per class (single-label data); label_proportion: partial
    # labels, each training label observed with this probability (DualCoOp's setting)
    train_fraction: list[Annotated[float, Field(gt=0, le=1)]] | None = Field(default=None, min_length=1)
    shots: list[Annotated[int, Field(ge=1)]] | None = Field(default=None, min_length=1)
    label_proportion: list[Annotated[float, Field(gt=0, le=1)]] | None = Field(default=None, min_length=1)
    limit: int | None = Field(default=None, ge=1)  # smoke mode: N images per split (bench.pipeline.limit)

    @field_validator("methods", "datasets", "seeds")
    @classmethod
    def _non_empty(cls, value: list) -> list:
        if not value:
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _one_label_protocol(self) -> SuiteConfig:
        chosen = {k: getattr(self, k) for k in ("train_fraction", "shots", "label_proportion") if getattr(self, k)}
        if len(chosen) > 1:
            raise ValueError(f"set at most one of suite.train_fraction, suite.shots, suite.label_proportion (got {', '.join(chosen)})")
        for key, values in chosen.items():
            if len(set(values)) != len(values):
                raise ValueError(f"suite.{key} lists a value twice: {values}")
        return self


class PathsConfig(_Strict):
    """Where results, caches, weights and datasets live."""

    results: Path = Path("results")
    cache: Path = Path(".bench-cache")
    weights: Path = Path("weights")
    data: dict[str, Path] = Field(default_factory=dict)


class ProtocolConfig(_Strict):
    """Model selection protocol. ``val-threshold`` selects everything on val; ``intclip-code`` reproduces the
    official IntCLIP code (epoch selected on test, threshold 0.5) and is marked as such in every table."""

    name: Literal["val-threshold", "intclip-code"] = "val-threshold"


class EngineConfig(_Strict):
    """Training/eval engine settings shared by every method."""

    device: str = "auto"  # auto (CUDA when there is one), cpu, cuda, cuda:<index>, mps
    amp: bool = True
    eval_batch_size: int = Field(default=256, gt=0)
    progress: bool = True
    keep_best_weights: bool = True
    # torch deterministic algorithms + cuDNN deterministic kernels + cuBLAS workspace config on CUDA (slower; see
    # README "Determinism"); CPU runs are bit-reproducible without it
    deterministic: bool = False

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError("expected auto, cpu, cuda, cuda:<index> or mps")
        return value


class TrialResources(_Strict):
    """What one Tune trial of a method reserves: CPUs, a GPU count or a fraction that divides 1, and custom Ray
    resources (``custom = {accelerator_type_H100 = 0.001}``: only nodes that declare them run the trial)."""

    cpu: float = Field(default=1.0, gt=0)
    gpu: float = Field(default=0.0, ge=0)
    custom: dict[str, float] = Field(default_factory=dict)

    def request(self) -> dict[str, float]:
        """As Ray names resources: ``{"CPU": .., "GPU": .., <custom>: ..}`` (zero amounts left out)."""
        return {k: v for k, v in {"CPU": self.cpu, "GPU": self.gpu, **self.custom}.items() if v}

    @field_validator("gpu")
    @classmethod
    def _gpu_fraction(cls, value: float) -> float:
        if 0 < value < 1 and abs(1 / value - round(1 / value)) > 1e-9:
            raise ValueError(f"a GPU fraction must divide 1 (1/2, 1/3, 1/4, ...), got {value}")
        if value > 1 and value != int(value):
            raise ValueError(f"more than one GPU must be a whole number, got {value}")
        return value


class RayConfig(_Strict):
    """The Ray Tune executor. ``address`` None = an embedded local Ray; ``"auto"`` (exactly one cluster on this machine) or
    ``"ray://host:port"`` = an existing cluster (also from ``RAY_ADDRESS`` or ``--ray-address``), which requires a
    shared ``storage_path``."""

    address: str | None = None
    storage_path: str | None = None
    num_cpus: int | None = Field(default=None, gt=0)
    num_gpus: int | None = Field(default=None, ge=0)
    max_failures: int = Field(default=1, ge=0)
    max_concurrent_trials: int | None = Field(default=None, gt=0)
    # run the next trial in a finished trial's worker (no new process, no second torch import): runs are seeded and
    # threaded the same either way, so the scores do not change (tests/test_determinism.py)
    reuse_actors: bool = True
    resources: dict[str, TrialResources] = Field(default_factory=lambda: {"default": TrialResources()})

    def trial_resources(self, method: str) -> TrialResources:
        base = method.partition(":")[0]
        for key in (method, base, "default"):
            if key in self.resources:
                return self.resources[key]
        return TrialResources()


class TuneConfig(_Strict):
    """`bench tune`: Optuna TPE (seeded, the method's preset as the first point) + ASHA on the val metric, then a
    refit of the best config over ``suite.seeds`` with one test evaluation each."""

    num_samples: int = Field(default=6, gt=0)
    max_concurrent_trials: int | None = Field(default=None, gt=0)
    seed: int = 0
    search_seed: int = 0  # the training seed of the search trials
    grace_period: int = Field(default=1, gt=0)
    reduction_factor: int = Field(default=2, gt=1)
    search_space: dict[str, dict[str, list[Any]]] = Field(default_factory=dict)  # method -> key -> [kind, ...]


class LeaderboardConfig(_Strict):
    """`bench leaderboard`, the nightly job: which suite it runs (each unset key falls back to ``[suite]``), where
    the site goes, and what counts as a regression: a drop of the primary metric (macro F1, or accuracy for
    single-label datasets, unless ``metric`` names one) by more than ``tolerance`` points since the previous
    regeneration."""

    methods: list[str] | None = None
    datasets: list[str] | None = None
    seeds: list[int] | None = None
    backbone: str | None = None
    site: Path = Path("site")
    tolerance: float = Field(default=1.0, ge=0)  # percentage points
    metric: Literal["auto", "macro_f1", "micro_f1", "samples_f1", "mAP", "accuracy", "mean_class_accuracy"] = "auto"
    split: Literal["test", "val"] = "test"
    bootstrap: int = Field(default=1000, ge=0)

    @field_validator("methods", "datasets", "seeds")
    @classmethod
    def _non_empty(cls, value: list | None) -> list | None:
        if value is not None and not value:
            raise ValueError("must not be empty (leave the key out to use [suite]'s)")
        return value


class ReportConfig(_Strict):
    """`bench report` (and the leaderboard's tables): the significance test and the reference it compares every
    method against. The reference is declared here, before any result exists (never picked from the results):
    by default the paper's method, IntCLIP; a table without it prints no p-values and says why."""

    reference: str | None = "intclip"  # a method name (or a table's row label); None: no significance column
    test: Literal["seed-t", "bootstrap"] = "seed-t"  # seed-t: calibrated at 3, 5 and 10 seeds (see README)
    alpha: float = Field(default=0.05, gt=0, lt=1)


class BackboneConfig(_Strict):
    """Weights of one backbone: an open_clip pretrained tag, a local checkpoint path, or ``"none"`` (random); and
    method settings that apply only on this backbone (``[backbones.<name>.methods.<method>]``, over
    ``[methods.<method>]``), e.g. a preprocessing that only these weights need."""

    pretrained: str | None = None
    methods: dict[str, dict[str, Any]] = Field(default_factory=dict)


class BenchConfig(_Strict):
    """The whole of bench.toml."""

    suite: SuiteConfig = Field(default_factory=SuiteConfig)
    paths: PathsConfig = Field(default_factory=PathsConfig)
    protocol: ProtocolConfig = Field(default_factory=ProtocolConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    leaderboard: LeaderboardConfig = Field(default_factory=LeaderboardConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    backbones: dict[str, BackboneConfig] = Field(default_factory=dict)
    methods: dict[str, dict[str, Any]] = Field(default_factory=dict)
    datasets: dict[str, dict[str, Any]] = Field(default_factory=dict)

    source: Path | None = Field(default=None, exclude=True)
    builtin: bool = Field(default=False, exclude=True)  # loaded from the packaged default.toml
    overrides: dict[str, Any] = Field(default_factory=dict, exclude=True)  # --set / CLI flags applied on top
    _validated: dict[tuple[str, ...], BaseModel] = PrivateAttr(default_factory=dict)  # see _typed

    def config_file(self) -> dict[str, Any]:
        """Where this config came from, for the result record: the file (the packaged defaults are named
        ``package:bench/default.toml``), the hash of its bytes and the overrides applied on top."""
        import hashlib

        if self.source is None:
            return {"path": None, "sha256": None, "overrides": dict(self.overrides)}
        digest = hashlib.sha256(self.source.read_bytes()).hexdigest() if self.source.is_file() else None
        path = f"package:bench/{DEFAULT_CONFIG.name}" if self.builtin else str(self.source)
        return {"path": path, "sha256": digest, "overrides": {k: v for k, v in self.overrides.items()}}

    def method_config(self, name: str, backbone: str | None = None, params: dict[str, Any] | None = None) -> BaseModel:
        """The validated config of method ``name`` on ``backbone`` (default: the suite's): its defaults, overridden by
        ``[methods.<name>]``, overridden by ``[backbones.<backbone>.methods.<name>]``, overridden by ``params`` (a
        search trial's sample). Each distinct section is validated once (at load for those the file names) and the
        typed object kept; callers get their own copy. Errors name the dotted key and the file."""
        from bench.registry import METHODS

        backbone = backbone or self.suite.backbone
        where = f"backbones.{backbone}.methods.{name}+methods.{name}" if self._on_backbone(name, backbone) else f"methods.{name}"
        note = f" (with the search trial's parameters {params})" if params else ""
        section = {**self.method_section(name, backbone), **(params or {})}
        return self._typed(("method", name), section, lambda: METHODS.get(name).Config, where, note)

    def method_section(self, name: str, backbone: str | None = None) -> dict[str, Any]:
        """The raw settings of method ``name`` on ``backbone``: ``[methods.<name>]`` updated by
        ``[backbones.<backbone>.methods.<name>]``."""
        return {**self.methods.get(name, {}), **self._on_backbone(name, backbone or self.suite.backbone)}

    def _on_backbone(self, name: str, backbone: str) -> dict[str, Any]:
        section = self.backbones.get(backbone)
        return section.methods.get(name, {}) if section else {}

    def dataset_config(self, name: str, overrides: dict[str, Any] | None = None) -> BaseModel:
        """The validated config of dataset ``name``: its defaults, ``[datasets.<name>]``, then ``overrides`` (the
        decode settings a method asks for, see :func:`bench.pipeline.plan.input_decode`); validated once per distinct section."""
        from bench.registry import DATASETS

        note = f" (with {overrides} set by the method)" if overrides else ""
        section = {**self.datasets.get(name, {}), **(overrides or {})}
        return self._typed(("dataset", name), section, lambda: DATASETS.get(name).Config, f"datasets.{name}", note)

    def _typed(self, key: tuple[str, str], section: dict[str, Any], cls: Any, where: str, note: str = "") -> BaseModel:
        """Validate ``section`` with ``cls()`` once per distinct content (a changed section, e.g. a refit's best
        parameters, is a new key, never a stale hit) and return a copy of the typed object."""
        import json

        full = (*key, json.dumps(section, sort_keys=True, default=str))
        if full not in self._validated:
            self._validated[full] = _validate_section(cls(), section, where, self.source, note=note)
        return self._validated[full].model_copy(deep=True)

    def backbone_pretrained(self, name: str) -> str | None:
        section = self.backbones.get(name)
        return section.pretrained if section else None

    def data_root(self, dataset: str) -> Path | None:
        return self.paths.data.get(dataset)


def _where(source: Path | None) -> str:
    return str(source) if source else "config"


def _known_keys(cls: type[BaseModel], loc: tuple) -> list[str]:
    """The keys the model allows where ``loc`` (a validation error's location) ends: for "did you mean"."""
    model: Any = cls
    for part in loc[:-1]:
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return []
        annotation = fields[part].annotation
        nested = [a for a in (annotation, *typing.get_args(annotation)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return list(getattr(model, "model_fields", {}))


def _format_errors(err: ValidationError, prefix: str, source: Path | None, note: str = "",
                   cls: type[BaseModel] | None = None) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in ((prefix,) if prefix else ()) + tuple(e["loc"]))
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(e["loc"][-1]), _known_keys(cls, e["loc"]) if cls else [], n=3, cutoff=0.6)
            msg = "unknown key" + (f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "")
        elif e["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = f"{e['msg']} (got {e['input']!r})"
        lines.append(f"{_where(source)}: {loc}: {msg}{note}")
    return "\n".join(lines)


def _validate_section(cls: type[BaseModel], data: dict, prefix: str, source: Path | None, note: str = "") -> BaseModel:
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, prefix, source, note, cls)) from None


def _resolve_paths(cfg: BenchConfig, base: Path) -> None:
    p = cfg.paths
    p.results = (base / p.results).resolve()
    p.cache = (base / p.cache).resolve()
    p.weights = (base / p.weights).resolve()
    p.data = {k: (base / v).resolve() for k, v in p.data.items()}
    cfg.leaderboard.site = (base / cfg.leaderboard.site).resolve()


def parse_config(data: dict[str, Any], source: Path | None = None, base: Path | None = None, sections: bool = True) -> BenchConfig:
    """Validate a config mapping (already parsed TOML) and, with ``sections``, every method/dataset section it
    names (which imports those modules, torch included; reports, which only read results, skip it)."""
    try:
        cfg = BenchConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, "", source, cls=BenchConfig)) from None
    cfg.source = source
    _resolve_paths(cfg, base or (source.parent if source else Path.cwd()))
    _check_names(cfg, sections)
    return cfg


def _check_names(cfg: BenchConfig, sections: bool = True) -> None:
    from bench.registry import BACKBONES, DATASETS, METHODS

    where = _where(cfg.source)
    for section, registry, names in (
        ("suite.methods", METHODS, cfg.suite.methods),
        ("suite.datasets", DATASETS, cfg.suite.datasets),
        ("suite.backbone", BACKBONES, [cfg.suite.backbone]),
        ("leaderboard.methods", METHODS, cfg.leaderboard.methods or []),
        ("leaderboard.datasets", DATASETS, cfg.leaderboard.datasets or []),
        ("leaderboard.backbone", BACKBONES, [cfg.leaderboard.backbone] if cfg.leaderboard.backbone else []),
        ("methods", METHODS, list(cfg.methods)),
        ("datasets", DATASETS, list(cfg.datasets)),
        ("backbones", BACKBONES, list(cfg.backbones)),
        *((f"backbones.{b}.methods", METHODS, list(section.methods)) for b, section in cfg.backbones.items()),
    ):
        for name in names:
            try:  # a variant ("hleg:hci") is checked by importing its method (torch): its base only without sections
                registry.check(name if sections or registry is not METHODS else name.partition(":")[0])
            except Exception as err:
                raise ConfigError(f"{where}: {section}: {err}") from None
    if not sections:
        return
    for section, name in (("suite.backbone", cfg.suite.backbone), ("leaderboard.backbone", cfg.leaderboard.backbone)):
        if name and name not in BACKBONES.names():  # an open_clip model or hub repo: its weights must be known
            from bench.backbones.loader import weights_problem

            problem = weights_problem(BACKBONES.get(name), cfg.backbone_pretrained(name))
            if problem:
                raise ConfigError(f"{where}: {section}: {problem}")
    for name in dict.fromkeys([*cfg.suite.methods, *cfg.methods]):  # the typed configs the suite will use
        cfg.method_config(name)
    for backbone, section in cfg.backbones.items():
        for name in section.methods:
            cfg.method_config(name, backbone)
    for name in dict.fromkeys([*cfg.suite.datasets, *cfg.datasets]):
        cfg.dataset_config(name)


def load_config(path: Path | str | None = None, overrides: dict[str, Any] | None = None, sections: bool = True) -> BenchConfig:
    """Load bench.toml (``path``, else ``./bench.toml`` if present, else the built-in defaults: the packaged copy of
    the repository's bench.toml, with relative paths under the current folder) and apply ``overrides`` given as
    dotted keys (``{"suite.seeds": [0, 1]}``), then validate everything once (the ``[methods.*]``/``[datasets.*]``
    sections by their own config classes unless ``sections`` is false)."""
    source, data, builtin = _read(path, overrides)
    base = Path.cwd() if builtin else source.parent
    try:
        cfg = parse_config(data, source, base=base, sections=sections)
    except ConfigError as err:
        raise ConfigError(_blame_overrides(str(err), source, overrides or {})) from None
    cfg.builtin = builtin
    cfg.overrides = dict(overrides or {})
    return cfg


def _blame_overrides(message: str, source: Path, overrides: dict[str, Any]) -> str:
    """An error about a key the command line set (``--set``, ``--seeds``, ``--backbone`` ...) names the command line,
    not the file: ``command line (suite.seed=1): suite.seed: unknown key; did you mean 'seeds'?``."""
    out = []
    for line in message.split("\n"):
        head = f"{source}: "
        key = line[len(head):].split(": ", 1)[0] if line.startswith(head) else ""
        given = next((k for k in overrides if key == k or key.startswith(k + ".") or k.startswith(key + ".")), None) if key else None
        out.append(f"command line ({given}={overrides[given]!r}): {line[len(head):]}" if given else line)
    return "\n".join(out)


def _read(path: Path | str | None, overrides: dict[str, Any] | None) -> tuple[Path, dict[str, Any], bool]:
    """(the config file, its TOML with ``overrides`` applied, whether it is the built-in defaults)."""
    builtin = False
    if path is None:
        if Path("bench.toml").is_file():
            path = Path("bench.toml")
        else:
            path, builtin = DEFAULT_CONFIG, True
    source = Path(path).resolve()
    if not source.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source}: not valid TOML: {err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{source}: not UTF-8 text: {err}") from None
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return source, data, builtin


def configured_backbone(path: Path | str | None, overrides: dict[str, Any] | None = None, section: str = "suite") -> str:
    """The backbone a command will use, read before the config is validated (``--pretrained`` applies to it):
    ``[<section>].backbone`` after ``overrides``, else ``[suite]``'s, else the default."""
    data = _read(path, overrides)[1]
    for name in (section, "suite"):
        value = data.get(name, {}).get("backbone") if isinstance(data.get(name), dict) else None
        if isinstance(value, str):
            return value
    return SuiteConfig.model_fields["backbone"].default
