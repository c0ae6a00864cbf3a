"""What the service tells its operators: Prometheus series (``modelpack_*`` on BentoML's /metrics),
JSON log lines carrying the request id of the request being served. The dashboard and alert rules of
``deploy/observability/`` read these series (a test checks that each one they name is exported)."""

import contextvars
import functools
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

# The parent of every logger of this package: configure_logging gives it the JSON handler.
LOGGER = "serving"
# The logger BentoML logs a failed request on, with its traceback, whatever the failure.
BENTOML_REQUEST_LOGGER = "bentoml._internal.server.http_app"
# The request id of the request being served, for log lines and error bodies.
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


@functools.cache
def metrics() -> dict[str, Any]:
    """Prometheus series served on BentoML's /metrics (created once per process, on first use).
    prometheus_client is imported here, not at module import: BentoML's worker sets
    PROMETHEUS_MULTIPROC_DIR after importing this module, and the client reads it when first imported."""
    import prometheus_client

    labels = ["model", "version", "endpoint"]
    return {
        "requests": prometheus_client.Counter(
            name="modelpack_requests_total",
            documentation="Requests answered, by model, version, endpoint and HTTP status",
            labelnames=[*labels, "status"],
        ),
        "errors": prometheus_client.Counter(
            name="modelpack_errors_total",
            documentation="Requests answered with an error (4xx/5xx), by model, version, endpoint and status",
            labelnames=[*labels, "status"],
        ),
        "latency": prometheus_client.Histogram(
            name="modelpack_request_duration_seconds",
            documentation="Time from parsed request to response body, by model, version and endpoint",
            labelnames=labels,
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0),
        ),
        "batch": prometheus_client.Histogram(
            name="modelpack_triton_batch_rows",
            documentation="Rows per Triton call after merging concurrent requests",
            labelnames=["model", "version"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        ),
        # What the Bento's autoscaler reads (deploy/k8s/base/autoscaling.yaml): requests that wait in
        # this service for one of a model version's ``batching.max_in_flight`` Triton call slots.
        "queue_wait": prometheus_client.Histogram(
            name="modelpack_triton_queue_wait_seconds",
            documentation="Time a request waited in the service for a Triton call slot of its model version",
            labelnames=["model", "version"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        ),
        "waiting": prometheus_client.Gauge(
            name="modelpack_triton_waiting_requests",
            documentation="Requests waiting in the service for a Triton call slot, by model and version",
            labelnames=["model", "version"],
            multiprocess_mode="livesum",
        ),
        # Triton as the background check last saw it (serving/health.py): 1 ready, 0 not; what the
        # "Triton not ready" alert reads (deploy/observability/alerts.yaml).
        "triton_ready": prometheus_client.Gauge(
            name="modelpack_triton_ready",
            documentation="1 when Triton and every routable model version were ready at the last check",
            multiprocess_mode="livemin",
        ),
        # The shared response cache (serving/cache.py), per item: hit, miss, or bypassed (Redis down).
        "cache_items": prometheus_client.Counter(
            name="modelpack_cache_items_total",
            documentation="Items looked up in the response cache, by model, version and result "
            "(hit, miss, bypassed: Redis down or slow)",
            labelnames=["model", "version", "result"],
        ),
        "cache_errors": prometheus_client.Counter(
            name="modelpack_cache_errors_total",
            documentation="Redis calls of the response cache that failed or timed out, by operation",
            labelnames=["operation"],
        ),
        # API keys and rate limits (serving/access.py): requests refused before any route ran.
        "access_denied": prometheus_client.Counter(
            name="modelpack_access_denied_total",
            documentation="Requests refused by the access checks, by reason (missing_key, invalid_key: "
            "401; rate_limited: 429)",
            labelnames=["reason"],
        ),
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request id of the request being served."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": REQUEST_ID.get(),
        }
        data.update(getattr(record, "fields", {}))
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class OneLineClientErrors(logging.Filter):
    """BentoML logs every body its own validation refuses (a 400, the client's mistake) as an ERROR
    with a traceback: 3,347 of them, 11.8 MB, in one fuzzing run. This makes each one WARNING line
    naming the request id and what was wrong; failures of the service itself keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        from bentoml.exceptions import BentoMLException
        from pydantic import ValidationError

        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, ValidationError):
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in error.errors()[:5]
            )
            status = 400
        elif isinstance(error, BentoMLException) and int(error.error_code) < 500:
            problems, status = str(error), int(error.error_code)
        else:
            return True
        where = " ".join(str(a) for a in record.args) if isinstance(record.args, tuple) else ""
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg, record.args = "%s: %d request_id=%s: %s", (where, status, REQUEST_ID.get(), problems)
        record.exc_info = record.exc_text = None
        return True


def configure_logging() -> None:
    """JSON lines on stderr for the loggers of this package (``serving.*``); called when the service
    starts (its entry point), never at import."""
    log = logging.getLogger(LOGGER)
    if any(isinstance(h.formatter, JsonFormatter) for h in log.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    bentoml_log = logging.getLogger(BENTOML_REQUEST_LOGGER)
    if not any(isinstance(f, OneLineClientErrors) for f in bentoml_log.filters):
        bentoml_log.addFilter(OneLineClientErrors())
