"""`peterrec synth`: not implemented yet."""

from commands._unavailable import not_available

HELP = "(not available yet: [data] issue)"


def add_arguments(parser):
    pass


def run(args):
    return not_available("synth", "[data]")
