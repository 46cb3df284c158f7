"""Task spec files (TOML): what a fine-tuning job trains, and where its data lives.

Format in docs/ARCHITECTURE.md. Paths inside the file are relative to the file; the loaded
specs hold absolute paths. The header comment of a written spec carries the command that runs it.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from tasks import toml_writer
from tasks.atomic import staged_file
from tasks.errors import DataError
from tasks.spec_fields import TableChecker
from tasks.schema import KINDS, METRICS

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # task names become file names


def valid_task_name(name: str) -> bool:
    """Whether `name` can name a task (and its files): letters, digits, '_', '.', '-'."""
    return bool(_NAME.match(name))
_SOURCE_KEYS = ("sequences", "vocab_size")
_TASK_KEYS = ("name", "kind", "data", "metric", "num_classes", "target_vocab", "labels", "overrides")


@dataclass(frozen=True)
class TaskSpec:
    """One task of a job: a classifier over classes or a cold-start recommender over target items."""

    name: str
    kind: str  # "classify" | "coldrec"
    data: Path  # absolute path of tasks/<name>.parquet
    metric: str
    num_classes: int | None = None  # classify only
    target_vocab: int | None = None  # coldrec only
    labels: list[str] | None = None  # optional class names, classify only
    overrides: dict = field(default_factory=dict)  # per-task hyper-parameters (lr, batch_size, ...)

    @property
    def num_outputs(self) -> int:
        """Size of the task head's output: classes, or target items."""
        return self.num_classes if self.kind == "classify" else self.target_vocab

    @property
    def target_items(self) -> Path:
        """Where a coldrec task's target vocabulary (target_id <-> raw_id) lives."""
        return self.data.with_name(self.data.name.removesuffix(".parquet") + ".items.parquet")

    def __hash__(self) -> int:  # the list and dict fields are not hashable; name + data identify a task
        return hash((self.name, self.data))


@dataclass(frozen=True)
class JobSpec:
    """A whole spec file: the source sequences and the tasks trained on top of them."""

    path: Path
    sequences: Path
    vocab_size: int
    tasks: list[TaskSpec]

    def task(self, name: str) -> TaskSpec:
        """The task called `name` (KeyError listing the known names otherwise)."""
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(f"no task {name!r} in {self.path} (tasks: {', '.join(t.name for t in self.tasks)})")

    def __hash__(self) -> int:
        return hash((self.path, self.sequences))

    def inputs(self, flag: str = "--tasks") -> dict[str, Path]:
        """Every file a reader of this spec reads, by what it is (tasks.paths.check_apart keeps outputs
        off them): the spec, its sequences and items, each task's data and target items."""
        found = {flag: self.path, "the [source] sequences": self.sequences,
                 "the source items": self.sequences.with_name("items.parquet")}
        for task in self.tasks:
            found[f"the data of task '{task.name}'"] = task.data
            if task.kind == "coldrec":
                found[f"the target items of task '{task.name}'"] = task.target_items
        return found


def read_toml(path: Path, what: str) -> dict:
    """A TOML file as a dict; DataError names the file when it is missing, not a file, or not TOML."""
    from tasks.text import read_text

    try:
        return tomllib.loads(read_text(path, what=what))
    except tomllib.TOMLDecodeError as error:
        raise DataError(path, f"not valid TOML: {error}") from None


def load_spec(path: str | Path) -> JobSpec:
    """Read and validate a spec file; DataError names the file, the task entry and the field."""
    path = Path(path).absolute()
    document = read_toml(path, "spec file")
    unknown = set(document) - {"source", "task"}
    if unknown:
        raise DataError(path, f"unknown top-level key(s) {sorted(unknown)}; expected [source] and [[task]]")
    source = document.get("source")
    if not isinstance(source, dict):
        raise DataError(path, "missing [source] table", field="source")
    check = TableChecker(path, source, "[source]")
    check.no_unknown_keys(_SOURCE_KEYS)
    sequences = check.path_field("sequences")
    vocab_size = check.integer("vocab_size", minimum=2)
    entries = document.get("task", [])
    if not isinstance(entries, list):
        raise DataError(path, "expected [[task]] entries (an array of tables)", field="task")
    tasks, seen = [], {}
    for index, entry in enumerate(entries):
        task = _load_task(path, index, entry)
        if task.name in seen:
            raise DataError(
                path, f"duplicate task name {task.name!r} (also task[{seen[task.name]}])",
                row=index, field="name", where=f"task[{index}] '{task.name}'",
            )
        seen[task.name] = index
        tasks.append(task)
    return JobSpec(path=path, sequences=sequences, vocab_size=vocab_size, tasks=tasks)


def write_spec(path: str | Path, job: JobSpec, command: str, *, notes: Sequence[str] = ()) -> Path:
    """Write `job` as a spec file at `path` (atomically) and return the path.

    Data paths are written relative to the new file's folder, so a spec can be written anywhere
    (e.g. `tune` writing a tuned copy with per-task overrides next to its run). `command` goes in
    the header as `# Run: <command>`; each of `notes` becomes one more comment line. The written
    file is read back with load_spec before it replaces anything, so it is always valid.
    """
    path = Path(path).absolute()
    lines = [f"# Run: {command}", *(f"# {note}" for note in notes), "", "[source]"]
    lines.append(toml_writer.assignment("sequences", _relative(job.sequences, path.parent)))
    lines.append(toml_writer.assignment("vocab_size", int(job.vocab_size)))
    for task in job.tasks:
        lines += ["", "[[task]]"]
        lines.append(toml_writer.assignment("name", task.name))
        lines.append(toml_writer.assignment("kind", task.kind))
        lines.append(toml_writer.assignment("data", _relative(task.data, path.parent)))
        if task.num_classes is not None:
            lines.append(toml_writer.assignment("num_classes", int(task.num_classes)))
        if task.target_vocab is not None:
            lines.append(toml_writer.assignment("target_vocab", int(task.target_vocab)))
        if task.labels is not None:
            lines.append(toml_writer.assignment("labels", [str(label) for label in task.labels]))
        lines.append(toml_writer.assignment("metric", task.metric))
        if task.overrides:
            lines.append("[task.overrides]")
            lines += [toml_writer.assignment(str(k), v) for k, v in task.overrides.items()]
    with staged_file(path) as staging:
        staging.write_text("\n".join(lines) + "\n", encoding="utf-8")
        load_spec(staging)  # what we write must read back
    return path


def _relative(target: Path, folder: Path) -> str:
    return Path(os.path.relpath(Path(target).absolute(), folder)).as_posix()


def _load_task(path: Path, index: int, entry) -> TaskSpec:
    where = f"task[{index}]"
    if not isinstance(entry, dict):
        raise DataError(path, "expected a table", row=index, where=where)
    if isinstance(entry.get("name"), str):
        where = f"task[{index}] '{entry['name']}'"
    check = TableChecker(path, entry, where, row=index)
    check.no_unknown_keys(_TASK_KEYS)
    name = check.string("name")
    if not valid_task_name(name):
        check.fail("name", f"{name!r} is not a valid task name (letters, digits, '_', '.', '-')")
    kind = check.choice("kind", KINDS)
    data = check.path_field("data")
    metric = check.choice("metric", METRICS[kind], what=f"metric for kind {kind!r}")
    num_classes = target_vocab = labels = None
    if kind == "classify":
        num_classes = check.integer("num_classes", minimum=2)
        check.absent("target_vocab", "a classify task has num_classes, not target_vocab")
        if "labels" in entry:
            labels = check.string_list("labels")
            if len(labels) != num_classes:
                check.fail("labels", f"{len(labels)} names given, expected num_classes = {num_classes}")
    else:
        target_vocab = check.integer("target_vocab", minimum=1)
        check.absent("num_classes", "a coldrec task has target_vocab, not num_classes")
        check.absent("labels", "class names are for classify tasks")
    overrides = entry.get("overrides", {})
    if not isinstance(overrides, dict):
        check.fail("overrides", f"expected a table [task.overrides], got {overrides!r}")
    return TaskSpec(name, kind, data, metric, num_classes, target_vocab, labels, dict(overrides))
