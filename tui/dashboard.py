"""The job dashboard: totals, the efficiency panel and one row per task, updated in place each poll."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static

from tui import view as v
from tui.view import JobView


class TaskTable(DataTable):
    """One row per task (row key = task name); the App's 100 rows scroll in a DataTable's own viewport."""

    BINDINGS = [Binding("enter", "select_cursor", "Detail")]


class DashboardScreen(Screen):
    """Watches `app.view` (a JobView the app polls off the UI thread) and redraws from it."""

    BINDINGS = [
        Binding("enter", "detail", "Detail", show=False),
        Binding("c", "cancel_task", "Cancel"),
        Binding("r", "retry", "Retry"),
        Binding("e", "export", "Export"),
        Binding("x", "app.stop_job", "Stop job", show=False),
        Binding("f", "cycle_filter", "Filter"),
        Binding("s", "cycle_sort", "Sort"),
        Binding("S", "reverse_sort", "Reverse", show=False),
        Binding("slash", "search", "Find"),
        Binding("escape", "clear_search", "Clear find", show=False),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self):
        super().__init__()
        self.status_filter, self.sort, self.reverse, self.search = "all", "spec", False, ""
        self.compact: bool | None = None
        self.task_width = 0
        self.shown: list[str] = []  # task names in table order
        self.cells: dict[str, dict] = {}  # what each row shows now, to update changed cells only
        self.signatures: dict[str, tuple] = {}  # the task numbers behind each row's cells

    def compose(self) -> ComposeResult:
        yield Static(Text("waiting for the job...", style="dim"), id="summary")
        yield Static(id="efficiency")
        yield Static(id="table-bar")
        yield Input(placeholder="find tasks by name (Enter: done, Escape: clear)", id="search", compact=True)
        yield TaskTable(id="tasks", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#search", Input).display = False
        self._set_columns()
        self.query_one(TaskTable).focus()
        self.watch(self.app, "view", self._view_changed)

    def on_resize(self) -> None:
        if self.compact != (self.size.width < v.COMPACT_BELOW):
            self._set_columns()
            self.redraw()

    def on_screen_resume(self) -> None:
        self.redraw()

    # Drawing -------------------------------------------------------------------------------------------

    def _view_changed(self, _view: JobView | None) -> None:
        if self.is_current:  # a hidden dashboard catches up when it is shown again (on_screen_resume)
            self.redraw()

    def _set_columns(self) -> None:
        self.compact = self.size.width < v.COMPACT_BELOW
        self.task_width = self._task_width()
        table = self.query_one(TaskTable)
        table.clear(columns=True)
        for col in v.COLUMNS:
            if col.compact or not self.compact:
                label = f"{col.label} {'▼' if self.reverse else '▲'}" if col.key == self.sort else col.label
                table.add_column(Text(label, justify="right" if col.key in ("loss", "metric", "params", "ratio",
                                                                            "rate", "eta") else "left"),
                                 key=col.key, width=col.width if col.key != "task" else self.task_width)
        self.shown, self.cells, self.signatures = [], {}, {}

    def _task_width(self) -> int:
        view = self.app.view
        longest = max((len(n) for n in view.state.tasks), default=8) if view else 16
        return max(8, min(longest, 24 if not self.compact else 18))

    def redraw(self) -> None:
        view: JobView | None = self.app.view
        if view is None:
            return
        width = self.size.width or 80
        if self.task_width != self._task_width():  # the first view: fit the task column to the names
            self._set_columns()
        self.query_one("#summary", Static).update(v.summary_text(view, width))
        self.query_one("#efficiency", Static).update(v.efficiency_text(view, width))
        self.query_one("#table-bar", Static).update(self._bar_text(view))
        self._fill_table(view)

    def _bar_text(self, view: JobView) -> Text:
        text = Text()
        text.append("filter ", style="dim").append(self.status_filter, style="bold")
        if self.search:
            text.append("  name ~ ", style="dim").append(self.search, style="bold")
        text.append("  sort ", style="dim").append(f"{self.sort}{' (reversed)' if self.reverse else ''}",
                                                    style="bold")
        text.append(f"  {len(self.shown)} of {len(view.state.tasks)} shown", style="dim")
        return text

    def _fill_table(self, view: JobView) -> None:
        table = self.query_one(TaskTable)
        keys = [c.key for c in v.COLUMNS if c.compact or not self.compact]
        tasks = v.visible_tasks(view, self.status_filter, self.search, self.sort, self.reverse)
        names = [t.name for t in tasks]
        now = view.clock
        rows = {}
        for t in tasks:  # a finished or queued task whose numbers did not change keeps its cells
            signature = (t.status, t.step, t.total, t.loss, t.metric, t.value, t.samples_per_s, t.updated_at,
                         id(view.budget), t.name in view.results)
            if signature == self.signatures.get(t.name) and t.status not in v.ACTIVE and t.name in self.cells:
                rows[t.name] = self.cells[t.name]
            else:
                rows[t.name] = v.task_cells(t, view.task_budget(t.name), now)
                self.signatures[t.name] = signature
        if set(names) != set(self.shown):  # other rows: rebuild, keeping the cursor on its task
            current = self.cursor_task()
            table.clear()
            self.cells = {}
            for name in names:
                table.add_row(*(rows[name][k] for k in keys), key=name)
                self.cells[name] = dict(rows[name])
            self.shown = names
            if current in names:
                table.move_cursor(row=names.index(current), animate=False)
        else:  # same rows: change only the cells that changed
            for name in names:
                old = self.cells[name]
                if old is rows[name]:
                    continue
                for k in keys:
                    if old.get(k) != rows[name][k]:
                        table.update_cell(name, k, rows[name][k])
                self.cells[name] = dict(rows[name])
            if names != self.shown:  # same rows, new order
                current = self.cursor_task()
                order = {n: i for i, n in enumerate(names)}
                table.sort("task", key=lambda cell: order[cell.plain])
                self.shown = names
                if current in order:
                    table.move_cursor(row=order[current], animate=False)
        self.query_one("#table-bar", Static).update(self._bar_text(view))

    def cursor_task(self) -> str | None:
        table = self.query_one(TaskTable)
        if not table.row_count:
            return None
        try:
            return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:  # noqa: BLE001  no row under the cursor
            return None

    # Actions -------------------------------------------------------------------------------------------

    @on(DataTable.RowSelected)
    def row_selected(self, event: DataTable.RowSelected) -> None:
        self.app.open_detail(event.row_key.value)

    def action_detail(self) -> None:
        name = self.cursor_task()
        if name:
            self.app.open_detail(name)

    def action_cancel_task(self) -> None:
        name = self.cursor_task()
        if name:
            self.app.cancel_task(name)

    def action_retry(self) -> None:
        self.app.retry_failed()

    def action_export(self) -> None:
        self.app.export_bundle()

    def action_cycle_filter(self) -> None:
        self.status_filter = v.FILTERS[(v.FILTERS.index(self.status_filter) + 1) % len(v.FILTERS)]
        self.redraw()

    def action_cycle_sort(self) -> None:
        self.set_sort(v.SORTS[(v.SORTS.index(self.sort) + 1) % len(v.SORTS)], reverse=False)

    def action_reverse_sort(self) -> None:
        self.set_sort(self.sort, not self.reverse)

    def set_sort(self, sort: str, reverse: bool) -> None:
        self.sort, self.reverse = sort, reverse
        self._set_columns()
        self.redraw()

    @on(DataTable.HeaderSelected)
    def header_selected(self, event: DataTable.HeaderSelected) -> None:
        key = {"params": "ratio", "kind": "spec", "step": "progress"}.get(event.column_key.value,
                                                                            event.column_key.value)
        if key in v.SORTS:
            self.set_sort(key, not self.reverse if key == self.sort else False)

    def action_search(self) -> None:
        search = self.query_one("#search", Input)
        search.display = True
        search.focus()

    def action_clear_search(self) -> None:
        search = self.query_one("#search", Input)
        search.value = ""
        search.display = False
        self.query_one(TaskTable).focus()

    @on(Input.Changed, "#search")
    def search_changed(self, event: Input.Changed) -> None:
        self.search = event.value
        self.redraw()

    @on(Input.Submitted, "#search")
    def search_done(self, _event: Input.Submitted) -> None:
        search = self.query_one("#search", Input)
        search.display = bool(search.value)
        self.query_one(TaskTable).focus()
