"""Following a search while it runs: a Tune callback feeds a SearchMonitor in the driver, which merges
what Tune knows (each trial's status and reported scores) with the progress hub (each running trial's
step, loss and validation metric); the CLI shows it rich (a bar, the best so far per task, the running
trials) or plain (one line per finished trial).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ray import tune
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator import state as st
from orchestrator.tune_trial import META_KEYS, trial_name

PULL_S = 0.5  # hub snapshots at most this often
ENDED = ("TERMINATED", "ERROR")

# Tune stores its RunConfig (callbacks included) in the experiment, and a resumed search gets them back
# from there; so the callback holds nothing, and finds the monitor of the search this process runs here.
_active: list = [None]


def activate(monitor: "SearchMonitor | None") -> None:
    _active[0] = monitor


class Forward(tune.Callback):
    """Tune callback: hands the trial list to this process's monitor after every step of Tune's loop."""

    def on_step_end(self, iteration, trials, **info):
        if _active[0] is not None:
            _active[0].step(trials)


@dataclass
class TrialView:
    task: str
    sample: int
    config: dict
    status: str = "PENDING"  # Tune's: PENDING, RUNNING, PAUSED, TERMINATED, ERROR
    score: float | None = None  # best validation metric so far
    final: bool = False  # ran its whole budget
    seconds: float | None = None


@dataclass
class TaskBest:
    metric: str
    trials: dict = field(default_factory=dict)  # sample -> TrialView

    def best(self) -> TrialView | None:
        scored = [t for t in self.trials.values() if t.score is not None]
        return max(scored, key=lambda t: (t.score, -t.sample)) if scored else None


class SearchMonitor:
    """The live state of a search, in the driver: `statuses` (Tune's, per trial), `tasks` (per task, its
    trials and best so far) and `running` (the hub's TaskState of each running trial)."""

    def __init__(self, plan, hub, on_update=None):
        self.hub, self.on_update = hub, on_update
        self.total = len(plan.points)
        self.tasks = {t.name: TaskBest(t.metric) for t in plan.tasks}
        self.statuses: dict[tuple, str] = {}  # (task, sample) -> Tune's status, as last seen
        self.running: dict[str, st.TaskState] = {}
        self._version, self._pulled = 0, 0.0

    def step(self, trials) -> None:
        for trial in trials:
            key = (trial.config.get("task"), trial.config.get("sample"))
            if key[0] not in self.tasks:
                continue
            view = self.tasks[key[0]].trials.setdefault(
                key[1], TrialView(*key, {k: v for k, v in trial.config.items() if k not in META_KEYS}))
            result = trial.last_result or {}
            view.status, view.score = trial.status, result.get("best_valid", view.score)
            view.final, view.seconds = bool(result.get("final")), result.get("time_total_s")
            if trial.status in ENDED and self.statuses.get(key) not in ENDED:  # ended now, or before a resume
                failed = trial.status == "ERROR"
                self.hub.finished.remote(trial_name(*key), st.FAILED if failed else st.DONE,
                                         value=result.get("test_value"), error="failed" if failed else None,
                                         seconds=view.seconds)
            self.statuses[key] = trial.status
        self.refresh()

    def refresh(self, force: bool = False) -> None:
        import ray

        now = time.monotonic()
        if not force and now - self._pulled < PULL_S:
            return
        self._pulled = now
        snapshot = ray.get(self.hub.snapshot.remote(self._version))
        self._version = snapshot["version"]
        for name, task in snapshot["tasks"].items():
            self.running[name] = st.TaskState.from_dict(task)
        self.running = {n: t for n, t in self.running.items() if t.status in (st.RUNNING, st.RETRYING)}
        if self.on_update:
            self.on_update(self)

    def counts(self) -> dict[str, int]:
        statuses = list(self.statuses.values())
        return {"ended": sum(s in ENDED for s in statuses), "running": sum(s == "RUNNING" for s in statuses)}


def short_config(config: dict) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(config.items()))


class RichSearchDisplay:
    """A bar over all trials, the best so far per task, and the running trials."""

    def __init__(self, console: Console | None = None, rows: int = 12):
        self.console, self.rows = console or Console(), rows
        self.bar = Progress(TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), console=self.console)
        self.bar_task = self.bar.add_task("trials", total=None, counts="")
        self.live = Live(console=self.console, refresh_per_second=4, transient=False)
        self.monitor = None

    def __enter__(self):
        self.live.start()
        return self

    def __exit__(self, *exc):
        if self.monitor is not None:
            self.live.update(self.render(self.monitor))
        self.live.stop()

    def update(self, monitor: SearchMonitor) -> None:
        self.monitor = monitor
        self.live.update(self.render(monitor))

    def render(self, monitor: SearchMonitor) -> Group:
        counts = monitor.counts()
        self.bar.update(self.bar_task, total=monitor.total, completed=counts["ended"],
                        counts=f"{counts['running']} running")
        best = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("task", "metric", "ended", "best valid", "sample", "config"):
            best.add_column(column, justify="right" if column in ("ended", "best valid", "sample") else "left")
        for name, task in monitor.tasks.items():
            top = task.best()
            ended = sum(t.status in ENDED for t in task.trials.values())
            best.add_row(name, task.metric, f"{ended}/{monitor.total // max(1, len(monitor.tasks))}",
                         "" if top is None else f"{top.score:.4f}", "" if top is None else str(top.sample),
                         "" if top is None else escape(short_config(top.config)))
        parts = [self.bar, best]
        if monitor.running:
            running = Table(box=None, header_style="bold", pad_edge=False)
            for column in ("trial", "step", "loss", "valid", "samples/s"):
                running.add_column(column, justify="left" if column == "trial" else "right")
            for task in sorted(monitor.running.values(), key=lambda t: t.name)[:self.rows]:
                running.add_row(task.name, f"{task.step}/{task.total}" if task.total else "",
                                _num(task.loss), _num(task.metric), _num(task.samples_per_s, ",.0f"))
            parts.append(running)
        return Group(*parts)


class PlainSearchDisplay:
    """One line per trial that ends."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.printed: set = set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def update(self, monitor: SearchMonitor) -> None:
        for name, task in monitor.tasks.items():
            for sample, view in sorted(task.trials.items()):
                if view.status in ENDED and (name, sample) not in self.printed:
                    self.printed.add((name, sample))
                    what = "failed" if view.status == "ERROR" else "done" if view.final else "stopped"
                    score = "" if view.score is None else f" valid {task.metric} {view.score:.4f}"
                    self.console.print(f"[{len(self.printed)}/{monitor.total}] {trial_name(name, sample)} {what}"
                                       f"{score} ({escape(short_config(view.config))}) {view.seconds or 0:.1f} s",
                                       soft_wrap=True)


def _num(value, fmt: str = ".4f") -> str:
    return "" if value is None else format(value, fmt)


def make_search_display(ui: str, console: Console | None = None):
    return RichSearchDisplay(console) if ui == "rich" else PlainSearchDisplay(console)
