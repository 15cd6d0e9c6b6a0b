"""`bench tune`'s search on Ray Tune: Optuna TPE proposes, ASHA stops weak trials early on the val selection metric,
every trial trains on train and is scored on val only; the study is kept in SQLite. Together with
:mod:`bench.ray.executor` (the cluster, the suite's trials) the only modules that import Ray or Optuna.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.config import BenchConfig
from bench.errors import ConfigError
from bench.pipeline.progress import Output, SearchBoard, live_wanted
from bench.ray.executor import report_epoch, init_ray, preflight, storage_path, trial_placement

from ray import tune
from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch


def optuna_space(spec: dict[str, Any]) -> dict[str, Any]:
    """A method's search space (``key -> (kind, ...)``) as Optuna distributions."""
    import optuna

    space = {}
    for key, (kind, *args) in spec.items():
        if kind == "loguniform":
            space[key] = optuna.distributions.FloatDistribution(float(args[0]), float(args[1]), log=True)
        elif kind == "uniform":
            space[key] = optuna.distributions.FloatDistribution(float(args[0]), float(args[1]))
        elif kind == "int":
            space[key] = optuna.distributions.IntDistribution(int(args[0]), int(args[1]))
        elif kind == "choice":
            space[key] = optuna.distributions.CategoricalDistribution(list(args[0]))
        else:
            raise ConfigError(f"tune.search_space: {key}: unknown kind {kind!r} (loguniform, uniform, int, choice)")
    return space


def _search_trial(params: dict[str, Any], cfg: BenchConfig, data: Any, method: str, trials_dir: str) -> None:
    """One search trial: train on train, score val every epoch (reported to ASHA); test is never scored."""
    from bench.backbones.loader import load_backbone
    from bench.train.devices import resolve_device
    from bench.train.engine import RunContext, run_method, seed_everything, selection_metric, set_threads
    from bench.registry import BACKBONES, create_method

    set_threads(cfg.ray.trial_resources(method).cpu)
    seed_everything(cfg.tune.search_seed)  # before the backbone and the method are built
    method_cfg = cfg.method_config(method, params=params)
    device = resolve_device(cfg.engine.device, trial_placement())
    backbone = load_backbone(BACKBONES.get(cfg.suite.backbone), cfg.backbone_pretrained(cfg.suite.backbone), cfg.paths.weights, str(device))
    run_dir = Path(trials_dir) / tune.get_context().get_trial_id()

    def report(record: dict[str, Any]) -> None:
        epoch = record["epoch"] + 1
        metrics = {"selection_metric": record["selection_metric"], "best_selection_metric": record["best_metric"], "epoch": epoch}
        report_epoch(metrics, run_dir, epoch)

    ctx = RunContext(
        run_dir=run_dir, seed=cfg.tune.search_seed, device=device, protocol=cfg.protocol.name, amp=cfg.engine.amp,
        eval_batch_size=cfg.engine.eval_batch_size, cache_dir=cfg.paths.cache, report=report, score_test=False,
        deterministic=cfg.engine.deterministic, log=lambda *_: None,
    )
    outcome = run_method(create_method(method, method_cfg, backbone, data, device), data, ctx)
    if not outcome.history:  # fitted methods: one report at the end
        metric = selection_metric(data.task, outcome.val_scores, data.splits["val"].labels, cfg.protocol.name)
        tune.report({"selection_metric": metric, "best_selection_metric": metric, "epoch": 1, FINISHED: 1})
    elif len(outcome.history) < getattr(method_cfg, "epochs", 1):  # its own early stopping ended it, not ASHA
        best = max(h["selection_metric"] for h in outcome.history)
        last = outcome.history[-1]["selection_metric"]
        tune.report({"selection_metric": last, "best_selection_metric": best, "epoch": len(outcome.history), FINISHED: 1})


FINISHED = "finished"  # the last report of a search trial that ended by itself (full budget or its own early stop)


class PruningAwareOptunaSearch(OptunaSearch):
    """Optuna TPE (through Ray Tune) that stores a trial ASHA stopped as PRUNED, not COMPLETE: Optuna then keeps the
    trial's last intermediate value (the best val selection metric up to the epoch it stopped at), and TPE and
    optuna-dashboard no longer take a cut-short trial for a full-budget result. Every trial's value is the selection
    metric at its best epoch (``best_selection_metric``), in the study and in summary.json alike."""

    def __init__(self, *args: Any, max_epochs: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        import optuna

        stopped = (not error and result is not None and not result.get(FINISHED)
                   and int(result.get("training_iteration", 0)) < self._max_epochs)
        if not stopped or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        trial = self._ot_trials[trial_id]
        # Tune hands the stopping epoch's result to on_trial_complete only: record it as the last intermediate value
        # (Optuna stores that as the pruned trial's value)
        trial.report(float(result[self.metric]), int(result["training_iteration"]))
        self._ot_study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        self._completed_trials.add(trial_id)


def _pruned(metrics: dict[str, Any], epochs: int) -> bool:
    """Whether ASHA stopped the trial (it ended before its budget without saying it finished by itself)."""
    return not metrics.get(FINISHED) and int(metrics.get("training_iteration", 0) or 0) < epochs


class SearchView(Callback):
    """The search's trials on a :class:`bench.pipeline.progress.SearchBoard` as they report (a live table on a terminal,
    else one line per event): trial id, params, epoch, val, best val, RUNNING / PRUNED / DONE / ERRORED."""

    def __init__(self, board: SearchBoard, console: Console | None, live: bool, keys: list[str], epochs: int) -> None:
        self.board, self.out, self.keys, self.epochs = board, Output(board, console, live), keys, epochs

    def _key(self, trial) -> str:  # (a restored search's trials were never started here)
        self.board.add_trial(trial.trial_id, {k: trial.config[k] for k in self.keys if k in trial.config})
        return trial.trial_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self.out(self.board.started(self._key(trial)))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        known = self.board.trials[self._key(trial)]
        if result.get(FINISHED) and known.units and known.epoch == epoch:
            return  # the closing report repeats the last epoch's
        self.out(self.board.reported(trial.trial_id, epoch, result.get("selection_metric"), result.get("best_selection_metric")))

    def on_trial_complete(self, iteration, trials, trial, **info):
        state = "pruned" if _pruned(trial.last_result or {}, self.epochs) else "done"
        self.out(self.board.finished(self._key(trial), state))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.out(self.board.finished(self._key(trial), "errored"))

    def on_experiment_end(self, trials, **info):
        self.out.close()


def search(cfg, cls, method, spec, base, data, study, folder: Path, address, console) -> dict[str, Any]:
    import optuna
    from ray.tune.schedulers import ASHAScheduler

    init_ray(cfg, address)
    preflight(cfg, [method])
    storage = storage_path(cfg, address)
    r = cfg.ray.trial_resources(method)
    trainable = tune.with_resources(
        tune.with_parameters(_search_trial, cfg=cfg, data=data, method=method, trials_dir=str(folder / "trials")),
        {"cpu": r.cpu, "gpu": r.gpu, **r.custom},
    )
    epochs = getattr(base, "epochs", 1)
    experiment = f"{storage.rstrip('/')}/tune-{study}"
    if tune.Tuner.can_restore(experiment):
        console.print(f"restoring the interrupted search {experiment}")
        tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=True)
    else:
        searcher = PruningAwareOptunaSearch(
            space=optuna_space(spec),
            metric="best_selection_metric",
            mode="max",
            max_epochs=epochs,
            points_to_evaluate=[{k: getattr(base, k) for k in spec}],
            seed=cfg.tune.seed,
            storage=optuna.storages.RDBStorage(f"sqlite:///{folder / 'study.db'}"),
            study_name=study,
        )
        scheduler = ASHAScheduler(
            time_attr="training_iteration", max_t=epochs, grace_period=min(cfg.tune.grace_period, epochs),
            reduction_factor=cfg.tune.reduction_factor,
        )
        board = SearchBoard(method, data.name, cfg.tune.num_samples, getattr(base, "epochs", None))
        view = SearchView(board, console, live_wanted(console, cfg.engine.progress), list(spec), epochs)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric="selection_metric", mode="max", search_alg=searcher, scheduler=scheduler,
                num_samples=cfg.tune.num_samples, max_concurrent_trials=cfg.tune.max_concurrent_trials,
            ),
            run_config=tune.RunConfig(
                name=f"tune-{study}", storage_path=storage, verbose=0, callbacks=[view],
                failure_config=tune.FailureConfig(max_failures=cfg.ray.max_failures),
            ),
        )
    console.print(f"searching {method} on {data.name}: {cfg.tune.num_samples} trials, ASHA on val, study {study}")
    summary = _summarise(tuner.fit(), spec, epochs, study, folder, method, data)
    console.print(_study_table(summary, spec))
    return summary


def _summarise(grid: Any, spec: dict[str, Any], epochs: int, study: str, folder: Path, method: str, data: Any) -> dict[str, Any]:
    """summary.json: every trial (params, epochs, best val, state) and the chosen config: the tie rule of
    :mod:`bench.selection` over the trials' best val selection metrics (within the tolerance of the best, the
    earliest trial: the paper's defaults, evaluated first, win a near-tie)."""
    from bench.selection import select

    trials, candidates, results = [], [], list(grid)  # the trials in the order Ray created them (the preset first)
    for index, result in enumerate(results):
        frame = result.metrics_dataframe
        if frame is not None and len(frame) and "selection_metric" in frame:
            candidates.append((index, float(frame["selection_metric"].max())))
        trials.append({
            "params": {k: result.config[k] for k in spec if k in result.config},
            "epochs": int(result.metrics.get("training_iteration", 0) or 0),
            "best_val_selection_metric": float(frame["selection_metric"].max()) if frame is not None and len(frame) else None,
            "state": "pruned" if _pruned(result.metrics, epochs) else ("errored" if result.error is not None else "complete"),
            "error": None if result.error is None else str(result.error).strip().splitlines()[-1],
        })
    if not candidates:
        raise RuntimeError(f"study {study}: no trial reported a val selection metric")
    selection = select(candidates, "config", lambda i: i)
    best = results[selection.chosen]
    return {
        "study": study,
        "storage": str(folder / "study.db"),
        "method": method,
        "dataset": data.name,
        "manifest_sha256": data.manifest_sha256,
        "search_space": {k: list(v) for k, v in spec.items()},
        "num_trials": len(trials),
        "stopped_early": sum(1 for t in trials if t["state"] == "pruned"),
        "value": "best_val_selection_metric: each trial's val selection metric at its best epoch (the study's value too)",
        "best_params": {k: best.config[k] for k in spec},
        "best_val_selection_metric": selection.value,
        "selection": selection.to_dict(),
        "trials": trials,
    }



def _study_table(summary: dict[str, Any], spec: dict[str, Any]) -> Table:
    table = Table(title=f"study {summary['study']}: best val {100 * summary['best_val_selection_metric']:.2f}",
                  title_justify="left")
    for col in [*spec, "epochs", "best val", "state"]:
        table.add_column(col, justify="left" if col == "state" else "right", no_wrap=True)
    for t in summary["trials"]:
        value = t["best_val_selection_metric"]
        cells = [f"{v:.3g}" if isinstance(v := t["params"].get(k, ""), float) else str(v) for k in spec]
        table.add_row(*cells, str(t["epochs"]), "-" if value is None else f"{100 * value:.2f}", t["state"])
    return table
