"""One module per sub-command of cli.py."""
