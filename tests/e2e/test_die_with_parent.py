"""A test run killed outright (SIGKILL, as a CI timeout does) leaves no server behind: the tritonserver
and the ``bentoml serve`` its fixtures (and the benchmark harness) start die with it. Without that they
live on as orphans (parent PID 1), holding ports and CPU."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.processes import alive, descendants, group_members

pytestmark = [pytest.mark.triton, pytest.mark.bento, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]

# What a pytest process does for its session fixtures (tests/conftest.py): a Triton, then a Bento in
# front of it, both started from the main thread with die_with_parent; then it waits on the tests.
PYTEST_LIKE = """
import sys, time
from pathlib import Path

import yaml

from local_triton.server import TritonServer
from serving.launcher import BentoServer

repo, folder = Path(sys.argv[1]), Path(sys.argv[2])
triton = TritonServer(repo, log_path=folder / "triton.log", die_with_parent=True).start()
config = folder / "service.yaml"
config.write_text(yaml.safe_dump({
    "repository": str(repo),
    "triton": {"url": triton.grpc_url, "timeout_s": 3},
    "models": [{"name": "image_classifier", "task": "image-classification"}],
}))
bento = BentoServer(config, folder / "home", folder / "bento.log", die_with_parent=True).start()
(folder / "pids").write_text(f"{triton.pid} {bento.pid}")
time.sleep(600)
"""


def _family(leader: int) -> set[int]:
    """A server and everything it started, in its process group or in sessions of their own."""
    members = set(group_members(leader))
    for pid in list(members):
        members.update(descendants(pid))
    return members


def test_servers_die_with_a_test_run_killed_outright(model_repo, tmp_path):
    repo = tmp_path / "repository"
    shutil.copytree(model_repo / "image_classifier", repo / "image_classifier")
    parent = subprocess.Popen(
        [sys.executable, "-c", PYTEST_LIKE, str(repo), str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    family: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "pids").exists():
            assert parent.poll() is None, parent.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the servers were not up within 300 s"
            time.sleep(0.2)
        triton_pid, bento_pid = map(int, (tmp_path / "pids").read_text().split())
        family = _family(triton_pid) | _family(bento_pid)
        assert triton_pid in family and bento_pid in family and len(family) >= 4  # + a stub, a worker
        os.kill(parent.pid, signal.SIGKILL)  # no fixture teardown, no atexit: only the kernel acts
        parent.wait(30)
        deadline = time.monotonic() + 60
        while [pid for pid in family if alive(pid)] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [pid for pid in family if alive(pid)] == []
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()
        for pid in family:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_the_session_servers_are_started_to_die_with_the_run(triton_server, bento_server):
    assert triton_server.die_with_parent and bento_server.die_with_parent
