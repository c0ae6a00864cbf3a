"""The guarantee that every process a benchmark run starts is stopped.

``ProcessSet`` is the context manager a run holds: on a normal exit, an exception or Ctrl-C/SIGTERM it
stops everything it started or adopted, newest first. Starting, waiting and stopping one process (its
whole family, in a session of its own) is ``core.processes``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Sequence

from core import processes

log = logging.getLogger(__name__)


class ProcessSet(contextlib.AbstractContextManager):
    """Owns every process a run starts; stops them all on exit, error, Ctrl-C or SIGTERM."""

    def __init__(self) -> None:
        self._children: list[processes.Child] = []
        # Every process group this set started or adopted, for the record (name, pid = group id).
        self.started: list[dict] = []
        self._stack = contextlib.ExitStack()
        self._old_sigterm = None

    def __enter__(self) -> ProcessSet:
        # SIGTERM becomes KeyboardInterrupt, so the same unwinding path stops the children.
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            self._old_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
        return self

    def start(self, name: str, argv: Sequence[str], **kwargs) -> processes.Child:
        """``core.processes.start(name, argv, **kwargs)``, stopped with the set."""
        child = processes.start(name, argv, **kwargs)
        self._children.append(child)
        self.started.append({"name": name, "pid": child.pid})
        return child

    def enter(self, context, name: str | None = None):
        """Adopt another context manager (e.g. a TritonServer) so it is closed with the rest; its
        ``pid`` (a process group leader) is recorded under ``name``."""
        value = self._stack.enter_context(context)
        if name is not None and getattr(value, "pid", None):
            self.started.append({"name": name, "pid": value.pid})
        return value

    def stop(self, child: processes.Child) -> None:
        child.stop()
        if child in self._children:
            self._children.remove(child)

    def close(self) -> None:
        try:
            while self._children:
                self._children.pop().stop()
        finally:
            self._stack.close()

    def __exit__(self, *exc) -> None:
        try:
            self.close()
        finally:
            if self._old_sigterm is not None:
                signal.signal(signal.SIGTERM, self._old_sigterm)
                self._old_sigterm = None


def _raise_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt(f"signal {signum}")
