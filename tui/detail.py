"""Task detail: loss and validation-metric curves, the task's config, attempts and the error if any."""

from __future__ import annotations

import json

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Sparkline, Static

from orchestrator.client import TaskState
from tui import view as v
from tui.view import JobView


class TaskDetailScreen(Screen):
    """One task of the job the app watches; follows `app.view` like the dashboard."""

    BINDINGS = [
        Binding("escape,backspace", "app.pop_screen", "Back"),
        Binding("c", "cancel_task", "Cancel"),
        Binding("r", "app.retry_failed", "Retry"),
        Binding("e", "app.export_bundle", "Export"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self, name: str):
        super().__init__()
        self.task_name = name
        self.config: dict | None = None  # spec entry and settings, read once off the UI thread

    def compose(self) -> ComposeResult:
        yield Static(id="detail-title")
        with VerticalScroll(id="detail-body"):
            with Vertical(classes="curve"):
                yield Static(id="loss-label")
                yield Sparkline([], id="loss-curve")
            with Vertical(classes="curve"):
                yield Static(id="metric-label")
                yield Sparkline([], id="metric-curve")
            with Horizontal(id="detail-panels"):
                yield Static(id="attempts", classes="panel")
                yield Static(Text("reading the config...", style="dim"), id="config", classes="panel")
            yield Static(id="error", classes="panel")
        yield Footer()

    def on_mount(self) -> None:
        self.watch(self.app, "view", self._view_changed)
        self.load_config(self.app.view)

    def _view_changed(self, view: JobView | None) -> None:
        if view is not None and self.task_name in view.state.tasks:
            self.redraw(view)

    def redraw(self, view: JobView) -> None:
        task = view.state.tasks[self.task_name]
        title = Text()
        title.append(task.name, style="bold").append(f"  {task.kind}  ", style="dim")
        title.append(f" {task.status} ", style=f"reverse {v.STATUS_STYLE.get(task.status, '')}")
        if task.total:
            title.append("  ").append_text(v.bar(v.task_fraction(task), 20)).append(f" step {task.step}/{task.total}")
        if task.value is not None:
            title.append(f"  test {task.metric_name} ", style="dim").append(f"{task.value:.4f}", style="bold green")
        self.query_one("#detail-title", Static).update(title)
        losses = [p[1] for p in task.history if p[1] is not None]
        metrics = [p[2] for p in task.history if len(p) > 2 and p[2] is not None]
        self.query_one("#loss-label", Static).update(curve_label("training loss", losses, task.history, 1))
        self.query_one("#metric-label", Static).update(
            curve_label(f"validation {task.metric_name}", metrics, task.history, 2))
        self.query_one("#loss-curve", Sparkline).data = losses
        self.query_one("#metric-curve", Sparkline).data = metrics
        self.query_one("#attempts", Static).update(attempts_table(task, view))
        error = self.query_one("#error", Static)
        error.display = bool(task.error)
        if task.error:
            error.update(Text.assemble(("error", "bold red"), f" (attempt {task.attempts})\n", task.error))

    @work(thread=True, group="detail-config")
    def load_config(self, view: JobView | None) -> None:
        config = self.app.client.task_config(self.task_name) if self.app.client is not None else {}
        self.app.call_from_thread(self._show_config, config)

    def _show_config(self, config: dict) -> None:
        self.config = config
        table = Table.grid(padding=(0, 1))
        table.add_column(style="dim", no_wrap=True)
        table.add_column()
        for key, value in config.items():
            table.add_row(key, value if isinstance(value, str) else json.dumps(value))
        self.query_one("#config", Static).update(table)

    def action_cancel_task(self) -> None:
        self.app.cancel_task(self.task_name)


def curve_label(title: str, values: list[float], history: list, column: int) -> Text:
    text = Text(title, style="bold")
    if not values:
        return text.append("  no points yet", style="dim")
    steps = [p[0] for p in history if len(p) > column and p[column] is not None]
    text.append("  last ", style="dim").append(f"{values[-1]:.4f}")
    text.append("  min ", style="dim").append(f"{min(values):.4f}")
    text.append("  max ", style="dim").append(f"{max(values):.4f}")
    text.append(f"  {len(values)} points, steps {steps[0]}..{steps[-1]}", style="dim")
    return text


def attempts_table(task: TaskState, view: JobView) -> Table:
    table = Table.grid(padding=(0, 1))
    table.add_column(style="dim", no_wrap=True)
    table.add_column()
    budget = view.task_budget(task.name)
    rows = [
        ("status", Text(task.status, style=v.STATUS_STYLE.get(task.status, ""))),
        ("attempts", str(task.attempts)),
        ("retries allowed", str(view.state.resources.get("retries", ""))),
        ("node", f"{task.node or ''}{f' (pid {task.pid})' if task.pid else ''}"),
        ("trained", f"in a fused pack of {task.pack} tasks" if task.pack > 1 else "alone"),
        ("epoch", str(task.epoch)),
        ("loss", v.number(task.loss)),
        (f"valid {task.metric_name}", v.number(task.metric)),
        (f"test {task.metric_name}", v.number(task.value)),
        ("samples/s", v.number(task.samples_per_s, ",.0f")),
        ("seconds", v.number(task.seconds, ".1f")),
    ]
    if budget is not None:
        rows += [("trained params", f"{budget.trained_params:,}"), ("% of FineAll", f"{budget.ratio_vs_fineall:.2f}%"),
                 ("FineAll params", f"{budget.fineall_params:,}")]
    for key, value in rows:
        table.add_row(key, value)
    return table
