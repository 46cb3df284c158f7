"""argparse flags from the settings objects of orchestrator/settings.py, and settings back from parsed flags.

A command declares which settings class it fills in; the flags, their defaults, types, choices and help come
from that class's fields, so the CLI, the TUI launcher and the tuned spec's command line agree by design.
"""

from __future__ import annotations

import argparse
import typing

GROUP_ORDER = ("search", "what is trained", "training", "cluster")  # --help sections, in this order (settings.py)


def _value_type(settings_class, dotted: str):
    """The type a setting's text converts to: the non-None part of its annotation (int | None -> int)."""
    owner = settings_class
    *path, last = dotted.split(".")
    for part in path:
        owner = typing.get_type_hints(owner)[part]
    hint = typing.get_type_hints(owner)[last]
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    kind = args[0]
    return typing.get_args(kind)[0] if typing.get_origin(kind) is list else kind


def _argparse_type(parse):
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def add_settings_flags(parser: argparse.ArgumentParser, settings_class, unit: str,
                       required: tuple[str, ...] = ("backbone", "tasks", "out"),
                       helps: dict[str, str] | None = None) -> dict[str, argparse._ArgumentGroup]:
    """One flag per setting of `settings_class`, in argparse groups named by the settings' `group`; returns
    the groups (commands may add flags of their own to them). `helps` overrides a setting's help by name."""
    from orchestrator.settings import flag_name, get, walk

    defaults = settings_class()
    titles = {f.metadata.get("group") for _, f in walk(settings_class)} - {None}
    groups = {title: parser.add_argument_group(title)
              for title in sorted(titles, key=lambda t: GROUP_ORDER.index(t) if t in GROUP_ORDER else len(GROUP_ORDER))}
    for name, f in walk(settings_class):
        meta = f.metadata
        title = meta.get("group")
        target = parser if title is None else groups[title]
        default = get(defaults, name)
        text = (helps or {}).get(name, meta.get("help", "")).replace("{unit}", unit).replace("%", "%%")
        kwargs = {"dest": name, "help": text, "metavar": meta.get("metavar") or name.split(".")[-1].upper()}
        if isinstance(default, bool):
            kwargs.update(action="store_false" if meta.get("inverted") else "store_true", default=default)
            kwargs.pop("metavar")
        elif meta.get("repeat"):
            kwargs.update(action="append", default=None)
        else:
            kind = _value_type(settings_class, name)
            parse = meta.get("parse") or kind
            kwargs.update(type=_argparse_type(parse), default=default, choices=meta.get("choices"))
            if meta.get("choices"):
                kwargs.pop("metavar")
            if name in required:
                kwargs.update(required=True, default=None)
        target.add_argument(flag_name(f, unit), **{k: v for k, v in kwargs.items() if v is not None or k == "default"})
    return groups


def settings_from_args(settings_class, args: argparse.Namespace):
    """The settings object the parsed flags describe (settings without a flag keep their defaults)."""
    from orchestrator.settings import put, walk

    settings = settings_class()
    for name, _ in walk(settings_class):
        if hasattr(args, name):
            put(settings, name, getattr(args, name))
    return settings
