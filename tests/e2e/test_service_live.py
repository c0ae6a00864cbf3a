"""End to end: the Bento follows the repository live (issue 15, item 2). A Triton and a Bento of this
module's own serve a copy of ``image_classifier``; versions are published, rolled back and loaded
while a client keeps calling, and the Bento is never restarted."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.triton, pytest.mark.bento, pytest.mark.slow]

ARRAY = [[[10, 20, 30], [40, 50, 60]], [[70, 80, 90], [100, 110, 120]]]


@pytest.fixture(scope="module")
def live(model_repo, service_config, tmp_path_factory):
    from local_triton.server import TritonServer
    from serving.launcher import BentoServer

    folder = tmp_path_factory.mktemp("live")
    repo = folder / "repository"
    shutil.copytree(model_repo / "image_classifier", repo / "image_classifier")
    triton = TritonServer(repo, log_path=folder / "tritonserver.log", die_with_parent=True).start()
    try:
        config = service_config(
            folder / "service.yaml",
            repo,
            triton.grpc_url,
            [{"name": "image_classifier", "task": "image-classification", "top_k": 1}],
            triton={"url": triton.grpc_url, "timeout_s": 10, "retry_after_s": 2},
            refresh_s=0.25,
        )
        bento = BentoServer(config, folder / "home", folder / "bento.log", die_with_parent=True).start()
        try:
            yield bento, triton, repo
        finally:
            bento.stop()
    finally:
        triton.stop()


def logs(bento, triton) -> str:
    def tail(path) -> str:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-30:])

    return f"--- bento log:\n{tail(bento.log_path)}\n--- triton log:\n{tail(triton.log_path)}"


class Client(threading.Thread):
    """Calls /predict without pause until stopped, recording (status, version or error) per answer."""

    def __init__(self, bento) -> None:
        super().__init__(daemon=True)
        self.bento = bento
        self.outcomes: list[tuple[int, object]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        import httpx

        with httpx.Client(base_url=self.bento.url, timeout=30) as client:
            while not self.halt.is_set():
                response = client.post("/predict", json={"array": ARRAY})
                body = response.json()
                self.outcomes.append((response.status_code, body.get("version", body.get("error"))))

    def stop(self) -> list[tuple[int, object]]:
        self.halt.set()
        self.join(60)
        assert not self.is_alive(), "the client hung"
        return self.outcomes


def wait_for_version(bento, triton, version: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        response = bento.client.post("/predict", json={"array": ARRAY})
        if response.status_code == 200 and response.json()["version"] == version:
            return
        assert time.monotonic() < deadline, f"not routed to version {version}: {response.text}\n" + logs(
            bento, triton
        )
        time.sleep(0.1)


def test_publish_and_rollback_are_followed_without_a_restart(live):
    from benchmarks.faults.swaps import publish_copy
    from core.repository import Repository

    bento, triton, repo = live
    pid = bento.pid
    repository = Repository(repo)
    # The module's tests share the stack and run in any order: start from whatever version is served.
    start = bento.client.post("/predict", json={"array": ARRAY}).json()["version"]
    repository.set_version_policy("image_classifier", [start])
    client = Client(bento)
    client.start()
    try:
        new = publish_copy(repository, "image_classifier", start)
        repository.set_version_policy("image_classifier", "latest")
        triton.load("image_classifier")
        wait_for_version(bento, triton, new)
        repository.set_version_policy("image_classifier", [start])  # `converters rollback`
        triton.load("image_classifier")
        wait_for_version(bento, triton, start)
        time.sleep(0.5)
    finally:
        outcomes = client.stop()
    failed = [o for o in outcomes if o[0] != 200]
    assert outcomes and not failed, f"{len(failed)} of {len(outcomes)} failed: {failed[:5]}\n" + logs(
        bento, triton
    )
    assert {version for _, version in outcomes} == {start, new}
    assert bento.pid == pid and bento.running
    models = bento.client.get("/models").json()["models"][0]
    assert [(v["version"], v["weight"]) for v in models["versions"] if v["weight"]] == [(start, 1.0)]


def test_a_version_triton_has_not_loaded_is_503_saying_so(live):
    from benchmarks.faults.swaps import publish_copy
    from core.repository import Repository

    bento, triton, repo = live
    repository = Repository(repo)
    before = bento.client.post("/predict", json={"array": ARRAY}).json()["version"]
    repository.set_version_policy("image_classifier", "latest")
    version = publish_copy(repository, "image_classifier", before)  # published, not loaded
    deadline = time.monotonic() + 30
    while version not in [v["version"] for v in bento.client.get("/models").json()["models"][0]["versions"]]:
        assert time.monotonic() < deadline, "the published version never appeared in /models\n" + logs(
            bento, triton
        )
        time.sleep(0.1)
    pinned = bento.client.post("/predict", json={"array": ARRAY, "version": version})
    assert pinned.status_code == 503, pinned.text
    message = pinned.json()["error"]
    assert f"image_classifier version {version} is not loaded" in message and "within" not in message
    assert triton.grpc_url not in message and "StatusCode" not in message
    assert pinned.headers["Retry-After"] == "2"
    # Unpinned requests stay on the version Triton serves until the new one is loaded.
    unpinned = bento.client.post("/predict", json={"array": ARRAY})
    assert unpinned.status_code == 200 and unpinned.json()["version"] == before, unpinned.text
    triton.load("image_classifier")
    wait_for_version(bento, triton, version)
