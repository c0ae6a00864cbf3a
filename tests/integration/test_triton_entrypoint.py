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

from core.repository import Repository
from local_triton.entrypoint import backend_config_environment, command
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


def test_backend_configs_of_onnxruntime_go_to_the_environment():
    args = [
        "--backend-config=onnxruntime,intra_op_thread_count=4",
        "--backend-config",
        "onnxruntime,inter_op_thread_count=1",
        "--backend-config=onnxruntime,enable-global-threadpool=1",
        "--backend-config=python,intra_op_thread_count=9",
    ]
    assert backend_config_environment(args) == {
        "MODELPACK_ORT_INTRA_OP_THREADS": "4",
        "MODELPACK_ORT_INTER_OP_THREADS": "1",
    }


THREADS_PROBE = """
import json, os, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import model
print(json.dumps({"limit": model.cpu_limit(sys.argv[3]), "defaults": model.backend_thread_defaults(
    json.loads(sys.argv[4]), sys.argv[3]), "cores": len(os.sched_getaffinity(0))}))
"""


@pytest.mark.parametrize(
    ("files", "environ", "limit"),
    [
        ({"cpu.max": "150000 100000\n"}, {}, 2),  # cgroup v2: 1.5 CPUs -> 2 threads
        ({"cpu.max": "max 100000\n"}, {}, None),  # no quota: ONNX Runtime's default
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, {}, 1),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, {}, None),
        ({"cpu.max": "100000 100000\n"}, {"MODELPACK_ORT_INTRA_OP_THREADS": "5"}, 1),  # the flag wins
    ],
)
def test_the_backend_sizes_its_threads_from_the_flags_else_the_cpu_limit(tmp_path, files, environ, limit):
    """The backend's own functions, run in the backend's venv beside Triton's real
    triton_python_backend_utils."""
    import json

    install = Installation(ROOT)
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    backend = ROOT / "local_triton" / "backends" / "onnxruntime"
    probe = subprocess.run(
        [
            str(install.venv / "bin" / "python"),
            "-c",
            THREADS_PROBE,
            str(backend),
            str(install.backends / "python"),
            str(tmp_path),
            json.dumps(environ),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = json.loads(probe.stdout)
    assert result["limit"] == limit
    if environ:
        expected = int(environ["MODELPACK_ORT_INTRA_OP_THREADS"])
    elif limit is not None and limit < result["cores"]:
        expected = limit
    else:
        expected = 0
    assert result["defaults"] == {"intra_op_thread_count": expected, "inter_op_thread_count": 0}


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
        # As the Kubernetes and ECS definitions pass it; Triton gives it to native backends only, so the
        # entry point carries it to the python-based one.
        "--backend-config=onnxruntime,intra_op_thread_count=3",
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
        assert {m["name"]: m["state"] for m in models} == {
            name: "READY" for name in Repository(model_repo).models()
        }
        loaded = [line for line in log.read_text().splitlines() if "model.onnx loaded in" in line]
        assert loaded and all("'intra_op_thread_count': 3," in line for line in loaded), loaded
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
