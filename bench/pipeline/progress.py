"""What a running suite and ``bench tune``'s search show: one row per running (and recently finished) trial, a
clock that ticks, and a suite ETA from the epochs finished so far.

A board holds the trials and their events; it imports no Ray. The Ray callbacks (:mod:`bench.ray.executor`,
:mod:`bench.ray.search`) and the serial loop (:mod:`bench.workflows.suite`) feed it events. Rendering happens at render time
(rich calls ``__rich__`` on every refresh of a ``Live``), so elapsed times and the ETA move between events. Each
event also returns one line of text: with live progress off (``--no-progress``), or on a console that is not a
terminal (a log file, a pipe), that line is printed instead of the live view.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import ProgressColumn
from rich.table import Table
from rich.text import Text

FINISHED = ("done", "errored", "pruned")


def duration(seconds: float | None) -> str:
    """``75`` -> ``1:15``, ``3725`` -> ``1:02:05``; None -> ``?``."""
    if seconds is None:
        return "?"
    s = max(0, round(seconds))
    hours, rest = divmod(s, 3600)
    minutes, s = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{s:02d}" if hours else f"{minutes}:{s:02d}"


def score(value: float | None) -> str:
    """A val score in percent, as the tables print it; ``-`` before the first one."""
    return "-" if value is None else f"{100 * value:.2f}"


def live_wanted(console: Console | None, progress: bool) -> bool:
    """A live view only with progress on and a terminal to draw it on; else one line per event."""
    return bool(progress and console is not None and console.is_terminal and not console.is_dumb_terminal)


@dataclass
class Trial:
    key: str
    label: dict[str, str]  # the board's own columns (method, dataset, seed; or trial id and params)
    epochs: int | None  # the budget; None: a fitted method (one unit of work, no epochs)
    state: str = "waiting"
    epoch: int = 0
    value: float | None = None  # the last epoch's val selection score
    best: float | None = None
    node: str = ""
    started: float | None = None
    ended: float | None = None
    units: int = 0  # epochs (or a fitted method's one fit) finished while this board watched: the ETA's evidence

    def remaining(self) -> int:
        return 0 if self.state in FINISHED else max(0, (self.epochs or 1) - self.epoch)

    def progress(self) -> str:
        return "-" if self.epochs is None else f"{self.epoch}/{self.epochs}"


class Board(ABC):
    """Trials, their events and their table. ``clock`` is injectable (tests); every event method returns the
    one-line text of the event. Thread safe: a live view renders from its refresh thread."""

    LINGER = 60.0  # seconds a finished trial keeps its row
    KEEP = 5  # and at most this many finished rows
    COLUMNS: tuple[tuple[str, dict[str, Any]], ...] = ()

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.trials: dict[str, Trial] = {}
        self.start = clock()
        self.first_start: float | None = None  # the first trial's start: the ETA's rate counts from here
        self.last_unit: float | None = None  # when the latest epoch finished
        self._lock = threading.RLock()

    def __getstate__(self) -> dict[str, Any]:  # pickled with a Tune callback
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # events
    def add(self, key: str, epochs: int | None, **label: str) -> Trial:
        with self._lock:
            return self.trials.setdefault(key, Trial(key, label, epochs))

    def discard(self, key: str) -> None:
        """Forget a trial that never started (another process does it): it no longer counts as waiting."""
        with self._lock:
            if key in self.trials and self.trials[key].state == "waiting":
                del self.trials[key]

    def started(self, key: str) -> str:
        with self._lock:
            now, trial = self.clock(), self.trials[key]
            trial.state, trial.ended = "running", None
            trial.started = trial.started if trial.started is not None else now
            self.first_start = now if self.first_start is None else self.first_start
            return self.start_line(trial)

    def reported(self, key: str, epoch: int, value: float | None, best: float | None = None, node: str = "") -> str:
        with self._lock:
            trial = self.trials[key]
            if trial.started is None:
                self.started(key)
            trial.units += 1
            self.last_unit = self.clock()
            trial.epoch, trial.node = int(epoch), node or trial.node
            if value is not None:
                trial.value = float(value)
                trial.best = max(float(value), trial.best if trial.best is not None else float("-inf"))
            if best is not None:
                trial.best = float(best)
            return self.epoch_line(trial)

    def finished(self, key: str, state: str, value: float | None = None) -> str:
        with self._lock:
            trial = self.trials[key]
            now = self.clock()
            if trial.started is None:
                trial.started = now
            if state == "done" and trial.epochs is None and not trial.units:  # a fitted method: its one unit
                trial.units, self.last_unit = 1, now
            if value is not None and trial.value is None:
                trial.value = float(value)
            trial.state, trial.ended = state, now
            return self.end_line(trial)

    # numbers
    def counts(self) -> dict[str, int]:
        with self._lock:
            out = {s: 0 for s in ("waiting", "running", *FINISHED)}
            for trial in self.trials.values():
                out[trial.state] = out.get(trial.state, 0) + 1
            return out

    def eta(self) -> float | None:
        """Seconds left: the wall time per finished epoch so far (suite-wide, so trials that run side by side count
        as they do) x the epochs every unfinished trial has left, less the time since the latest epoch; None until
        an epoch finished."""
        with self._lock:
            units = sum(t.units for t in self.trials.values())
            if not units or self.first_start is None or self.last_unit is None:
                return None
            remaining = sum(t.remaining() for t in self.trials.values())
            per_unit = (self.last_unit - self.first_start) / units
            return max(0.0, per_unit * remaining - (self.clock() - self.last_unit))

    def elapsed(self, trial: Trial) -> float | None:
        if trial.started is None:
            return None
        return (trial.ended if trial.ended is not None else self.clock()) - trial.started

    def shown(self) -> list[Trial]:
        """Running trials (oldest first), then the latest finished ones still lingering (newest first)."""
        now = self.clock()
        running = sorted((t for t in self.trials.values() if t.state == "running"), key=lambda t: t.started or 0.0)
        ended = sorted((t for t in self.trials.values() if t.state in FINISHED and t.ended is not None
                        and now - t.ended <= self.LINGER), key=lambda t: -(t.ended or 0.0))
        return running + ended[: self.KEEP]

    # rendering
    @abstractmethod
    def title(self) -> str:
        """The header line: counts, elapsed, ETA."""

    @abstractmethod
    def cells(self, trial: Trial) -> list[str]:
        """One table row for ``trial``, in ``COLUMNS`` order."""

    def table(self) -> Group:
        """The header line (counts, elapsed, ETA) over one row per shown trial, as of now."""
        with self._lock:
            table = Table()
            for name, options in self.COLUMNS:
                table.add_column(name, **options)
            for trial in self.shown():
                table.add_row(*self.cells(trial))
            return Group(Text(self.title()), table)

    def __rich__(self) -> Group:
        return self.table()

    @abstractmethod
    def start_line(self, trial: Trial) -> str:
        """The log line of a trial that starts."""

    @abstractmethod
    def epoch_line(self, trial: Trial) -> str:
        """The log line of a trial's reported epoch."""

    @abstractmethod
    def end_line(self, trial: Trial) -> str:
        """The log line of a trial that ended (done, pruned or errored)."""


_NUM = {"justify": "right", "no_wrap": True}
_TEXT = {"overflow": "ellipsis", "no_wrap": True}


class SuiteBoard(Board):
    """A suite's runs: method, dataset, seed, epoch/epochs, last val score, elapsed and node of each running run."""

    COLUMNS = (("state", {"no_wrap": True}), ("method", _TEXT), ("dataset", _TEXT), ("seed", _NUM),
               ("epoch", _NUM), ("val", _NUM), ("elapsed", _NUM), ("node", _TEXT))

    def add_run(self, key: str, method: str, dataset: str, seed: int | None, epochs: int | None) -> Trial:
        return self.add(key, epochs, method=method, dataset=dataset, seed="det." if seed is None else str(seed))

    def title(self) -> str:
        c = self.counts()
        return (f"suite: {c['waiting']} waiting, {c['running']} running, {c['done']} done, {c['errored']} errored; "
                f"{duration(self.clock() - self.start)} elapsed, ETA {duration(self.eta())}")

    def cells(self, trial: Trial) -> list[str]:
        label = trial.label
        return [trial.state, label["method"], label["dataset"], label["seed"], trial.progress(), score(trial.value),
                duration(self.elapsed(trial)), trial.node or "-"]

    def name(self, trial: Trial) -> str:
        seed = "deterministic" if trial.label["seed"] == "det." else f"seed {trial.label['seed']}"
        return f"{trial.label['method']} / {trial.label['dataset']} / {seed}"

    def start_line(self, trial: Trial) -> str:
        return f"started {self.name(trial)}"

    def epoch_line(self, trial: Trial) -> str:
        node = f" on {trial.node}" if trial.node else ""
        return (f"{self.name(trial)}: epoch {trial.progress()}, val {score(trial.value)}, "
                f"{duration(self.elapsed(trial))}{node}; suite ETA {duration(self.eta())}")

    def end_line(self, trial: Trial) -> str:
        c = self.counts()
        return (f"{trial.state} {self.name(trial)} after {duration(self.elapsed(trial))} (val {score(trial.value)}); "
                f"{c['done'] + c['errored']} of {len(self.trials)} finished, suite ETA {duration(self.eta())}")


class SearchBoard(Board):
    """``bench tune``'s search: each trial as it reports (id, params, epoch, val, best, state, elapsed)."""

    COLUMNS = (("trial", {"no_wrap": True}), ("params", {"overflow": "fold"}), ("epoch", _NUM), ("val", _NUM),
               ("best", _NUM), ("state", {"no_wrap": True}), ("elapsed", _NUM))

    def __init__(self, method: str, dataset: str, samples: int, epochs: int | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.method, self.dataset, self.samples, self.epochs = method, dataset, samples, epochs

    def add_trial(self, key: str, params: dict[str, Any]) -> Trial:
        return self.add(key, self.epochs, params=short_params(params))

    def counts(self) -> dict[str, int]:
        out = super().counts()
        out["waiting"] += max(0, self.samples - len(self.trials))  # not yet proposed
        return out

    def leader(self) -> Trial | None:
        scored = [t for t in self.trials.values() if t.best is not None]
        return max(scored, key=lambda t: t.best or 0.0) if scored else None

    def title(self) -> str:
        c, leader = self.counts(), self.leader()
        best = f"best val {score(leader.best)} (trial {leader.key})" if leader else "best val -"
        return (f"search {self.method} on {self.dataset}: {c['running']} running, {c['done']} done, {c['pruned']} "
                f"pruned, {c['errored']} errored of {self.samples}; {duration(self.clock() - self.start)} elapsed\n{best}")

    def cells(self, trial: Trial) -> list[str]:
        return [trial.key, trial.label["params"], trial.progress(), score(trial.value), score(trial.best),
                trial.state.upper(), duration(self.elapsed(trial))]

    def start_line(self, trial: Trial) -> str:
        return f"trial {trial.key} RUNNING: {trial.label['params']}"

    def epoch_line(self, trial: Trial) -> str:
        return f"trial {trial.key}: epoch {trial.progress()}, val {score(trial.value)} (best {score(trial.best)})"

    def end_line(self, trial: Trial) -> str:
        return (f"trial {trial.key} {trial.state.upper()} at epoch {trial.progress()}: best val {score(trial.best)} "
                f"after {duration(self.elapsed(trial))} ({trial.label['params']})")


def suite_board(cfg: Any, plans: list[Any], clock: Callable[[], float] = time.monotonic) -> SuiteBoard:
    """A board with every planned run waiting, each with its epoch budget (None for a fitted method)."""
    board = SuiteBoard(clock)
    for p in plans:
        try:
            epochs = getattr(cfg.method_config(p.method), "epochs", None)
        except Exception:  # a bad method config fails its own run (recorded as such), not the suite's display
            epochs = None
        board.add_run(p.run_id, p.method, p.dataset_label, p.seed, epochs)
    return board


def short_params(params: dict[str, Any]) -> str:
    """``{"lr": 0.0012345, "n_ctx": 8}`` -> ``lr=0.00123 n_ctx=8``."""
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


class Output:
    """Where a board's events go: a live view that refreshes itself (so its clock ticks) when ``live``, else one
    line per event. Pickles without its console (Tune pickles its callbacks with the experiment): a copy unpickled
when ``bench tune`` restores an interrupted search prints to that process's stderr."""

    def __init__(self, board: Board, console: Console | None, live: bool) -> None:
        self.board, self.console, self.live_mode = board, console, live
        self.live: Live | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "console": None, "live": None}

    def __setstate__(self, state: dict[str, Any]) -> None:  # a restored Tune experiment: print to this stderr
        self.__dict__.update(state)
        self.console = Console(stderr=True, soft_wrap=True)
        self.live_mode = self.live_mode and live_wanted(self.console, True)

    def __call__(self, line: str) -> None:
        if self.console is None:
            return
        if not self.live_mode:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)
        elif self.live is None:
            self.live = Live(self.board, console=self.console, auto_refresh=True, refresh_per_second=2)
            self.live.start()
        else:
            self.live.refresh()

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


class EtaColumn(ProgressColumn):
    """A rich Progress column: the ETA of the board a task carries in its ``board`` field (blank for others)."""

    def render(self, task: Any) -> Text:
        board = task.fields.get("board")
        return Text("" if board is None else f"ETA {duration(board.eta())}", style="progress.remaining")
