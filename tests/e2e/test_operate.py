"""Operating the service, end to end: a real tritonserver with its response cache, a real redis-server
and a real ``bentoml serve`` with the Redis cache and API keys on (rate limit included), over real
HTTP. API keys (401 without, both headers, keys from the file and the variable, probes open), the
per-key rate limit (429 with Retry-After), the cache (a repeat served from Redis, never across versions,
Redis stopped: still answered and counted), and the dashboard's and the alert rules' every series
exported by the running Bento and Triton."""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import numpy as np
import pytest

from deploy import checks

pytestmark = [pytest.mark.triton, pytest.mark.bento, pytest.mark.slow]

# One key per test (each has its own token bucket: burst BURST, refilled once per 100 s).
KEYS = {
    name: f"{name}-key-for-the-operate-tests" for name in ("auth", "limited", "cache", "metrics", "batch")
}
ENV_KEY = "env-key-for-the-operate-tests-0"
BURST = 20


def _bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


@pytest.fixture(scope="module")
def stack(model_repo, service_config, tmp_path_factory):
    """minilm versions 1 and 2 (2 a copy of 1, published again) on a Triton with a response cache; the
    Bento splits all traffic to 1 (2 may be pinned), caches in Redis, requires keys (hashes in a file,
    one plain key in $MODELPACK_API_KEYS)."""
    from core.repository import Repository
    from local_triton.server import TritonServer
    from serving.launcher import BentoServer, RedisServer

    folder = tmp_path_factory.mktemp("operate")
    repo = folder / "repository"
    shutil.copytree(model_repo, repo)
    shutil.copytree(repo / "minilm" / "1", repo / "minilm" / "2")
    manifest = json.loads((repo / "minilm" / "2" / "manifest.json").read_text())
    manifest.update(version=2, created_at="2026-12-02T00:00:00Z")
    (repo / "minilm" / "2" / "manifest.json").write_text(json.dumps(manifest))
    Repository(repo).set_version_policy("minilm", [1, 2])
    keys = folder / "api-keys"
    keys.write_text(
        "".join(f"sha256:{hashlib.sha256(k.encode()).hexdigest()} {n}\n" for n, k in KEYS.items()),
        encoding="utf-8",
    )
    redis = RedisServer(folder / "redis", die_with_parent=True).start()
    triton = TritonServer(
        repo, models=["minilm"], log_path=folder / "triton.log", cache_size=16 << 20, die_with_parent=True
    )
    bento = None
    try:
        triton.start()
        config = service_config(
            folder / "service.yaml",
            repo,
            triton.grpc_url,
            [{"name": "minilm", "task": "feature-extraction", "versions": {1: 100}}],
            cache={"enabled": True, "redis_url": redis.url, "retry_after_s": 0},
            access={
                "require_keys": True,
                "keys_file": str(keys),
                "rate_limit": {"requests_per_s": 0.01, "burst": BURST},
            },
        )
        bento = BentoServer(
            config,
            folder / "home",
            folder / "bento.log",
            env={"MODELPACK_API_KEYS": f"{ENV_KEY} from-env"},
            die_with_parent=True,
        ).start()
        yield {"bento": bento, "triton": triton, "redis": redis, "config": config}
    finally:
        if bento is not None:
            bento.stop()
        triton.stop()
        redis.stop()


def _metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ---- API keys and rate limits ----------------------------------------------------------------------


def test_every_route_but_the_probes_and_metrics_needs_a_key(stack):
    client = stack["bento"].client
    for path in ("/healthz", "/livez", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200, path
    refused = [
        client.post("/embed", json={"text": "no key"}),
        client.post(
            "/embed/batch", json={"texts": ["no key"]}, headers={"X-API-Key": "wrong-key-0123456789"}
        ),
        client.get("/models"),
        client.get("/docs.json", headers={"Authorization": "Bearer " + KEYS["auth"][::-1]}),
    ]
    for response in refused:
        assert response.status_code == 401, response.text
        body = response.json()
        assert set(body) == {"error", "field", "request_id"} and body["field"] == "authorization"
        assert body["request_id"] == response.headers["x-request-id"]
        assert not any(key in response.text for key in (*KEYS.values(), ENV_KEY)), response.text
    assert "needs an API key" in refused[0].json()["error"] and "not valid" in refused[1].json()["error"]

    embed = client.post("/embed", json={"text": "with a key"}, headers=_bearer("auth"))
    assert embed.status_code == 200 and embed.json()["model"] == "minilm"
    assert client.get("/models", headers={"X-API-Key": KEYS["auth"]}).status_code == 200
    assert client.get("/models", headers={"Authorization": f"Bearer {ENV_KEY}"}).status_code == 200


def test_a_key_over_its_rate_gets_429_with_retry_after_and_others_do_not(stack):
    client = stack["bento"].client
    answers = [client.get("/models", headers=_bearer("limited")).status_code for _ in range(BURST)]
    assert answers == [200] * BURST
    limited = client.get("/models", headers=_bearer("limited"))
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 100
    assert set(limited.json()) == {"error", "field", "request_id"} and "rate limit" in limited.json()["error"]
    assert client.get("/models", headers=_bearer("auth")).status_code == 200


# ---- the Redis cache --------------------------------------------------------------------------------


def test_a_repeat_is_served_from_redis_and_never_across_versions(stack):
    """A text embedded twice: a miss then a hit, the same vector. A row planted under version 1's key
    is what version 1 answers (the cache is really read), while version 2 (same weights, published
    again: another digest) misses and answers the model's own vector."""
    import redis as redis_sync

    client, headers = stack["bento"].client, _bearer("cache")

    def cache_counts() -> dict[str, float]:
        text = client.get("/metrics").text
        return {
            f"{r}@{v}": _metric(text, "modelpack_cache_items_total", model="minilm", version=v, result=r)
            for r in ("hit", "miss")
            for v in ("1", "2")
        }

    before = cache_counts()
    first = client.post("/embed", json={"text": "Cached once, served twice."}, headers=headers).json()
    second = client.post("/embed", json={"text": "Cached once, served twice."}, headers=headers).json()
    counts = cache_counts()
    assert counts["miss@1"] - before["miss@1"] == 1 and counts["hit@1"] - before["hit@1"] == 1
    np.testing.assert_allclose(first["embedding"], second["embedding"], rtol=0, atol=0)

    store = redis_sync.Redis.from_url(stack["redis"].url)
    text = "A text whose version-1 row is planted."
    client.post("/embed", json={"text": text, "version": 1}, headers=headers)  # stores version 1's row
    key = _row_key(stack["config"], 1, text)
    assert store.exists(key)  # the key as serving/cache.py makes it, from the same entry
    store.set(key, np.full(384, 0.5, dtype="<f4").tobytes())
    v1 = client.post("/embed", json={"text": text, "version": 1}, headers=headers).json()
    v2 = client.post("/embed", json={"text": text, "version": 2}, headers=headers).json()
    assert v1["version"] == 1 and v1["embedding"] == [0.5] * 384
    assert v2["version"] == 2 and v2["embedding"] != [0.5] * 384
    assert abs(np.linalg.norm(v2["embedding"]) - 1.0) < 1e-4  # the model's own (normalised) vector
    assert store.keys("modelpack:r1:minilm:2:*")  # version 2's row under a key of its own


def _row_key(config, version: int, text: str) -> str:
    """The Redis key of ``text``'s row for minilm ``version``, from the service's own reading of the
    repository (manifest, tokenizer, max_length)."""
    from serving.cache import item_digests, version_digest
    from serving.models import load_models
    from serving.settings import read_settings
    from serving.tasks import Texts

    entry = load_models(read_settings(config, environ={}))["minilm"].versions[version]
    return f"modelpack:r1:minilm:{version}:{version_digest(entry)}:{item_digests(Texts.of(text=text))[0]}"


def test_texts_through_name_text_are_cached_apart_and_served_from_redis(stack, service_config, tmp_path):
    """A second Bento on the same Triton and Redis, ``tokenize: triton``: version 2's texts go to the
    ensemble minilm_text. The row the stack's Bento cached for the same text and version (tokenized in
    the service, sent to minilm) is not served to it (another key); its own repeat is (minilm_text does
    not run again), equal to what the ensemble answered."""
    import time

    import redis as redis_sync

    from serving.launcher import BentoServer

    triton, store = stack["triton"], redis_sync.Redis.from_url(stack["redis"].url)
    triton.load("minilm")  # through minilm_text: the ensemble and its tokenizer come with it
    config = service_config(
        tmp_path / "service.yaml",
        triton.repository,
        triton.grpc_url,
        [{"name": "minilm", "task": "feature-extraction", "versions": {2: 100}, "tokenize": "triton"}],
        cache={"enabled": True, "redis_url": stack["redis"].url},
    )
    text = "Tokenized in Triton, cached apart."
    direct = (
        stack["bento"]
        .client.post("/embed", json={"text": text, "version": 2}, headers=_bearer("cache"))
        .json()
    )
    assert direct["version"] == 2 and len(store.keys("modelpack:r1:minilm:2:*")) >= 1

    def ensemble_count() -> int:
        return int(triton.statistics("minilm_text")["model_stats"][0].get("inference_count", 0))

    bento = BentoServer(config, tmp_path / "home", tmp_path / "bento.log", die_with_parent=True).start()
    try:
        counts = [ensemble_count()]
        answers = []
        for _ in range(2):
            response = bento.client.post("/embed", json={"text": text})
            assert response.status_code == 200, response.text
            answers.append(response.json())
            deadline = time.monotonic() + 10  # Triton counts a request after answering it
            while len(counts) == 1 and ensemble_count() == counts[0] and time.monotonic() < deadline:
                time.sleep(0.05)
            counts.append(ensemble_count())
        metrics = bento.client.get("/metrics").text
    finally:
        bento.stop()
    assert [a["version"] for a in answers] == [2, 2]
    assert counts[1] - counts[0] == 1 and counts[2] == counts[1]  # the repeat did not reach Triton
    assert _metric(metrics, "modelpack_cache_items_total", version="2", result="miss") == 1
    assert _metric(metrics, "modelpack_cache_items_total", version="2", result="hit") == 1
    assert answers[0]["embedding"] == answers[1]["embedding"]
    np.testing.assert_allclose(answers[0]["embedding"], direct["embedding"], atol=1e-5)
    item = _row_key(stack["config"], 2, text).rsplit(":", 1)[1]
    assert len(store.keys(f"modelpack:r1:minilm:2:*:{item}")) == 2  # one row per path, same item


def test_redis_down_the_service_still_answers_and_counts_it(stack):
    client, headers, redis = stack["bento"].client, _bearer("cache"), stack["redis"]
    errors = _metric(client.get("/metrics").text, "modelpack_cache_errors_total")
    redis.stop()
    try:
        down = client.post(
            "/embed/batch", json={"texts": ["Redis is down.", "Still answered."]}, headers=headers
        )
        assert down.status_code == 200 and len(down.json()["embeddings"]) == 2
        text = client.get("/metrics").text
        assert _metric(text, "modelpack_cache_errors_total") > errors
        assert _metric(text, "modelpack_cache_items_total", result="bypassed") >= 2
    finally:
        redis.start()
    back = client.post("/embed", json={"text": "Redis is back."}, headers=headers)
    assert back.status_code == 200


# ---- Triton's response cache through the Bento's stack -------------------------------------------------


def test_triton_cache_hits_are_in_its_metrics(stack):
    import tritonclient.grpc as grpcclient

    triton = stack["triton"]
    ids = np.array([[101, 2000, 2001, 102]], dtype=np.int64)
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    hits = _metric(triton.metrics(), "nv_cache_num_hits_per_model", model="minilm", version="1")
    for _ in range(2):
        tensors = []
        for name, value in (("input_ids", ids), ("attention_mask", np.ones_like(ids))):
            tensor = grpcclient.InferInput(name, list(value.shape), "INT64")
            tensor.set_data_from_numpy(value)
            tensors.append(tensor)
        client.infer("minilm", tensors, model_version="1", client_timeout=30)
    assert _metric(triton.metrics(), "nv_cache_num_hits_per_model", model="minilm", version="1") == hits + 1


# ---- the dashboard and the alerts read what is exported ------------------------------------------------


def test_every_series_of_the_dashboard_and_the_alerts_is_exported(stack):
    """Traffic that touches every series (answers, a refusal, a cache miss and hit, a Redis failure),
    then each name the dashboard's queries and the alert rules read must be in what the running Bento
    (/metrics) or the running Triton (its metrics port) exports."""
    client, headers, redis = stack["bento"].client, _bearer("metrics"), stack["redis"]
    for _ in range(2):
        assert client.post("/embed", json={"text": "Dashboards read me."}, headers=headers).status_code == 200
    assert client.post("/embed", json={"text": "no key"}).status_code == 401
    redis.stop()
    try:
        assert client.post("/embed", json={"text": "Redis down."}, headers=headers).status_code == 200
    finally:
        redis.start()

    def names(text: str) -> set[str]:
        return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and line[0] != "#"}

    exported = names(client.get("/metrics").text) | names(stack["triton"].metrics())
    read = {
        **{f"dashboard: {title}": checks.metric_names(expr) for title, expr in checks.dashboard_queries()},
        **{f"alert {name}": checks.metric_names(expr) for name, expr in checks.alert_queries()},
    }
    assert all(read.values()) and len(read) > 20
    missing = {where: sorted(series - exported) for where, series in read.items() if series - exported}
    assert not missing, f"series read but not exported: {missing}"
    assert _metric(client.get("/metrics").text, "modelpack_triton_ready") == 1.0


def test_a_batch_job_sends_its_key(stack, tmp_path):
    import subprocess
    import sys

    from serving.launcher import ROOT

    records = tmp_path / "in.jsonl"
    records.write_text("".join(json.dumps({"text": f"Keyed line {i}."}) + "\n" for i in range(12)))
    command = [sys.executable, "-m", "serving.batch", str(records), str(tmp_path / "out.jsonl")]
    command += ["--url", stack["bento"].url, "--batch-size", "4"]
    refused = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "HTTP 401" in refused.stderr and "needs an API key" in refused.stderr
    done = subprocess.run(
        [*command, "--api-key", KEYS["batch"]], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == list(range(12))


def test_service_refuses_to_start_when_it_requires_keys_nobody_has(model_repo, service_config, tmp_path):
    """Keys required and none given: the worker's start-up fails with the reason (BentoML starts it
    again, and it fails again), so the service never answers, not even /healthz: closed, not open."""
    from core import processes
    from core.processes import HttpProbe, free_port
    from serving.launcher import BentoServer

    empty = tmp_path / "api-keys"
    empty.write_text("# no key yet\n", encoding="utf-8")
    config = service_config(
        tmp_path / "service.yaml",
        model_repo,
        "127.0.0.1:1",
        [{"name": "minilm", "task": "feature-extraction"}],
        access={"require_keys": True, "keys_file": str(empty)},
    )
    server = BentoServer(config, tmp_path / "home", tmp_path / "bento.log")
    server.port = free_port()
    child = processes.start(
        "bentoml serve",
        server.command(),
        log_path=server.log_path,
        env=server.environment(),
        die_with_parent=True,
    )
    try:
        child.wait_ready(lambda: "Application startup failed" in child.log_text(), timeout_s=180)
        log = child.log_text()
        assert "access.require_keys is true but no API key was found" in log
        assert not HttpProbe(f"{server.url}/healthz")()
    finally:
        child.stop()
