"""The result record (one ``result.json`` per run), versioned and validated. Imported by reports: no torch here.

Every key a table needs is here with its meaning; metric values are fractions in [0, 1].
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 1
MULTILABEL_METRICS = ("macro_f1", "micro_f1", "samples_f1", "mAP", "macro_f1_at_0_5", "micro_f1_at_0_5", "samples_f1_at_0_5")
MULTICLASS_METRICS = ("accuracy", "mean_class_accuracy")


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MethodRecord(_Record):
    name: str
    version: str
    config: dict[str, Any]
    resolved: dict[str, Any] = Field(default_factory=dict)  # what "auto" settings became for this run


class DatasetRecord(_Record):
    name: str
    task: Literal["multilabel", "multiclass"]
    manifest_sha256: str
    config: dict[str, Any]
    class_keys: list[str]
    split_sizes: dict[str, int]
    info: dict[str, Any] = Field(default_factory=dict)


class ProtocolRecord(_Record):
    name: Literal["val-threshold", "intclip-code"]
    threshold: float | None  # the global threshold applied to test (multilabel); None for multiclass
    selection_split: Literal["val", "test"]


class MetricsRecord(_Record):
    val: dict[str, float]
    test: dict[str, float]
    per_class: dict[str, dict[str, list[float]]]  # split -> {"f1": [...], "ap": [...]} or {"accuracy": [...]}


class ParamsRecord(_Record):
    learnable: int = Field(ge=0)
    total: int = Field(ge=0)


class TrainingRecord(_Record):
    epochs_run: int = 0
    best_epoch: int | None = None
    best_variant: str | None = None
    resumed_from_epoch: int | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)
    fit_info: dict[str, Any] = Field(default_factory=dict)


class RunResult(_Record):
    """One finished run."""

    schema_version: Literal[1] = SCHEMA_VERSION
    run_id: str
    status: Literal["complete"] = "complete"
    executor: str
    trial_id: str | None = None
    method: MethodRecord
    backbone: dict[str, Any]
    dataset: DatasetRecord
    seed: int
    protocol: ProtocolRecord
    metrics: MetricsRecord
    params: ParamsRecord
    training: TrainingRecord
    timing: dict[str, Any]
    env: dict[str, Any]
    artifacts: dict[str, str]
    extra: dict[str, Any] = Field(default_factory=dict)  # e.g. {"tuning": {...}} for a refit of a tuned config

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
