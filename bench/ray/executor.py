"""Ray Tune executor: with :mod:`bench.ray.search` (bench tune's search), the only module that imports Ray.

Every method x dataset x seed that has no result yet becomes one Tune trial. A trial runs
:func:`bench.pipeline.runner.execute_run` in a Ray worker with the resources bench.toml gives its method (CPUs, a GPU or a
fraction of one), reports every epoch's val metrics to Tune with a small checkpoint that points at the run's own
checkpoint in the result store, and writes its result there. Resume is the result store's: a rerun after a crash
skips complete runs and restarts the others, which continue from their last epoch's checkpoint. Trials that error
are retried up to ``ray.max_failures`` times, then reported with their error.

Embedded by default (``ray.init(address="local")``; Ray 2.60 listens on every interface, behind its token
authentication: README "What listens where"); ``--ray-address``, ``RAY_ADDRESS`` or ``ray.address`` attach to an
existing cluster, where ``ray.storage_path`` must name storage every node shares. Before any trial starts, each
method's request is checked against the alive nodes (:func:`preflight`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.config import BenchConfig
from bench.errors import BenchError, ConfigError
from bench.io import atomic_write_text
from bench.pipeline.plan import PlannedRun, SuiteOutcome
from bench.pipeline.progress import Output, SuiteBoard, live_wanted, suite_board
from bench.pipeline.runner import execute_run, record_failure
from bench.store.schema import main_metric_of

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our own progress view replaces Ray's tables
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune import Callback  # noqa: E402

POINTER = "bench_checkpoint.json"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # Ray colours its traceback headers (colorama) whatever the output


def resolve_address(cfg: BenchConfig, ray_address: str | None) -> str | None:
    """The cluster to use: ``--ray-address``, else ``RAY_ADDRESS``, else ``ray.address``; None = an embedded Ray.
    ``auto`` must find exactly one running cluster on this machine: with several it refuses and lists them (Ray
    itself would pick the latest started, which may be someone else's)."""
    address = ray_address or os.environ.get("RAY_ADDRESS") or cfg.ray.address
    if address != "auto":
        return address
    from ray._private.services import find_gcs_addresses

    found = sorted(find_gcs_addresses())
    if len(found) > 1:
        raise ConfigError(
            f"--ray-address auto: {len(found)} Ray clusters run on this machine ({', '.join(found)}); pass the one "
            "to use, e.g. --ray-address " + found[0]
        )
    if not found:
        raise ConfigError("--ray-address auto: no running Ray cluster found on this machine (start one with "
                          "`ray start --head`, or leave the address unset for an embedded one)")
    return found[0]


def preflight(cfg: BenchConfig, methods: Any) -> None:
    """Before any trial starts: every method's per-trial request must fit on one alive node of the cluster, else
    exit 2 naming the method, its request and what the nodes have (Ray would wait for it forever)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for method in sorted(set(methods)):
        request = cfg.ray.trial_resources(method).request()
        if any(all(node.get(k, 0.0) >= v for k, v in request.items()) for node in nodes):
            continue
        have = "; ".join(", ".join(f"{k} {v:g}" for k, v in sorted(node.items()) if k in request or k in ("CPU", "GPU"))
                         for node in nodes) or "no alive node"
        raise ConfigError(
            f"[ray.resources] {method}: each trial asks for {', '.join(f'{k} {v:g}' for k, v in request.items())}, "
            f"which no node of the cluster has (nodes: {have}); lower the request or add such a node"
        )


def cluster_nodes(cfg: BenchConfig, address: str) -> list[dict[str, float]]:
    """The resources of every alive node of the cluster at ``address`` (``bench doctor``): connect, read, and
    disconnect again unless this process was already connected. A cluster that cannot be reached is a ConfigError."""
    connected = ray.is_initialized()
    init_ray(cfg, resolve_address(cfg, address))
    try:
        return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]
    finally:
        if not connected:
            ray.shutdown()


def storage_path(cfg: BenchConfig, address: str | None) -> str:
    """Where Tune keeps experiment state: required and checked up front on an existing cluster."""
    if cfg.ray.storage_path:
        path = cfg.ray.storage_path
    elif address is None:
        path = str(cfg.paths.results / "ray")
    else:
        raise ConfigError(
            f"ray.storage_path: required when running on an existing Ray cluster ({address}); set it in bench.toml "
            "to a folder or URI every node can write (e.g. an NFS mount or s3://bucket/bench)"
        )
    if "://" not in path:
        local = Path(path)
        if not local.is_absolute():
            raise ConfigError(f"ray.storage_path: {path!r} must be an absolute path")
        try:
            local.mkdir(parents=True, exist_ok=True)
            probe = local / f".probe-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as err:
            raise ConfigError(f"ray.storage_path: {path} is not writable ({err})") from None
    return path


class _StartupChatter(logging.Filter):
    """Drops Ray's notice, on every run, that token authentication is on (it is on by design: README "What listens
    where"; the notice that it is *off* still shows) and Optuna's "A new study created" (bench tune names its study);
    every other record of those loggers passes."""

    NOTICES = ("Token authentication is enabled for this Ray cluster", "A new study created in RDB")

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.NOTICES)


class _TrialTracebacks(_StartupChatter):
    """Drops Tune's "Trial task failed" record (Ray's whole traceback, on every try) and its closing "Trials did not
    complete" list: the suite shows each failure as one line (the harness's message) and keeps the traceback in
    the run's ``error.json`` (:func:`keep_traceback`); Ray's worker logs hold it too."""

    NOTICES = ("Trial task failed for trial", "Trials did not complete")


def quiet_startup() -> None:
    """Attach :class:`_StartupChatter` to the two loggers that print those notices, :class:`_TrialTracebacks` to
    Tune's (once each)."""
    for names, kind in ((("ray._private.authentication.authentication_token_setup", "optuna.storages._rdb.storage"), _StartupChatter),
                        (("ray.tune.execution.tune_controller", "ray.tune.tune"), _TrialTracebacks)):
        for name in names:
            logger = logging.getLogger(name)
            if not any(type(f) is kind for f in logger.filters):
                logger.addFilter(kind())


def init_ray(cfg: BenchConfig, address: str | None) -> None:
    quiet_startup()
    if ray.is_initialized():
        return
    common = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address is None:
        # (Ray 2.60 binds its gRPC servers to every interface and cannot be told otherwise; token authentication,
        # on by default, protects them: see README "What listens where")
        ray.init(address="local", num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus, **common)
        return
    try:
        ray.init(address=address, **common)
    except (ConnectionError, RuntimeError) as err:
        raise ConfigError(f"--ray-address {address}: cannot connect to a Ray cluster there ({err})") from None


def report_epoch(metrics: dict[str, Any], run_dir: Path, epoch: int) -> None:
    """``tune.report`` with a checkpoint that points at the run's own checkpoint (a pointer, not a copy)."""
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, POINTER).write_text(json.dumps({"run_dir": str(run_dir), "epoch": epoch}))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def trial_placement() -> Any:
    """Where the calling Ray trial runs: its node id and the GPU ids Ray assigned it (:class:`bench.train.devices.Placement`)."""
    from bench.train.devices import Placement

    context = ray.get_runtime_context()
    return Placement(node_id=context.get_node_id(), ray_gpu_ids=[str(g) for g in context.get_accelerator_ids().get("GPU", [])])


def _trial(config: dict[str, Any], cfg: BenchConfig, datasets: dict[str, Any]) -> None:
    """One run inside a Ray worker."""
    plan = PlannedRun(**{**config["plan"], "run_dir": Path(config["plan"]["run_dir"])})
    trial_id = tune.get_context().get_trial_id()  # execute_run sets the threads (the trial's CPUs) and the seed

    def report(record: dict[str, Any]) -> None:
        metrics = {k: v for k, v in record.items() if isinstance(v, (int, float))}
        report_epoch({**metrics, "epoch": record["epoch"] + 1, "done": False}, plan.run_dir, record["epoch"] + 1)

    from bench.store import locks

    result = execute_run(  # the driver holds the run's lock: if it dies, the trial stops before its next write
        plan, datasets[plan.data], cfg, executor="ray", trial_id=trial_id, report=report, log=lambda *_: None,
        owner_alive=lambda: locks.is_held(plan.run_dir), placement=trial_placement(),
    )
    key = main_metric_of(result.dataset.task)  # the engine's selection metric (a declared main metric is the tables')
    tune.report({"done": True, "epoch": result.training.epochs_run, "val_" + key: result.metrics.val[key], "final_val": result.metrics.val[key]})


class SuiteView(Callback):
    """The suite's trials on a :class:`bench.pipeline.progress.SuiteBoard` (a live table on a terminal, else one line per
    event) instead of Ray's tables: one row per running run with its epoch, last val score, elapsed and node."""

    def __init__(self, board: SuiteBoard, console: Console | None, live: bool) -> None:
        self.board, self.out = board, Output(board, console, live)

    def _key(self, trial) -> str:
        return trial.config["plan"]["run_id"]

    def on_trial_start(self, iteration, trials, trial, **info):
        self.out(self.board.started(self._key(trial)))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not result.get("done"):  # (the last report, the run's final val metric, ends it: on_trial_complete)
            line = self.board.reported(self._key(trial), int(result.get("epoch", 0)), result.get("selection_metric"),
                                       node=str(result.get("node_ip", "")))
            self.out(line)

    def on_trial_complete(self, iteration, trials, trial, **info):
        final = trial.last_result or {}
        value = final.get("final_val")
        self.out(self.board.finished(self._key(trial), "done", value))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.out(self.board.finished(self._key(trial), "errored"))

    def on_experiment_end(self, trials, **info):
        self.out.close()


def run_trials(
    cfg: BenchConfig,
    todo: list[PlannedRun],
    datasets: dict[str, Any],
    outcome: SuiteOutcome,
    console: Console,
    ray_address: str | None = None,
) -> None:
    """Run ``todo`` as Tune trials; fill ``outcome`` with what completed and what failed."""
    address = resolve_address(cfg, ray_address)
    storage = storage_path(cfg, address)
    if address is not None and not cfg.paths.results.is_absolute():
        raise ConfigError(f"paths.results: {cfg.paths.results} must be absolute on a cluster")
    init_ray(cfg, address)
    preflight(cfg, [p.method for p in todo])

    def resources(config: dict[str, Any]) -> dict[str, float]:
        r = cfg.ray.trial_resources(config["plan"]["method"])
        return {"cpu": r.cpu, "gpu": r.gpu, **r.custom}

    trainable = tune.with_resources(tune.with_parameters(_trial, cfg=cfg, datasets=datasets), resources)
    plans = {p.run_id: p for p in todo}
    space = [{**p.__dict__, "run_dir": str(p.run_dir)} for p in todo]
    name = f"suite-{time.strftime('%Y%m%d-%H%M%S')}"
    view = SuiteView(suite_board(cfg, todo), console, live_wanted(console, cfg.engine.progress))
    tuner = tune.Tuner(
        trainable,
        param_space={"plan": tune.grid_search(space)},
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg.ray.max_concurrent_trials, reuse_actors=cfg.ray.reuse_actors),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=cfg.ray.max_failures),
            verbose=0,
            callbacks=[view],
        ),
    )
    grid = _fit(tuner, storage or cfg.paths.results)
    seen = set()
    for result in grid:
        plan = plans[result.config["plan"]["run_id"]]
        seen.add(plan.run_id)
        if result.error is not None:
            message, trace = trial_failure(result.error)
            record_failure(plan, message, outcome)
            keep_traceback(plan, trace)
        else:
            outcome.completed.append(plan.run_id)
    for run_id in set(plans) - seen:
        record_failure(plans[run_id], "trial never reported", outcome)


def trial_failure(error: BaseException) -> tuple[str, str]:
    """A failed trial's error as (one line: the harness's own message, whole; the full text with Ray's traceback).
    Ray wraps the trial's exception (``RayTaskError``, its ``cause``; Tune may wrap that again): the innermost cause
    is what the harness raised."""
    inner, seen = error, 0
    while isinstance(getattr(inner, "cause", None), BaseException) and seen < 8:
        inner, seen = inner.cause, seen + 1
    text = str(inner).strip()
    if inner is error or not isinstance(inner, BenchError):  # Ray's own text: its last line is the message
        text = text.splitlines()[-1] if text else ""
    name = type(inner).__name__.split("(")[-1].rstrip(")")
    return f"{name}: {' '.join(ANSI.sub('', text).split())}", ANSI.sub("", str(error))


def keep_traceback(plan: PlannedRun, trace: str) -> None:
    """Add the trial's full traceback (Ray's text) to the run's ``error.json`` and to the ``bench`` log."""
    logging.getLogger("bench.ray").debug("trial %s failed:\n%s", plan.label, trace)
    path = plan.run_dir / "error.json"
    try:
        payload = json.loads(path.read_text())
        payload["traceback"] = trace.splitlines(keepends=True)
        atomic_write_text(path, json.dumps(payload, indent=2))
    except (OSError, ValueError):
        pass


def _fit(tuner: tune.Tuner, storage: Any) -> Any:
    """``tuner.fit()``; when it dies because the disk under the experiment state filled up (Ray reports it as a
    truncated pickle or similar), say so, naming the folder."""
    from bench.errors import DiskFullError
    from bench.io import ensure_free_space, free_bytes

    folder = Path(str(storage).removeprefix("file://"))
    if "://" not in str(storage):
        ensure_free_space(folder, 64 << 20, "Ray Tune's experiment state")
    try:
        return tuner.fit()
    except Exception as err:
        if "://" not in str(storage) and free_bytes(folder) < (16 << 20):
            raise DiskFullError(f"No space left on device at {folder}: Ray Tune could not write its experiment "
                                f"state ({type(err).__name__}: {str(err).strip()[:200]})") from err
        raise
