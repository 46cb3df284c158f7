"""Small modal screens: a yes/no question, a path to export to, a file picker; and path completion."""

from __future__ import annotations

import os
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.suggester import Suggester
from textual.widgets import Button, DirectoryTree, Input, Label, Static


class PathSuggester(Suggester):
    """Completes the last part of a path from the file system (accept with the right arrow key).
    `dirs_only`: suggest folders only (checkpoints are folders)."""

    def __init__(self, dirs_only: bool = False, suffixes: tuple[str, ...] = ()):
        super().__init__(use_cache=False, case_sensitive=True)
        self.dirs_only, self.suffixes = dirs_only, suffixes

    async def get_suggestion(self, value: str) -> str | None:
        if not value:
            return None
        folder, sep, prefix = value.rpartition("/")
        root = Path(os.path.expanduser(folder or "/")) if sep else Path(".")
        try:
            entries = sorted(os.scandir(root), key=lambda e: e.name)
        except OSError:
            return None
        for entry in entries:
            if not entry.name.startswith(prefix) or entry.name == prefix or (entry.name.startswith(".")
                                                                            and not prefix.startswith(".")):
                continue
            is_dir = entry.is_dir()
            if (self.dirs_only and not is_dir) or (self.suffixes and not is_dir
                                                   and not entry.name.endswith(self.suffixes)):
                continue
            return f"{folder}{sep}{entry.name}{'/' if is_dir else ''}"
        return None


class ConfirmScreen(ModalScreen[bool]):
    """A question with Yes / No (y / n, Escape is No)."""

    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str, yes: str = "Yes", no: str = "No"):
        super().__init__()
        self.question, self.yes, self.no = question, yes, no

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, classes="question")
            with Horizontal(classes="buttons"):
                yield Button(self.yes, variant="error", id="yes")
                yield Button(self.no, variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class ExportScreen(ModalScreen[str | None]):
    """Asks where to write the bundle archive (.tar or .tar.gz)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, default: str):
        super().__init__()
        self.default = default

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Export the bundle (every finished task's patch set + head) to:")
            yield Input(self.default, id="export-path", suggester=PathSuggester())
            yield Static("Enter: export   Escape: cancel   (.tar, or .tar.gz to compress)", classes="hint")

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class PathPicker(ModalScreen[str | None]):
    """Browse the file system; Enter on a file (or, with `dirs`, on a folder and then `s`) picks it."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("s", "pick_folder", "Pick this folder")]

    def __init__(self, start: str, title: str, dirs: bool = False):
        super().__init__()
        start_path = Path(os.path.expanduser(start or ".")).absolute()
        while not start_path.is_dir() and start_path != start_path.parent:
            start_path = start_path.parent
        self.start, self.title_text, self.dirs = start_path, title, dirs
        self.folder: Path | None = None

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog picker"):
            yield Label(self.title_text)
            yield DirectoryTree(self.start, id="tree")
            hint = "Enter: open / pick a file   s: pick the highlighted folder   Escape: cancel" if self.dirs \
                else "Enter: open a folder / pick a file   Escape: cancel"
            yield Static(hint, classes="hint")

    @on(DirectoryTree.FileSelected)
    def file_selected(self, event: DirectoryTree.FileSelected) -> None:
        self.dismiss(str(event.path))

    @on(DirectoryTree.DirectorySelected)
    def folder_selected(self, event: DirectoryTree.DirectorySelected) -> None:
        self.folder = Path(event.path)

    def action_pick_folder(self) -> None:
        tree = self.query_one(DirectoryTree)
        node = tree.cursor_node
        if node is not None and node.data is not None and Path(node.data.path).is_dir():
            self.dismiss(str(node.data.path))
        elif self.folder is not None:
            self.dismiss(str(self.folder))

    def action_cancel(self) -> None:
        self.dismiss(None)
