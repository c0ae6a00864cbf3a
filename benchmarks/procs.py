"""Processes the benchmarks start, and the guarantee that every one of them is stopped.

Each child runs in a session of its own (``start_new_session=True``), so stopping it signals its
whole process group: a server's workers and helpers go with it. ``ProcessSet`` is the context manager
a run holds: on a normal exit, an exception or Ctrl-C/SIGTERM it stops every group it started,
newest first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from core.errors import Unavailable
from local_triton.server import group_members

log = logging.getLogger(__name__)


class ManagedProcess:
    """One child process group, its log file, and a way to stop it for good."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: dict | None = None,
        cwd: str | os.PathLike | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                start_new_session=True,
                pass_fds=tuple(pass_fds),
            )
        self.pid = self.popen.pid
        log.debug("started %s (pid %d): %s", name, self.pid, " ".join(self.argv))

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM to the group, SIGKILL after ``timeout_s``; returns the exit code."""
        for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
            try:
                self.popen.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) did not stop on %s", self.name, self.pid, sig.name)
        # The leader may be gone while members of its group live on: make sure none is left, and
        # wait until the kernel has taken them down (orphans are reaped by init, not by us).
        deadline = time.monotonic() + 5.0
        while group_members(self.pid) and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            time.sleep(0.02)
        if group_members(self.pid):
            log.error(
                "%s: processes %s of group %d survived SIGKILL", self.name, group_members(self.pid), self.pid
            )
        return self.popen.returncode


class ProcessSet(contextlib.AbstractContextManager):
    """Owns every process a run starts; stops them all on exit, error, Ctrl-C or SIGTERM."""

    def __init__(self) -> None:
        self._procs: list[ManagedProcess] = []
        # Every process group this set started or adopted, for the record (name, pid = group id).
        self.started: list[dict] = []
        self._stack = contextlib.ExitStack()
        self._old_sigterm = None

    def __enter__(self) -> ProcessSet:
        # SIGTERM becomes KeyboardInterrupt, so the same unwinding path stops the children.
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            self._old_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
        return self

    def start(self, name: str, argv: Sequence[str], **kwargs) -> ManagedProcess:
        proc = ManagedProcess(name, argv, **kwargs)
        self._procs.append(proc)
        self.started.append({"name": name, "pid": proc.pid})
        return proc

    def enter(self, context, name: str | None = None):
        """Adopt another context manager (e.g. a TritonServer) so it is closed with the rest; its
        ``pid`` (a process group leader) is recorded under ``name``."""
        value = self._stack.enter_context(context)
        if name is not None and getattr(value, "pid", None):
            self.started.append({"name": name, "pid": value.pid})
        return value

    def stop(self, proc: ManagedProcess) -> None:
        proc.stop()
        if proc in self._procs:
            self._procs.remove(proc)

    def close(self) -> None:
        try:
            while self._procs:
                self._procs.pop().stop()
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


def wait_http_ok(
    url: str,
    *,
    proc: ManagedProcess | None = None,
    timeout_s: float = 60.0,
    ok: Callable[[int], bool] = lambda status: status == 200,
) -> float:
    """Poll ``url`` until it answers with an accepted status; returns the seconds waited.
    Raises Unavailable with the process log tail when the process dies or time runs out."""
    start = time.monotonic()
    last_error = "no answer yet"
    while time.monotonic() - start < timeout_s:
        if proc is not None and not proc.alive():
            raise Unavailable(
                f"{proc.name} exited with code {proc.popen.returncode} before {url} was ready; "
                f"its log ({proc.log_path}) ends with:\n{proc.log_tail()}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if ok(response.status):
                    return time.monotonic() - start
                last_error = f"HTTP {response.status}"
        except urllib.error.HTTPError as err:
            if ok(err.code):
                return time.monotonic() - start
            last_error = f"HTTP {err.code}"
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as err:
            last_error = str(err)
        time.sleep(0.2)
    name = proc.name if proc is not None else url
    tail = f"; its log ({proc.log_path}) ends with:\n{proc.log_tail()}" if proc is not None else ""
    raise Unavailable(f"{name}: {url} not ready after {timeout_s:.0f} s ({last_error}){tail}")
