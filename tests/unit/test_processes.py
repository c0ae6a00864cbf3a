"""core.processes with real child processes (small Python scripts): stopping a whole family, a grandchild
in a session of its own included; dying with the parent; readiness with a deadline and the log's end in
the error; CPU time of a family."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from core import processes
from core.errors import MissingDependency, Unavailable
from core.processes import alive, descendants, free_port, group_members

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def _script(tmp_path: Path, name: str, body: str) -> Path:
    """A Python script in ``tmp_path`` that can import the project (``core``)."""
    path = tmp_path / name
    path.write_text(f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n" + textwrap.dedent(body))
    return path


def _pids_when_written(child: processes.Child, path: Path, count: int, timeout_s: float = 30.0) -> list[int]:
    """The ``count`` pids the child writes to ``path`` (one a line), once they are all there."""

    def written() -> bool:
        return path.exists() and len(path.read_text().split()) >= count

    child.wait_ready(written, timeout_s)
    return [int(pid) for pid in path.read_text().split()[:count]]


def _gone(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    """Those of ``pids`` still alive once they have had ``timeout_s`` to go."""
    deadline = time.monotonic() + timeout_s
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [pid for pid in pids if alive(pid)]


# A leader with a child in its own group and a grandchild that moved to a session of its own (as
# BentoML's workers do); it writes the three pids, then sleeps.
FAMILY = """
import os, signal, subprocess, sys, time
if len(sys.argv) > 2 and sys.argv[2] == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
same_group = subprocess.Popen(sleeper)
own_session = subprocess.Popen(sleeper, start_new_session=True)
with open(sys.argv[1], "w") as out:
    out.write(f"{os.getpid()} {same_group.pid} {own_session.pid}\\n")
time.sleep(120)
"""


def test_stop_ends_the_family_a_grandchild_in_its_own_session_included(tmp_path):
    script = _script(tmp_path, "family.py", FAMILY)
    child = processes.start("family", [PYTHON, script, tmp_path / "pids"], log_path=tmp_path / "family.log")
    leader, same_group, own_session = _pids_when_written(child, tmp_path / "pids", 3)
    assert leader == child.pid
    assert set(group_members(child.pid)) == {leader, same_group}  # the third one is in another session
    assert {same_group, own_session} <= set(descendants(child.pid))
    assert os.getsid(own_session) == own_session != os.getsid(leader)

    assert child.stop(grace_s=10) == -signal.SIGTERM
    assert _gone([leader, same_group, own_session], timeout_s=0) == []
    assert group_members(child.pid) == []


def test_stop_kills_what_ignores_sigterm_after_the_grace(tmp_path):
    script = _script(tmp_path, "family.py", FAMILY)
    argv = [PYTHON, script, tmp_path / "pids", "ignore-term"]
    child = processes.start("stubborn", argv, log_path=tmp_path / "stubborn.log")
    pids = _pids_when_written(child, tmp_path / "pids", 3)

    assert child.stop(grace_s=0.5) == -signal.SIGKILL
    assert _gone(pids, timeout_s=0) == []


def test_kill_ends_the_family_at_once(tmp_path):
    script = _script(tmp_path, "family.py", FAMILY)
    child = processes.start("family", [PYTHON, script, tmp_path / "pids"], log_path=tmp_path / "family.log")
    pids = _pids_when_written(child, tmp_path / "pids", 3)

    assert child.kill() == -signal.SIGKILL
    assert _gone(pids, timeout_s=0) == []


# A parent that starts a sleeping child through core.processes (die_with_parent as argv[3] says), writes
# the child's pid, then sleeps until it is killed.
PARENT = """
import time
from core import processes
child = processes.start(
    "child", [sys.executable, "-c", "import time; time.sleep(120)"], log_path=sys.argv[2],
    die_with_parent=sys.argv[3] == "yes",
)
with open(sys.argv[1], "w") as out:
    out.write(f"{child.pid}\\n")
time.sleep(120)
"""


@pytest.mark.parametrize("die_with_parent", [True, False])
def test_a_child_started_to_die_with_its_parent_goes_when_the_parent_is_killed(tmp_path, die_with_parent):
    script = _script(tmp_path, "parent.py", PARENT)
    argv = [PYTHON, script, tmp_path / "pid", tmp_path / "child.log", "yes" if die_with_parent else "no"]
    parent = processes.start("parent", argv, log_path=tmp_path / "parent.log")
    [grandchild] = _pids_when_written(parent, tmp_path / "pid", 1)
    try:
        os.kill(parent.pid, signal.SIGKILL)  # no chance to clean up
        parent.popen.wait(10)
        if die_with_parent:
            assert _gone([grandchild]) == []
        else:  # the control: without it the child outlives its parent
            assert alive(grandchild) and _gone([grandchild], timeout_s=1) == [grandchild]
    finally:
        if alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)


# A process started by someone else that asks, itself, to die with its parent (BentoML's worker does, in
# ModelService.__init__); it writes its pid once the request is in place.
SELF = """
import os, time
from core.processes import die_with_parent
die_with_parent()
with open(sys.argv[1], "w") as out:
    out.write(f"{os.getpid()}\\n")
time.sleep(120)
"""

# Its parent: starts it in a session of its own (so the group signal does not reach it), then sleeps.
SELF_PARENT = """
import subprocess, time
subprocess.Popen([sys.executable, sys.argv[2], sys.argv[1]], start_new_session=True)
time.sleep(120)
"""


def test_die_with_parent_ends_the_calling_process_with_its_parent(tmp_path):
    worker = _script(tmp_path, "worker.py", SELF)
    parent_script = _script(tmp_path, "parent.py", SELF_PARENT)
    parent = processes.start(
        "parent", [PYTHON, parent_script, tmp_path / "pid", worker], log_path=tmp_path / "parent.log"
    )
    [pid] = _pids_when_written(parent, tmp_path / "pid", 1)
    try:
        assert os.getsid(pid) != os.getsid(parent.pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.popen.wait(10)
        assert _gone([pid]) == []
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


# A worker whose parent is killed before it asks: it waits until it is an orphan, then asks, naming the
# parent it started with, and must end at once instead of writing "survived".
LATE = """
import os, time
from core.processes import die_with_parent
started_by = os.getppid()
with open(sys.argv[1], "w") as out:
    out.write(f"{os.getpid()}\\n")
deadline = time.monotonic() + 60
while os.getppid() == started_by and time.monotonic() < deadline:
    time.sleep(0.02)
die_with_parent(parent=started_by)
with open(sys.argv[1], "a") as out:
    out.write("survived\\n")
time.sleep(120)
"""


def test_die_with_parent_when_the_parent_is_already_gone(tmp_path):
    worker = _script(tmp_path, "late.py", LATE)
    parent_script = _script(tmp_path, "parent.py", SELF_PARENT)
    parent = processes.start(
        "parent", [PYTHON, parent_script, tmp_path / "out", worker], log_path=tmp_path / "parent.log"
    )
    [pid] = _pids_when_written(parent, tmp_path / "out", 1)
    try:
        os.kill(parent.pid, signal.SIGKILL)
        parent.popen.wait(10)
        assert _gone([pid], timeout_s=30) == []
        assert "survived" not in (tmp_path / "out").read_text()
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def _unshare_argv() -> list[str] | None:
    """``unshare`` into new user and PID namespaces (the first process there is PID 1, as in a
    container), or None when this machine does not allow it."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    argv = [unshare, "--user", "--map-root-user", "--pid", "--fork", "--mount-proc"]
    done = subprocess.run([*argv, "true"], capture_output=True, timeout=30)
    return argv if done.returncode == 0 else None


def test_die_with_parent_keeps_a_worker_whose_parent_is_pid_1(tmp_path):
    """In the bento's container ``bentoml serve`` is PID 1, so its worker's parent is PID 1: that is no
    sign that the parent has gone, and the worker must not end itself."""
    argv = _unshare_argv()
    if argv is None:
        pytest.skip("unshare into a new PID namespace is not allowed on this machine")
    worker = _script(tmp_path, "worker.py", SELF)
    run_worker = f"subprocess.run([{PYTHON!r}, {str(worker)!r}, sys.argv[1]])"
    init = f"import subprocess, sys; sys.exit({run_worker}.returncode)"
    # PID 1 starts the worker and waits for it; the worker writes its pid, then sleeps until killed.
    namespace = subprocess.Popen([*argv, PYTHON, "-c", init, tmp_path / "pid"], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "pid").exists() and namespace.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        # The worker writes its pid after die_with_parent(): one that signalled itself never does.
        assert (tmp_path / "pid").exists(), f"the worker ended itself (status {namespace.poll()})"
        assert (tmp_path / "pid").read_text().strip() == "2"  # its pid there; its parent is PID 1
        assert namespace.poll() is None
    finally:
        with contextlib.suppress(ProcessLookupError):  # PID 1's end takes the whole namespace with it
            os.killpg(namespace.pid, signal.SIGKILL)
        namespace.wait(10)


# ---- readiness ------------------------------------------------------------------------------------


def test_wait_ready_fails_at_once_when_the_child_exits_with_the_log_tail(tmp_path):
    lines = "; ".join(f"print('line {n}')" for n in range(30))
    child = processes.start(
        "quitter", [PYTHON, "-c", f"{lines}; raise SystemExit(3)"], log_path=tmp_path / "quitter.log"
    )
    with pytest.raises(Unavailable) as caught:
        child.wait_ready(lambda: False, timeout_s=300)
    message = str(caught.value)
    assert message.startswith(
        f"quitter exited with status 3; its log ({tmp_path / 'quitter.log'}) ends with:"
    )
    assert message.splitlines()[1:] == [f"line {n}" for n in range(10, 30)]  # the last 20 lines


def test_wait_ready_has_a_deadline_and_says_what_the_probe_got(tmp_path):
    port = free_port()  # nothing listens there
    child = processes.start(
        "sleeper", [PYTHON, "-c", "print('up', flush=True); import time; time.sleep(120)"],
        log_path=tmp_path / "sleeper.log",
    )  # fmt: skip
    try:
        with pytest.raises(Unavailable) as caught:
            child.wait_ready(f"http://127.0.0.1:{port}/healthz", timeout_s=1)
        first, *tail = str(caught.value).splitlines()
        assert first.startswith(f"sleeper was not ready after 1s (GET http://127.0.0.1:{port}/healthz: ")
        assert "refused" in first and first.endswith("ends with:")
        assert tail == ["up"]
        assert child.alive()  # waiting does not stop it: the caller decides
    finally:
        child.stop()


def test_wait_ready_on_an_http_server_and_a_log_appended_to(tmp_path):
    log_path = tmp_path / "http.log"
    log_path.write_text("an earlier run\n")
    port = free_port()
    argv = [PYTHON, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    child = processes.start("http", argv, log_path=log_path, cwd=tmp_path)
    try:
        assert child.wait_ready(f"http://127.0.0.1:{port}/", timeout_s=60) >= 0
    finally:
        assert child.stop() == -signal.SIGTERM
    assert log_path.read_text().startswith("an earlier run\n")
    assert "an earlier run" not in child.log_text()


def test_start_names_a_program_that_cannot_run(tmp_path):
    missing = tmp_path / "no-such-binary"
    with pytest.raises(MissingDependency) as caught:
        processes.start("thing", [missing], log_path=tmp_path / "thing.log", hint="run `make setup`")
    assert str(caught.value) == f"thing: cannot run {missing}: No such file or directory; run `make setup`"


# ---- CPU time -------------------------------------------------------------------------------------

# Burns 0.25 s of CPU, then writes its pid and sleeps; the leader ("spawn") first starts a copy of itself
# in a session of its own.
BURN = """
import os, subprocess, time
if sys.argv[2:] == ["spawn"]:
    subprocess.Popen([sys.executable, __file__, sys.argv[1]], start_new_session=True)
while time.process_time() < 0.25:
    pass
with open(sys.argv[1], "a") as out:
    out.write(f"{os.getpid()}\\n")
time.sleep(120)
"""


def test_cpu_times_cover_the_family(tmp_path):
    script = _script(tmp_path, "burn.py", BURN)
    argv = [PYTHON, script, tmp_path / "pids", "spawn"]
    child = processes.start("burner", argv, log_path=tmp_path / "burn.log")
    try:
        pids = _pids_when_written(child, tmp_path / "pids", 2, timeout_s=60)
        times = child.cpu_times()
        assert set(pids) <= set(times) and child.pid in times
        # /proc counts whole clock ticks (10 ms) by sampling: what it reports may trail process_time().
        assert all(times[pid] >= 0.2 for pid in pids), (pids, times)
    finally:
        child.stop()
    assert child.cpu_times() == {}
