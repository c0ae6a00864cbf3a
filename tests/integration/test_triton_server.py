"""The local Triton server's life cycle: versions going live without a restart, stop/kill/restart
leaving no process behind, the backend honouring config parameters, and the `serve` / `status` /
`load` / `unload` commands with their one-line failures. Each test that changes a repository or the
server's state runs its own server on a private copy, never the session ``triton_server``."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from converters.inputs import seeded_images
from converters.runtime import ort_session, run
from core.errors import InvalidArgument, MissingDependency, NotFound, Unavailable, UnsafeInput
from core.processes import alive, free_port, group_members
from core.repository import Repository
from local_triton.server import CALL_TIMEOUT_S, TritonServer, failure_reason

pytestmark = pytest.mark.triton

ROOT = Path(__file__).resolve().parents[2]


def _classify(server: TritonServer, images: np.ndarray, version: str = "") -> np.ndarray:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput("input", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    try:
        return client.infer(
            "image_classifier", [tensor], model_version=version, client_timeout=CALL_TIMEOUT_S
        ).as_numpy("logits")
    finally:
        client.close()


@pytest.fixture
def classifier_repo(model_repo, tmp_path) -> Path:
    """A private repository holding only the (small) image classifier."""
    repo = tmp_path / "repository"
    repo.mkdir()
    shutil.copytree(model_repo / "image_classifier", repo / "image_classifier")
    return repo


def _publish_scaled_version(repo_root: Path, factor: float) -> Path:
    """Publish, through the converters' repository code, a new version of the classifier whose
    float weights are multiplied by ``factor`` (so its outputs differ from version 1)."""
    import onnx
    from onnx import numpy_helper

    repo = Repository(repo_root)
    last = repo.versions("image_classifier")[-1]
    model = onnx.load(str(repo.version_dir("image_classifier", last) / "model.onnx"))
    for initializer in model.graph.initializer:
        array = numpy_helper.to_array(initializer)
        if array.dtype == np.float32:
            initializer.CopyFrom(numpy_helper.from_array(array * np.float32(factor), initializer.name))
    with repo.stage("image_classifier") as staged:
        onnx.save(model, str(staged.dir / "model.onnx"))
        repo.commit(staged, repo.config("image_classifier"), repo.manifest("image_classifier", last))
        return staged.path


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "converters", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if alive(pid)]


def _shm_regions(pids: list[int]) -> set[Path]:
    """The /dev/shm/triton_* files those processes have mapped (the python backend's regions)."""
    found = set()
    for pid in pids:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            path = line.split(maxsplit=5)[-1]
            if path.startswith("/dev/shm/triton_"):
                found.add(Path(path.removesuffix(" (deleted)")))
    return found


def test_new_version_goes_live_without_restart(classifier_repo):
    images = seeded_images((3, 32, 32), 2, seed=3)
    with TritonServer(classifier_repo, models=["image_classifier"], die_with_parent=True) as server:
        pid = server.pid
        v1 = _classify(server, images)
        v2_dir = _publish_scaled_version(classifier_repo, 0.5)
        expected_v2 = run(ort_session(v2_dir / "model.onnx"), {"input": images})["logits"]

        done = _cli("load", "image_classifier", "--url", server.http_url)
        assert done.returncode == 0, done.stderr
        assert "serving version 2" in done.stdout

        assert server.pid == pid and server.running
        index = {(m["name"], m["version"]): m.get("state") for m in server.index()}
        assert index[("image_classifier", "2")] == "READY"
        assert index.get(("image_classifier", "1")) != "READY"  # version_policy latest:1
        v2 = _classify(server, images)
        assert np.abs(v2 - expected_v2).max() <= 1e-5
        assert np.abs(v2 - v1).max() > 1e-3


def test_stop_kill_and_restart_leave_no_process(classifier_repo):
    server = TritonServer(classifier_repo, models=["image_classifier"], die_with_parent=True)
    server.start()
    ports = (server.http_url, server.grpc_url, server.metrics_url)
    members = group_members(server.pid)
    stubs = [p for p in members if "stub" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")]
    assert server.pid in members and stubs, "expected tritonserver and a python backend stub in one group"

    regions = _shm_regions(members)
    assert regions and all(region.exists() for region in regions)
    server.kill()  # a crash: everything gone at once, the ports are kept for the restart
    assert not _alive(members)
    # The python backend's shared memory would outlive a killed server: kill() removes this one's.
    assert [region for region in regions if region.exists()] == []
    server.start()
    assert (server.http_url, server.grpc_url, server.metrics_url) == ports
    with server.client() as client:
        assert client.is_model_ready("image_classifier")
    members = group_members(server.pid)

    server.stop()
    assert not _alive(members)
    assert not server.running
    server.stop()  # idempotent


SLOW_MODEL = """
import time


class TritonPythonModel:
    def initialize(self, args):
        time.sleep(60)  # a load that does not finish in time

    def execute(self, requests):
        return []
"""


def test_a_load_that_does_not_finish_in_time_fails_clearly_and_the_server_keeps_serving(classifier_repo):
    """Until Triton's own load stalls are gone, a load has a deadline: past it the client gets an
    error naming the model, the version being loaded and Triton's last log line about it, instead of
    waiting for ever; the server goes on serving."""
    slow = classifier_repo / "slow"
    (slow / "1").mkdir(parents=True)
    (slow / "1" / "model.py").write_text(SLOW_MODEL)
    (slow / "config.pbtxt").write_text(
        'name: "slow"\nbackend: "python"\nmax_batch_size: 0\n'
        'input { name: "x" data_type: TYPE_FP32 dims: [1] }\n'
        'output { name: "y" data_type: TYPE_FP32 dims: [1] }\n'
    )
    images = seeded_images((3, 32, 32), 1, seed=1)
    with TritonServer(classifier_repo, models=["image_classifier"], die_with_parent=True) as server:
        expected = _classify(server, images)
        started = time.monotonic()
        with pytest.raises(Unavailable) as caught:
            server.load("slow", timeout_s=5)
        assert time.monotonic() - started < 60  # the client gave up at its deadline, not with the load
        message = str(caught.value)
        assert "model 'slow': Triton did not finish loading version 1 within 5 s" in message, message
        assert "loading: slow:1" in message and str(server.log_path) in message, message
        assert "its processes: tritonserver" in message and "stub slow/1/model.py" in message, message
        assert np.abs(_classify(server, images) - expected).max() == 0  # still serving
        with server.client() as client:
            assert client.is_server_live() and client.is_model_ready("image_classifier")


def test_backend_honours_thread_parameters_and_model_filename(classifier_repo):
    """Thread counts, a session.* entry, default_model_filename and max_batch_size 0 from the config; a bad
    thread count fails the load with a message naming the parameter, and the server stays up."""
    from tritonclient.utils import InferenceServerException

    from core.triton_config import read_config, write_config

    entry = classifier_repo / "image_classifier"
    os.rename(entry / "1" / "model.onnx", entry / "1" / "classifier.onnx")
    config = read_config(entry / "config.pbtxt")
    config.default_model_filename = "classifier.onnx"
    config.parameters["intra_op_thread_count"].string_value = "1"
    config.parameters["inter_op_thread_count"].string_value = "1"
    config.parameters["session.intra_op.allow_spinning"].string_value = "1"  # the backend's default is 0
    write_config(entry / "config.pbtxt", config)

    images = seeded_images((3, 32, 32), 3, seed=5)
    expected = run(ort_session(entry / "1" / "classifier.onnx"), {"input": images})["logits"]
    with TritonServer(classifier_repo, models=["image_classifier"], die_with_parent=True) as server:
        assert np.abs(_classify(server, images) - expected).max() <= 1e-5
        logged = server.log_text()
        assert "'intra_op_thread_count': 1, 'inter_op_thread_count': 1" in logged
        assert "'session.intra_op.allow_spinning': '1'" in logged

        with server.client() as client:
            # Without batching (max_batch_size 0) the request's shape is the model's, batch axis included.
            unbatched = client.get_model_config("image_classifier")
            unbatched.pop("dynamic_batching", None)
            unbatched.pop("model_warmup", None)  # its samples are batched ones
            unbatched["max_batch_size"] = 0
            unbatched["input"][0]["dims"] = [-1, 3, 32, 32]
            unbatched["output"][0]["dims"] = [-1, 10]
            client.load_model("image_classifier", config=json.dumps(unbatched))
            assert client.get_model_config("image_classifier")["max_batch_size"] == 0
            assert np.abs(_classify(server, images) - expected).max() <= 1e-5

            bad = client.get_model_config("image_classifier")
            bad["parameters"]["intra_op_thread_count"] = {"string_value": "many"}
            with pytest.raises(
                InferenceServerException, match="intra_op_thread_count = 'many' is not a whole"
            ):
                client.load_model("image_classifier", config=json.dumps(bad))
            assert client.is_server_live()


def test_missing_installation_is_one_clear_error(classifier_repo, tmp_path):
    with pytest.raises(MissingDependency, match=r"tritonserver binary is missing: .* run `make setup`"):
        TritonServer(classifier_repo, root=tmp_path).start()


def test_a_repository_with_a_symlink_leaving_it_is_refused_before_starting(classifier_repo, tmp_path):
    outside = tmp_path / "elsewhere"
    shutil.copytree(classifier_repo / "image_classifier" / "1", outside)
    (classifier_repo / "image_classifier" / "2").symlink_to(outside)
    server = TritonServer(classifier_repo, models=["image_classifier"], die_with_parent=True)
    with pytest.raises(UnsafeInput, match=r"image_classifier/2 is a symlink to .*elsewhere, outside"):
        server.start()
    assert server.pid is None and not server.running


def test_missing_repository_is_not_found(tmp_path):
    with pytest.raises(NotFound, match="is not a directory"):
        TritonServer(tmp_path / "nowhere")


def test_port_in_use_is_refused_before_starting(classifier_repo):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(InvalidArgument, match=f"--grpc-port: 127.0.0.1:{port} is already in use"):
            TritonServer(classifier_repo, grpc_port=port).start()


def test_failure_reason_picks_the_line_that_explains():
    log = (
        'I1124 06:49:17.1 1 model_lifecycle.cc:472] "loading: broken:1"\n'
        "E1124 06:49:17.2 1 model_lifecycle.cc:641] \"failed to load 'broken' version 1: Internal: "
        'bad protobuf\\n\\nAt:\\n  model.py(140): initialize\\n"\n'
        'E1124 06:49:17.3 1 main.cc:258] "failed to start: Internal"\n'
    )
    assert failure_reason(log) == "model 'broken' version 1 failed to load: Internal: bad protobuf"
    assert failure_reason("I1124 all fine\n") is None
    # What this CPU-only build always logs explains nothing.
    benign = 'E1201 11:21:10.8 1 server.cc:241] "CudaDriverHelper has not been initialized."\n'
    assert failure_reason(benign) is None


@pytest.mark.triton
def test_a_failing_warm_up_request_is_named(model_repo, tmp_path):
    """A warm-up request the model fails on (here 600 tokens for MiniLM's 512 positions) fails the
    model's load, naming the sample (Triton's own words); or, in some runs of this Triton build, takes
    the server down with SIGSEGV and no log line, and then the error says where to look. Either way the
    error points at the model_warmup."""
    from core.triton_config import WarmupSample, read_config, set_warmup, write_config

    root = tmp_path / "repository"
    shutil.copytree(model_repo / "minilm", root / "minilm")
    config = read_config(root / "minilm" / "config.pbtxt")
    write_config(
        root / "minilm" / "config.pbtxt",
        set_warmup(config, [WarmupSample(1, {"input_ids": (600,), "attention_mask": (600,)})]),
    )
    named = (
        r"warm-up request fails: check the model_warmup"
        r"|failed to run warmup sample 'batch 1: input_ids \[600\]"
    )
    with pytest.raises(Unavailable, match=named):
        TritonServer(root, log_path=tmp_path / "triton.log", models=["minilm"]).start(timeout=120)


# ---- the CLI ----------------------------------------------------------------------------------------


def test_serve_runs_until_sigterm_and_leaves_nothing(classifier_repo, tmp_path):
    log_path = tmp_path / "serve.log"
    http = free_port()
    command = [sys.executable, "-m", "converters", "serve", "--repository", str(classifier_repo)]
    command += ["--http-port", str(http), "--grpc-port", "0", "--metrics-port", "0", "--log", str(log_path)]
    serve = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        members: list[int] = []
        while time.monotonic() < deadline and serve.poll() is None:
            status = _cli("status", "--url", f"127.0.0.1:{http}")
            if status.returncode == 0:
                break
            time.sleep(0.5)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "image_classifier" in status.stdout and "READY" in status.stdout
        assert "live, ready" in status.stdout
        server_pid = int(
            next(p for p in _children(serve.pid) if "tritonserver" in Path(f"/proc/{p}/cmdline").read_text())
        )
        members = group_members(server_pid)

        unloaded = _cli("unload", "image_classifier", "--url", f"127.0.0.1:{http}")
        assert unloaded.returncode == 0 and "unloaded" in unloaded.stdout
        missing = _cli("unload", "nope", "--url", f"127.0.0.1:{http}")
        assert missing.returncode == 2
        assert (
            missing.stderr.strip().splitlines()[-1].startswith("error: model 'nope' is not in the server's")
        )

        serve.send_signal(signal.SIGTERM)
        out, err = serve.communicate(timeout=60)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    assert serve.returncode == 0, err
    assert "serving image_classifier" in out and f"127.0.0.1:{http}" in out
    assert not _alive(members)
    assert log_path.read_text().count("Started GRPCInferenceService") == 1


def _children(pid: int) -> list[int]:
    return [child.pid for child in psutil.Process(pid).children()]


def _start_serve(repo: Path, log_path: Path, timeout_s: float = 180.0) -> tuple[subprocess.Popen, list[str]]:
    """`serve` on free ports, read until it says it serves (its lines, with a deadline: a serve that
    stalls fails the test instead of hanging it)."""
    command = [sys.executable, "-m", "converters", "serve", "--repository", str(repo)]
    command += [
        "--http-port",
        str(free_port()),
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        "--log",
        str(log_path),
    ]
    serve = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in iter(serve.stdout.readline, "")], daemon=True
    ).start()
    printed: list[str] = []
    deadline = time.monotonic() + timeout_s
    while not printed or printed[-1] != "Ctrl-C stops it.\n":
        try:
            printed.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
        except queue.Empty:
            serve.kill()
            raise AssertionError(f"serve did not say it serves within {timeout_s:.0f} s: {printed}") from None
        if serve.poll() is not None and lines.empty():
            raise AssertionError(f"serve ended early: {printed} {serve.stderr.read()}")
    return serve, printed


def _server_pid(serve: subprocess.Popen) -> int:
    return next(p for p in _children(serve.pid) if "tritonserver" in Path(f"/proc/{p}/cmdline").read_text())


def test_serve_explains_a_server_killed_under_it_and_leaves_nothing(classifier_repo, tmp_path):
    """tritonserver killed while `serve` runs: serve ends at once with its family, saying what happened
    (killed by SIGKILL), not a line Triton prints at every CPU start (CudaDriverHelper, NVML, DCGM)."""
    serve, _ = _start_serve(classifier_repo, tmp_path / "serve.log")
    try:
        members = group_members(_server_pid(serve))
        os.kill(_server_pid(serve), signal.SIGKILL)
        _, err = serve.communicate(timeout=120)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    assert serve.returncode == 1, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: tritonserver was killed by SIGKILL while serving"), line
    assert "CudaDriverHelper" not in line and "NVML" not in line and str(tmp_path / "serve.log") in line
    assert not _alive(members)  # serve ended once its whole family had (the stubs included)


def test_serve_leaves_the_state_file_of_another_serve(classifier_repo, tmp_path):
    """A second `serve` took over runs/triton/serve.json: the first one, stopping, must not remove it."""
    from local_triton.cli import STATE_FILE

    serve, _ = _start_serve(classifier_repo, tmp_path / "serve.log")
    other = None
    try:
        ours = json.loads(STATE_FILE.read_text())
        assert ours["pid"] == _server_pid(serve)
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])  # a live pid
        theirs = {**ours, "pid": other.pid, "http_url": "127.0.0.1:1"}
        STATE_FILE.write_text(json.dumps(theirs))
        serve.send_signal(signal.SIGTERM)
        serve.communicate(timeout=120)
        assert serve.returncode == 0
        assert json.loads(STATE_FILE.read_text()) == theirs  # still there, still theirs
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
        if other is not None:
            other.kill()
            other.wait()
        STATE_FILE.unlink(missing_ok=True)


def test_serve_reports_a_model_that_fails_to_load(classifier_repo, tmp_path):
    (classifier_repo / "image_classifier" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    done = _cli(
        "serve", "--repository", str(classifier_repo), "--http-port", "0", "--grpc-port", "0",
        "--metrics-port", "0", "--log", str(tmp_path / "serve.log"),
    )  # fmt: skip
    assert done.returncode == 1
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(
        "error: tritonserver exited with status 1: model 'image_classifier' version 1 failed"
    )
    assert "ONNX Runtime cannot load" in line and "serve.log" in line


def test_serve_reports_a_port_in_use(classifier_repo):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _cli("serve", "--repository", str(classifier_repo), "--http-port", str(port))
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: --http-port: 127.0.0.1:{port} is already in use")
    )


def test_status_without_a_server_says_how_to_start_one():
    done = _cli("status", "--url", f"127.0.0.1:{free_port()}")
    assert done.returncode == 1
    assert "no Triton server answers at" in done.stderr and "python -m converters serve" in done.stderr


def test_unavailable_is_raised_when_the_server_dies(classifier_repo):
    server = TritonServer(
        classifier_repo, models=["image_classifier"], extra_args=["--not-a-flag"], die_with_parent=True
    )
    with pytest.raises(Unavailable, match="tritonserver exited with status"):
        server.start(timeout=30)
    assert not server.running


def test_serve_killed_outright_takes_the_server_with_it(classifier_repo, tmp_path):
    """SIGKILL on `serve` gives it no chance to clean up: tritonserver still ends (PR_SET_PDEATHSIG),
    and its stubs with it."""
    serve, _ = _start_serve(classifier_repo, tmp_path / "s.log")
    try:
        members = group_members(_server_pid(serve))
        assert len(members) >= 2  # the server and a stub
    finally:
        serve.kill()
        serve.wait()
    deadline = time.monotonic() + 30
    while _alive(members) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(members)
