"""What the command lines share (``python -m converters``, ``python -m benchmarks``): the project's
version (``--version``), shell completion (the ``completion`` command, with shtab), one document on
stdout (``--json``, or the human form), logs on stderr, and a progress display for long runs.

The progress display (``progress``) draws on stderr only when both stdout and stderr are terminals:
piped, redirected or in CI, nothing but the log lines and the result is written. While it shows, log
lines print above it, and its status line follows the latest one (what the run is doing now).

Imports of rich and shtab stay inside the functions: ``--help`` stays fast, and the bento, which ships
``core/``, never needs them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHELLS = ("bash", "zsh", "tcsh")


def project_version() -> str:
    """The version in pyproject.toml (the repository is run from its root, not installed), else the
    installed distribution's."""
    pyproject = ROOT / "pyproject.toml"
    if pyproject.is_file():
        import tomllib

        return tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"]
    from importlib import metadata

    try:
        return metadata.version("modelpack")
    except metadata.PackageNotFoundError:
        return "unknown"


def add_version_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--version", action="version", version=f"modelpack {project_version()}", help="print the version"
    )


def add_json_flag(parser: argparse.ArgumentParser, *, default_json: bool = False) -> None:
    """``--json``: one JSON document on stdout (logs stay on stderr). ``default_json``: the command's
    output is that document already (kept for the scripts that read it); the flag says so explicitly."""
    parser.add_argument(
        "--json",
        action="store_true",
        default=default_json,
        help="one JSON document on stdout (the default for this command)"
        if default_json
        else "one JSON document on stdout instead of the human form",
    )


def emit(document, *, as_json: bool, human: Callable[[], str] | None = None) -> None:
    """The command's one result on stdout: ``document`` as JSON, or its human form."""
    if as_json or human is None:
        print(json.dumps(document, indent=2, default=str))
    else:
        print(human())
    sys.stdout.flush()


# ---- shell completion -------------------------------------------------------------------------------


def add_completion_command(subparsers, parser: argparse.ArgumentParser, command: str) -> None:
    """``completion bash|zsh|tcsh [--command NAME]``: the shell's completion script for ``parser``, bound
    to the command name NAME (a shell function or alias running ``python -m ...``; a shell completes
    command names, and ``python -m pkg`` is three words)."""
    completion = subparsers.add_parser(
        "completion",
        help="print the shell completion script (bash, zsh, tcsh)",
        description=f"Print the completion script for a shell. A shell completes a command name, so "
        f"bind one to this command line first, e.g. `{command}() {{ .venv/bin/python -m "
        f'{parser.prog.split()[-1]} "$@"; }}` in bash or zsh, then `source <(... completion bash)` '
        f"(zsh: `completion zsh`).",
    )
    completion.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    completion.add_argument(
        "--command",
        dest="completion_command",  # not `command`: the sub-command's own dest in both CLIs
        default=command,
        metavar="NAME",
        help="the command name to complete (default %(default)s)",
    )
    completion.set_defaults(func=lambda args: print_completion(parser, args.shell, args.completion_command))


def print_completion(parser: argparse.ArgumentParser, shell: str, command: str) -> int:
    import shtab

    named = copy.copy(parser)
    named.prog = command
    print(shtab.complete(named, shell=shell))
    return 0


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-command parsers of ``parser`` by name (what --help must list)."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


# ---- progress ---------------------------------------------------------------------------------------


def interactive() -> bool:
    """Both stdout and stderr are terminals: a person is watching, nothing reads the output."""
    return sys.stdout.isatty() and sys.stderr.isatty()


class Progress:
    """What a long run reports while it runs: ``advance()`` on a bar with a known ``total``, ``status()``
    for the line beside it. A no-op unless the display is shown."""

    def __init__(self, bar=None, task=None) -> None:
        self._bar = bar
        self._task = task

    def advance(self, amount: float = 1.0) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, amount)

    def status(self, text: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, status=text.splitlines()[0][:100] if text else "")

    def set_completed(self, amount: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=amount)


class _StatusFromLogs(logging.Handler):
    """Feeds each log record's message to the status line (the latest thing the run said)."""

    def __init__(self, progress: Progress) -> None:
        super().__init__(logging.INFO)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.progress.status(record.getMessage())
        except Exception:  # noqa: BLE001 - the display must never break the run
            self.handleError(record)


@contextlib.contextmanager
def progress(
    description: str, *, total: float | None = None, by_time: bool = False, enabled: bool | None = None
) -> Iterator[Progress]:
    """A spinner, ``description``, a bar when ``total`` is known (``by_time``: the total is seconds and
    the bar follows the clock), the elapsed time and the latest log message, on stderr; nothing at all
    unless ``interactive()`` (or ``enabled``)."""
    if not (interactive() if enabled is None else enabled):
        yield Progress()
        return
    from rich.console import Console
    from rich.progress import BarColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    columns = [SpinnerColumn(), TextColumn("[bold]{task.description}")]
    if total is not None:
        columns += [BarColumn(), TextColumn("{task.percentage:>3.0f}%")]
    columns += [TimeElapsedColumn(), TextColumn("{task.fields[status]}")]
    bar = RichProgress(*columns, console=Console(stderr=True), transient=True, redirect_stderr=True)
    root = logging.getLogger()
    # Log lines print above the display: the handlers that write to stderr write through its proxy.
    streams = {
        h: h.stream for h in root.handlers if type(h) is logging.StreamHandler and h.stream is sys.stderr
    }
    with bar:
        task = bar.add_task(description, total=total, status="")
        shown = Progress(bar, task)
        for handler in streams:
            handler.setStream(sys.stderr)  # rich's proxy while the display is live
        status = _StatusFromLogs(shown)
        root.addHandler(status)
        started = time.monotonic()
        ticking = by_time and total is not None

        if ticking:
            import threading

            done = threading.Event()

            def tick() -> None:
                while not done.wait(0.5):
                    shown.set_completed(min(time.monotonic() - started, total))

            ticker = threading.Thread(target=tick, name="progress-clock", daemon=True)
            ticker.start()
        try:
            yield shown
        finally:
            if ticking:
                done.set()
                ticker.join()
            root.removeHandler(status)
            for handler, stream in streams.items():
                handler.setStream(stream)
