"""peterrec-orchestra command line: one table from sub-command to the module that implements it.

Each module in commands/ defines HELP, add_arguments(parser) and run(args) -> exit code, and keeps
its heavy imports (torch, Ray) inside run() so that `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

DEBUG_ENV = "PETERREC_DEBUG"
COMMANDS = {
    "synth": "commands.synth",
    "import": "commands.import_data",
    "pretrain": "commands.pretrain",
    "finetune": "commands.finetune",
    "tune": "commands.tune",
    "bundle": "commands.bundle",
    "predict": "commands.predict",
    "serve": "commands.serve",
    "tui": "commands.tui",
    "demo": "commands.demo",
    "reproduce": "commands.reproduce",
    "node": "commands.node",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' line breaks and shows a default wherever there is a meaningful one."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        default = action.default
        shown = not (default is None or default is False or default == argparse.SUPPRESS)
        if "%(default)" not in help_text and shown and action.option_strings:
            help_text += " (default: %(default)s)"
        return help_text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peterrec",
        description="Parameter-efficient transfer learning for recommendation (PeterRec): pretrain one "
        "backbone on item sequences, then fine-tune small patch sets for many tasks in parallel.",
        epilog=f"A mistake in the input ends a command with `error: ...` (file, line, field) and exit code 2; an "
        f"unexpected error with one `error: ...` line and exit code 1. --debug (or {DEBUG_ENV}=1) shows the "
        f"traceback of an unexpected error.",
    )
    parser.add_argument("--debug", action="store_true",
                        help=f"show the Python traceback of an unexpected error (also: {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=HelpFormatter,
        )
        module.add_arguments(command)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help=f"show the traceback of an unexpected error (also: {DEBUG_ENV}=1)")
        command.set_defaults(_run=module.run)
    return parser


def debugging(args: argparse.Namespace | None = None) -> bool:
    """--debug, or PETERREC_DEBUG set to anything but 0/empty: unexpected errors show their traceback."""
    return bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except SystemExit as e:  # a command's user error (commands._common.user_errors) ends as a return code
        return e.code if isinstance(e.code, int) else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the last guard: one line, no traceback unless asked for
        if debugging(args):
            raise
        from commands._common import user_error_text, user_error_types

        if isinstance(e, user_error_types()):
            print(f"error: {user_error_text(e)}", file=sys.stderr)
            return 2
        text = " ".join(str(e).split()) or "(no message)"
        print(f"error: {type(e).__name__}: {text[:2000]} (an unexpected error; run again with --debug, or "
              f"{DEBUG_ENV}=1, to see the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
