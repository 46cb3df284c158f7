"""POST /v1/predict bodies -> validated rows, or a RequestError naming every bad field.

Plain Python (no Ray, no torch): the server calls `read_predict` before anything is queued, so a bad
request never reaches a batch. A body is one request object or a list of them:

  {"task": "gender", "user_id": "u17"}
  [{"task": "gender", "items": ["242", "302"]}, {"task": "cold", "items": [5, 9, 12], "top_k": 5}]

`items` are raw item ids (strings, mapped through the server's items.parquet) or dense ids
(integers 1..vocab_size-1); `user_id` is looked up in the server's sequences table.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

MAX_BODY_BYTES = 1 << 20  # a larger body is refused before it is parsed
MAX_REQUESTS = 1024  # request objects per HTTP call
MAX_ITEMS = 10_000  # items per request; the model reads the most recent max_len of them
FIELDS = ("task", "items", "user_id", "top_k")
SHOWN_PROBLEMS = 20  # a body with many bad rows reports the first ones


@dataclass(frozen=True)
class Row:
    """One validated request: a task and its left-padded item ids."""

    task: str
    items: np.ndarray  # (max_len,) int64, left-padded with 0
    top_k: int | None = None  # coldrec only; None: the server's default


@dataclass(frozen=True)
class Problem:
    field: str  # where in the body: "task", "items[3]", "[2].user_id", "body"
    expected: str
    got: object = None
    status: int = 422

    def to_dict(self) -> dict:
        out = {"field": self.field, "expected": self.expected}
        if self.got is not None:
            out["got"] = self.got
        return out


class RequestError(Exception):
    """A bad request: the HTTP status of the first problem, and every problem found (JSON-ready)."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        self.status = problems[0].status
        first = problems[0]
        super().__init__(f"field '{first.field}': expected {first.expected}")

    def to_json(self) -> dict:
        shown = self.problems[:SHOWN_PROBLEMS]
        out = {"error": str(self), "problems": [p.to_dict() for p in shown]}
        if len(self.problems) > len(shown):
            out["more_problems"] = len(self.problems) - len(shown)
        return out


class ItemIds:
    """Raw item id -> dense id (items.parquet: raw_ids[k] is dense id k; k = 0 is padding)."""

    def __init__(self, raw_ids):
        self.dense = {str(raw): i for i, raw in enumerate(raw_ids) if raw is not None}


class Users:
    """user_id -> the user's most recent items, left-padded, from the sequences' CSR arrays."""

    def __init__(self, user_ids, sequences):
        self.row = {str(u): i for i, u in enumerate(user_ids)}
        self.sequences = sequences  # has .padded(rows, max_len) (tasks.Sequences or SequenceArrays)

    def padded(self, user_id: str, max_len: int) -> np.ndarray | None:
        row = self.row.get(user_id)
        return None if row is None else self.sequences.padded(np.array([row]), max_len)[0]


def short(value, limit: int = 60):
    """A bad value as shown back to the client: JSON-able and short (containers as cut JSON text)."""
    if not isinstance(value, (str, list, dict)):
        return value
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def parse_json(body: bytes):
    if len(body) > MAX_BODY_BYTES:
        raise RequestError([Problem("body", f"at most {MAX_BODY_BYTES} bytes", f"{len(body)} bytes", 413)])
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError([Problem("body", "JSON: a request object or a list of them", str(e), 400)]) from None


@dataclass
class Context:
    """What validation checks against: the tasks served now and the server's id lookups."""

    tasks: Mapping[str, dict]  # name -> the task section of its adapter config
    vocab_size: int
    max_len: int
    items: ItemIds | None = None
    users: Users | None = None


def read_predict(body: bytes, context: Context) -> tuple[list[Row], bool]:
    """(rows, whether the body was a single object); raises RequestError listing every problem."""
    document = parse_json(body)
    single = isinstance(document, dict)
    if not single and not isinstance(document, list):
        raise RequestError([Problem("body", "a request object or a list of them", type(document).__name__, 400)])
    requests = [document] if single else document
    if not requests:
        raise RequestError([Problem("body", "at least one request object", "[]")])
    if len(requests) > MAX_REQUESTS:
        raise RequestError([Problem("body", f"at most {MAX_REQUESTS} request objects", len(requests), 413)])
    rows, problems = [], []
    for i, request in enumerate(requests):
        found: list[Problem] = []
        row = _read_one(request, context, "" if single else f"[{i}].", found)
        problems += found
        rows.append(row)
    if problems:
        raise RequestError(problems)
    return rows, single


def _read_one(request, context: Context, at: str, problems: list[Problem]) -> Row | None:
    if not isinstance(request, dict):
        problems.append(Problem(at.rstrip(".") or "body", "a request object", type(request).__name__))
        return None
    for key in request:
        if key not in FIELDS:
            problems.append(Problem(f"{at}{key}", f"no such field; fields: {', '.join(FIELDS)}"))
    task = _task(request, context, at, problems)
    items = _items(request, context, at, problems)
    top_k = _top_k(request, task, at, problems)
    if task is None or items is None or len(problems):
        return None
    return Row(task["name"], items, top_k)


def _task(request: dict, context: Context, at: str, problems: list[Problem]) -> dict | None:
    name = request.get("task")
    if not isinstance(name, str):
        what = "missing" if "task" not in request else type(name).__name__
        problems.append(Problem(f"{at}task", "a task name (string); GET /v1/tasks lists them", what))
        return None
    if name not in context.tasks:
        known = sorted(context.tasks)
        shown = ", ".join(known[:10]) + (f" and {len(known) - 10} more" if len(known) > 10 else "")
        problems.append(Problem(f"{at}task", f"a served task ({shown or 'none loaded'})", short(name), 404))
        return None
    return context.tasks[name]


def _items(request: dict, context: Context, at: str, problems: list[Problem]) -> np.ndarray | None:
    """The request's item ids as a left-padded (max_len,) row: from `items`, or from `user_id`'s sequence."""
    has_items, has_user = "items" in request, "user_id" in request
    if has_items == has_user:
        what = "both" if has_items else "neither"
        problems.append(Problem(f"{at}items", "either 'items' (item ids) or 'user_id', not both", what))
        return None
    if has_user:
        return _user(request["user_id"], context, at, problems)
    items = request["items"]
    if not isinstance(items, list) or not items:
        got = "[]" if items == [] else type(items).__name__
        problems.append(Problem(f"{at}items", "a non-empty list of item ids", got))
        return None
    if len(items) > MAX_ITEMS:
        problems.append(Problem(f"{at}items", f"at most {MAX_ITEMS} item ids", f"{len(items)} ids", 413))
        return None
    dense = []
    for j, item in enumerate(items):
        value = _item(item, context, f"{at}items[{j}]", problems)
        if value is not None:
            dense.append(value)
    if len(dense) < len(items):
        return None
    row = np.zeros(context.max_len, dtype=np.int64)
    kept = dense[-context.max_len:]  # the most recent items, as `predict` keeps them
    row[context.max_len - len(kept):] = kept
    return row


def _item(item, context: Context, field: str, problems: list[Problem]) -> int | None:
    if isinstance(item, str):
        if context.items is None:
            problems.append(Problem(field, "a dense item id (integer): raw ids need the server started with "
                                           "--items (or a data directory holding source/items.parquet)",
                                    short(item)))
            return None
        if item not in context.items.dense:
            problems.append(Problem(field, "a raw item id of the server's items.parquet", short(item)))
            return None
        return context.items.dense[item]
    if isinstance(item, bool) or not isinstance(item, int):
        problems.append(Problem(field, "an item id: a raw id (string) or a dense id (integer)",
                                type(item).__name__))
        return None
    if not 1 <= item < context.vocab_size:
        problems.append(Problem(field, f"a dense item id in 1..{context.vocab_size - 1} (0 is padding)", item))
        return None
    return item


def _user(user_id, context: Context, at: str, problems: list[Problem]) -> np.ndarray | None:
    if not isinstance(user_id, str):
        problems.append(Problem(f"{at}user_id", "a user id (string)", type(user_id).__name__))
        return None
    if context.users is None:
        problems.append(Problem(f"{at}user_id", "'items': user ids need the server started with --sequences "
                                               "or --tasks", short(user_id)))
        return None
    row = context.users.padded(user_id, context.max_len)
    if row is None:
        problems.append(Problem(f"{at}user_id", "a user id of the server's sequences table", short(user_id), 404))
    return row


def _top_k(request: dict, task: dict | None, at: str, problems: list[Problem]) -> int | None:
    if "top_k" not in request:
        return None
    top_k = request["top_k"]
    if task is not None and task["kind"] != "coldrec":
        problems.append(Problem(f"{at}top_k", f"no top_k: task {task['name']!r} is a {task['kind']} task"))
        return None
    size = task["target_vocab"] if task is not None else None
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1 or (size and top_k > size):
        problems.append(Problem(f"{at}top_k", f"an integer in 1..{size or 'target_vocab'}", short(top_k)))
        return None
    return top_k
