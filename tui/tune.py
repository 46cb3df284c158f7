"""Tune view: the trials of a hyper-parameter search, per task, with their configs and scores.

Reads the search directory through the client (orchestrator.client.SearchClient: DIR/trials.parquet, one
row per trial, re-read whenever it changes); a task's best trial is the client's rule (best_trial).
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from orchestrator.client import SearchClient, best_trial

STATUS_STYLE = {"done": "green", "terminated": "green", "stopped": "yellow", "failed": "bold red",
                "error": "bold red", "running": "bold cyan", "pending": "dim", "unfinished": "dim"}


def config_text(config: dict) -> str:
    return " ".join(f"{k}={_short(v)}" for k, v in config.items())


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _score(value: float | None, style: str = "") -> Text:
    return Text("" if value is None else f"{value:.4f}", style=style)


def fill(table: DataTable, columns: tuple[tuple[str, str], ...], rows: dict[str, tuple]) -> None:
    """Replace a table's columns and rows; widths computed here from the content, so the table looks
    the same however soon it is drawn."""
    table.clear(columns=True)
    for i, (key, label) in enumerate(columns):
        width = max([len(label)] + [Text(r[i]).cell_len if isinstance(r[i], str) else r[i].cell_len
                                     for r in rows.values()])
        table.add_column(label, key=key, width=width)
    for key, row in rows.items():
        table.add_row(*row, key=key)


class TuneScreen(Screen):
    """Tasks of a search (trials, best score so far) above the trials of the highlighted task."""

    BINDINGS = [Binding("q", "app.quit", "Quit"), Binding("tab", "focus_next", "Switch table")]

    def __init__(self, folder: str | Path, poll_s: float = 1.0):
        super().__init__()
        self.folder = Path(folder)
        self.search = SearchClient(self.folder)
        self.poll_s = poll_s
        self.trials: list = []
        self.loaded = False
        self.selected: str | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="tune-title")
        yield DataTable(id="tune-tasks", cursor_type="row", zebra_stripes=True)
        yield Static(id="tune-trials-title")
        yield DataTable(id="tune-trials", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#tune-tasks", DataTable).focus()
        self.reload()
        self.set_interval(self.poll_s, self.reload)

    @work(thread=True, exclusive=True, group="tune-read")
    def reload(self) -> None:
        if self.loaded and not self.search.changed():
            return
        try:
            trials, problem = self.search.trials(), None
        except (OSError, ValueError) as e:
            trials, problem = [], str(e)
        self.app.call_from_thread(self._show, trials, problem)

    def _show(self, trials: list, problem: str | None) -> None:
        self.trials, self.loaded = trials, True
        by_task: dict[str, list] = {}
        for t in trials:
            by_task.setdefault(t.task, []).append(t)
        title = Text()
        title.append("tune ", style="dim").append(str(self.folder), style="bold")
        title.append(f"  {len(trials)} trials over {len(by_task)} tasks")
        if problem:
            title.append(f"\n{problem}", style="bold red")
        self.query_one("#tune-title", Static).update(title)
        table = self.query_one("#tune-tasks", DataTable)
        current = self.selected
        rows = {}
        for name, group in by_task.items():
            top = best_trial(group)
            baseline = next((t for t in group if t.baseline), None)
            count = lambda state: sum(t.state == state for t in group)  # noqa: E731
            failed = count("failed")
            rows[name] = (name, group[0].metric or "", str(len(group)), str(count("done")), str(count("stopped")),
                          Text(str(failed), style="red" if failed else ""), str(count("open")),
                          _score(baseline.score if baseline else None),
                          _score(top.score if top else None, "bold green"), top.trial_id if top else "",
                          config_text(top.config) if top else "")
        fill(table, (("task", "task"), ("metric", "metric"), ("trials", "trials"), ("done", "done"),
                     ("stopped", "stopped"), ("failed", "failed"), ("open", "open"), ("baseline", "baseline"),
                     ("best", "best score"), ("trial", "best trial"), ("config", "best config")), rows)
        names = list(by_task)
        if names:
            self.selected = current if current in names else names[0]
            table.move_cursor(row=names.index(self.selected), animate=False)
        self._show_trials()

    @on(DataTable.RowHighlighted, "#tune-tasks")
    def task_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is not None and event.row_key.value != self.selected:
            self.selected = event.row_key.value
            self._show_trials()

    def _show_trials(self) -> None:
        table = self.query_one("#tune-trials", DataTable)
        group = sorted((t for t in self.trials if t.task == self.selected),
                       key=lambda t: (t.score is None, -(t.score or 0.0)))
        top = best_trial(group)
        rows = {}
        for t in group:
            mark = " *" if top is not None and t.trial_id == top.trial_id else ""
            rows[f"{t.task}/{t.trial_id}"] = (
                t.trial_id + mark, "baseline" if t.baseline else ("" if t.sample is None else str(t.sample)),
                Text(t.status, style=STATUS_STYLE.get(t.status, "")), _score(t.score), _score(t.test_value),
                config_text(t.config), Text((t.error or "")[:60], style="red"))
        fill(table, (("trial", "trial"), ("sample", "sample"), ("status", "status"), ("score", "score"),
                     ("test", "test"), ("config", "config"), ("error", "error")), rows)
        title = Text()
        if self.selected:
            title.append("trials of ", style="dim").append(self.selected, style="bold")
            title.append("  (best first; * best so far)", style="dim")
        self.query_one("#tune-trials-title", Static).update(title)
