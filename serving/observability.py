"""What the service tells its operators: Prometheus series (``modelpack_*`` on BentoML's /metrics, beside
BentoML's own ``bentoml_service_*``), and every log line of the service as one JSON object carrying the
request id of the request being served. The dashboard and alert rules of ``deploy/observability/``
read these series (a test checks that each one they name is exported)."""

import contextvars
import functools
import json
import logging
import sys
import threading
from datetime import UTC, datetime
from typing import Any

# The parent of every logger of this package (logged at INFO; the others at the levels BentoML sets).
LOGGER = "serving"
# The logger BentoML logs a failed request on, with its traceback, whatever the failure.
BENTOML_REQUEST_LOGGER = "bentoml._internal.server.http_app"
# The request id of the request being served, for log lines and error bodies (None outside a request).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


@functools.cache
def metrics() -> dict[str, Any]:
    """Prometheus series served on BentoML's /metrics (created once per process, on first use).
    prometheus_client is imported here, not at module import: BentoML's worker sets
    PROMETHEUS_MULTIPROC_DIR after importing this module, and the client reads it when first imported."""
    import prometheus_client

    return {
        # What BentoML's bentoml_service_request_total / _duration_seconds (endpoint, exact status) cannot
        # say: which model and version answered. Every answered request is observed, errors and timeouts
        # included (by status class, so a slow 503 shows in the p99); its _count is the request count.
        "latency": prometheus_client.Histogram(
            name="modelpack_request_duration_seconds",
            documentation="Time from parsed request to response body of every answered request, by model, "
            "version, endpoint and status class (2xx, 4xx, 5xx)",
            labelnames=["model", "version", "endpoint", "status_class"],
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
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message`` and ``request_id`` (the
    request being served, else null) on every line, then the record's ``fields`` (a request's endpoint,
    model, status, latency) and ``exception`` (the traceback, in the same line) where there are any."""

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
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
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
    """Every log line of this process as one JSON object on stderr, BentoML's own included.

    Called where the service starts, never at import: in ``bentoml serve``'s own process (the service's
    ``on_deployment`` hook, before the workers start: its start-up line, circus) and in each worker
    (``ModelService.__init__``: uvicorn's and starlette's errors, BentoML's lines, this package's). BentoML
    configures logging (``bentoml._internal.log.SERVER_LOGGING_CONFIG``: plain-text handlers on the
    ``bentoml``, ``uvicorn.error`` and ``circus`` loggers and on the root) before either point; here the
    root gets the one JSON handler and every logger's own console handlers go, so that all records
    propagate to it, at the levels BentoML set. Python's warnings and uncaught exceptions (any thread)
    become records too. Idempotent."""
    bentoml_log = logging.getLogger(BENTOML_REQUEST_LOGGER)
    if not any(isinstance(f, OneLineClientErrors) for f in bentoml_log.filters):
        bentoml_log.addFilter(OneLineClientErrors())
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    loggers = [root, *(v for v in logging.root.manager.loggerDict.values() if isinstance(v, logging.Logger))]
    for logger in loggers:
        console = [h for h in logger.handlers if _is_console(h)]
        for old in console:
            logger.removeHandler(old)
        if console and logger is not root:
            logger.propagate = True
    root.addHandler(handler)
    logging.getLogger(LOGGER).setLevel(logging.INFO)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = lambda args: _log_uncaught(
        args.exc_type, args.exc_value, args.exc_traceback, args.thread
    )


def _is_console(handler: logging.Handler) -> bool:
    """A handler that writes text to the terminal streams (not a file, not a network exporter)."""
    return type(handler) is logging.StreamHandler or (
        isinstance(handler, logging.StreamHandler)
        and not isinstance(handler, logging.FileHandler)
        and getattr(handler, "stream", None) in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    )


def _log_uncaught(exc_type, exc_value, traceback, thread=None) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc_value, traceback)
        return
    where = f" in thread {thread.name}" if thread is not None else ""
    logging.getLogger(LOGGER).critical(
        "uncaught %s%s", exc_type.__name__, where, exc_info=(exc_type, exc_value, traceback)
    )
