"""What the cluster is doing: its nodes with their CPU, GPU, memory and object store in use (Ray's own
view, recorded by the job's driver every few seconds: JobState.usage), what Ray's queue waits for, the
worker each running task is on, and how long each task waited between submission and its start."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Static

from orchestrator.client import status as st
from tui import view as v
from tui.keys import KeyFooter
from tui.view import JobView

GIB = 1024 ** 3


def use_cell(pair: list | None, bytes_: bool = False, bars: bool = True) -> Text:
    """'▇▇▇━━ 3/4' for a [used, total] pair (without the bar on narrow screens); bytes in MiB or GiB."""
    if not pair or not pair[1]:
        return Text("-", style="dim")
    used, total = pair
    text = v.bar(used / total, 6, "red" if used >= total else "cyan").append(" ") if bars else Text()
    if not bytes_:
        return text.append(f"{used:.3g}/{total:.3g}")
    scale, unit = (GIB, "GiB") if total >= GIB else (1024 ** 2, "MiB")
    return text.append(f"{used / scale:.3g}/{total / scale:.3g} {unit}")


def nodes_table(usage: dict, width: int = 200) -> Table:
    bars = width >= 110
    table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 2, 0, 0))
    for column in ("node", "status", "CPU", "GPU", "memory reserved" if bars else "memory", "object store"):
        table.add_column(column, no_wrap=True)
    for node in usage.get("nodes", []):
        table.add_row(node.get("ip", ""), node.get("status", ""), use_cell(node.get("cpu"), bars=bars),
                      use_cell(node.get("gpu"), bars=bars), use_cell(node.get("memory"), True, bars),
                      use_cell(node.get("object_store"), True, bars))
    return table


def workers_table(view: JobView, now: float) -> Table:
    """Each worker training now (a node and a process; a pack is one worker), its tasks, and the time
    each waited in the queue."""
    tasks = view.state.tasks.values()
    workers: dict[tuple, list] = {}
    for task in tasks:
        if task.status == st.RUNNING:
            workers.setdefault((task.node or "?", task.pid), []).append(task)
    table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 2, 0, 0))
    for column, justify in (("worker", "left"), ("task", "left"), ("step", "right"), ("running", "right"),
                            ("queue wait", "right")):
        table.add_column(column, justify=justify, no_wrap=column != "task")
    for (node, pid), members in sorted(workers.items(), key=lambda item: str(item[0])):
        for i, task in enumerate(members):
            table.add_row(f"{node} pid {pid}" if i == 0 else "", task.name,
                          f"{task.step}/{task.total}" if task.total else "",
                          v.duration(now - task.attempt_started_at) if task.attempt_started_at else "",
                          v.duration(task.queue_wait))
    return table


def waiting_text(view: JobView, now: float) -> Text:
    """Tasks handed to the cluster that have not started, and what Ray's queue waits for."""
    text = Text()
    submitted = [t for t in view.state.tasks.values() if t.status in (st.QUEUED, st.RETRYING) and t.submitted_at
                 and (t.attempt_started_at is None or t.attempt_started_at < t.submitted_at)]
    queued = sum(t.status == st.QUEUED for t in view.state.tasks.values())
    text.append("queue      ", style="dim").append(f"{queued} task(s) queued in the driver")
    if submitted:
        longest = max(now - t.submitted_at for t in submitted)
        text.append(f"; {len(submitted)} handed to the cluster, waiting up to {v.duration(longest)}")
    for demand in view.state.usage.get("waiting", []):
        wants = ", ".join(f"{k} {value:g}" for k, value in demand["resources"].items())
        text.append(f"\nRay queue  {demand['count']} waiting for {{{wants}}}", style="yellow")
    waits = [t.queue_wait for t in view.state.tasks.values() if t.queue_wait is not None]
    if waits:
        text.append("\nwaits      ", style="dim").append(f"{len(waits)} attempts started: queue wait median "
                                                         f"{v.duration(sorted(waits)[len(waits) // 2])}, longest "
                                                         f"{v.duration(max(waits))}")
    return text


class ResourcesScreen(Screen):
    """Follows `app.view` like the dashboard."""

    TITLE = "Resources"
    HELP = ("Nodes as Ray sees them (the driver asks it every few seconds, as `ray status` does: memory is what "
            "tasks reserved, the object store what it holds), the workers training now and each task's wait "
            "between its submission and its start.")
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("backspace", "app.pop_screen", "Back", show=False),
        Binding("question_mark", "app.help", "Help"),
        Binding("q", "app.quit", "Quit"),
    ]

    def compose(self) -> ComposeResult:
        yield Static(id="resources-title")
        with VerticalScroll(id="resources-body"):
            yield Static(id="nodes", classes="panel")
            yield Static(id="waiting", classes="panel")
            yield Static(id="workers", classes="panel")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.watch(self.app, "view", self.redraw)

    def redraw(self, view: JobView | None) -> None:
        if view is None:
            return
        now = view.clock  # a finished job's figures are as old as its end
        usage = view.state.usage
        title = Text()
        title.append("resources ", style="dim").append(view.state.job_dir, style="bold")
        title.append("  ").append_text(v.cluster_text(view.state))
        if usage.get("at"):
            title.append(f"  (Ray's view {v.duration(max(now - usage['at'], 0))} ago)", style="dim")
        self.query_one("#resources-title", Static).update(title)
        nodes = self.query_one("#nodes", Static)
        if usage.get("nodes"):
            nodes.update(nodes_table(usage, self.size.width))
        elif view.state.cluster.get("local"):
            nodes.update(Text("in process: no Ray cluster, the tasks run one after another here", style="dim"))
        else:
            nodes.update(Text(usage.get("error") or ("no figures: the job is over" if not view.live else
                                                     "waiting for the driver's first look at the cluster"),
                              style="dim"))
        self.query_one("#waiting", Static).update(waiting_text(view, now))
        workers = workers_table(view, now)
        self.query_one("#workers", Static).update(workers if workers.row_count else
                                                   Text("no task is training now", style="dim"))
