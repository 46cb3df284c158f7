"""Tune view: the trials of a hyper-parameter search, per task, with their configs and scores.

Reads DIR/trials.parquet, one row per trial. Required columns: task (string), trial_id (string), config
(JSON object as a string), score (float, higher is better, null when none was reported) and status
(string). Used when present (as `tune` writes them, orchestrator/tune_results.py): sample (0 = the task's
baseline, the settings `finetune` would use), metric, test_value and error. Statuses are matched without
case: done / terminated, stopped (early, by the scheduler), failed / error, anything else is open
(running, pending, unfinished). The best trial of a task is its best-scored done trial (else the best
scored so far), ties to the earlier sample. The file is re-read whenever it changes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

TRIALS_FILE = "trials.parquet"
COLUMNS = ("task", "trial_id", "config", "score", "status")
OPTIONAL = ("sample", "metric", "test_value", "error")
DONE, STOPPED, FAILED = ("done", "terminated"), ("stopped",), ("failed", "error")
STATUS_STYLE = {"done": "green", "terminated": "green", "stopped": "yellow", "failed": "bold red",
                "error": "bold red", "running": "bold cyan", "pending": "dim", "unfinished": "dim"}


@dataclass(frozen=True)
class Trial:
    task: str
    trial_id: str
    config: dict
    score: float | None
    status: str  # lower case
    sample: int | None = None
    metric: str | None = None
    test_value: float | None = None
    error: str | None = None

    @property
    def baseline(self) -> bool:
        return self.sample == 0


def _float(value) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def read_trials(folder: str | Path) -> list[Trial]:
    """The trials of DIR/trials.parquet (ValueError naming the file, row and column when it does not fit)."""
    import pyarrow.parquet as pq

    path = Path(folder) / TRIALS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (expected the trial table of a `tune` run)")
    table = pq.read_table(path)
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {list(COLUMNS)}")
    present = [c for c in OPTIONAL if c in table.column_names]
    trials = []
    for i, row in enumerate(table.select([*COLUMNS, *present]).to_pylist()):
        try:
            config = json.loads(row["config"]) if row["config"] else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: row {i}, column 'config': not a JSON object ({e})") from None
        trials.append(Trial(str(row["task"]), str(row["trial_id"]),
                            config if isinstance(config, dict) else {"config": config}, _float(row["score"]),
                            str(row["status"] or "").lower(), row.get("sample"), row.get("metric"),
                            _float(row.get("test_value")), row.get("error")))
    return trials


def best(trials: list[Trial]) -> Trial | None:
    """The best done trial by score (else the best scored so far); ties: the earlier sample."""
    scored = [t for t in trials if t.score is not None]
    pool = [t for t in scored if t.status in DONE] or scored
    return max(pool, key=lambda t: (t.score, -(t.sample or 0))) if pool else None


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
        self.poll_s = poll_s
        self.trials: list[Trial] = []
        self.mtime: float | None = None
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
        path = self.folder / TRIALS_FILE
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            mtime = None
        if mtime is not None and mtime == self.mtime:
            return
        try:
            trials, problem = read_trials(self.folder), None
        except (OSError, ValueError) as e:
            trials, problem = [], str(e)
        self.app.call_from_thread(self._show, trials, problem, mtime)

    def _show(self, trials: list[Trial], problem: str | None, mtime) -> None:
        self.trials, self.mtime = trials, mtime
        by_task: dict[str, list[Trial]] = {}
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
            top = best(group)
            baseline = next((t for t in group if t.baseline), None)
            count = lambda kinds: sum(t.status in kinds for t in group)  # noqa: E731
            failed = count(FAILED)
            rows[name] = (name, group[0].metric or "", str(len(group)), str(count(DONE)), str(count(STOPPED)),
                          Text(str(failed), style="red" if failed else ""),
                          str(len(group) - count(DONE) - count(STOPPED) - failed),
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
        top = best(group)
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
