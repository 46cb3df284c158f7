"""Console displays (rich, not full-screen) of a running job or search, for the CLI and logs.

A job, read through a JobClient: rich shows one aggregate bar over all tasks and a live table (running
tasks first, then the latest finished, then the queue; the top rows when there are many); plain prints
one line per finished task, for logs and CI. A search, read from its SearchMonitor: rich shows a bar,
the best so far per task and the running trials; plain one line per trial that ends.
"""

from __future__ import annotations

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator.client import JobState, TaskState, trial_name
from orchestrator.client import status as st

STYLE = {st.QUEUED: "dim", st.RUNNING: "cyan", st.RETRYING: "yellow", st.DONE: "green", st.FAILED: "red"}
ORDER = {st.RUNNING: 0, st.RETRYING: 0, st.DONE: 1, st.FAILED: 1, st.QUEUED: 2}


def _num(value, fmt: str = ".4f") -> str:
    return "" if value is None else format(value, fmt)


def top_tasks(state: JobState, rows: int) -> list[TaskState]:
    """Running tasks, then the most recently finished, then queued ones (in spec order)."""
    tasks = list(state.tasks.values())
    order = {t.name: i for i, t in enumerate(tasks)}
    tasks.sort(key=lambda t: (ORDER.get(t.status, 3),
                              -(t.updated_at or 0) if t.finished else order[t.name]))
    return tasks[:rows]


def where(task: TaskState) -> str:
    """The node of a running task, and the size of its fused pack when it has company."""
    node = task.node or ""
    return f"{node} (pack of {task.pack})" if task.pack > 1 and task.status == st.RUNNING else node


class RichDisplay:
    """A live aggregate bar + task table; call update() as often as you like (it redraws ~4x/s)."""

    def __init__(self, client, console: Console | None = None, rows: int = 16):
        self.client, self.rows = client, rows
        self.console = console or Console()
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[counts]}"), TextColumn("{task.fields[rate]}"),
                            TimeElapsedColumn(), console=self.console)
        self.bar_task = self.bar.add_task("tasks", total=None, counts="", rate="")
        self.live = Live(console=self.console, refresh_per_second=4, transient=False)

    def __enter__(self) -> "RichDisplay":
        self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        self.update()
        self.live.stop()

    def update(self, _state: JobState | None = None) -> None:
        self.live.update(self.render(self.client.state()))

    def render(self, state: JobState) -> Group:
        counts = state.counts()
        shown = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        self.bar.update(self.bar_task, total=len(state.tasks), completed=state.finished,
                        counts=f"{shown} · job {state.status}", rate=f"{state.samples_per_s:,.0f} samples/s")
        table = Table(expand=False, pad_edge=False, box=None, header_style="bold")
        for column, justify in (("task", "left"), ("status", "left"), ("step", "right"), ("loss", "right"),
                                ("valid", "right"), ("test", "right"), ("samples/s", "right"),
                                ("tries", "right"), ("node / error", "left")):
            table.add_column(column, justify=justify)
        for task in top_tasks(state, self.rows):
            step = f"{task.step}/{task.total}" if task.total else ""
            status = f"[{STYLE.get(task.status, '')}]{task.status}"
            table.add_row(task.name, status, step, _num(task.loss), _num(task.metric), _num(task.value),
                          _num(task.samples_per_s, ",.0f"), str(task.attempts or ""),
                          escape((task.error or "")[:40] if task.finished else where(task)))
        hidden = len(state.tasks) - min(len(state.tasks), self.rows)
        parts = [self.bar, table]
        if hidden:
            parts.append(f"[dim]... {hidden} more tasks")
        return Group(*parts)


class PlainDisplay:
    """One line per finished task, then a line when the job's status changes (after the task lines that
    led to it). `replay`: the tasks finished before it started get their line too (`tui --attach`)."""

    def __init__(self, client, console: Console | None = None, replay: bool = False):
        self.client, self.replay = client, replay
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.printed: set[str] = set()
        self.status = None

    def __enter__(self) -> "PlainDisplay":
        if not self.replay:
            state = self.client.state()
            self.printed = {n for n, t in state.tasks.items() if t.finished}  # finished before this run
        return self

    def __exit__(self, *exc) -> None:
        self.update()

    def update(self, _state: JobState | None = None) -> None:
        state = self.client.state()
        for name, task in state.tasks.items():
            if task.finished and name not in self.printed:
                self.printed.add(name)
                self.console.print(f"[{len(self.printed):>{len(str(len(state.tasks)))}}/{len(state.tasks)}] "
                                   f"{task_line(task)}")
        if state.status != self.status:
            self.status = state.status
            self.console.print(f"job {state.status}: {state.tally()}")


def task_line(task: TaskState) -> str:
    """A finished task in one line: its metric or its error, time and attempts."""
    what = f"{task.metric_name} {task.value:.4f}" if task.status == st.DONE and task.value is not None \
        else f"error: {escape(str(task.error))}"
    return (f"{task.name} {task.status} {what} ({task.seconds or 0:.1f} s, "
            f"{task.attempts} attempt{'s' if task.attempts != 1 else ''})")


def make_display(ui: str, client, console: Console | None = None):
    return RichDisplay(client, console) if ui == "rich" else PlainDisplay(client, console)


class ResultsTable:
    """A finished job's rows (results.parquet), as `finetune` prints them at its end. It fits the console's
    width without cutting a name or a number: a mode shared by every row goes to the title, then the
    columns that matter least go first (seconds, kind, trained params, metric); a task name that still does
    not fit folds onto a second line."""

    COLUMNS = ("task", "kind", "mode", "status", "metric", "value", "trained params", "% of FineAll", "seconds")
    RIGHT = ("value", "trained params", "% of FineAll", "seconds")
    LEAST_FIRST = ("seconds", "kind", "trained params", "metric")

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def cells(self, r: dict) -> dict[str, str]:
        done = r["status"] == "done"
        return {"task": r["task"], "kind": r["kind"], "mode": r["mode"], "status": r["status"],
                "metric": r["metric"] or "", "value": f"{r['value']:.4f}" if done else "",
                "trained params": f"{r['trained_params']:,}" if done else "",
                "% of FineAll": f"{r['ratio_vs_fineall']:.2f}%" if done else "",
                "seconds": f"{r['seconds']:.1f}" if r.get("seconds") is not None else ""}

    def table(self, width: int) -> Table:
        from rich import box

        rows = [self.cells(r) for r in self.rows]
        modes = {r["mode"] for r in rows}
        columns = [c for c in self.COLUMNS if not (c == "mode" and len(modes) == 1)]
        need = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in columns}
        room = width - 2  # the table's edges
        for column in self.LEAST_FIRST:
            if sum(need[c] + 2 for c in columns) <= room:
                break
            columns.remove(column)
        fits = sum(need[c] + 2 for c in columns) <= room
        title = "fine-tuning results" + (f" (mode {modes.pop()})" if len(modes) == 1 else "")
        table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=True, collapse_padding=False)
        for c in columns:
            if c == "task":
                table.add_column(c, overflow="fold", min_width=need[c] if fits else min(need[c], 8))
            else:
                table.add_column(c, justify="right" if c in self.RIGHT else "left", no_wrap=True, min_width=need[c])
        for r in rows:
            table.add_row(*(f"[red]{escape(r[c])}" if c == "status" and r[c] != "done" else escape(r[c])
                            for c in columns))
        return table

    def __rich_console__(self, console, options):
        yield self.table(options.max_width)


def results_table(rows: list[dict]) -> ResultsTable:
    return ResultsTable(rows)


def efficiency_text(client, state: JobState, width: int = 100):
    """The job's parameter budget in words (the dashboard's efficiency panel): the shared backbone, the
    patch sets, and what they store against one full model per task."""
    from tui.view import JobView, efficiency_text as panel

    results = {r["task"]: r for r in client.results()}
    return panel(JobView(state, results, client.budget(), final=True), width)


def pack_line(resources: dict) -> str:
    """How a job packed its tasks (--pack), from its state's resources."""
    size, reason = resources.get("pack_size"), resources.get("pack_reason")
    line = f"packs: up to {size} tasks per worker" if size and size > 1 else "packs: none, every task ran alone"
    return line + (f" (--pack {resources.get('pack')}: {reason})" if reason else "")


def precision_line(precision: str, reason: str | None) -> str:
    """What a job or a search trains in (--precision) and why (the reason carries the measured rates when
    `auto` measured)."""
    return f"precision: {precision} ({reason or 'as asked'})"


# A search ------------------------------------------------------------------------------------------

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

    def update(self, monitor) -> None:
        self.monitor = monitor
        self.live.update(self.render(monitor))

    def render(self, monitor) -> Group:
        counts = monitor.counts()
        self.bar.update(self.bar_task, total=monitor.total, completed=counts["ended"],
                        counts=f"{counts['running']} running")
        best = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("task", "metric", "ended", "best valid", "sample", "config"):
            best.add_column(column, justify="right" if column in ("ended", "best valid", "sample") else "left")
        for name, task in monitor.tasks.items():
            top = task.best()
            ended = sum(t.ended for t in task.trials.values())
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

    def update(self, monitor) -> None:
        for name, task in monitor.tasks.items():
            for sample, view in sorted(task.trials.items()):
                if view.ended and (name, sample) not in self.printed:
                    self.printed.add((name, sample))
                    what = "failed" if view.failed else "done" if view.final else "stopped"
                    score = "" if view.score is None else f" valid {task.metric} {view.score:.4f}"
                    self.console.print(f"[{len(self.printed)}/{monitor.total}] {trial_name(name, sample)} {what}"
                                       f"{score} ({escape(short_config(view.config))}) {view.seconds or 0:.1f} s",
                                       soft_wrap=True)


def make_search_display(ui: str, console: Console | None = None):
    return RichSearchDisplay(console) if ui == "rich" else PlainSearchDisplay(console)


def search_summary(best: dict) -> tuple[Table, list[str]]:
    """A finished search's best trial per task (best.json's content): a table, and each best config as a line."""
    table = Table(title="best per task (validation metric)")
    for column in ("task", "metric", "best", "baseline", "test", "sample", "done/stopped/failed"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    configs = []
    for name, b in best.items():
        if b.get("score") is None:
            table.add_row(name, b["metric"], "[red]none", "", "", "", "")
            configs.append(f"{name}: {b.get('error', '')}")
            continue
        counts = b["trials"]
        table.add_row(name, b["metric"], fmt(b["score"]), fmt(b["baseline_score"]), fmt(b["test_value"]),
                      str(b["sample"]), f"{counts['done']}/{counts['stopped']}/{counts['failed']}")
        configs.append(f"{name}: " + " ".join(f"{k}={v}" for k, v in sorted(b["config"].items())))
    return table, configs


# A single training run (pretrain) ---------------------------------------------------------------------


class TrainingBar:
    """A rich progress bar fed by training.Progress callbacks (one bar per run)."""

    def __init__(self, progress, description: str):
        self.progress = progress
        self.task = progress.add_task(description, total=None, loss="", metric="")

    def __call__(self, p) -> bool:
        metric = "" if p.metric is None else f"valid {p.metric:.4f}"
        self.progress.update(self.task, total=p.total_steps, completed=p.step, loss=f"loss {p.loss:.4f}",
                             metric=metric, rate=f"{p.samples_per_s:,.0f}/s")
        return False


def training_progress(console=None):
    from rich.progress import TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[loss]}"), TextColumn("{task.fields[metric]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console)
