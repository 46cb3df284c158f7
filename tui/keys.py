"""Keys, shown three ways from the bindings themselves (so none is ever left out): a footer that wraps onto
as many lines as the width needs, the help screen (`?`) with every key of the screen beneath, and the
command palette (ctrl+p), where each key of the screen is also a command."""

from __future__ import annotations

from functools import partial

from rich.text import Text
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widget import Widget
from textual.widgets import Static

GAP = "  "
# Textual's own keys that are not this app's to show: copy, quit-help, moving the focus
HIDDEN_ACTIONS = {"screen.copy_text", "help_quit", "app.focus_next", "app.focus_previous", "focus_next",
                  "focus_previous"}


def screen_keys(screen: Screen, shown_only: bool = False) -> list[tuple[str, Binding, object]]:
    """(key as displayed, binding, the node it acts on) of every binding the screen answers now: its
    focused widget's, its own and the app's, nearest first, each key once."""
    out = []
    for key, active in screen.active_bindings.items():
        binding = active.binding
        if binding.action in HIDDEN_ACTIONS or not binding.description:
            continue
        if shown_only and not binding.show:
            continue
        out.append((screen.app.get_key_display(binding), binding, active.node))
    return out


class KeyFooter(Widget):
    """Every shown key of its screen, `key description` pairs wrapped at whole pairs (never cut)."""

    DEFAULT_CSS = """
    KeyFooter { dock: bottom; height: auto; background: $footer-background; color: $footer-foreground;
                padding: 0 1; }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # the most lines shown at each width: the footer keeps that height while the focus moves (into the
        # find field and back), so the table above neither jumps nor makes the screen lay out again
        self._tallest: dict[int, int] = {}
        self._wrapped: dict[int, list[Text]] = {}  # width -> lines, until the keys change (a focus change asks 3 times)

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._changed)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def _changed(self, _screen) -> None:
        """Keys change with the focus: lay the screen out again only when the footer's height changes."""
        width = self.content_size.width or self.size.width
        before = [line.plain for line in self._wrapped.get(width, ())]
        self._wrapped.clear()
        if [line.plain for line in self._lines(width)] != before:  # signalled several times per focus change
            self.refresh(layout=self._height(width) != self.size.height)

    def _items(self) -> list[Text]:
        """One item per key, or per group of keys (a Binding.Group: 'n/N failed')."""
        items: list[tuple[list[str], str]] = []
        grouped: dict[int, tuple[list[str], str]] = {}
        for key, binding, _ in screen_keys(self.screen, shown_only=True):
            group = binding.group
            if group is not None and id(group) in grouped:
                grouped[id(group)][0].append(key)
                continue
            entry = ([key], group.description if group is not None else binding.description)
            items.append(entry)
            if group is not None:
                grouped[id(group)] = entry
        return [Text.assemble(("/".join(keys), "bold"), (f" {description}", "dim")) for keys, description in items]

    def _lines(self, width: int) -> list[Text]:
        if width in self._wrapped:
            return self._wrapped[width]
        lines: list[Text] = []
        for item in self._items():
            if lines and lines[-1].cell_len + len(GAP) + item.cell_len <= width:
                lines[-1].append(GAP).append_text(item)
            else:
                lines.append(item.copy())
        self._wrapped[width] = lines = lines or [Text("")]
        return lines

    def _height(self, width: int) -> int:
        self._tallest[width] = max(self._tallest.get(width, 0), len(self._lines(width)))
        return self._tallest[width]

    def get_content_height(self, container, viewport, width: int) -> int:
        return self._height(width)

    def render(self) -> Text:
        return Text("\n").join(self._lines(self.content_size.width or self.size.width))


class HelpScreen(ModalScreen[None]):
    """Every key of the screen it was opened over, grouped by what answers it, and a few words on the
    screen (its `HELP` text)."""

    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close")]

    def __init__(self, over: Screen):
        super().__init__()
        self.over = over

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog help"):
            yield Static(self.text(), id="help-text")
            yield Static("Escape, ? or q: close", classes="hint")

    def text(self) -> Text:
        text = Text()
        title = getattr(self.over, "TITLE", None) or type(self.over).__name__
        text.append(f"{title}: keys\n", style="bold")
        about = getattr(self.over, "HELP", "")
        if about:
            text.append(about.strip() + "\n", style="dim")
        groups: dict[str, list] = {}
        for key, binding, node in screen_keys(self.over):
            where = "everywhere" if node is self.app else ("this screen" if node is self.over else
                                                           getattr(node, "HELP_GROUP", "the focused table"))
            groups.setdefault(where, []).append((key, binding.tooltip or binding.description))
        width = max((len(k) for g in groups.values() for k, _ in g), default=4) + 2
        for where in sorted(groups, key=lambda w: ("this screen", "the focused table").index(w)
                            if w in ("this screen", "the focused table") else 9):
            text.append(f"\n{where}\n", style="bold underline")
            for key, description in groups[where]:
                text.append(f"  {key:<{width}}", style="bold cyan").append(f"{description}\n")
        return text

    def action_dismiss(self, result=None) -> None:
        self.dismiss(result)


def key_commands(screen: Screen):
    """The command palette's commands of a screen: one per key it answers, named by what it does."""
    seen = set()
    for key, binding, node in screen_keys(screen):
        if binding.action in seen:
            continue
        seen.add(binding.action)
        yield SystemCommand(binding.description, f"key: {key}", partial(screen.app.run_action, binding.action,
                                                                        node))
