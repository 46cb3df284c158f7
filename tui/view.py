"""What the screens show, as plain data and Rich text: task rows, the job's totals, the efficiency panel.

No Textual here, so the arithmetic (progress, ETA, ratios) is tested without an app. Times come from
the state (its clock), never from the wall clock of the viewer, except "now" for a live job's ETA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rich.text import Text

from orchestrator.client import LIVE_STATUSES, MODES, JobBudget, JobState, ParamReport, TaskState
from orchestrator.client import status as st

STATUS_STYLE = {st.QUEUED: "dim", st.RUNNING: "bold cyan", st.RETRYING: "bold yellow", st.DONE: "green",
                st.FAILED: "bold red"}
JOB_STYLE = {st.STARTING: "yellow", st.JOB_RUNNING: "bold cyan", st.STOPPING: "yellow", st.JOB_DONE: "bold green",
             st.STOPPED: "bold yellow", st.LOST: "bold red"}
METRIC_SHORT = {"accuracy": "acc"}


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int  # content width; the table adds one cell of padding on each side
    keep: int  # which columns stay when the terminal is narrow: the lowest numbers


COLUMNS = (
    Column("task", "task", 16, 0),
    Column("kind", "kind", 8, 10),
    Column("status", "status", 8, 1),
    Column("progress", "progress", 10, 3),
    Column("step", "step", 9, 7),
    Column("loss", "loss", 7, 4),
    Column("metric", "metric", 12, 2),
    Column("params", "trained", 8, 9),
    Column("ratio", "% FineAll", 9, 6),
    Column("rate", "samples/s", 9, 8),
    Column("eta", "ETA", 7, 5),
)
MARK = 2  # the task column's selection mark
SCROLLBAR = 2


def columns_for(width: int, task_width: int) -> list[Column]:
    """The columns that fit `width` terminal cells (a scrollbar left over), most useful first, shown in
    their usual order; the task column is `task_width` wide."""
    sized = [Column(c.key, c.label, task_width if c.key == "task" else c.width, c.keep) for c in COLUMNS]
    room, picked = width - SCROLLBAR, set()
    for column in sorted(sized, key=lambda c: c.keep):
        need = column.width + 2 + (MARK if column.key == "task" else 0)
        if need <= room or column.key == "task":
            picked.add(column.key)
            room -= need
    return [c for c in sized if c.key in picked]


FILTERS = ("all", "running", "failed", "done", "queued")
SORTS = ("spec", "task", "kind", "status", "progress", "loss", "metric", "ratio", "rate", "eta")
SORT_OF_COLUMN = {"params": "ratio", "step": "progress"}  # columns sorted by another column's numbers
GROUPS = ("none", "status", "kind")
ACTIVE = (st.RUNNING, st.RETRYING)
STATUS_ORDER = {st.RUNNING: 0, st.RETRYING: 1, st.FAILED: 2, st.QUEUED: 3, st.DONE: 4}


@dataclass
class JobView:
    """One poll of a job: its state, results.parquet rows by task, and the parameter budget."""

    state: JobState
    results: dict[str, dict] = field(default_factory=dict)
    budget: JobBudget | None = None  # every task's parameters, planned or measured (JobClient.budget)
    now: float | None = None  # the poll's wall clock (None: use the state's own clock)
    final: bool = False  # the job is over and this is its last state: no more polls needed

    @property
    def live(self) -> bool:
        return self.state.status in LIVE_STATUSES

    def task_budget(self, name: str) -> ParamReport | None:
        """Measured numbers of a finished task first (results.parquet), else the planned budget (worked out
        once per view: a 1,000-task job asks for them on every redraw)."""
        cache = self.__dict__.setdefault("_budgets", {})
        if name not in cache:
            row = self.results.get(name)
            if row is not None and row.get("status") == "done" and row.get("fineall_params"):
                cache[name] = ParamReport.from_row(row)
            else:
                cache[name] = self.budget.tasks.get(name) if self.budget is not None else None
        return cache[name]

    @property
    def clock(self) -> float:
        return self.now if self.now is not None and self.live else self.state.updated_at


# Numbers ------------------------------------------------------------------------------------------------


def duration(seconds: float | None) -> str:
    """3s, 2m05s, 1h02m; '' for None."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return ""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def count(n: float | None) -> str:
    """1,234 / 12.3k / 4.56M / 1.2B: parameter counts that fit a narrow column."""
    if n is None:
        return ""
    for threshold, divisor, unit in ((1e9, 1e9, "B"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if abs(n) >= threshold:
            return f"{n / divisor:.3g}{unit}"
    return f"{n:,.0f}"


def number(value: float | None, fmt: str = ".4f") -> str:
    return "" if value is None or not math.isfinite(value) else format(value, fmt)


def bar(fraction: float, width: int, style: str = "cyan") -> Text:
    """A block bar: eighths of a cell, so 100 tasks move it visibly."""
    fraction = min(max(fraction, 0.0), 1.0)
    eighths = int(round(fraction * width * 8))
    full, part = divmod(eighths, 8)
    text = Text("█" * full, style=style)
    if part and full < width:
        text.append(" ▏▎▍▌▋▊▉"[part], style=style)
        full += 1
    text.append("━" * (width - full), style="grey35")
    return text


# Tasks ------------------------------------------------------------------------------------------------


def task_fraction(task: TaskState) -> float:
    if task.status == st.DONE:
        return 1.0
    return task.step / task.total if task.total else 0.0


def shows_numbers(task: TaskState) -> bool:
    """A queued task has no numbers: an attempt it left (retried, interrupted) is not what it will do."""
    return task.status != st.QUEUED


def task_eta(task: TaskState, now: float) -> float | None:
    """Seconds left of a running task, from its own pace (steps since its start)."""
    if task.status not in (st.RUNNING, st.RETRYING) or not task.total or not task.step or not task.started_at:
        return None
    elapsed = max((task.updated_at or now) - task.started_at, 0.0)
    left = elapsed / task.step * (task.total - task.step)
    return max(left - max(now - (task.updated_at or now), 0.0), 0.0)


def task_cells(task: TaskState, budget: ParamReport | None, now: float) -> dict[str, Text | str]:
    """Every column of one task's row."""
    style = STATUS_STYLE.get(task.status, "")
    done = task.status == st.DONE
    numbers = shows_numbers(task)
    value = (task.value if done else task.metric) if numbers else None
    metric = METRIC_SHORT.get(task.metric_name, task.metric_name or "")
    bar_style = {st.DONE: "green", st.FAILED: "red", st.RETRYING: "yellow"}.get(task.status, "cyan")
    return {
        "task": Text(task.name, style="bold" if task.status == st.RUNNING else ""),
        "kind": task.kind,
        "status": Text(task.status, style=style),
        "progress": bar(task_fraction(task), 10, bar_style) if numbers and (task.total or done) else Text(""),
        "step": f"{task.step}/{task.total}" if numbers and task.total else "",
        "loss": Text(number(task.loss if numbers else None), justify="right"),
        "metric": Text(f"{metric} {number(value)}" if value is not None else "", justify="right",
                       style="bold" if done else ""),
        "params": Text(count(budget.trained_params) if budget else "", justify="right"),
        "ratio": Text(f"{budget.ratio_vs_fineall:.2f}%" if budget else "", justify="right"),
        "rate": Text(number(task.samples_per_s, ",.0f") if task.status == st.RUNNING else "", justify="right"),
        "eta": Text(duration(task_eta(task, now)), justify="right"),
    }


def sort_key(sort: str, task: TaskState, index: int, budget: ParamReport | None, now: float):
    """Ascending keys; missing values last; ties in spec order."""
    missing = float("inf")
    if sort == "task":
        key = task.name
    elif sort == "kind":
        key = task.kind
    elif sort == "status":
        key = STATUS_ORDER.get(task.status, 9)
    elif sort == "progress":
        key = -task_fraction(task)
    elif sort == "loss":
        key = task.loss if task.loss is not None and shows_numbers(task) else missing
    elif sort == "metric":  # accuracy and mrr@5 are not one scale: by metric, then best first
        value = task.value if task.status == st.DONE else task.metric if shows_numbers(task) else None
        key = (task.metric_name or "", -value) if value is not None else ("~", missing)
    elif sort == "ratio":
        key = budget.ratio_vs_fineall if budget else missing
    elif sort == "rate":
        key = -(task.samples_per_s or 0.0) if task.status == st.RUNNING else missing
    elif sort == "eta":
        eta = task_eta(task, now)
        key = eta if eta is not None else missing
    else:
        key = 0
    return (key, index)


def visible_tasks(view: JobView, status_filter: str = "all", text: str = "", sort: str = "spec",
                  reverse: bool = False) -> list[TaskState]:
    """The rows to show, filtered by status and name, in the chosen order."""
    wanted = {"all": None, "running": (st.RUNNING, st.RETRYING), "failed": (st.FAILED,), "done": (st.DONE,),
              "queued": (st.QUEUED,)}[status_filter]
    needle = text.strip().lower()
    tasks = [(i, t) for i, t in enumerate(view.state.tasks.values())
             if (wanted is None or t.status in wanted) and needle in t.name.lower()]
    now = view.clock
    if sort != "spec" or reverse:
        tasks.sort(key=lambda it: sort_key(sort, it[1], it[0], view.task_budget(it[1].name) if sort == "ratio"
                                           else None, now), reverse=reverse)
    return [t for _, t in tasks]


def groups_of(tasks: list[TaskState], group: str) -> list[tuple[str, list[TaskState]]]:
    """The tasks by status (running first) or by kind (in order of first appearance), each group keeping
    the tasks' order; one unnamed group when not grouping."""
    if group == "none":
        return [("", tasks)]
    out: dict[str, list[TaskState]] = {}
    for task in tasks:
        out.setdefault(getattr(task, group), []).append(task)
    names = sorted(out, key=lambda s: STATUS_ORDER.get(s, 9)) if group == "status" else list(out)
    return [(name, out[name]) for name in names]


# The job ------------------------------------------------------------------------------------------------


def job_progress(state: JobState) -> float:
    """Finished tasks plus the running ones' share of their steps, over all tasks."""
    if not state.tasks:
        return 0.0
    return sum(1.0 if t.finished else task_fraction(t) for t in state.tasks.values()) / len(state.tasks)


def job_elapsed(state: JobState, now: float) -> float | None:
    if "finished" in state.timings:
        return state.timings["finished"]
    return max(now - state.started_at, 0.0) if state.status in LIVE_STATUSES else None


def job_eta(state: JobState, now: float) -> float | None:
    """Seconds left: the driver's ETA (the steps left over its smoothed rate of finished steps), counted
    down since the driver measured it."""
    eta, at = state.pace.get("eta_s"), state.pace.get("at")
    if state.status not in LIVE_STATUSES or eta is None:
        return None
    return max(eta - max(now - (at or now), 0.0), 0.0)


def summary_text(view: JobView, width: int = 200) -> Text:
    """The aggregate header: status and counts, the overall bar and ETA, the cluster and throughput;
    packed into as few lines as the width allows (4 at 80 columns, 2 at 200)."""
    state, now = view.state, view.clock
    counts = state.counts()
    head = Text()
    head.append("job ", style="dim").append(state.job_dir, style="bold")
    if state.mode:
        head.append("  mode ", style="dim").append(state.mode, style="bold")
    head.append("  ").append(f" {state.status} ", style=f"reverse {JOB_STYLE.get(state.status, '')}")
    tally = Text()
    for status in (st.DONE, st.RUNNING, st.RETRYING, st.QUEUED, st.FAILED):
        n = counts.get(status, 0)
        if n or status != st.RETRYING:
            tally.append(f"{n}", style=STATUS_STYLE[status] if n else "dim").append(f" {status}  ", style="dim")
    tally.append(f"of {len(state.tasks)} tasks", style="dim")
    fraction = job_progress(state)
    progress = bar(fraction, 40 if width >= 120 else 20, "green" if not view.live else "cyan")
    progress.append(f" {100 * fraction:5.1f}%")
    eta, elapsed = job_eta(state, now), job_elapsed(state, now)
    if eta is not None:
        progress.append("  ETA ", style="dim").append(duration(eta), style="bold")
    if elapsed is not None:
        progress.append("  elapsed ", style="dim").append(duration(elapsed))
    return pack([head, tally, progress, cluster_text(state)], width - 2)


def pack(parts: list[Text], width: int, gap: str = "   ") -> Text:
    """Parts side by side while they fit in `width`, else on the next line."""
    lines: list[Text] = []
    for part in parts:
        if lines and lines[-1].cell_len + len(gap) + part.cell_len <= width:
            lines[-1].append(gap).append_text(part)
        else:
            lines.append(part.copy())
    return Text("\n").join(lines)


def cluster_text(state: JobState) -> Text:
    """Cluster resources held by the job (workers training now x per-worker resources; a pack of tasks is
    one worker; a retrying task waits for a worker and holds none) and its throughput."""
    cluster, res = state.cluster or {}, state.resources or {}
    running = len({(t.node, t.pid) if t.pack > 1 else t.name for t in state.tasks.values()
                   if t.status == st.RUNNING})
    text = Text()
    if cluster:
        nodes = cluster.get("nodes", 0)
        text.append("cluster ", style="dim").append(f"{nodes} node{'s' if nodes != 1 else ''}")
        cpus = running * res.get("cpus_per_task", 0.0)
        text.append("  CPU ", style="dim").append(f"{cpus:g}/{cluster.get('cpus', 0):g}")
        if cluster.get("gpus"):
            gpus = running * res.get("gpus_per_task", 0.0)
            text.append("  GPU ", style="dim").append(f"{gpus:g}/{cluster.get('gpus', 0):g}")
    else:
        text.append("cluster ", style="dim").append("starting" if state.status in LIVE_STATUSES else "-")
    if state.status in LIVE_STATUSES:
        text.append("  throughput ", style="dim").append(f"{state.samples_per_s:,.0f} samples/s")
    return text


STORES = {"head": ("head", "heads"), "patches": ("patch set", "patch sets"),
          "last_blocks": ("last-blocks copy", "last-blocks copies"), "all": ("full model", "full models")}


def stored_words(modes) -> tuple[str, str]:
    """What each task stores, in words that fit its mode (one, several): a patch set, a head, a copy of the
    last blocks, a whole model; PeterZero's patch sets come with a random backbone of their own."""
    kinds = {(MODES[m].trains, MODES[m].stores_backbone) for m in modes if m in MODES}
    if len(kinds) != 1:
        return "task part", "task parts"
    ((trains, own_backbone),) = kinds
    one, many = STORES[trains]
    return (f"{one} + own backbone", f"{many} + own backbones") if own_backbone else (one, many)


def held_text(storage, tasks: int, modes) -> str:
    """'backbone + 20 patch sets', or '20 full models' when no task reads the shared backbone."""
    one, many = stored_words(modes)
    parts = f"{tasks} {one if tasks == 1 else many}"
    return f"backbone + {parts}" if storage.backbone_params else parts


def efficiency_text(view: JobView, width: int = 200) -> Text:
    """The parameter budget, in words that agree with the mode and sums that add up: the shared backbone
    (held once, when a task reads it), what each task trains and stores, and what the whole job stores
    against one full fine-tuned model per task: planned for every task (measured for those done), so the
    figure does not start at "1 task, larger than one full copy". Counts abbreviated under 100 columns."""
    n = (lambda x: f"{x:,}") if width >= 100 else count  # noqa: E731
    state = view.state
    names = list(state.tasks)
    per_task = {name: view.task_budget(name) for name in names}
    backbone = view.budget.backbone_params if view.budget else next(
        (r.get("backbone_params") for r in view.results.values() if r.get("backbone_params")), None)
    text = Text()
    if backbone is None:
        return text.append("parameter budget: waiting for the backbone or the first finished task", style="dim")
    known = {name: b for name, b in per_task.items() if b is not None}
    done = {name: b for name, b in known.items() if state.tasks[name].status == st.DONE}
    modes = {b.mode for b in known.values()} or {state.mode}
    one, many = stored_words(modes)
    whole = JobBudget(backbone, known).storage()
    text.append("backbone   ", style="dim").append(n(backbone), style="bold")
    if whole.backbone_params or not known:
        text.append(" params, held once, read by every task")
    else:
        text.append(" params, not stored: every task holds a backbone of its own")
    if known:
        ratios = [b.ratio_vs_fineall for b in known.values()]
        text.append("\n")
        text.append("per task   ", style="dim").append(f"{sum(ratios) / len(ratios):.2f}%", style="bold")
        text.append(" of FineAll's params trained" + (" (avg)" if len({round(r, 4) for r in ratios}) > 1 else ""))
        text.append(f"; stores a {one}")
    text.append("\n")
    text.append("storage    ", style="dim")
    if not known:
        return text.append("no task finished yet", style="dim")
    copies = f"cop{'y' if len(known) == 1 else 'ies'}"
    text.append(f"{held_text(whole, len(known), modes)} = {n(whole.shared_params)}, ")
    text.append(f"{100 * whole.ratio:.1f}%", style="bold green")
    text.append(f" of {len(known)} full {copies} ({n(whole.full_copies_params)})")
    if width >= 100:
        text.append(f"  {times(whole.full_copies_params, whole.shared_params)}", style="dim")
    if len(done) < len(names) or len(known) < len(names):
        planned = " (storage: as planned)" if len(known) == len(names) else f" (storage: {len(known)} with figures)"
        text.append("\n")
        text.append("tasks      ", style="dim").append(f"{len(done)} of {len(names)} done, their {many} ")
        text.append(n(sum(b.stored_params for b in done.values())), style="bold").append(planned, style="dim")
    return text


def times(full: int, shared: int) -> str:
    """'12.3x smaller' (or larger: one task over a big backbone) than N full copies."""
    if not shared or not full:
        return ""
    return f"{full / shared:.1f}x smaller" if shared <= full else f"{shared / full:.1f}x larger"
