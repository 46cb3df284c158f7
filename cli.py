"""peterrec-orchestra command line: one table from sub-command to the module that implements it.

Each module in commands/ defines HELP, add_arguments(parser) and run(args) -> exit code, and keeps
its heavy imports (torch, Ray) inside run() so that `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

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
    )
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
        command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except SystemExit as e:  # a command's user error (commands._common.user_errors) ends as a return code
        return e.code if isinstance(e.code, int) else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
