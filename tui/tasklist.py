"""The dashboard's task table: a header with the sort arrow, then one line per task or group heading.

Drawn line by line (Textual's line API): a frame costs the lines on screen, not the job's size, so a
1,000-task job scrolls, sorts and filters as fast as a 10-task one. The dashboard hands it rows (`set_rows`)
and columns; it keeps the cursor on the same task across updates and says what the user picked.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int  # content width; one cell of padding on each side
    right: bool = False  # numbers: right-aligned


@dataclass
class Row:
    key: str  # the task's name, or "group:<value>" for a heading
    cells: dict  # column key -> Text or str
    heading: bool = False
    marked: bool = False


class TaskList(ScrollView, can_focus=True, inherit_bindings=False):
    """Rows under a fixed header line; `cursor` is a row index (headings included)."""

    COMPONENT_CLASSES = {"tasklist--header", "tasklist--cursor", "tasklist--heading", "tasklist--odd",
                         "tasklist--marked"}
    DEFAULT_CSS = """
    TaskList { background: $surface; overflow-x: hidden; }
    TaskList > .tasklist--header { background: $panel; text-style: bold; }
    TaskList > .tasklist--cursor { background: $block-cursor-background; color: $block-cursor-foreground; }
    TaskList:blur > .tasklist--cursor { background: $block-cursor-blurred-background; }
    TaskList > .tasklist--heading { background: $boost; text-style: bold; color: $accent; }
    TaskList > .tasklist--odd { background: $surface-lighten-1 30%; }
    TaskList > .tasklist--marked { color: $warning; text-style: bold; }
    """
    BINDINGS = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "first", "First task", show=False),
        Binding("end", "last", "Last task", show=False),
        Binding("enter", "select", "Detail", show=False,
                tooltip="the highlighted task's curves, log and config (on a group heading: fold or unfold it)"),
    ]

    class Selected(Message):
        """Enter (or a click on the highlighted row) on a row."""

        def __init__(self, key: str):
            super().__init__()
            self.key = key

    class HeaderSelected(Message):
        """A click on a column's header."""

        def __init__(self, column: str):
            super().__init__()
            self.column = column

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.columns: list[Column] = []
        self.rows: list[Row] = []
        self.index: dict[str, int] = {}
        self.cursor = 0
        self.arrow: tuple[str, bool] | None = None  # (sorted column, reversed)
        self._segments: dict[str, tuple] = {}  # row key -> (its cells, marked, segments): drawn once per change
        self._styles: dict[str, Style] | None = None
        self._marked_style: Style | None = None

    # What it shows --------------------------------------------------------------------------------------

    def set_columns(self, columns: list[Column], arrow: tuple[str, bool] | None = None) -> None:
        self.columns, self.arrow = list(columns), arrow
        self._segments.clear()
        self.refresh()

    def notify_style_update(self) -> None:
        """Focus and theme changes restyle the lines (looked up again when next drawn)."""
        super().notify_style_update()
        self._styles = None

    def style(self, name: str) -> Style:
        if self._styles is None:
            styles = {k: self.get_component_rich_style(f"tasklist--{k}")
                      for k in ("header", "cursor", "heading", "odd", "marked")}
            if self._marked_style != styles["marked"]:  # the rows' own segments hold only the mark's style
                self._segments.clear()
                self._marked_style = styles["marked"]
            self._styles = styles
        return self._styles[name]

    def set_rows(self, rows: list[Row]) -> None:
        """New rows; the cursor stays on its row's key when that is still shown."""
        current = self.cursor_key
        self.rows = rows
        self.index = {row.key: i for i, row in enumerate(rows)}
        self.cursor = self.index.get(current, min(self.cursor, max(len(rows) - 1, 0)))
        self.virtual_size = Size(self.size.width, len(rows) + 1)
        self.scroll_to_cursor()
        self.refresh()

    def update_row(self, row: Row) -> None:
        """The same row with new cells: only its line is drawn again."""
        i = self.index.get(row.key)
        if i is not None:
            self.rows[i] = row
            self.refresh_line(i)

    @property
    def row_count(self) -> int:
        return len(self.rows)

    @property
    def cursor_key(self) -> str | None:
        return self.rows[self.cursor].key if 0 <= self.cursor < len(self.rows) else None

    def move_to(self, key: str) -> None:
        if key in self.index:
            self._move(self.index[key])

    def text_rows(self) -> list[tuple[Row, dict[str, str]]]:
        """Every row with its cells as plain text (tests and captures read the table through this)."""
        return [(row, {k: str(getattr(v, "plain", v)) for k, v in row.cells.items()}) for row in self.rows]

    # Drawing --------------------------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        if y == 0:
            return self._line(list(self._header().render(self.app.console)), self.style("header"), width)
        i = self.scroll_offset.y + y - 1
        if i >= len(self.rows):
            return Strip.blank(width, self.rich_style)
        row = self.rows[i]
        style = self.rich_style
        if row.heading:
            style += self.style("heading")
        elif i % 2:
            style += self.style("odd")
        if i == self.cursor:
            style += self.style("cursor")
        return self._line(self._row_segments(row), style, width)

    def _row_segments(self, row: Row) -> list[Segment]:
        cached = self._segments.get(row.key)
        if cached is None or cached[0] is not row.cells or cached[1] != row.marked:
            cached = (row.cells, row.marked, list(self._cells(row).render(self.app.console)))
            self._segments[row.key] = cached
        return cached[2]

    def _header(self) -> Text:
        line = Text(no_wrap=True)
        for col in self.columns:
            label = col.label
            if self.arrow and self.arrow[0] == col.key:
                label = f"{label} {'▼' if self.arrow[1] else '▲'}"
            width = col.width + (2 if col.key == "task" else 0)  # the task column holds the mark
            label = ("  " + label) if col.key == "task" else label
            line.append(" ").append_text(_fit(Text(label), width, col.right)).append(" ")
        return line

    def _cells(self, row: Row) -> Text:
        if row.heading:
            return Text(" ", no_wrap=True).append_text(row.cells["heading"] if isinstance(row.cells["heading"], Text)
                                                       else Text(str(row.cells["heading"])))
        line = Text(no_wrap=True)
        for col in self.columns:
            cell = row.cells.get(col.key, "")
            cell = cell.copy() if isinstance(cell, Text) else Text(str(cell))
            if col.key == "task":
                mark = Text("● " if row.marked else "  ", style=self.style("marked"))
                cell = mark.append_text(cell)
            line.append(" ").append_text(_fit(cell, col.width + (2 if col.key == "task" else 0), col.right))
            line.append(" ")
        return line

    def _line(self, segments: list[Segment], style: Style, width: int) -> Strip:
        return Strip(Segment.apply_style(segments, style)).extend_cell_length(width, style).crop(0, width)

    # Moving ---------------------------------------------------------------------------------------------

    def refresh_line(self, i: int) -> None:
        y = i - self.scroll_offset.y + 1
        if 1 <= y < self.size.height:
            self.refresh_lines(y)

    def _move(self, i: int) -> None:
        if not self.rows:
            return
        i = max(0, min(i, len(self.rows) - 1))
        old, self.cursor = self.cursor, i
        self.refresh_line(old)
        self.refresh_line(i)
        self.scroll_to_cursor()

    def scroll_to_cursor(self) -> None:
        visible = max(self.size.height - 1, 1)
        top = self.scroll_offset.y
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= top + visible:
            self.scroll_to(y=self.cursor - visible + 1, animate=False, immediate=True)

    def action_cursor(self, delta: int) -> None:
        self._move(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        self._move(self.cursor + direction * max(self.size.height - 2, 1))

    def action_first(self) -> None:
        self._move(0)

    def action_last(self) -> None:
        self._move(len(self.rows) - 1)

    def action_select(self) -> None:
        if self.cursor_key is not None:
            self.post_message(self.Selected(self.cursor_key))

    def on_click(self, event: events.Click) -> None:
        if event.y == 0:
            x = 0
            for col in self.columns:
                x += col.width + 2 + (2 if col.key == "task" else 0)
                if event.x < x:
                    self.post_message(self.HeaderSelected(col.key))
                    return
            return
        i = self.scroll_offset.y + event.y - 1
        if 0 <= i < len(self.rows):
            if i == self.cursor:
                self.action_select()
            self._move(i)

    def on_resize(self) -> None:
        self.virtual_size = Size(self.size.width, len(self.rows) + 1)
        self.scroll_to_cursor()


def _fit(text: Text, width: int, right: bool) -> Text:
    """`text` in exactly `width` cells: padded on the left (numbers) or the right, cut with an ellipsis."""
    if text.cell_len > width:
        text.truncate(width, overflow="ellipsis")
    pad = width - text.cell_len
    return Text(" " * pad).append_text(text) if right else text.append(" " * pad)
