"""The job dashboard: totals, the efficiency panel and one row per task, updated in place each poll.

Rows can be filtered by status, found by name, sorted by any column (the arrow marks it), grouped by
status or kind (Enter on a heading folds it), and marked (space) to cancel, retry or compare together.
Each row's cells are rebuilt only when its task's numbers change, so a 1,000-task job stays responsive.
"""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Input

from orchestrator.client import status as st
from tui import view as v
from tui.keys import KeyFooter
from tui.panel import TextPanel
from tui.tasklist import Column, Row, TaskList
from tui.view import JobView

GROUP = "group:"
FAILED_KEYS = Binding.Group("Failed")
SORT_KEYS = Binding.Group("Sort/rev")


class DashboardScreen(Screen):
    """Watches `app.view` (a JobView the app polls off the UI thread) and redraws from it."""

    TITLE = "Dashboard"
    HELP = ("One row per task. Marked tasks (space) are what c, r and o act on; with none marked, c cancels "
            "the highlighted task and r retries every failed one. Sort by clicking a column's header too. "
            "Curves of every task: tensorboard --logdir JOB_DIR.")
    BINDINGS = [
        Binding("enter", "detail", "Detail", show=False, tooltip="the highlighted task's curves, log and config "
                                                                 "(on a group heading: fold or unfold it)"),
        Binding("l", "log", "Log", tooltip="the highlighted task's log (a failed one's traceback)"),
        Binding("space", "mark", "Mark", tooltip="mark or unmark the highlighted task (on a heading: its group)"),
        Binding("a", "mark_all", "All", tooltip="mark every task shown (again: unmark them)"),
        Binding("c", "cancel_task", "Cancel", tooltip="cancel the marked tasks, or the highlighted one"),
        Binding("r", "retry", "Retry", tooltip="retry the marked tasks that failed, or every failed task"),
        Binding("o", "compare", "Compare", tooltip="overlay the curves of the marked tasks"),
        Binding("n", "next_failed(1)", "Next failed", group=FAILED_KEYS, tooltip="the next failed task"),
        Binding("N", "next_failed(-1)", "Previous failed", group=FAILED_KEYS, tooltip="the previous failed task"),
        Binding("f", "cycle_filter", "Filter", tooltip="all, running, failed, done, queued"),
        Binding("g", "cycle_group", "Group", tooltip="group by status, by kind, or not"),
        Binding("s", "cycle_sort", "Sort", group=SORT_KEYS, tooltip="sort by the next column (or click a header)"),
        Binding("S", "reverse_sort", "Reverse", group=SORT_KEYS, tooltip="reverse the sort"),
        Binding("slash", "search", "Find", tooltip="find tasks by name"),
        Binding("escape", "clear_search", "Clear", tooltip="clear the find"),
        Binding("u", "app.resources", "Resources", tooltip="the cluster's nodes, workers and queue"),
        Binding("e", "export", "Export", tooltip="export the bundle of finished tasks to one archive"),
        Binding("x", "app.stop_job", "Stop", tooltip="stop the job (finetune --resume continues it)"),
        Binding("question_mark", "app.help", "Help", tooltip="every key, and what it does"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self):
        super().__init__()
        self.status_filter, self.sort, self.reverse, self.search, self.group = "all", "spec", False, "", "none"
        self.collapsed: set[str] = set()  # group headings folded
        self.marked: set[str] = set()
        self.cells: dict[str, tuple[tuple, dict]] = {}  # task -> (its numbers, its cells)
        self.order: list[str] = []  # row keys in table order
        self.shown_tasks: list[str] = []
        self.task_width = 0

    def compose(self) -> ComposeResult:
        yield TextPanel(Text("waiting for the job...", style="dim"), id="summary")
        yield TextPanel(id="efficiency")
        with Horizontal(id="table-bar-row"):  # the find field always there: showing it would lay out again
            yield TextPanel(id="table-bar")
            yield Input(placeholder="/ find by name", id="search", compact=True)
        yield TaskList(id="tasks")
        yield KeyFooter()

    def on_mount(self) -> None:
        self._set_columns()
        self.query_one(TaskList).focus()
        self.watch(self.app, "view", self._view_changed)

    def on_resize(self) -> None:
        self._set_columns()
        self.redraw()

    def on_screen_resume(self) -> None:
        self.redraw()

    # Drawing -------------------------------------------------------------------------------------------

    def _view_changed(self, _view: JobView | None) -> None:
        if self.is_current:  # a hidden dashboard catches up when it is shown again (on_screen_resume)
            self.redraw()

    def _task_width(self) -> int:
        view = self.app.view
        longest = max((len(n) for n in view.state.tasks), default=8) if view else 16
        return max(8, min(longest, 24 if (self.size.width or 80) >= 120 else 18))

    def _set_columns(self) -> None:
        self.task_width = self._task_width()
        columns = [Column(c.key, c.label, c.width, right=c.key in ("loss", "metric", "params", "ratio", "rate", "eta"))
                   for c in v.columns_for(self.size.width or 80, self.task_width)]
        shown = {c.key for c in columns}
        arrow = self.sort if self.sort in shown else next(
            (c for c, s in v.SORT_OF_COLUMN.items() if s == self.sort and c in shown), self.sort)
        self.query_one(TaskList).set_columns(columns, (arrow, self.reverse) if self.sort != "spec" else None)

    def redraw(self) -> None:
        view: JobView | None = self.app.view
        if view is None:
            return
        width = self.size.width or 80
        if self.task_width != self._task_width():  # the first view: fit the task column to the names
            self._set_columns()
        self._show("#summary", v.summary_text(view, width))
        self._show("#efficiency", v.efficiency_text(view, width))
        self._fill_table(view)

    def _show(self, selector: str, text: Text) -> None:
        self.query_one(selector, TextPanel).update(text)

    def refill(self) -> None:
        """The table alone (and its bar), after a key that changes only what it shows."""
        if self.app.view is not None:
            self._fill_table(self.app.view)

    def _task_cells(self, view: JobView, task) -> dict:
        """A task's cells, rebuilt only when its numbers changed (a running task's ETA counts down)."""
        numbers = (task.status, task.step, task.total, task.loss, task.metric, task.value, task.samples_per_s,
                   task.updated_at, id(view.budget), task.name in view.results)
        cached = self.cells.get(task.name)
        if cached is not None and cached[0] == numbers and task.status not in v.ACTIVE:
            return cached[1]
        cells = v.task_cells(task, view.task_budget(task.name), view.clock)
        self.cells[task.name] = (numbers, cells)
        return cells

    def _fill_table(self, view: JobView) -> None:
        tasks = v.visible_tasks(view, self.status_filter, self.search, self.sort, self.reverse)
        rows = []
        for name, members in v.groups_of(tasks, self.group):
            if name:
                folded = name in self.collapsed
                heading = Text(f"{'▸' if folded else '▾'} {name}", style="bold")
                heading.append(f"  {len(members)} task{'s' if len(members) != 1 else ''}", style="dim")
                marked = sum(t.name in self.marked for t in members)
                if marked:
                    heading.append(f", {marked} marked", style="dim")
                rows.append(Row(GROUP + name, {"heading": heading}, heading=True))
                if folded:
                    continue
            rows += [Row(t.name, self._task_cells(view, t), marked=t.name in self.marked) for t in members]
        table = self.query_one(TaskList)
        keys = [r.key for r in rows]
        if keys != self.order:
            table.set_rows(rows)
            self.order = keys
        else:  # same rows in the same order: draw again only those whose cells changed
            for old, new in zip(table.rows, rows):
                if old.cells is not new.cells or old.marked != new.marked or (old.heading and
                                                                             old.cells != new.cells):
                    table.update_row(new)
        self.shown_tasks = [t.name for t in tasks]
        self._show("#table-bar", self._bar_text(view, len(tasks)))

    def _bar_text(self, view: JobView, shown: int) -> Text:
        text = Text()
        text.append("filter ", style="dim").append(self.status_filter, style="bold")
        text.append("  sort ", style="dim").append(f"{self.sort}{' ▼' if self.reverse else ''}", style="bold")
        if self.group != "none":
            text.append("  group ", style="dim").append(self.group, style="bold")
        text.append(f"  {shown} of {len(view.state.tasks)} shown", style="dim")
        if self.marked:
            text.append(f"  {len(self.marked)} marked", style="bold yellow")
        return text.append("  ")

    def cursor_task(self) -> str | None:
        key = self.query_one(TaskList).cursor_key
        return None if key is None or key.startswith(GROUP) else key

    def targets(self) -> list[str]:
        """What c, r and o act on: the marked tasks, else the highlighted one."""
        if self.marked:
            return [n for n in self.app.view.state.tasks if n in self.marked] if self.app.view else []
        name = self.cursor_task()
        return [name] if name else []

    # Actions -------------------------------------------------------------------------------------------

    @on(TaskList.Selected)
    def row_selected(self, event: TaskList.Selected) -> None:
        if event.key.startswith(GROUP):
            self.collapsed ^= {event.key[len(GROUP):]}
            self.refill()
        else:
            self.app.open_detail(event.key)

    def action_detail(self) -> None:
        self.query_one(TaskList).action_select()

    def action_log(self) -> None:
        name = self.cursor_task()
        if name:
            self.app.open_detail(name, pane="log")

    def action_compare(self) -> None:
        names = self.targets()
        if len(names) < 2:
            self.app.notify("mark two tasks or more (space) to compare their curves", severity="warning")
            return
        self.app.open_detail(names[0], pane="curves", compare=names)

    def action_mark(self) -> None:
        table = self.query_one(TaskList)
        key = table.cursor_key
        if key is None:
            return
        if key.startswith(GROUP):  # a heading marks (or unmarks) its whole group
            names = [r.key for r in table.rows if not r.heading and self._group_of(r.key) == key[len(GROUP):]]
            if all(n in self.marked for n in names):
                self.marked -= set(names)
            else:
                self.marked |= set(names)
        else:
            self.marked ^= {key}
        self.refill()
        table.action_cursor(1)

    def _group_of(self, name: str) -> str:
        task = self.app.view.state.tasks[name]
        return getattr(task, self.group) if self.group != "none" else ""

    def action_mark_all(self) -> None:
        shown = set(self.shown_tasks)
        self.marked = self.marked - shown if shown <= self.marked else self.marked | shown
        self.refill()

    def action_cancel_task(self) -> None:
        names = self.targets()
        if names:
            self.app.cancel_tasks(names)

    def action_retry(self) -> None:
        self.app.retry_tasks(self.targets() if self.marked else None)

    def action_export(self) -> None:
        self.app.export_bundle()

    def action_next_failed(self, direction: int) -> None:
        """The cursor to the next (or previous) failed task of the table, wrapping around."""
        table = self.query_one(TaskList)
        view = self.app.view
        failed = [i for i, r in enumerate(table.rows) if not r.heading and view.state.tasks[r.key].status == st.FAILED]
        if not failed:
            hidden = sum(t.status == st.FAILED for t in view.state.tasks.values()) if view else 0
            self.app.notify(f"no failed task in the table{f' ({hidden} hidden by the filter or a fold)' if hidden else ''}",
                            severity="information")
            return
        after = [i for i in failed if (i - table.cursor) * direction > 0]
        target = (after[0] if direction > 0 else after[-1]) if after else (failed[0] if direction > 0 else failed[-1])
        table._move(target)

    def action_cycle_filter(self) -> None:
        self.status_filter = v.FILTERS[(v.FILTERS.index(self.status_filter) + 1) % len(v.FILTERS)]
        self.refill()

    def action_cycle_group(self) -> None:
        self.group = v.GROUPS[(v.GROUPS.index(self.group) + 1) % len(v.GROUPS)]
        self.collapsed.clear()
        self.refill()

    def action_cycle_sort(self) -> None:
        self.set_sort(v.SORTS[(v.SORTS.index(self.sort) + 1) % len(v.SORTS)], reverse=False)

    def action_reverse_sort(self) -> None:
        self.set_sort(self.sort, not self.reverse)

    def set_sort(self, sort: str, reverse: bool) -> None:
        self.sort, self.reverse = sort, reverse
        self._set_columns()
        self.refill()

    @on(TaskList.HeaderSelected)
    def header_selected(self, event: TaskList.HeaderSelected) -> None:
        key = v.SORT_OF_COLUMN.get(event.column, event.column)
        if key in v.SORTS:
            self.set_sort(key, not self.reverse if key == self.sort else False)

    def action_search(self) -> None:
        with self.app.batch_update():  # the focus moved now (focus() would wait a frame): one frame drawn
            self.set_focus(self.query_one("#search", Input))

    def action_clear_search(self) -> None:
        """Empty the find field, refill the table and focus it in one frame (each alone would draw it again)."""
        field = self.query_one("#search", Input)
        with self.app.batch_update(), field.prevent(Input.Changed):
            field.value = ""
            self.search = ""
            self.refill()
            self.set_focus(self.query_one(TaskList))

    @on(Input.Changed, "#search")
    def search_changed(self, event: Input.Changed) -> None:
        self.search = event.value
        self.refill()

    @on(Input.Submitted, "#search")
    def search_done(self, _event: Input.Submitted) -> None:
        self.query_one(TaskList).focus()
