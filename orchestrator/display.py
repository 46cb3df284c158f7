"""What `finetune` shows while a job runs, read through a JobClient.

rich: one aggregate bar over all tasks and a live table (running tasks first, then the latest
finished, then the queue; the top rows when there are many). plain: one line per finished task, for
logs and CI.
"""

from __future__ import annotations

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator import state as st
from orchestrator.state import JobState, TaskState

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
    """One line per finished task, and a line when the job's status changes."""

    def __init__(self, client, console: Console | None = None):
        self.client = client
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.printed: set[str] = set()
        self.status = None

    def __enter__(self) -> "PlainDisplay":
        state = self.client.state()
        self.printed = {n for n, t in state.tasks.items() if t.finished}  # finished before this run
        return self

    def __exit__(self, *exc) -> None:
        self.update()

    def update(self, _state: JobState | None = None) -> None:
        state = self.client.state()
        if state.status != self.status:
            self.status = state.status
            self.console.print(f"job {state.status}: {state.finished}/{len(state.tasks)} tasks finished")
        for name, task in state.tasks.items():
            if task.finished and name not in self.printed:
                self.printed.add(name)
                what = f"{task.metric_name} {task.value:.4f}" if task.status == st.DONE and task.value is not None \
                    else f"error: {escape(str(task.error))}"
                self.console.print(f"[{len(self.printed):>{len(str(len(state.tasks)))}}/{len(state.tasks)}] "
                                   f"{name} {task.status} {what} ({task.seconds or 0:.1f} s, "
                                   f"{task.attempts} attempt{'s' if task.attempts != 1 else ''})")


def make_display(ui: str, client, console: Console | None = None):
    return RichDisplay(client, console) if ui == "rich" else PlainDisplay(client, console)
