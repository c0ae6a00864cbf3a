"""The Bento in front of two Triton servers, as in a cluster (docs/deploy.md, "Load balancing"): a real
`bentoml serve` whose service.yaml names both through one gRPC target (``ipv4:`` list; in Kubernetes a
``dns:///`` name of a headless Service), two real tritonservers. Both serve requests (each one's own
inference statistics say how many), and when one is gone the other takes every request while the
Bento stays ready."""

from __future__ import annotations

import base64
import io
import shutil
import time

import numpy as np
import pytest

pytestmark = [pytest.mark.triton, pytest.mark.bento]

MODEL = "image_classifier"


def _served(server) -> int:
    stats = server.statistics(MODEL)["model_stats"]
    return sum(int(s["inference_stats"]["success"]["count"]) for s in stats)


def _png() -> str:
    from PIL import Image

    pixels = (np.random.default_rng(3).random((32, 32, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def stack(model_repo, service_config, tmp_path_factory):
    from local_triton.server import TritonServer
    from serving.launcher import BentoServer

    folder = tmp_path_factory.mktemp("scale-out")
    repo = folder / "repository"
    shutil.copytree(model_repo / MODEL, repo / MODEL)
    tritons = [TritonServer(repo, log_path=folder / f"triton-{i}.log", die_with_parent=True) for i in (1, 2)]
    bento = None
    try:
        for triton in tritons:
            triton.start()
        url = "ipv4:" + ",".join(t.grpc_url for t in tritons)
        config = service_config(
            folder / "service.yaml",
            repo,
            url,
            [{"name": MODEL, "task": "image-classification", "top_k": 1}],
            triton={"url": url, "timeout_s": 5, "ready_interval_s": 0.5, "max_connection_age_s": 30},
        )
        bento = BentoServer(config, folder / "home", folder / "bento.log", die_with_parent=True).start()
        yield bento, tritons
    finally:
        if bento is not None:
            bento.stop()
        for triton in tritons:
            triton.stop()


def _counted(tritons, total: int) -> list[int]:
    """Each server's count once they add up to ``total``: Triton counts a request after answering it."""
    deadline = time.monotonic() + 30
    while sum(counts := [_served(t) for t in tritons]) < total:
        assert time.monotonic() < deadline, f"the servers counted {counts}, not {total}"
        time.sleep(0.05)
    return counts


def test_both_tritons_serve_the_bento(stack):
    bento, tritons = stack
    image = _png()
    # A Triton restarted by another test of the module is called again once the Bento's channel
    # reconnects to it (gRPC's backoff) or is reopened (triton.max_connection_age_s, 30 s here): wait
    # until each server has answered one call, as a load balancer's new backend is waited for.
    base = [_served(t) for t in tritons]
    calls, deadline = 0, time.monotonic() + 90
    while min(c - b for c, b in zip(_counted(tritons, sum(base) + calls), base, strict=True)) == 0:
        assert time.monotonic() < deadline, "the Bento never called one of the two Tritons"
        assert bento.client.post("/predict", json={"image": image}).status_code == 200
        calls += 1
        time.sleep(0.05)
    before = _counted(tritons, sum(base) + calls)
    for _ in range(30):
        response = bento.client.post("/predict", json={"image": image})
        assert response.status_code == 200, response.text
    counts = [a - b for a, b in zip(_counted(tritons, sum(before) + 30), before, strict=True)]
    assert sum(counts) == 30
    # Round-robin per call over both connections (a connection pinned to one server gives [30, 0]).
    assert min(counts) >= 10, counts


def test_one_triton_gone_the_other_takes_every_request(stack):
    bento, tritons = stack
    gone, left = tritons
    image = _png()
    gone.kill()
    try:
        before = _served(left)
        statuses = [bento.client.post("/predict", json={"image": image}).status_code for _ in range(20)]
        assert statuses == [200] * 20, statuses
        assert _served(left) - before == 20
        assert bento.client.get("/readyz").status_code == 200  # one Triton answering is enough
    finally:
        gone.start()
