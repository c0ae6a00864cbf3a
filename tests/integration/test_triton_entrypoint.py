"""local_triton.entrypoint, the CPU Triton image's ENTRYPOINT, run here on the local set-up: it becomes
tritonserver (exec, same pid), with the environment TritonServer uses and the installation's backends,
so the image's arguments alone (those of NVIDIA's image) serve a repository."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from local_triton.entrypoint import command
from local_triton.server import Installation, free_port

pytestmark = pytest.mark.triton

ROOT = Path(__file__).resolve().parents[2]


def test_backend_directory_comes_first_so_a_given_one_wins():
    install = Installation(ROOT)
    argv = command(install, ["--model-repository=/models", "--backend-directory=/elsewhere"])
    assert argv[0] == str(install.binary)
    assert argv[1:] == [
        f"--backend-directory={install.backends}",
        "--model-repository=/models",
        "--backend-directory=/elsewhere",
    ]


def test_entrypoint_execs_tritonserver_that_serves_the_repository(model_repo, tmp_path):
    http, grpc, metrics = free_port(), free_port(), free_port()
    args = [
        f"--model-repository={model_repo}",
        "--model-control-mode=explicit",
        "--load-model=*",
        *(f"--{kind}-address=127.0.0.1" for kind in ("http", "grpc", "metrics")),
        f"--http-port={http}",
        f"--grpc-port={grpc}",
        f"--metrics-port={metrics}",
        "--exit-on-error=true",
    ]
    log = tmp_path / "tritonserver.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "local_triton.entrypoint", *args],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": "/nowhere"},  # dropped for the server, as in the image
        )
    try:
        deadline = time.monotonic() + 120
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                ready = False
            if ready:
                break
            time.sleep(0.2)
        assert ready, f"exit {proc.poll()}: {log.read_text(errors='replace')[-2000:]}"
        # The entry point replaced itself: the pid it was started with is tritonserver now.
        assert Path(f"/proc/{proc.pid}/exe").resolve() == Installation(ROOT).binary.resolve()
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
        expected = Installation(ROOT).environment()
        path = next(e for e in environ if e.startswith(b"PATH=")).decode()
        assert path == f"PATH={expected['PATH']}" and not any(e.startswith(b"PYTHONPATH=") for e in environ)
        models = httpx.post(f"http://127.0.0.1:{http}/v2/repository/index", json={}, timeout=10).json()
        assert {m["name"]: m["state"] for m in models} == {"image_classifier": "READY", "minilm": "READY"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
