"""What a log pipeline and Prometheus read from the service, with their own parsers.

This module runs its own Triton and ``bentoml serve`` (the session's are never disturbed): requests that
succeed, fail in each way (BentoML's validation, an unknown model, a path that does not exist, bytes
that are not HTTP) and, after its Triton is stopped, are answered 503; then the Bento is stopped.

- logs: EVERY line the server wrote (its own process, its worker, BentoML, uvicorn, circus, ours) is
  one JSON object with the same keys, read with ``json.loads``;
- metrics: ``/metrics`` read with Prometheus' text parser (``prometheus_client.parser``): one latency
  histogram of ours for every answered request, by model, version, endpoint and status class, 503s
  included; no counter duplicating BentoML's; bounded label values; the waiting-requests gauge.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from datetime import datetime

import pytest

from core.tasks import ROUTES

pytestmark = [pytest.mark.triton, pytest.mark.bento, pytest.mark.slow]

KEYS = {"time", "level", "logger", "message", "request_id"}
UNKNOWN_MODELS = 20


@dataclass
class Run:
    log_lines: list[str]
    metrics: str
    statuses: dict[str, int]  # request id -> status


@pytest.fixture(scope="module")
def run(model_repo, service_config, tmp_path_factory) -> Run:
    from local_triton.server import TritonServer
    from serving.launcher import BentoServer

    folder = tmp_path_factory.mktemp("telemetry")
    triton = TritonServer(model_repo, models=["minilm"], log_path=folder / "tritonserver.log").start()
    statuses: dict[str, int] = {}
    try:
        config = service_config(
            folder / "service.yaml",
            model_repo,
            triton.grpc_url,
            [{"name": "minilm", "task": "feature-extraction"}],
        )
        bento = BentoServer(config, folder / "home", folder / "bento.log").start()
        try:
            client = bento.client

            def post(request_id: str, path: str, headers: dict | None = None, **kwargs) -> None:
                headers = {"X-Request-ID": request_id, **(headers or {})}
                statuses[request_id] = client.post(path, headers=headers, **kwargs).status_code

            post("t-ok", "/embed", json={"text": "Paris is the capital of France."})
            post("t-openai", "/v1/embeddings", json={"model": "minilm", "input": ["a", "b"]})
            post("t-type", "/embed", json={"text": 5})
            post("t-json", "/embed", content=b'{"text": ', headers={"content-type": "application/json"})
            post("t-openai-model", "/v1/embeddings", json={"model": "gpt-x", "input": "a"})
            for i in range(UNKNOWN_MODELS):
                post(f"t-unknown-{i}", "/embed", json={"text": "x", "model": f"no-such-model-{i}"})
            statuses["t-path"] = client.get("/no/such/path", headers={"X-Request-ID": "t-path"}).status_code
            with socket.create_connection(("127.0.0.1", bento.port), timeout=10) as raw:
                raw.sendall(b"THIS IS NOT HTTP\r\n\r\n")  # uvicorn answers 400 and logs a warning
                raw.recv(1024)
            triton.stop()
            post("t-down", "/embed", json={"text": "Triton is gone"})
            metrics = client.get("/metrics").text
        finally:
            bento.stop()
    finally:
        triton.stop()
    return Run((folder / "bento.log").read_text(encoding="utf-8").splitlines(), metrics, statuses)


def test_the_requests_were_answered_as_expected(run):
    expected = {"t-ok": 200, "t-openai": 200, "t-type": 400, "t-json": 400, "t-openai-model": 404}
    expected |= {f"t-unknown-{i}": 404 for i in range(UNKNOWN_MODELS)} | {"t-path": 404, "t-down": 503}
    assert run.statuses == expected


# ---- logs -------------------------------------------------------------------------------------------


def test_every_log_line_is_one_json_object_with_the_same_keys(run):
    assert len(run.log_lines) >= 10, run.log_lines
    records = []
    for number, line in enumerate(run.log_lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"bento.log line {number} is not JSON: {line[:300]!r}")
        assert isinstance(record, dict), f"line {number}: {line[:300]}"
        assert KEYS <= set(record), f"line {number} lacks {sorted(KEYS - set(record))}: {line[:300]}"
        assert record["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), line
        assert datetime.fromisoformat(record["time"]).tzinfo is not None, line
        assert isinstance(record["message"], str) and isinstance(record["logger"], str), line
        records.append(record)
    loggers = {r["logger"] for r in records}

    # BentoML's own lines: the start-up line of `bentoml serve`'s own process, the worker's shutdown.
    assert any(
        r["logger"].startswith("bentoml") and "Starting production HTTP BentoServer" in r["message"]
        for r in records
    ), sorted(loggers)
    assert any(r["logger"].startswith("bentoml") and "cleanup" in r["message"] for r in records), loggers
    # uvicorn's error about the bytes that were not HTTP.
    assert any(r["logger"].startswith("uvicorn") for r in records), sorted(loggers)

    # Ours: the request line of a good request, under the client's request id, and the 503's.
    ok = [r for r in records if r["request_id"] == "t-ok" and r["logger"] == "serving.requests"]
    assert len(ok) == 1 and ok[0]["status"] == 200 and ok[0]["model"] == "minilm" and ok[0]["latency_ms"] > 0
    down = [r for r in records if r["request_id"] == "t-down"]
    assert down and down[-1]["level"] == "ERROR" and down[-1]["status"] == 503
    # A line logged outside any request says so (request_id null): the background check of Triton too.
    assert any(r["request_id"] is None for r in records)
    health = [r for r in records if r["logger"] == "serving.health"]
    assert health and all(r["request_id"] is None for r in health), health


# ---- metrics ----------------------------------------------------------------------------------------


def families(text: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    return {family.name: family for family in text_string_to_metric_families(text)}


def test_metrics_parse_and_time_every_answered_request_by_status_class(run):
    parsed = families(run.metrics)
    latency = parsed["modelpack_request_duration_seconds"]
    assert latency.type == "histogram"
    counts = {
        (s.labels["model"], s.labels["version"], s.labels["endpoint"], s.labels["status_class"]): s.value
        for s in latency.samples
        if s.name.endswith("_count")
    }
    assert counts[("minilm", "1", "/embed", "2xx")] == 1
    assert counts[("minilm", "1", "/v1/embeddings", "2xx")] == 1
    assert counts[("minilm", "1", "/embed", "5xx")] == 1  # the 503 after Triton stopped: timed too
    assert counts[("unknown", "", "/embed", "4xx")] == UNKNOWN_MODELS
    assert counts[("unknown", "", "/v1/embeddings", "4xx")] == 1
    # Each histogram is whole: its +Inf bucket holds every observation.
    for sample in latency.samples:
        if sample.name.endswith("_bucket") and sample.labels["le"] == "+Inf":
            key = tuple(sample.labels[k] for k in ("model", "version", "endpoint", "status_class"))
            assert sample.value == counts[key]


def test_no_series_duplicates_bentomls_and_label_values_are_bounded(run):
    parsed = families(run.metrics)
    ours = sorted(name for name in parsed if name.startswith("modelpack_"))
    assert ours == [
        "modelpack_request_duration_seconds",
        "modelpack_triton_batch_rows",
        "modelpack_triton_queue_wait_seconds",
        "modelpack_triton_ready",
        "modelpack_triton_waiting_requests",
    ]
    # BentoML's own series count every request by exact status, its validation errors included.
    bentoml_total = parsed["bentoml_service_request"]
    codes = {
        (s.labels["endpoint"], s.labels["http_response_code"]) for s in bentoml_total.samples if s.value > 0
    }
    assert {("/embed", "200"), ("/embed", "400"), ("/embed", "404"), ("/embed", "503")} <= codes
    # Twenty unknown model names made one label value, not twenty.
    for name in ours:
        for sample in parsed[name].samples:
            assert sample.labels.get("model", "minilm") in ("minilm", "unknown"), sample
            assert sample.labels.get("version", "1") in ("1", ""), sample
            assert sample.labels.get("endpoint", "/embed") in ROUTES, sample
            assert sample.labels.get("status_class", "2xx") in ("2xx", "4xx", "5xx"), sample


def test_waiting_requests_gauge_per_model(run):
    gauge = families(run.metrics)["modelpack_triton_waiting_requests"]
    assert gauge.type == "gauge"
    values = {(s.labels["model"], s.labels["version"]): s.value for s in gauge.samples}
    assert values == {("minilm", "1"): 0.0}  # nothing waits once every request was answered
