"""Subcommands of `python -m converters` that belong to the converters (see converters/cli.py)."""
