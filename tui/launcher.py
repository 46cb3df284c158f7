"""The launcher: pick a backbone, a task spec, a mode and the resources, see the parameter budget, start."""

from __future__ import annotations

import shlex

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Input, Label, Select, Static

from orchestrator.client import MODES
from tui.dialogs import PathPicker, PathSuggester
from tui.keys import KeyFooter
from tui.launch import EXISTING, LaunchError, LaunchSettings, in_launcher_words, job_settings
BUDGET_FIELDS = ("backbone", "spec", "mode")
PATH_FIELDS = {"backbone": ("backbone checkpoint folder", True), "spec": ("task spec (.toml or data folder)", False),
               "out": ("job directory", True)}


class LauncherScreen(Screen):
    """Every field of a job, its parameter budget, and Start."""

    TITLE = "Launcher"
    HELP = ("Fill in a job as `finetune` would take it (the command line is shown under the budget); right "
            "arrow accepts a path completion. Start runs it here and shows its dashboard.")
    BINDINGS = [
        Binding("ctrl+s", "start", "Start", priority=True),
        Binding("ctrl+o", "browse", "Browse"),
        Binding("f1", "app.help", "Help"),
        Binding("ctrl+q", "app.quit", "Quit"),
    ]

    def __init__(self, defaults: LaunchSettings):
        super().__init__()
        self.defaults = defaults
        self._budget_generation = 0

    def compose(self) -> ComposeResult:
        d = self.defaults
        yield Static("[b]PeterRec[/b]  launch a fine-tuning job: one frozen backbone, a patch set per task",
                     id="launcher-title")
        with VerticalScroll(id="form"):
            yield from self._row("backbone", "backbone", d.backbone, "checkpoint folder from `pretrain`",
                                 PathSuggester(dirs_only=True))
            yield from self._row("spec", "task spec", d.spec, "tasks.toml, or a data folder holding it",
                                 PathSuggester(suffixes=(".toml",)))
            yield from self._row("out", "job dir", d.out, "where results.parquet and the bundle go",
                                 PathSuggester(dirs_only=True))
            with Horizontal(classes="row"):
                yield Label("if it exists", classes="label")
                yield Select([(v, k) for k, v in EXISTING.items()], value=d.existing, allow_blank=False,
                             id="existing", compact=True)
            with Horizontal(classes="row"):
                yield Label("mode", classes="label")
                yield Select([(f"{m.name:<9}  {m.help}", m.name) for m in MODES.values()], value=d.mode,
                             allow_blank=False, id="mode", compact=True)
            with Horizontal(classes="row"):
                yield Label("resources", classes="label")
                yield from self._small("cpus", "CPUs/task", d.cpus)
                yield from self._small("gpus", "GPU/task", d.gpus)
                yield from self._small("workers", "workers", d.workers)
            with Horizontal(classes="row"):
                yield Label("packing", classes="label")
                yield from self._small("pack", "tasks per worker", d.pack)
            with Horizontal(classes="row"):  # three small fields a row: 80 columns hold them whole
                yield Label("training", classes="label")
                yield from self._small("epochs", "epochs", d.epochs)
                yield from self._small("max_steps", "max steps", d.max_steps)
                yield from self._small("batch_size", "batch", d.batch_size)
            with Horizontal(classes="row"):
                yield Label("optimiser", classes="label")
                yield from self._small("lr", "lr", d.lr)
            yield from self._row("address", "cluster", d.address, "local (an embedded Ray on this machine), "
                                 "or HEAD_IP:6379")
            yield Static("workers: tasks at once (0: as many as the cluster fits)   packing: tasks trained "
                         "together per worker, in one fused pass (a number, or auto to measure)   GPU/task: a "
                         "fraction shares a GPU   right arrow: accept a path completion   ctrl+o: browse   "
                         "ctrl+q: quit",
                         classes="hint")
        yield Static(id="budget")
        yield Static(id="command")
        with Horizontal(id="launch-bar"):
            yield Button("Start", variant="success", id="start")
            yield Static("", id="launch-status")
        yield KeyFooter()

    def _row(self, name: str, label: str, value: str, placeholder: str, suggester=None):
        with Horizontal(classes="row"):
            yield Label(label, classes="label")
            yield Input(value, placeholder=placeholder, id=name, suggester=suggester, compact=True)

    def _small(self, name: str, label: str, value: str):
        yield Label(label, classes="small-label")
        yield Input(value, id=name, compact=True, classes="small")

    def on_mount(self) -> None:
        self.query_one("#backbone" if not self.defaults.backbone else "#start").focus()
        self.refresh_budget()
        self.show_command()

    # Fields ------------------------------------------------------------------------------------------

    def settings(self) -> LaunchSettings:
        values = {i.id: i.value for i in self.query(Input)}
        values.update({s.id: s.value for s in self.query(Select)})
        d = self.defaults
        return LaunchSettings(**values, num_cpus=d.num_cpus, object_store_mb=d.object_store_mb, base=d.base)

    @on(Input.Changed)
    @on(Select.Changed)
    def changed(self, event) -> None:
        event.control.remove_class("error")
        if event.control.id in BUDGET_FIELDS:
            self.refresh_budget()
        self.show_command()

    def show_command(self) -> None:
        """The `finetune` command these fields amount to (or what is wrong with them)."""
        try:
            command = " ".join(shlex.quote(a) for a in job_settings(self.settings()).command_line())
            text = Text.assemble(("same as: ", "dim"), (command, "dim italic"))
        except LaunchError as e:
            text = Text(in_launcher_words(str(e)), style="yellow")
        self.query_one("#command", Static).update(text)

    def refresh_budget(self) -> None:
        self._budget_generation += 1
        self.set_timer(0.3, lambda g=self._budget_generation: self._budget_if_current(g))

    def _budget_if_current(self, generation: int) -> None:
        if generation == self._budget_generation:  # typed on since: wait for the last change
            s = self.settings()
            if s.backbone.strip() and s.spec.strip():
                self.query_one("#budget", Static).update(Text("computing the parameter budget...", style="dim"))
                self.compute_budget(s, generation)
            else:
                self.query_one("#budget", Static).update(
                    Text("Pick a backbone checkpoint and a task spec to see the parameter budget.", style="dim"))

    @work(thread=True, exclusive=True, group="budget")
    def compute_budget(self, s: LaunchSettings, generation: int) -> None:
        """Model shapes on the meta device: fast, but imports torch, so off the UI thread."""
        from orchestrator.client import plan_budget

        try:
            settings = job_settings(LaunchSettings(**{**s.to_dict(), "out": s.out or "unused"}))
            text = budget_text(plan_budget(settings), settings.training.mode)
        except Exception as e:  # noqa: BLE001  shown to the user, who fixes the field
            text = Text(f"cannot compute the budget: {e}", style="red")
        self.app.call_from_thread(self._show_budget, text, generation)

    def _show_budget(self, text: Text, generation: int) -> None:
        if generation == self._budget_generation:
            self.query_one("#budget", Static).update(text)

    # Actions -----------------------------------------------------------------------------------------

    def action_browse(self) -> None:
        focused = self.focused
        name = focused.id if isinstance(focused, Input) and focused.id in PATH_FIELDS else "backbone"
        title, dirs = PATH_FIELDS[name]
        field = self.query_one(f"#{name}", Input)

        def picked(path: str | None) -> None:
            if path:
                field.value = path
                field.focus()

        self.app.push_screen(PathPicker(field.value, f"Pick the {title}", dirs=dirs), picked)

    @on(Button.Pressed, "#start")
    def action_start(self) -> None:
        try:
            settings = job_settings(self.settings())
        except LaunchError as e:
            self.show_error(str(e), e.field)
            return
        self.query_one("#start", Button).disabled = True
        self.show_status("checking the spec, the data and the backbone...")
        self.app.start_job(settings)

    def show_status(self, message: str) -> None:
        self.query_one("#launch-status", Static).update(Text(message, style="dim"))

    def show_error(self, message: str, field: str | None = None) -> None:
        """A problem to fix (called by the app when the job cannot be planned)."""
        self.query_one("#start", Button).disabled = False
        self.query_one("#launch-status", Static).update(Text(in_launcher_words(message), style="bold red"))
        if field:
            widget = self.query_one(f"#{field}")
            widget.add_class("error")
            widget.focus()


def budget_text(budget, mode: str) -> Text:
    """The launcher's budget panel: per task and in all, against N full fine-tuned copies, in the words of
    the dashboard's panel (what a task stores depends on its mode)."""
    from tui.view import count, held_text, times

    tasks = list(budget.tasks.values())
    storage = budget.storage()
    modes = {t.mode for t in tasks} or {mode}
    text = Text()
    text.append(f"{len(tasks)} tasks", style="bold").append(f" in mode {mode}; backbone ")
    text.append(f"{budget.backbone_params:,}", style="bold")
    text.append(" params, held once, read by every task\n" if storage.backbone_params else
                " params, not stored: every task holds a backbone of its own\n")
    by_kind: dict[str, list] = {}
    for name, t in budget.tasks.items():
        by_kind.setdefault(budget.kinds.get(name, "task"), []).append(t)
    for kind, group in by_kind.items():
        lo, hi = min(t.trained_params for t in group), max(t.trained_params for t in group)
        rlo, rhi = min(t.ratio_vs_fineall for t in group), max(t.ratio_vs_fineall for t in group)
        span = f"{count(lo)}" if lo == hi else f"{count(lo)}-{count(hi)}"
        rspan = f"{rlo:.2f}%" if abs(rhi - rlo) < 0.005 else f"{rlo:.2f}-{rhi:.2f}%"
        text.append(f"  {kind} x{len(group)}: ", style="dim").append(f"{span} trained params per task, ")
        text.append(rspan, style="bold").append(" of FineAll\n")
    if storage.full_copies_params:
        text.append("storage: ", style="dim").append(f"{held_text(storage, len(tasks), modes)} = "
                                                     f"{storage.shared_params:,} params vs {len(tasks)} full "
                                                     f"copies {storage.full_copies_params:,}: ")
        text.append(f"{100 * storage.ratio:.1f}%", style="bold green")
        text.append(f" ({times(storage.full_copies_params, storage.shared_params)})", style="dim")
    return text
