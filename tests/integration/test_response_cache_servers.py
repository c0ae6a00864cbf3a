"""Caching against the real things: the converters write Triton's response cache into the configs they
publish (and `configure` turns it off and on, refusing a graph with random operators), a real
tritonserver with ``--cache-config`` answers a repeated request from its cache with the same output and
counts it in ``nv_cache_num_hits_per_model``, and the Bento's cache against a real ``redis-server``:
rows stored and found, a wrong-sized value ignored, Redis stopped (a bypass, counted, then no call for
``retry_after_s``) and back."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.repository import Repository

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "converters", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_converters_turn_the_cache_on_for_their_deterministic_models(model_repo):
    repo = Repository(model_repo)
    for name in ("minilm", "image_classifier"):
        assert repo.config(name).response_cache.enable, name


def test_configure_turns_the_cache_off_and_on_and_refuses_a_random_graph(writable_model_repo, tmp_path):
    repo = Repository(writable_model_repo)
    done = _cli("configure", "minilm", "--response-cache", "off", "--repository", str(writable_model_repo))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["response_cache"] is False
    assert not repo.config("minilm").HasField("response_cache")
    done = _cli("configure", "minilm", "--response-cache", "on", "--repository", str(writable_model_repo))
    assert done.returncode == 0 and repo.config("minilm").response_cache.enable

    # A version whose graph draws random numbers: `on` is refused and the config left as it was.
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 32, 32])
    graph = helper.make_graph(
        [helper.make_node("RandomNormalLike", ["input"], ["logits"])], "noise", [x], [y]
    )
    onnx.save(helper.make_model(graph), writable_model_repo / "image_classifier" / "1" / "model.onnx")
    before = (writable_model_repo / "image_classifier" / "config.pbtxt").read_text()
    args = [
        "configure",
        "image_classifier",
        "--response-cache",
        "on",
        "--repository",
        str(writable_model_repo),
    ]
    done = _cli(*args)
    assert done.returncode == 2
    assert (
        "random operators (RandomNormalLike (version 1))" in done.stderr
        and "--response-cache off" in done.stderr
    )
    assert (writable_model_repo / "image_classifier" / "config.pbtxt").read_text() == before


def _hits(text: str, model: str) -> dict[str, float]:
    found = {}
    for kind in ("hits", "misses"):
        match = re.search(
            rf'^nv_cache_num_{kind}_per_model{{model="{model}",version="1"}} (\S+)$', text, re.M
        )
        found[kind] = float(match.group(1)) if match else None
    return found


@pytest.mark.triton
def test_triton_answers_a_repeat_from_its_cache_and_counts_the_hit(model_repo, tmp_path):
    import tritonclient.grpc as grpcclient

    from local_triton.server import TritonServer

    ids = np.array([[101, 7592, 2088, 102]], dtype=np.int64)

    def infer(client):
        inputs = []
        for name, value in (("input_ids", ids), ("attention_mask", np.ones_like(ids))):
            tensor = grpcclient.InferInput(name, list(value.shape), "INT64")
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        return client.infer("minilm", inputs, client_timeout=30).as_numpy("embeddings")

    server = TritonServer(
        model_repo,
        models=["minilm"],
        log_path=tmp_path / "triton.log",
        cache_size=8 << 20,
        die_with_parent=True,
    )
    with server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        before = _hits(server.metrics(), "minilm")
        # Executions before the requests: the entry's model_warmup samples ran at load.
        executed = int(server.statistics("minilm")["model_stats"][0]["execution_count"])
        first, second = infer(client), infer(client)
        text = server.metrics()
        after = _hits(text, "minilm")
        stats = server.statistics("minilm")["model_stats"][0]
    assert before == {"hits": 0.0, "misses": 0.0}
    assert after == {"hits": 1.0, "misses": 1.0}
    np.testing.assert_array_equal(first, second)
    assert int(stats["inference_stats"]["cache_hit"]["count"]) == 1
    assert int(stats["execution_count"]) - executed == 1  # the repeat never reached the model
    assert re.search(r"^nv_cache_util \S+$", text, re.M)


# ---- the Bento's cache against a real redis-server ----------------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    from serving.launcher import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"), die_with_parent=True).start()
    yield server
    server.stop()


def _sample(name: str, **labels) -> float:
    """A counter's value now, as Prometheus would scrape it from this process."""
    import prometheus_client

    return prometheus_client.REGISTRY.get_sample_value(name, labels) or 0.0


def test_bento_cache_rows_round_trip_and_redis_down_is_a_bypass(redis_server, minilm_path):
    import redis as redis_sync

    from serving.cache import ResponseCache
    from serving.models import VersionEntry
    from serving.observability import metrics
    from serving.preprocess import TextPipeline
    from serving.settings import CacheSettings
    from serving.tasks import Texts

    version = VersionEntry(
        1,
        {"outputs": [{"name": "embeddings", "shape": [-1, 4]}], "created_at": "t"},
        ("input_ids", "attention_mask"),
        "embeddings",
        (),
    )
    version.text = TextPipeline(minilm_path, 32)
    settings = CacheSettings(enabled=True, redis_url=redis_server.url, ttl_s=120, retry_after_s=0.5)
    series = metrics()
    labels = {"model": "cache-test", "version": "1"}
    rows = np.arange(8, dtype=np.float32).reshape(2, 4)

    async def scenario() -> dict:
        cache = ResponseCache(settings, series)
        keys = cache.keys("cache-test", version, Texts.of(texts=["alpha", "beta"]))
        seen = {"miss": await cache.get(keys, (4,), labels)}
        await cache.put({keys[0]: rows[0], keys[1]: rows[1]})
        seen["ttl"] = redis_sync.Redis.from_url(redis_server.url).ttl(keys[0])
        seen["hit"] = await cache.get(keys, (4,), labels)
        redis_sync.Redis.from_url(redis_server.url).set(keys[1], b"short")
        seen["bad size"] = await cache.get(keys, (4,), labels)
        seen["keys"] = keys
        redis_server.stop()
        errors = _sample("modelpack_cache_errors_total", operation="get")
        seen["down"] = await cache.get(keys, (4,), labels)
        seen["errors after down"] = _sample("modelpack_cache_errors_total", operation="get") - errors
        seen["still bypassing"] = await cache.get(keys, (4,), labels)  # within retry_after_s: no call
        seen["errors while bypassing"] = _sample("modelpack_cache_errors_total", operation="get") - errors
        redis_server.start()
        await asyncio.sleep(settings.retry_after_s)  # the configured window, then Redis is asked again
        seen["back"] = await cache.get(keys, (4,), labels)
        await cache.close()
        return seen

    before = {
        r: _sample("modelpack_cache_items_total", **labels, result=r) for r in ("hit", "miss", "bypassed")
    }
    seen = asyncio.run(scenario())
    counted = {r: _sample("modelpack_cache_items_total", **labels, result=r) - before[r] for r in before}
    assert seen["miss"] == [None, None]
    np.testing.assert_array_equal(np.stack(seen["hit"]), rows)
    assert seen["bad size"][1] is None and seen["bad size"][0] is not None
    assert seen["down"] is None and seen["still bypassing"] is None
    assert seen["errors after down"] == 1 and seen["errors while bypassing"] == 1
    assert seen["back"] == [None, None]  # a fresh redis-server holds nothing: misses, not a bypass
    assert counted == {"hit": 3, "miss": 5, "bypassed": 4}
    assert 0 < seen["ttl"] <= settings.ttl_s
    key = seen["keys"][0]
    assert key.startswith("modelpack:r1:cache-test:1:") and len(key.rsplit(":", 1)[1]) == 64
