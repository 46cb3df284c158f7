"""Shared body of sub-commands whose issue has not landed yet."""

import sys


def not_available(name: str, issue: str) -> int:
    print(f"peterrec {name}: not available yet (tracked in the {issue} issue)", file=sys.stderr)
    return 2
