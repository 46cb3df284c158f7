"""`peterrec tune`: not implemented yet."""

from commands._unavailable import not_available

HELP = "(not available yet: [tune] issue)"


def add_arguments(parser):
    pass


def run(args):
    return not_available("tune", "[tune]")
