"""Task detail, in three panes: its curves (loss on a log scale, the validation metric; several tasks
overlaid to compare them; steps or wall-clock time along x), its log (what its attempts printed, their
progress now and then, a failure's traceback, what the driver made of each attempt), and its numbers and
configuration."""

from __future__ import annotations

import json

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import ContentSwitcher, Static

from orchestrator.client import TaskState
from tui import view as v
from tui.chart import COLOURS, Series, chart
from tui.keys import KeyFooter
from tui.view import JobView

PANES = ("curves", "log", "info")


class Chart(Widget):
    """A chart() of its series, drawn to the size it is given."""

    DEFAULT_CSS = "Chart { height: 1fr; min-height: 6; }"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.series: list[Series] = []
        self.log_y = self.clock = False
        self.x_title = "step"

    def show(self, series: list[Series], log_y: bool, clock: bool) -> None:
        self.series, self.log_y, self.clock = series, log_y, clock
        self.x_title = "wall clock" if clock else "step"
        self.refresh()

    def render(self) -> Text:
        return chart(self.series, self.size.width, self.size.height, self.log_y, self.clock, self.x_title)


class TaskDetailScreen(Screen):
    """One task of the job the app watches (and, with `compare`, others overlaid); follows `app.view`."""

    TITLE = "Task detail"
    HELP = ("1 curves, 2 log, 3 numbers and configuration. On the curves: y puts the loss on a log scale or "
            "back, t switches x between steps and wall-clock time; mark tasks on the dashboard (space) and "
            "press o there to overlay them here.")
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("backspace", "app.pop_screen", "Back", show=False),
        Binding("1", "pane('curves')", "Curves"),
        Binding("2", "pane('log')", "Log"),
        Binding("3", "pane('info')", "Info"),
        Binding("y", "toggle_log", "Log scale"),
        Binding("t", "toggle_clock", "Time axis"),
        Binding("end", "log_end", "Log end", show=False),
        Binding("c", "cancel_task", "Cancel"),
        Binding("r", "retry", "Retry"),
        Binding("e", "app.export_bundle", "Export"),
        Binding("question_mark", "app.help", "Help"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self, name: str, pane: str = "curves", compare: list[str] | None = None):
        super().__init__()
        self.task_name, self.pane = name, pane
        self.compare = [n for n in (compare or []) if n != name]
        self.log_y, self.clock = True, False
        self.config: dict | None = None  # spec entry and settings, read once off the UI thread
        self.log_lines: list[str] | None = None
        self._reading_log = False

    def compose(self) -> ComposeResult:
        yield Static(id="detail-title")
        with ContentSwitcher(initial=self.pane, id="panes"):
            with VerticalScroll(id="curves"):
                yield Static(id="loss-label", classes="curve-label")
                yield Chart(id="loss-chart")
                yield Static(id="metric-label", classes="curve-label")
                yield Chart(id="metric-chart")
            with VerticalScroll(id="log"):
                yield Static(Text("reading the log...", style="dim"), id="log-text")
            with VerticalScroll(id="info"):
                with Horizontal(id="detail-panels"):
                    yield Static(id="attempts", classes="panel")
                    yield Static(Text("reading the config...", style="dim"), id="config", classes="panel")
                yield Static(id="error", classes="panel")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.watch(self.app, "view", self._view_changed)
        self.load_config()

    def _view_changed(self, view: JobView | None) -> None:
        if view is not None and self.task_name in view.state.tasks:
            self.redraw(view)
            if self.pane == "log":
                self.read_log()

    def redraw(self, view: JobView) -> None:
        task = view.state.tasks[self.task_name]
        title = Text()
        title.append(task.name, style="bold").append(f"  {task.kind}  ", style="dim")
        title.append(f" {task.status} ", style=f"reverse {v.STATUS_STYLE.get(task.status, '')}")
        if task.total and v.shows_numbers(task):
            title.append("  ").append_text(v.bar(v.task_fraction(task), 20)).append(f" step {task.step}/{task.total}")
        if task.value is not None:
            title.append(f"  test {task.metric_name} ", style="dim").append(f"{task.value:.4f}", style="bold green")
        title.append("   ").append("  ".join(f"{i + 1} {p}" for i, p in enumerate(PANES)), style="dim")
        self.query_one("#detail-title", Static).update(title)
        self.draw_curves(view)
        self.query_one("#attempts", Static).update(attempts_table(task, view))
        error = self.query_one("#error", Static)
        error.display = bool(task.error)
        if task.error:
            error.update(Text.assemble(("error", "bold red"), f" (attempt {task.attempts})\n", task.error))

    def draw_curves(self, view: JobView) -> None:
        tasks = [view.state.tasks[n] for n in [self.task_name, *self.compare] if n in view.state.tasks]
        x = 3 if self.clock else 0
        loss, metric = [], []
        for i, task in enumerate(tasks):
            colour = COLOURS[i % len(COLOURS)]
            points = [p for p in task.history if len(p) > x]
            loss.append(Series(task.name, [(p[x], p[1]) for p in points if p[1] is not None], colour))
            metric.append(Series(task.name, [(p[x], p[2]) for p in points if len(p) > 2 and p[2] is not None],
                                 colour))
        main = tasks[0]
        self.query_one("#loss-label", Static).update(curve_label("training loss", loss[0].points))
        self.query_one("#metric-label", Static).update(curve_label(f"validation {main.metric_name}",
                                                                   metric[0].points))
        self.query_one("#loss-chart", Chart).show(loss, self.log_y, self.clock)
        self.query_one("#metric-chart", Chart).show(metric, False, self.clock)

    @work(thread=True, group="detail-config")
    def load_config(self) -> None:
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

    def read_log(self) -> None:
        if not self._reading_log and self.app.client is not None:
            self._reading_log = True
            self._read_log()

    @work(thread=True, group="detail-log", exit_on_error=False)
    def _read_log(self) -> None:
        try:
            lines = self.app.client.log(self.task_name)
        finally:
            self._reading_log = False
        self.app.call_from_thread(self._show_log, lines)

    def _show_log(self, lines: list[str]) -> None:
        if lines == self.log_lines:
            return
        scroller = self.query_one("#log", VerticalScroll)
        at_end = self.log_lines is None or scroller.scroll_y >= scroller.max_scroll_y - 1
        self.log_lines = lines
        text = Text()
        if not lines:
            text.append("no log yet: a task's log starts when an attempt of it starts", style="dim")
        for line in lines:
            style = "red" if line.startswith(("Traceback", "  File", "    ")) or "Error" in line.split(":")[0] else \
                "bold" if line.startswith("attempt ") else ""
            text.append(line + "\n", style=style)
        self.query_one("#log-text", Static).update(text)
        if at_end:  # follow the end, like tail -f, unless the user scrolled up
            self.call_after_refresh(scroller.scroll_end, animate=False)

    # Actions -------------------------------------------------------------------------------------------

    def action_pane(self, pane: str) -> None:
        self.pane = pane
        self.query_one(ContentSwitcher).current = pane
        if pane == "log":
            self.read_log()

    def action_toggle_log(self) -> None:
        self.log_y = not self.log_y
        if self.app.view is not None:
            self.draw_curves(self.app.view)

    def action_toggle_clock(self) -> None:
        self.clock = not self.clock
        if self.app.view is not None:
            self.draw_curves(self.app.view)

    def action_log_end(self) -> None:
        self.query_one(f"#{self.pane}", VerticalScroll).scroll_end(animate=False)

    def action_cancel_task(self) -> None:
        self.app.cancel_task(self.task_name)

    def action_retry(self) -> None:
        self.app.retry_tasks([self.task_name])


def curve_label(title: str, points: list[tuple[float, float]]) -> Text:
    text = Text(title, style="bold")
    if not points:
        return text.append("  no points yet", style="dim")
    values = [y for _, y in points]
    text.append("  last ", style="dim").append(f"{values[-1]:.4f}")
    text.append("  min ", style="dim").append(f"{min(values):.4f}")
    text.append("  max ", style="dim").append(f"{max(values):.4f}")
    text.append(f"  {len(values)} points", style="dim")
    return text


def attempts_table(task: TaskState, view: JobView) -> Table:
    table = Table.grid(padding=(0, 1))
    table.add_column(style="dim", no_wrap=True)
    table.add_column()
    budget = view.task_budget(task.name)
    numbers = v.shows_numbers(task)
    rows = [
        ("status", Text(task.status, style=v.STATUS_STYLE.get(task.status, ""))),
        ("attempts", str(task.attempts)),
        ("retries allowed", str(view.state.resources.get("retries", ""))),
        ("node", f"{task.node or ''}{f' (pid {task.pid})' if task.pid else ''}"),
        ("queue wait", v.duration(task.queue_wait)),
        ("trained", f"in a fused pack of {task.pack} tasks" if task.pack > 1 else "alone"),
        ("epoch", str(task.epoch) if numbers else ""),
        ("loss", v.number(task.loss if numbers else None)),
        (f"valid {task.metric_name}", v.number(task.metric if numbers else None)),
        (f"test {task.metric_name}", v.number(task.value)),
        ("samples/s", v.number(task.samples_per_s if numbers else None, ",.0f")),
        ("seconds", v.number(task.seconds, ".1f")),
    ]
    if budget is not None:
        rows += [("trained params", f"{budget.trained_params:,}"), ("% of FineAll", f"{budget.ratio_vs_fineall:.2f}%"),
                 ("FineAll params", f"{budget.fineall_params:,}")]
    for key, value in rows:
        table.add_row(key, value)
    return table
