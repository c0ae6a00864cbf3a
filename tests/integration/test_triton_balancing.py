"""The service's Triton client past one server: calls spread round-robin over every address of
``triton.url`` (two real tritonservers, each one's own inference statistics say how many calls it
served), a channel renewed every ``max_connection_age_s`` without failing the calls in flight, and the
background health check that ``/readyz`` answers from (a frozen Triton: the answer comes from the last
check, at once, and requests fail fast with Retry-After)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from core.errors import Unavailable
from local_triton.server import TritonServer
from serving.settings import TritonSettings, read_settings
from serving.triton_client import TritonGateway

pytestmark = pytest.mark.triton

MODEL = "image_classifier"


@pytest.fixture(scope="module")
def classifier_repo(model_repo, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("balancing") / "repository"
    shutil.copytree(model_repo / MODEL, repo / MODEL)
    return repo


@pytest.fixture(scope="module")
def two_tritons(classifier_repo):
    """Two tritonservers serving the same repository on their own free ports."""
    folder = classifier_repo.parent
    servers = [
        TritonServer(classifier_repo, log_path=folder / f"triton-{i}.log", die_with_parent=True)
        for i in (1, 2)
    ]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


def _images(classifier_repo: Path, rows: int = 1) -> dict[str, np.ndarray]:
    import json

    manifest = json.loads((classifier_repo / MODEL / "1" / "manifest.json").read_text())
    shape = [int(d) for d in manifest["inputs"][0]["shape"][1:]]
    return {"input": np.random.default_rng(0).standard_normal((rows, *shape)).astype(np.float32)}


def _served(server: TritonServer) -> int:
    """Requests the server answered successfully for the model, from its own statistics."""
    stats = server.statistics(MODEL)["model_stats"]
    return sum(int(s["inference_stats"]["success"]["count"]) for s in stats)


def _settings(service_config, folder: Path, repo: Path, url: str, **triton) -> TritonSettings:
    """TritonSettings as the service reads them: a service.yaml through read_settings."""
    path = service_config(
        folder / "service.yaml",
        repo,
        url,
        [{"name": MODEL, "task": "image-classification"}],
        triton={"url": url, "timeout_s": 5, **triton},
    )
    return read_settings(path, environ={}).triton


def test_calls_alternate_over_every_address(two_tritons, classifier_repo, service_config, tmp_path):
    url = "ipv4:" + ",".join(server.grpc_url for server in two_tritons)
    settings = _settings(service_config, tmp_path, classifier_repo, url)
    images = _images(classifier_repo)

    def counted(total: int) -> list[int]:
        """Each server's count once the two add up to ``total``: Triton counts a request after it sent
        the answer, so a count read right after a call may not hold that call yet."""
        deadline = time.monotonic() + 30
        while sum(counts := [_served(s) for s in two_tritons]) < total:
            assert time.monotonic() < deadline, f"the servers counted {counts}, not {total} calls"
            time.sleep(0.05)
        return counts

    async def run() -> list[int]:
        gateway = TritonGateway(settings)
        try:
            # What the servers counted before this gateway's calls: their model_warmup requests, and
            # the calls of the module's other tests.
            base = [_served(s) for s in two_tritons]
            start = sum(base)
            # Until both subchannels are connected, round_robin uses the ones that are.
            calls = 0
            for _ in range(50):
                if min(c - b for c, b in zip(counted(start + calls), base, strict=True)) > 0:
                    break
                await gateway.infer(MODEL, 1, images, "logits")
                calls += 1
            before = counted(start + calls)
            assert min(c - b for c, b in zip(before, base, strict=True)) > 0, (
                f"50 calls, one server none: {before}"
            )
            for _ in range(20):
                logits, version = await gateway.infer(MODEL, 1, images, "logits")
                assert version == 1 and logits.shape[0] == 1
            after = counted(start + calls + 20)
            return [a - b for a, b in zip(after, before, strict=True)]
        finally:
            await gateway.close()

    # One channel, connected to both: each call goes to the next server in turn.
    assert asyncio.run(run()) == [10, 10]


def test_one_server_is_one_address(two_tritons, classifier_repo, service_config, tmp_path):
    """The plain host:port form keeps sending to that one server (what a ClusterIP Service gives)."""
    first, second = two_tritons
    settings = _settings(service_config, tmp_path, classifier_repo, first.grpc_url)
    images = _images(classifier_repo)
    before = [_served(s) for s in two_tritons]

    async def run() -> None:
        gateway = TritonGateway(settings)
        try:
            for _ in range(6):
                await gateway.infer(MODEL, 1, images, "logits")
        finally:
            await gateway.close()

    asyncio.run(run())
    assert [_served(s) - b for s, b in zip(two_tritons, before, strict=True)] == [6, 0]


def test_channel_is_renewed_without_failing_calls(two_tritons, classifier_repo, service_config, tmp_path):
    """max_connection_age_s: a new channel (and name resolution) that often; calls in flight on the old
    channel finish, and the old channel is closed afterwards."""
    url = "ipv4:" + ",".join(server.grpc_url for server in two_tritons)
    settings = _settings(service_config, tmp_path, classifier_repo, url, max_connection_age_s=0.3)
    images = _images(classifier_repo, rows=4)

    async def run() -> tuple[int, int, int]:
        gateway = TritonGateway(settings)
        answered = 0

        async def caller() -> None:
            nonlocal answered
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 1.5
            while loop.time() < deadline:
                logits, _ = await gateway.infer(MODEL, 1, images, "logits")
                assert logits.shape[0] == 4
                answered += 1

        try:
            await asyncio.gather(*(caller() for _ in range(4)))
            retiring = len(gateway._retiring)
            return gateway.channels_opened, answered, retiring
        finally:
            await gateway.close()
            assert gateway._retiring == {}

    opened, answered, retiring = asyncio.run(run())
    assert opened >= 3, opened  # 1.5 s of calls, a channel at most 0.3 s old
    assert answered > 0
    assert retiring >= 1  # old channels wait out timeout_s before they are closed


def test_health_is_checked_in_the_background(classifier_repo, service_config, tmp_path):
    """A frozen Triton (SIGSTOP): the background check notices; ready() answers from it without waiting
    for Triton; requests are refused at once with Retry-After; a thawed Triton is ready again."""
    from serving.health import TritonHealth

    server = TritonServer(classifier_repo, log_path=tmp_path / "triton.log", die_with_parent=True).start()
    settings = _settings(
        service_config,
        tmp_path,
        classifier_repo,
        server.grpc_url,
        ready_interval_s=0.2,
        ready_timeout_s=1,
        retry_after_s=4,
    )

    async def run() -> None:
        gateway = TritonGateway(settings)
        health = TritonHealth(gateway, lambda: [(MODEL, 1), (MODEL, 7)], settings)
        try:
            assert await health.ready() is False  # version 7 is not served
            assert "image_classifier version 7 is not ready" in health.state.reason
            assert not health.state.server_down
            health.raise_if_down()  # a missing version is not Triton being down

            health.routable = lambda: [(MODEL, 1)]
            checks = health.checks
            while health.checks < checks + 2:
                await asyncio.sleep(0.05)
            assert await health.ready() is True

            os.killpg(server.pid, signal.SIGSTOP)
            try:
                while not health.state.server_down:
                    await asyncio.sleep(0.05)
                checks = health.checks
                # The answer is the last check's: no new call to the frozen server is awaited.
                async with asyncio.timeout(settings.ready_timeout_s / 2):
                    assert await health.ready() is False
                assert health.checks == checks
                assert "did not answer within 1 s (triton.ready_timeout_s)" in health.state.reason
                with pytest.raises(Unavailable) as refused:
                    health.raise_if_down()
                assert refused.value.retry_after_s == 4 and "Triton at" in str(refused.value)
            finally:
                os.killpg(server.pid, signal.SIGCONT)
            while not await health.ready():
                await asyncio.sleep(0.05)
            health.raise_if_down()
        finally:
            await health.close()
            await gateway.close()

    try:
        asyncio.run(asyncio.wait_for(run(), timeout=60))
    finally:
        server.stop()
