"""The search space of `tune`: per-key distributions, read from a TOML file or the defaults of a mode.

No Ray here: a space is validated and sampled before any cluster starts, with a seeded generator, so a
search (its baseline and its random trials) is repeatable and a resumed search samples nothing anew.

A space file has one entry per hyper-parameter (a key of peterrec.finetune.OVERRIDE_KEYS):

    lr = { type = "loguniform", low = 1e-4, high = 1e-2 }
    batch_size = { type = "choice", values = [32, 64, 128] }
    weight_decay = 0.0          # a plain value: fixed for every trial but the baseline
    [insertion]
    type = "choice"
    values = ["serial", "parallel"]

Types: loguniform / uniform (low, high), randint (low, high, both included), choice (values).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from peterrec.config import INSERTIONS
from peterrec.finetune import OVERRIDE_KEYS, PATCH_KEYS, FinetuneSettings, check_settings, with_overrides
from peterrec.modes import PATCHED_MODES, get_mode
from tasks import DataError
from tasks.spec import read_toml

TYPES = {"loguniform": ("low", "high"), "uniform": ("low", "high"), "randint": ("low", "high"),
         "choice": ("values",)}
# Keys a space may not search, and why.
SET_BY_TUNE = {
    "mode": "the mode of a search is --mode",
    "eval_every": "tune sets the evaluation cadence from --evals",
    "log_every": "tune reports progress after every step",
    "keep_best": "a trial always keeps its best evaluation",
}


@dataclass(frozen=True)
class Dim:
    """One searched (or fixed) hyper-parameter."""

    key: str
    kind: str  # loguniform | uniform | randint | choice | fixed
    low: float | None = None
    high: float | None = None
    values: tuple = ()

    def sample(self, rng: np.random.Generator):
        if self.kind == "loguniform":
            return _round(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        if self.kind == "uniform":
            return _round(rng.uniform(self.low, self.high))
        if self.kind == "randint":
            return int(rng.integers(self.low, self.high + 1))
        return _plain(self.values[int(rng.integers(len(self.values)))])

    def candidates(self) -> list:
        """The values a validity check must accept: every choice or integer, or the bounds of a range."""
        if self.kind == "randint" and self.high - self.low <= 1000:
            return list(range(self.low, self.high + 1))
        return list(self.values) if self.values else [self.low, self.high]

    def to_tune(self):
        """The same distribution as a Ray Tune domain (the record in Tune's experiment)."""
        from ray import tune

        return {"loguniform": lambda: tune.loguniform(self.low, self.high),
                "uniform": lambda: tune.uniform(self.low, self.high),
                "randint": lambda: tune.randint(self.low, self.high + 1),
                "choice": lambda: tune.choice(list(self.values)),
                "fixed": lambda: self.values[0]}[self.kind]()

    def to_dict(self) -> dict:
        if self.kind == "fixed":
            return {"type": "fixed", "value": self.values[0]}
        if self.kind == "choice":
            return {"type": "choice", "values": list(self.values)}
        return {"type": self.kind, "low": self.low, "high": self.high}

    def describe(self) -> str:
        if self.kind in ("fixed", "choice"):
            return f"{self.key} in {list(self.values)}" if self.kind == "choice" else f"{self.key} = {self.values[0]}"
        return f"{self.key} ~ {self.kind}({self.low:g}, {self.high:g})"


def _round(x: float) -> float:
    return float(f"{x:.4g}")  # 4 significant digits: readable in the tuned spec, and what the trial ran


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def current(settings: FinetuneSettings, key: str):
    """The value of override `key` in `settings`."""
    for owner in (settings.train, settings.patch, settings):
        if key in {f.name for f in fields(owner)}:
            return getattr(owner, key)
    raise KeyError(key)


def default_space(mode: str, backbone_config, settings: FinetuneSettings) -> dict[str, Dim]:
    """What a search tries without --space: the issue's list, restricted to what `mode` trains."""
    space = [Dim("lr", "loguniform", 1e-4, 1e-2), Dim("weight_decay", "choice", values=(0.0, 1e-4, 1e-3, 1e-2)),
             Dim("batch_size", "choice", values=(32, 64, 128))]
    if get_mode(mode).patched:
        fits = tuple(r for r in (2, 4, 8) if _fits(settings, {"bottleneck_ratio": r}, backbone_config))
        space += [Dim("bottleneck_ratio", "choice", values=fits or (settings.patch.bottleneck_ratio,)),
                  Dim("insertion", "choice", values=tuple(INSERTIONS)),
                  Dim("train_layernorm2", "choice", values=(True, False))]
    if get_mode(mode).trains == "last_blocks" and len(backbone_config.dilations) > 1:
        space.append(Dim("finelast_blocks", "randint", 1, min(3, len(backbone_config.dilations))))
    return {d.key: d for d in space}


def load_space(path: str | Path, mode: str, backbone_config, settings: FinetuneSettings) -> dict[str, Dim]:
    """Read and check a space file; DataError names the file and the key."""
    path = Path(path)
    document = read_toml(path, "search space file")
    if not document:
        raise DataError(path, "no hyper-parameters: add at least one entry such as lr = "
                              "{ type = \"loguniform\", low = 1e-4, high = 1e-2 }")
    space = {key: _dim(path, key, entry) for key, entry in document.items()}
    check_space(space, mode, backbone_config, settings, path)
    return space


def _dim(path: Path, key: str, entry) -> Dim:
    def fail(problem: str):
        raise DataError(path, problem, field=key)

    if key in SET_BY_TUNE:
        fail(f"cannot be searched: {SET_BY_TUNE[key]}")
    if key not in OVERRIDE_KEYS:
        fail(f"unknown hyper-parameter; expected one of {', '.join(sorted(set(OVERRIDE_KEYS) - set(SET_BY_TUNE)))}")
    if not isinstance(entry, dict):
        return Dim(key, "fixed", values=(entry,))
    kind = entry.get("type")
    if kind not in TYPES:
        fail(f"type {kind!r} is not one of {', '.join(TYPES)} (or give a plain value to fix it)")
    unknown = sorted(set(entry) - {"type", *TYPES[kind]})
    missing = [k for k in TYPES[kind] if k not in entry]
    if unknown or missing:
        fail(f"a {kind} entry has {' and '.join(TYPES[kind])}" + (f"; unknown {unknown}" if unknown else "")
             + (f"; missing {missing}" if missing else ""))
    if kind == "choice":
        values = entry["values"]
        if not isinstance(values, list) or not values:
            fail(f"values must be a non-empty list, got {values!r}")
        return Dim(key, kind, values=tuple(values))
    low, high = entry["low"], entry["high"]
    number = int if kind == "randint" else (int, float)
    if any(isinstance(v, bool) or not isinstance(v, number) for v in (low, high)):
        fail(f"low and high must be {'integers' if kind == 'randint' else 'numbers'}, got {low!r} and {high!r}")
    if low > high or (low == high and kind != "randint"):
        fail(f"low must be below high, got {low!r} and {high!r}")
    if kind == "loguniform" and low <= 0:
        fail(f"a loguniform range must be positive, got low = {low!r}")
    return Dim(key, kind, low, high)


def check_space(space: dict[str, Dim], mode: str, backbone_config, settings: FinetuneSettings,
                path: Path | None = None) -> None:
    """Every value a trial may get must make a valid task model in `mode` over this backbone."""
    for key, dim in space.items():
        def fail(problem: str):
            raise (DataError(path, problem, field=key) if path else ValueError(f"search space {key}: {problem}"))

        if key in PATCH_KEYS and not get_mode(mode).patched:
            fail(f"only {' and '.join(PATCHED_MODES)} have patches; it has no effect in mode {mode}")
        if key == "finelast_blocks" and get_mode(mode).trains != "last_blocks":
            fail(f"only modes that train the last blocks use it; it has no effect in mode {mode}")
        default = current(settings, key)
        if dim.kind in ("uniform", "loguniform") and isinstance(default, int):
            fail(f"takes integers ({default!r} by default): use a randint or a choice, not {dim.kind}")
        for value in dim.candidates():
            if not _same_type(value, default):
                fail(f"{value!r} is not of type {type(default).__name__} (the type of its default, {default!r})")
            try:
                _fits(settings, {key: value}, backbone_config, strict=True)
            except (ValueError, TypeError) as e:
                fail(f"value {value!r} does not work: {e}")


def _same_type(value, default) -> bool:
    if default is None or isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, bool):
        return isinstance(value, bool)
    return isinstance(value, type(default)) and not isinstance(value, bool)


def _fits(settings: FinetuneSettings, overrides: dict, backbone_config, strict: bool = False) -> bool:
    """Whether `overrides` make valid settings for this backbone (raises instead with `strict`)."""
    try:
        check_settings(with_overrides(settings, overrides), backbone_config)
    except (ValueError, TypeError):
        if strict:
            raise
        return False
    return True


def trial_points(space: dict[str, Dim], tasks: list, task_settings: dict, samples: int, seed: int) -> list[dict]:
    """Every trial's config, tasks interleaved: sample 0 of a task is its baseline (the settings `finetune`
    would use, fixed keys included), samples 1.. are drawn from the space by a generator seeded per task."""
    per_task = {}
    for task in tasks:
        settings = task_settings[task.name]
        rng = np.random.default_rng([seed, *task.name.encode()])
        baseline = {k: current(settings, k) for k in space}
        drawn = [{k: d.sample(rng) for k, d in space.items()} for _ in range(samples - 1)]
        per_task[task.name] = [baseline, *drawn]
    return [{"task": task.name, "sample": i, **per_task[task.name][i]} for i in range(samples) for task in tasks]
