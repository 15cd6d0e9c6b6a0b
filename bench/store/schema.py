"""The result record (one ``result.json`` per run), versioned and validated. Imported by reports: no torch here.

Every key a table needs is here with its meaning (the ``description`` of each field is the documentation:
``bench schema result`` prints the JSON Schema); metric values are fractions in [0, 1].

Compatibility: reading a record ignores keys this version does not know (a newer harness may add some; they stay
on disk, since a complete record is never rewritten, and ``bench validate`` lists them), and a record of an older
``schema_version`` is migrated in memory by :func:`migrate`. A record of a newer version that does not validate here
is not corrupt, only unreadable by this version (:class:`NewerRecordError`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 2
MULTILABEL_METRICS = ("macro_f1", "micro_f1", "samples_f1", "mAP", "macro_f1_at_0_5", "micro_f1_at_0_5", "samples_f1_at_0_5")
MULTICLASS_METRICS = ("accuracy", "mean_class_accuracy")
PRIMARY = {"multilabel": "macro_f1", "multiclass": "accuracy"}  # a task's main metric unless its dataset declares one


def main_metric_of(task: str, declared: str | None = None) -> str:
    """The score tables and searches rank a dataset by: its declared main metric (a dataset's ``main_metric``), else
    macro F1 for a multi-label task and accuracy for a multi-class one. The one place this rule is written."""
    return declared or PRIMARY[task]


class _Record(BaseModel):
    # unknown keys (from a newer harness) are kept in ``model_extra`` and never fail validation
    model_config = ConfigDict(extra="allow")


class MethodRecord(_Record):
    name: str = Field(description="Registry name, e.g. 'intclip' or a variant 'intclip:no-sa'.")
    version: str = Field(description="The method's version string: bumped whenever its math changes.")
    config: dict[str, Any] = Field(description="The method's full validated config (defaults, preset and bench.toml keys applied).")
    resolved: dict[str, Any] = Field(default_factory=dict, description="What 'auto' settings became for this run.")
    family: str | None = Field(default=None, description="The method's group in reports (e.g. 'Multi-label methods').")
    display_name: str | None = Field(default=None, description="A readable name for reports (e.g. 'DualCoOp').")
    aliases: list[str] = Field(default_factory=list, description="Other registry names that resolved to this run's config "
                               "(e.g. 'intclip:fusion-add' for 'intclip:no-sa'): one experiment, trained once, reported under each name.")


class DatasetRecord(_Record):
    name: str = Field(description="Dataset name, e.g. 'intentonomy'.")
    task: Literal["multilabel", "multiclass"] = Field(description="Multi-label (sigmoid scores) or single-label.")
    manifest_sha256: str = Field(description="Hash of the verified file manifest: the dataset version.")
    config: dict[str, Any] = Field(description="The dataset adapter's validated config.")
    class_keys: list[str] = Field(description="Class keys in score-column order.")
    split_sizes: dict[str, int] = Field(description="Images per split (train after skipping unreadable files).")
    info: dict[str, Any] = Field(default_factory=dict, description="Adapter facts, e.g. skipped train images.")
    main_metric: str | None = Field(default=None, description="The score tables rank by (None: macro_f1 for multilabel, accuracy for multiclass).")


class ProtocolRecord(_Record):
    name: Literal["val-threshold", "intclip-code"] = Field(
        description="'val-threshold': everything selected on val; 'intclip-code': epoch selected on TEST at threshold 0.5 (the official code)."
    )
    threshold: float | None = Field(description="The global threshold applied to test (multilabel); None for multiclass.")
    selection_split: Literal["val", "test"] = Field(description="The split epochs/variants were selected on.")


class MetricsRecord(_Record):
    val: dict[str, float] = Field(description="Scalar metrics on val (fractions). F1s at the protocol threshold; mAP on the logits.")
    test: dict[str, float] = Field(description="Scalar metrics on test, at the threshold chosen on val.")
    per_class: dict[str, dict[str, list[float]]] = Field(
        description="split -> {'f1': [...], 'ap': [...]} (multilabel) or {'accuracy': [...]}, in class_keys order."
    )


class ParamsRecord(_Record):
    learnable: int = Field(ge=0, description="Parameters the optimizer (or the fit) updates.")
    total: int = Field(ge=0, description="All parameters of the model the method runs.")


class TrainingRecord(_Record):
    epochs_run: int = Field(default=0, description="Epochs trained (0 for fitted or training-free methods).")
    best_epoch: int | None = Field(default=None, description="The selected epoch (0-based).")
    best_variant: str | None = Field(default=None, description="The selected weight variant, e.g. 'ema'.")
    resumed_from_epoch: int | None = Field(default=None, description="Epoch the run resumed after, if it was interrupted.")
    history: list[dict[str, Any]] = Field(default_factory=list, description="One entry per epoch: loss, selection metric, lr, seconds.")
    fit_info: dict[str, Any] = Field(default_factory=dict, description="What a fitted method chose, e.g. the probe's C.")


class SelectionRecord(_Record):
    what: str = Field(description="'threshold', 'C', 'epoch' or 'config'.")
    chosen: Any = Field(description="The chosen candidate: a threshold, a C, [epoch (0-based), variant], a trial.")
    value: float = Field(description="Its val selection metric (fraction).")
    best: float = Field(description="The best val selection metric of any candidate.")
    tie_set: list[Any] = Field(description="Candidates within the tolerance of the best, in the tie rule's order.")
    margin: float | None = Field(description="value minus the best candidate outside the tie set (None: all tied); "
                                 "below the tolerance, the selection is flagged in reports.")
    tolerance: float = Field(description="Candidates with value >= best - tolerance are tied.")
    rule: str = Field(description="How ties are broken (never by a metric), e.g. 'nearest 0.5, then lower'.")
    candidates: int = Field(ge=1, description="How many candidates were compared.")
    fragile: bool = Field(default=False, description="margin < tolerance: a candidate outside the tie set is nearly as good.")


class ConfigFileRecord(_Record):
    path: str | None = Field(description="The config file the run came from ('package:bench/default.toml' for the built-in defaults).")
    sha256: str | None = Field(description="Hash of that file's bytes.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="--set overrides applied on top of it.")


class LabelProtocolRecord(_Record):
    protocol: Literal["train_fraction", "shots", "label_proportion"] = Field(
        description="The label-efficiency protocol (README 'Label efficiency'): a stratified fraction of the training images, "
        "k images per class, or partial labels (each training label observed with a probability).")
    value: int | float = Field(description="The fraction of training images, the images per class (k), or the probability a training label is observed.")
    nested_in: list[float] = Field(default_factory=list, description="train_fraction: the suite's smaller fractions, whose subsets this one contains.")
    seed: int = Field(description="The seed the subset (or the mask) was drawn with: the run's.")
    n_train: int = Field(ge=0, description="Training images the run trained on.")
    n_train_full: int = Field(ge=0, description="Training images of the whole split.")
    train_sha256: str = Field(description="sha256 of the sorted indices (little-endian int64) of the training images trained on.")
    observed: float | None = Field(default=None, description="label_proportion: the fraction of training labels observed.")
    observed_sha256: str | None = Field(default=None, description="label_proportion: sha256 of the observed-label mask (its shape, then its bits).")


class LimitRecord(_Record):
    n: int = Field(ge=1, description="Smoke mode (README 'Smoke mode'): at most this many images of every split; never a result to report.")
    seed: int = Field(description="The seed the limited subsets were drawn with (the same for every run of a suite).")
    split_sizes: dict[str, int] = Field(description="Images per split the run read.")
    split_sizes_full: dict[str, int] = Field(description="Images per split of the whole dataset.")
    sha256: dict[str, str] = Field(description="Per split: sha256 of the sorted indices (little-endian int64) of the images kept.")


class RunResult(_Record):
    """One finished run."""

    schema_version: int = Field(default=SCHEMA_VERSION, ge=1, description="Record format version (migrated on read when older).")
    run_id: str = Field(
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Hash of what defines the run (method, config, backbone weights, dataset version, seed, protocol, "
        "code version); the folder name (letters, digits, '_', '.', '-' only: it is listed in reports).",
    )
    status: Literal["complete"] = "complete"
    executor: str = Field(description="'serial' or 'ray'.")
    trial_id: str | None = Field(default=None, description="The Ray Tune trial id under the ray executor.")
    method: MethodRecord
    backbone: dict[str, Any] = Field(
        description="name, model_name, pretrained (tag, path, 'none'), weights_sha256 (checkpoint hash), weights_id "
        "(the weights identity tables group by), image_size."
    )
    dataset: DatasetRecord
    seed: int | None = Field(description="The run's seed; None for a deterministic method, run once whatever the seeds.")
    protocol: ProtocolRecord
    metrics: MetricsRecord
    params: ParamsRecord
    training: TrainingRecord
    timing: dict[str, Any] = Field(description="started_at, finished_at (ISO 8601) and seconds spent.")
    env: dict[str, Any] = Field(description="git commit and dirty flag, package versions, host, device, torch threads, determinism settings.")
    artifacts: dict[str, str] = Field(description="Files beside result.json: scores (scores.npz), weights (weights.pt).")
    artifact_sha256: dict[str, str] = Field(
        default_factory=dict,
        description="sha256 of each artifact file, by file name, taken when the record was written (absent in records "
        "written before hashes were kept); bench run/report/validate compare them.",
    )
    config_file: ConfigFileRecord | None = Field(default=None, description="Where the run's settings came from.")
    extra: dict[str, Any] = Field(default_factory=dict, description="e.g. {'tuning': {...}} for a refit of a tuned config.")
    label_protocol: LabelProtocolRecord | None = Field(
        default=None, description="The training subset or partial labels the run trained on (val and test stay whole); None: the "
        "whole training split with every label (so is every record written before these protocols).")
    limit: LimitRecord | None = Field(
        default=None, description="Smoke mode: the per-split limit the run ran under (train, val and test reduced); None: the "
        "whole dataset (so is every record written before smoke mode).")
    selections: dict[str, SelectionRecord] = Field(
        default_factory=dict,
        description="Each val selection of the run (threshold, C, epoch; config for a tuned refit) with its tie set and "
        "margin (bench.selection); empty in records written before selections were kept.",
    )

    @model_validator(mode="after")
    def _metrics_complete(self) -> RunResult:
        expected = MULTILABEL_METRICS if self.dataset.task == "multilabel" else MULTICLASS_METRICS
        for split in ("val", "test"):
            values = getattr(self.metrics, split)
            missing = [k for k in expected if k not in values]
            if missing:
                raise ValueError(f"metrics.{split} lacks {missing}")
            bad = {k: v for k, v in values.items() if not 0.0 <= v <= 1.0}
            if bad:
                raise ValueError(f"metrics.{split} values outside [0, 1]: {bad}")
        return self

    @property
    def weights_id(self) -> str:
        """The backbone weights' identity: a checkpoint hash, an open_clip tag, or 'none' (random init)."""
        return str(self.backbone.get("weights_id") or self.backbone.get("weights_sha256") or self.backbone.get("pretrained"))

    @property
    def newer(self) -> bool:
        return self.schema_version > SCHEMA_VERSION


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """An older record's JSON brought to the current schema, in memory (the file is not touched)."""
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or version >= SCHEMA_VERSION:
        return data
    data = dict(data)
    if version == 1:  # v2 added the weights identity, the config file and seed None (deterministic methods)
        backbone = dict(data.get("backbone") or {})
        backbone.setdefault("weights_id", _weights_id_v1(backbone))
        data["backbone"] = backbone
        data.setdefault("config_file", None)
        data["schema_version"] = 2
    return data


def _weights_id_v1(backbone: dict[str, Any]) -> str | None:
    """The weights identity a v1 record implies, in the form the current harness writes
    (:func:`bench.backbones.loader.weights_identity`), so migrated and new records of the same weights share a row."""
    pretrained, sha = backbone.get("pretrained"), backbone.get("weights_sha256")
    if pretrained == "none":
        return "none"
    if sha:
        return f"sha256:{sha}"
    if pretrained is None or str(pretrained).startswith("local-dir:"):
        return pretrained
    return f"tag:{pretrained}"


def unknown_keys(model: BaseModel, prefix: str = "") -> list[str]:
    """Dotted paths of every key in ``model`` (and its nested records) that this schema version does not define."""
    out = [f"{prefix}{k}" for k in (model.model_extra or {})]
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            out += unknown_keys(value, f"{prefix}{name}.")
    return out


def json_schema() -> dict[str, Any]:
    """The JSON Schema of ``result.json`` (what ``bench schema result`` prints)."""
    schema = RunResult.model_json_schema()
    schema["$id"] = f"https://github.com/intent-bench/bench/schema/result-v{SCHEMA_VERSION}.json"
    schema["title"] = f"bench result record (schema_version {SCHEMA_VERSION})"
    return schema
