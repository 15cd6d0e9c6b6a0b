"""Ray Tune executor: with :mod:`bench.ray_search` (bench tune's search), the only module that imports Ray.

Every method x dataset x seed that has no result yet becomes one Tune trial. A trial runs
:func:`bench.runner.execute_run` in a Ray worker with the resources bench.toml gives its method (CPUs, a GPU or a
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
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from bench.config import BenchConfig
from bench.errors import ConfigError
from bench.plan import PlannedRun, SuiteOutcome
from bench.runner import execute_run, record_failure

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our own progress view replaces Ray's tables
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune import Callback  # noqa: E402

POINTER = "bench_checkpoint.json"


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


def init_ray(cfg: BenchConfig, address: str | None) -> None:
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
    """Where the calling Ray trial runs: its node id and the GPU ids Ray assigned it (:class:`bench.devices.Placement`)."""
    from bench.devices import Placement

    context = ray.get_runtime_context()
    return Placement(node_id=context.get_node_id(), ray_gpu_ids=[str(g) for g in context.get_accelerator_ids().get("GPU", [])])


def _trial(config: dict[str, Any], cfg: BenchConfig, datasets: dict[str, Any]) -> None:
    """One run inside a Ray worker."""
    plan = PlannedRun(**{**config["plan"], "run_dir": Path(config["plan"]["run_dir"])})
    trial_id = tune.get_context().get_trial_id()  # execute_run sets the threads (the trial's CPUs) and the seed

    def report(record: dict[str, Any]) -> None:
        metrics = {k: v for k, v in record.items() if isinstance(v, (int, float))}
        report_epoch({**metrics, "done": False}, plan.run_dir, record["epoch"] + 1)

    from bench import locks

    result = execute_run(  # the driver holds the run's lock: if it dies, the trial stops before its next write
        plan, datasets[plan.data], cfg, executor="ray", trial_id=trial_id, report=report, log=lambda *_: None,
        owner_alive=lambda: locks.is_held(plan.run_dir), placement=trial_placement(),
    )
    key = "macro_f1" if result.dataset.task == "multilabel" else "accuracy"
    tune.report({"done": True, "epoch": result.training.epochs_run, "val_" + key: result.metrics.val[key]})


class SuiteView(Callback):
    """A rich live table of the suite instead of Ray's: trial states, best val metric per method, elapsed, ETA."""

    def __init__(self, plans: dict[str, PlannedRun], console: Console) -> None:
        self.plans, self.console = plans, console
        self.state: dict[str, str] = {}
        self.best: dict[str, float] = {}
        self.start = time.time()
        self.live: Live | None = None

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks with the experiment state
        return {**self.__dict__, "console": None, "live": None}

    def _label(self, trial) -> str:
        return trial.config["plan"]["run_id"]

    def _table(self) -> Table:
        counts = {s: sum(1 for v in self.state.values() if v == s) for s in ("running", "done", "errored")}
        pending = len(self.plans) - sum(counts.values())
        elapsed = time.time() - self.start
        finished = counts["done"] + counts["errored"]
        eta = f"{elapsed / finished * (len(self.plans) - finished):.0f}s" if finished else "?"
        table = Table(title=f"suite: {pending} waiting for resources, {counts['running']} running, {counts['done']} done, "
                      f"{counts['errored']} errored; {elapsed:.0f}s elapsed, ETA {eta}", title_justify="left")
        table.add_column("method")
        table.add_column("best val selection metric", justify="right")
        for method, value in sorted(self.best.items()):
            table.add_row(method, f"{100 * value:.2f}")
        return table

    def _refresh(self) -> None:
        if self.console is None:
            return
        if self.live is None:
            self.live = Live(self._table(), console=self.console, transient=False, auto_refresh=False)
            self.live.start()
        self.live.update(self._table(), refresh=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.state[self._label(trial)] = "running"
        self._refresh()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        method = trial.config["plan"]["method"]
        value = result.get("selection_metric", result.get("val_macro_f1", result.get("val_accuracy")))
        if value is not None:
            self.best[method] = max(self.best.get(method, float("-inf")), float(value))
        self._refresh()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.state[self._label(trial)] = "done"
        self._refresh()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.state[self._label(trial)] = "errored"
        self._refresh()

    def on_experiment_end(self, trials, **info):
        if self.live is not None:
            self.live.stop()
            self.console.print()


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
    view = SuiteView(plans, console)
    tuner = tune.Tuner(
        trainable,
        param_space={"plan": tune.grid_search(space)},
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg.ray.max_concurrent_trials, reuse_actors=cfg.ray.reuse_actors),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=cfg.ray.max_failures),
            verbose=0,
            callbacks=[view] if cfg.engine.progress else [],
        ),
    )
    grid = _fit(tuner, storage or cfg.paths.results)
    seen = set()
    for result in grid:
        plan = plans[result.config["plan"]["run_id"]]
        seen.add(plan.run_id)
        if result.error is not None:
            record_failure(plan, f"{type(result.error).__name__}: {str(result.error).strip().splitlines()[-1]}", outcome)
        else:
            outcome.completed.append(plan.run_id)
    for run_id in set(plans) - seen:
        record_failure(plans[run_id], "trial never reported", outcome)


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
