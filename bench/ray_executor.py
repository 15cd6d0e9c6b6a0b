"""Ray Tune executor: the only module that imports Ray.

Every method x dataset x seed that has no result yet becomes one Tune trial. A trial runs
:func:`bench.executor.execute_run` in a Ray worker with the resources bench.toml gives its method (CPUs, a GPU or a
fraction of one), reports every epoch's val metrics to Tune with a small checkpoint that points at the run's own
checkpoint in the result store, and writes its result there. Resume is the result store's: a rerun after a crash
skips complete runs and restarts the others, which continue from their last epoch's checkpoint. Trials that error
are retried up to ``ray.max_failures`` times, then reported with their error.

Embedded by default (``ray.init(address="local")``, bound to 127.0.0.1); ``--ray-address``, ``RAY_ADDRESS`` or
``ray.address`` attach to an existing cluster, where ``ray.storage_path`` must name storage every node shares.
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
from bench.executor import PlannedRun, SuiteOutcome, execute_run, record_failure

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our own progress view replaces Ray's tables
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune import Callback  # noqa: E402

POINTER = "bench_checkpoint.json"


def resolve_address(cfg: BenchConfig, ray_address: str | None) -> str | None:
    return ray_address or os.environ.get("RAY_ADDRESS") or cfg.ray.address


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
        ray.init(address="local", num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus, _node_ip_address="127.0.0.1", **common)
        return
    try:
        ray.init(address=address, **common)
    except (ConnectionError, RuntimeError) as err:
        raise ConfigError(f"--ray-address {address}: cannot connect to a Ray cluster there ({err})") from None


def _trial(config: dict[str, Any], cfg: BenchConfig, datasets: dict[str, Any]) -> None:
    """One run inside a Ray worker."""
    import torch

    plan = PlannedRun(**{**config["plan"], "run_dir": Path(config["plan"]["run_dir"])})
    trial_id = tune.get_context().get_trial_id()
    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads > 0:
        torch.set_num_threads(threads)  # never oversubscribe the trial's CPUs

    def report(record: dict[str, Any]) -> None:
        metrics = {k: v for k, v in record.items() if isinstance(v, (int, float))}
        with tempfile.TemporaryDirectory() as folder:  # a pointer, not a copy: the state lives in the result store
            Path(folder, POINTER).write_text(json.dumps({"run_dir": str(plan.run_dir), "epoch": record["epoch"] + 1}))
            tune.report({**metrics, "done": False}, checkpoint=tune.Checkpoint.from_directory(folder))

    result = execute_run(
        plan, datasets[plan.dataset], cfg, executor="ray", trial_id=trial_id, report=report, log=lambda *_: None
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
        table = Table(title=f"suite: {pending} pending, {counts['running']} running, {counts['done']} done, "
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

    def resources(config: dict[str, Any]) -> dict[str, float]:
        r = cfg.ray.trial_resources(config["plan"]["method"])
        return {"cpu": r.cpu, "gpu": r.gpu}

    trainable = tune.with_resources(tune.with_parameters(_trial, cfg=cfg, datasets=datasets), resources)
    plans = {p.run_id: p for p in todo}
    space = [{**p.__dict__, "run_dir": str(p.run_dir)} for p in todo]
    name = f"suite-{time.strftime('%Y%m%d-%H%M%S')}"
    view = SuiteView(plans, console)
    tuner = tune.Tuner(
        trainable,
        param_space={"plan": tune.grid_search(space)},
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg.ray.max_concurrent_trials),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=cfg.ray.max_failures),
            verbose=0,
            callbacks=[view] if cfg.engine.progress else [],
        ),
    )
    grid = tuner.fit()
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
