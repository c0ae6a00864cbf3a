"""`python -m converters`: the command line.

Each command lives in its own module, which exposes ``register(subparsers)``: it adds its parser and
sets ``func`` (called with the parsed namespace, returns an exit code or None for 0). To add a
command, add its module to ``COMMAND_MODULES``. Heavy imports (torch, onnx) stay inside the
command functions so that ``--help`` is fast. Every command that reports prints one document on stdout
(JSON with ``--json``; the commands that change the repository print JSON anyway), logs go to stderr;
``--version``, and ``completion bash|zsh|tcsh`` (core/cli.py).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from core.cli import add_completion_command, add_version_flag
from core.errors import ToolkitError

log = logging.getLogger(__name__)

# Modules that each register one or more subcommands, in --help order.
COMMAND_MODULES: list[str] = ["converters.commands.convert", "converters.commands.manage", "local_triton.cli"]
# The command name shell completion binds to (a function or alias running `python -m converters`).
COMPLETION_COMMAND = "modelpack"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m converters",
        description="Convert checkpoints to validated Triton model repository entries, and serve them.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_version_flag(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    add_completion_command(subparsers, parser, COMPLETION_COMMAND)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        code = args.func(args)
    except ToolkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0 if code is None else int(code)
