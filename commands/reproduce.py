"""`peterrec reproduce`: not implemented yet."""

from commands._unavailable import not_available

HELP = "(not available yet: [reproduce] issue)"


def add_arguments(parser):
    pass


def run(args):
    return not_available("reproduce", "[reproduce]")
