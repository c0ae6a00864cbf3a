"""Child processes, handled in one place: the Triton server, ``bentoml serve``, the benchmarks' servers.

- ``start()`` runs a command in a session of its own, so its process group holds the helpers it starts
  (one signal reaches them all), its output appended to a log file; optionally Linux ends it when the
  starting thread dies (``die_with_parent``), so a parent killed outright leaves no server behind;
- ``Child.wait_ready()`` polls a probe (a callable, or an HTTP URL that must answer 200) until a deadline,
  failing at once when the child exits, the end of its log in the error;
- ``Child.stop()`` ends the whole family: SIGTERM to the group, SIGKILL after a grace to whatever is left,
  descendants that moved to sessions of their own included (BentoML's workers do), collected before
  any signal; it returns once none of the family runs;
- ``Child.cpu_times()`` is the CPU time of that family, per process;
- ``die_with_parent()`` asks Linux to end the *calling* process when its parent dies, for processes
  that someone else starts (BentoML's workers);
- ``started()`` lists every child this process started (name, pid, log, where its output begins), so
  that a failure can show the logs of the servers involved (the tests do).

Process trees, CPU times and zombie checks come from psutil (it is in the bento's requirements too).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import psutil

from core.errors import InvalidArgument, MissingDependency, Unavailable

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
POLL_S = 0.05  # between two looks at a family that is stopping
READY_POLL_S = 0.1  # between two readiness probes
KILL_WAIT_S = 10.0  # what SIGKILLed processes may take to disappear before they are reported
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

# Every child started by this process, oldest first: (name, pid, log path, offset of its output).
_STARTED: list[tuple[str, int, Path, int]] = []


def started() -> list[tuple[str, int, Path, int]]:
    """(name, pid, log path, offset where its output begins in that log) of every child this process
    started with ``start()``, oldest first, running or not."""
    return list(_STARTED)


# ---- ports ------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def check_port_free(port: int, field: str) -> int:
    """Raise InvalidArgument naming the flag when 127.0.0.1:port is taken or not a port."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise InvalidArgument(
            f"{field}: {port!r} is not a TCP port; give 1-65535, or 0 for a free one", field=field
        )
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise InvalidArgument(
                    f"{field}: {HOST}:{port} is already in use; pick another port (0 picks a free one) "
                    "or stop what listens there",
                    field=field,
                ) from None
            raise InvalidArgument(
                f"{field}: cannot bind {HOST}:{port}: {err.strerror}", field=field
            ) from None
    return port


# ---- looking at processes ---------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """Running: neither gone nor a zombie waiting for its parent to reap it."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (its children, theirs, ...), whatever session they moved to."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def group_members(pgid: int) -> list[int]:
    """The live processes (zombies excepted) of process group ``pgid``; empty once none is left."""
    members = []
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) == pgid and alive(pid):
                members.append(pid)
        except OSError:  # gone since psutil.pids()
            continue
    return members


def cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    """User + system CPU seconds used so far by each of ``pids`` that is still there, by pid."""
    found = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        found[pid] = times.user + times.system
    return found


def _processes(pids: Iterable[int]) -> list[psutil.Process]:
    """psutil handles on those of ``pids`` that are still there."""
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            found.append(psutil.Process(pid))
    return found


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _running(proc: psutil.Process) -> bool:
    """Like ``alive()``, for a process seen earlier: False as well when its pid now names another one."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# ---- dying with the parent --------------------------------------------------------------------------


@functools.cache
def _prctl() -> Callable[..., int]:
    """libc's prctl, resolved once, in the parent: a child between fork and exec must not dlopen
    (another thread of the parent may have held the loader's lock at the fork)."""
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl


def die_with_parent(sig: int = signal.SIGTERM, *, parent: int | None = None) -> None:
    """Have Linux send ``sig`` to this process when its parent dies (PR_SET_PDEATHSIG). BentoML runs
    its workers in sessions of their own, so killing ``bentoml serve`` outright (SIGKILL) would otherwise
    leave a worker behind, holding the port and the Triton channel.

    The parent is the one this process has when it calls (or ``parent``, when the caller knows it): if
    that one is gone by the time the request is in place, ``sig`` is sent at once. Having PID 1 as the
    parent is no sign of that: in a container ``bentoml serve`` is PID 1. "The parent dies" means the
    parent *thread* that started this process ends. Elsewhere than on Linux this does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    expected = os.getppid() if parent is None else parent
    if _prctl()(PR_SET_PDEATHSIG, int(sig)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl(PR_SET_PDEATHSIG, {sig}): {os.strerror(code)}")
    if os.getppid() != expected:
        os.kill(os.getpid(), sig)


def _die_with_parent_hook() -> Callable[[], None]:
    """A ``preexec_fn`` (it runs in the child between fork and exec) that makes the child die with the
    thread starting it, the parent's pid taken now, before the fork."""
    _prctl()
    parent = os.getpid()
    return lambda: die_with_parent(signal.SIGTERM, parent=parent)


# ---- a child and its family -------------------------------------------------------------------------


class HttpProbe:
    """A readiness probe: does ``GET url`` answer 200 within ``timeout_s``? ``last`` says what the latest
    try got, for the error when the deadline passes. No proxy: the servers probed are local."""

    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.last = "no answer yet"

    def __call__(self) -> bool:
        try:
            with _direct_opener().open(self.url, timeout=self.timeout_s) as reply:
                self.last = f"GET {self.url}: HTTP {reply.status}"
                return reply.status == 200
        except urllib.error.HTTPError as err:
            self.last = f"GET {self.url}: HTTP {err.code}"
        except (urllib.error.URLError, OSError) as err:
            self.last = f"GET {self.url}: {getattr(err, 'reason', None) or err}"
        return False


@functools.cache
def _direct_opener() -> urllib.request.OpenerDirector:
    """urllib without the proxies the environment may name."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def exit_status(returncode: int | None) -> str:
    """``exited with status 1``, or ``was killed by SIGKILL`` for a negative return code."""
    if returncode is not None and returncode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


class Child:
    """A process started by ``start()``, leader of its own process group, and its log file.

    Its *family* is the leader, every process of its group, and every descendant of those, also the ones
    that moved to sessions of their own.
    """

    def __init__(self, name: str, argv: list[str], popen: subprocess.Popen, log_path: Path, log_offset: int):
        self.name = name
        self.argv = argv
        self.popen = popen
        self.log_path = log_path
        self.log_offset = log_offset  # where this run's output starts in an appended log

    @property
    def pid(self) -> int:
        """The leader's pid, which is also the group's id."""
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    # ---- the family ----

    def family(self) -> dict[int, psutil.Process]:
        """The family as it is now, by pid (zombies included: they hold their pid until reaped)."""
        roots = group_members(self.pid)
        if self.popen.poll() is None:  # once reaped, the leader's pid may name someone else
            roots.insert(0, self.pid)
        found: dict[int, psutil.Process] = {}
        for pid in roots:
            with contextlib.suppress(psutil.Error):
                proc = found.setdefault(pid, psutil.Process(pid))
                for child in proc.children(recursive=True):
                    found.setdefault(child.pid, child)
        return found

    def cpu_times(self) -> dict[int, float]:
        """CPU seconds (user + system) used so far by each live process of the family, by pid."""
        return cpu_seconds(pid for pid, proc in self.family().items() if _running(proc))

    # ---- the log ----

    def log_text(self) -> str:
        """What the child wrote to its log (since it was started)."""
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(self.log_offset)
                return handle.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def explain(self, what: str) -> str:
        """``NAME WHAT; its log (PATH) ends with:`` and the last lines of that log."""
        tail = self.log_tail()
        return f"{self.name} {what}; its log ({self.log_path}) " + (
            f"ends with:\n{tail}" if tail else "is empty"
        )

    # ---- readiness ----

    def wait_ready(
        self,
        probe: Callable[[], bool] | str,
        timeout_s: float,
        *,
        explain: Callable[[str], str] | None = None,
    ) -> float:
        """Poll ``probe`` (a callable that says whether the child is ready, each call bounded in time,
        or an HTTP URL that must answer 200) until it says yes; return the seconds waited. Raise
        Unavailable at once when the child exits, or after ``timeout_s``, with ``explain(what)`` as the
        message (by default: the name, what happened and the end of the log)."""
        check = HttpProbe(probe) if isinstance(probe, str) else probe
        explain = explain or self.explain
        started = time.monotonic()
        deadline = started + timeout_s
        while True:
            if self.popen.poll() is not None:
                raise Unavailable(explain(exit_status(self.popen.returncode)))
            if check():
                return time.monotonic() - started
            now = time.monotonic()
            if now >= deadline:
                last = getattr(check, "last", None)
                what = f"was not ready after {timeout_s:.0f}s" + (f" ({last})" if last else "")
                raise Unavailable(explain(what))
            time.sleep(min(READY_POLL_S, deadline - now))

    # ---- ending ----

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM to the group; once the leader has exited, SIGTERM to what is left of the family outside
        the group too (nobody else will stop it); SIGKILL to whatever still runs after ``grace_s``.
        Returns the leader's exit status once none of the family runs. The family is collected before
        any signal: a descendant in a session of its own is found through its parent only while that
        parent lives."""
        family = self.family()
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(max(0.0, deadline - time.monotonic()))
        for pid, proc in self.family().items():  # anything started while it was stopping
            family.setdefault(pid, proc)
        if self.popen.poll() is not None:
            for proc in family.values():
                if _running(proc) and _pgid(proc.pid) != self.pid:
                    with contextlib.suppress(psutil.Error):
                        proc.terminate()
        left = _wait_gone(family.values(), deadline)
        if left or self.popen.poll() is None:
            log.warning(
                "%s (pid %d) not stopped %.0f s after SIGTERM: killing %s",
                self.name,
                self.pid,
                grace_s,
                sorted({self.pid, *(p.pid for p in left)}),
            )
            return self.kill(family)
        return self.popen.returncode

    def kill(self, family: dict[int, psutil.Process] | None = None) -> int | None:
        """SIGKILL the whole family at once (as a crash would); return once none of it runs."""
        family = {**self.family(), **(family or {})}
        self._signal_group(signal.SIGKILL)
        for proc in family.values():
            with contextlib.suppress(psutil.Error):  # gone, or its pid reused: not ours to kill
                proc.kill()
        deadline = time.monotonic() + KILL_WAIT_S
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(KILL_WAIT_S)
        left = _wait_gone([*family.values(), *_processes(group_members(self.pid))], deadline)
        if left:
            log.error("%s: processes %s survived SIGKILL", self.name, sorted(p.pid for p in left))
        return self.popen.returncode

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)


def _wait_gone(procs: Iterable[psutil.Process], deadline: float) -> list[psutil.Process]:
    """Wait until none of ``procs`` runs or the deadline passes; return those still running."""
    left = list(procs)
    while True:
        left = [proc for proc in left if _running(proc)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(POLL_S)


def start(
    name: str,
    argv: Sequence[str],
    *,
    log_path: str | os.PathLike,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    pass_fds: Sequence[int] = (),
    die_with_parent: bool = False,
    hint: str | None = None,
) -> Child:
    """Run ``argv`` as ``name`` in a session of its own, stdin from /dev/null, stdout and stderr appended
    to ``log_path``. With ``die_with_parent`` Linux SIGTERMs it when the thread calling this ends (so
    start it from a thread that lives as long as it should). MissingDependency (with ``hint``, the way to
    get the program) when it cannot be run."""
    argv = [str(arg) for arg in argv]
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    preexec = _die_with_parent_hook() if die_with_parent else None
    with open(log_path, "ab") as log_file:
        offset = log_file.tell()
        try:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
                pass_fds=tuple(pass_fds),
                preexec_fn=preexec,
            )
        except OSError as err:  # not there, not executable, or no such cwd
            where = f" in {cwd}" if cwd is not None else ""
            raise MissingDependency(
                f"{name}: cannot run {argv[0]}{where}: {err.strerror}" + (f"; {hint}" if hint else "")
            ) from err
    log.debug("started %s (pid %d): %s", name, popen.pid, " ".join(argv))
    _STARTED.append((name, popen.pid, log_path, offset))
    return Child(name, argv, popen, log_path, offset)
