"""A block of rich text that is drawn again, not laid out again, when new text has as many lines as the old:
the dashboard's panels change every poll, and a new layout redraws the whole screen (tens of ms with a
1,000-task table beside them)."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text
from textual.widget import Widget


class TextPanel(Widget):
    DEFAULT_CSS = "TextPanel { height: auto; }"

    def __init__(self, text: Text | str = "", **kwargs):
        super().__init__(**kwargs)
        self.text = Text(text) if isinstance(text, str) else text
        self._lines: tuple[int, int] = (-1, 0)  # (width, lines) of the text last measured

    def update(self, text: Text) -> None:
        if text == self.text:
            return
        self.text = text
        width = self.content_size.width or self.size.width
        self.refresh(layout=self._count(width) != self.size.height - self.styles.gutter.height)

    def _count(self, width: int) -> int:
        if self._lines[0] != (width, id(self.text)):
            lines = len(Console(width=max(width, 1)).render_lines(self.text, pad=False)) if width else 1
            self._lines = ((width, id(self.text)), lines)
        return self._lines[1]

    def get_content_height(self, container, viewport, width: int) -> int:
        return self._count(width)

    def render(self) -> Text:
        return self.text
