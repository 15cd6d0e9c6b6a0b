"""The result record of one run, assembled from what the run produced (no training, no torch)."""

from __future__ import annotations

from typing import Any

from bench.config import BenchConfig
from bench.pipeline.plan import PlannedRun
from bench.store.schema import DatasetRecord, MethodRecord, MetricsRecord, ParamsRecord, ProtocolRecord, RunResult, SelectionRecord, TrainingRecord


def split_metrics(val_m: dict[str, Any], test_m: dict[str, Any]) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, list]]]:
    """``metrics.evaluate``'s two dicts -> (scalar metrics per split, per-class lists per split)."""
    scalars = {
        s: {k: float(v) for k, v in m.items() if not k.startswith("per_class_") and k != "threshold"}
        for s, m in (("val", val_m), ("test", test_m))
    }
    per_class = {
        s: {k.removeprefix("per_class_"): list(v) for k, v in m.items() if k.startswith("per_class_")}
        for s, m in (("val", val_m), ("test", test_m))
    }
    return scalars, per_class


def build_record(
    plan: PlannedRun,
    cfg: BenchConfig,
    *,
    data: Any,
    method: Any,
    backbone: Any,
    outcome: Any,
    val_metrics: dict[str, Any],
    test_metrics: dict[str, Any],
    selection_split: str,
    executor: str,
    trial_id: str | None,
    timing: dict[str, Any],
    env: dict[str, Any],
    artifacts: dict[str, str],
    main_metric: str | None = None,
    selections: dict[str, dict[str, Any]] | None = None,
) -> RunResult:
    """The validated :class:`RunResult` of one finished run."""
    scalars, per_class = split_metrics(val_metrics, test_metrics)
    return RunResult(
        run_id=plan.run_id,
        executor=executor,
        trial_id=trial_id,
        method=MethodRecord(
            name=plan.method,
            version=type(method).version,
            config=method.config.model_dump(mode="json"),
            resolved=getattr(method, "resolved", {}),
            family=type(method).family,
            display_name=type(method).display_name,
            aliases=list(plan.aliases),
        ),
        backbone=backbone.describe(),
        dataset=DatasetRecord(
            name=data.name,
            task=data.task,
            manifest_sha256=data.manifest_sha256,
            config=plan.identity["dataset"]["config"],
            class_keys=[c.key for c in data.classes],
            split_sizes={k: len(v) for k, v in data.splits.items()},
            info=data.info,
            main_metric=main_metric,
        ),
        seed=plan.seed,
        protocol=ProtocolRecord(name=cfg.protocol.name, threshold=val_metrics.get("threshold"), selection_split=selection_split),
        metrics=MetricsRecord(val=scalars["val"], test=scalars["test"], per_class=per_class),
        params=ParamsRecord(**method.param_counts()),
        training=TrainingRecord(
            epochs_run=outcome.epochs_run,
            best_epoch=outcome.best_epoch,
            best_variant=outcome.best_variant,
            resumed_from_epoch=outcome.resumed_from_epoch,
            history=outcome.history,
            fit_info=outcome.fit_info,
        ),
        timing=timing,
        env=env,
        artifacts=artifacts,
        config_file=cfg.config_file(),
        selections={k: SelectionRecord(**v) for k, v in (selections or {}).items()},
        extra=plan.extra,
    )
