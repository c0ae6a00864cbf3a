"""The one request path every endpoint takes.

``RequestPath.serve(route, model, version, inputs)``: the task registry (``core/tasks.py``) says which
task serves the route; the model is the one named (or the one configured with that task), the version
the pinned one (or the configured split's draw, e.g. a canary's {1: 90, 2: 10}); the inputs are checked
and preprocessed as the task's input kind says, sent to Triton (merged with concurrent requests), and
its output post-processed and shaped into the answer as the task and route say. The answer names
``model`` and the ``version`` that served it.

Images and pixel arrays are decoded in a small thread pool (``limits.decode_threads``), within
``limits.decode_timeout_s``, so that a large request never stalls the event loop (``/healthz`` and every
other request); so are texts past ``OFFLOAD_TEXT_CHARS``. The versions follow the repository and Triton
live (``serving/live.py``); an unpinned request that finds its version unloaded is sent once more, to
a version still routable.

Errors are JSON ``{"error", "field", "request_id"}`` with a 4xx naming the field, or 503 with
``Retry-After`` when Triton is down, slower than ``triton.timeout_s`` or lacks the version, or decoding
took longer than ``limits.decode_timeout_s``; a bug is a 500 naming the request id. Every request is
counted and timed (``modelpack_*`` series) and logged as one JSON line.
"""

import asyncio
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor

from starlette.responses import Response

from core.errors import ToolkitError, Unavailable
from core.tasks import ROUTES
from serving.http import error_response, json_response
from serving.live import ModelWatcher
from serving.models import ModelEntry, VersionEntry, find_model, load_models
from serving.observability import metrics
from serving.settings import ServiceSettings
from serving.tasks import POSTPROCESS, PREPROCESS, REPLIES, Images, Request, Texts
from serving.triton_client import TritonCalls, TritonGateway, TritonUnavailable

log = logging.getLogger(__name__)

# Texts are tokenized on the event loop (a short request takes ~0.1 ms, less than a thread hop) unless
# the request carries more characters than this; images and arrays always go to the decoding threads.
OFFLOAD_TEXT_CHARS = 20_000


class RequestPath:
    """The configured models, the Triton client and the series they report to, and ``serve``."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.models = load_models(settings)
        self.triton = TritonGateway(settings.triton)
        self.rng = random.Random()
        self.metrics = metrics()
        self.calls = TritonCalls(self.triton, settings.batching, self.metrics["batch"])
        self.watcher = ModelWatcher(settings, self.models, self.triton)
        self.decoder = ThreadPoolExecutor(settings.limits.decode_threads, thread_name_prefix="decode")
        self._last_ready_reason: str | None = "not checked yet"
        log.info(
            "serving %s from %s via Triton at %s",
            ", ".join(f"{m.name} ({m.task}, split {m.split})" for m in self.models.values()),
            settings.repository,
            settings.triton.url,
        )

    async def serve(
        self,
        route: str,
        model: str | None,
        version: int | None,
        inputs: Texts | Images,
        *,
        top_k: int | None = None,
    ) -> Response:
        """The answer to one request of ``route``, errors included; counted, timed and logged."""
        task, reply = ROUTES[route]
        request = Request(inputs, top_k)
        started = time.perf_counter()
        model_label, version_label = "unknown", ""
        self.watcher.start()
        try:
            entry = find_model(self.models, model, task.task, route)
            model_label = entry.name
            chosen = entry.choose(version, self.rng)
            version_label = str(chosen.version)
            if inputs.kind != task.input_kind:
                raise TypeError(f"{route} takes {task.input_kind} inputs, the endpoint gave {inputs.kind}")
            tensors = await self._preprocess(task.input_kind, inputs, chosen)
            output, served, chosen = await self._infer(entry, chosen, version, inputs, tensors)
            results = POSTPROCESS[task.postprocess](output, request, entry, chosen)
            body = {"model": entry.name, "version": served, **REPLIES[reply.reply](results, request)}
            version_label = str(served)
            response = json_response(body)
        except ToolkitError as err:
            response = error_response(err)
            level = logging.WARNING if response.status_code < 500 else logging.ERROR
            fields = {"endpoint": route, "status": response.status_code}
            if getattr(err, "detail", None):  # e.g. Triton's address and gRPC error: for the log only
                fields["detail"] = err.detail
            log.log(level, "%s %s: %s", route, response.status_code, err, extra={"fields": fields})
        except Exception:  # a bug: answer 500 with the request id (and count it) rather than lose it
            log.exception(
                "%s 500: unexpected error", route, extra={"fields": {"endpoint": route, "status": 500}}
            )
            response = error_response(
                ToolkitError(f"{route}: internal error; the service log has it under this request_id")
            )
        self._observe(route, model_label, version_label, response.status_code, time.perf_counter() - started)
        return response

    async def _preprocess(self, kind: str, inputs: Texts | Images, chosen: VersionEntry) -> dict:
        """The request's tensors for ``chosen``: images, arrays and long texts in the decoding threads,
        within ``limits.decode_timeout_s`` (a job still queued then is cancelled)."""
        limits = self.settings.limits
        if kind == "text" and sum(len(t) for f in inputs.fields for t in f.texts) <= OFFLOAD_TEXT_CHARS:
            return PREPROCESS[kind](inputs, chosen, limits)
        job = asyncio.get_running_loop().run_in_executor(
            self.decoder, PREPROCESS[kind], inputs, chosen, limits
        )
        try:
            return await asyncio.wait_for(job, limits.decode_timeout_s)
        except TimeoutError:
            raise Unavailable(
                f"the request's inputs were not decoded within {limits.decode_timeout_s:g} s "
                "(limits.decode_timeout_s): the service is busy decoding others; retry later, or send "
                "fewer or smaller images",
                retry_after_s=self.settings.triton.retry_after_s,
            ) from None

    async def _infer(
        self,
        entry: ModelEntry,
        chosen: VersionEntry,
        pinned: int | None,
        inputs: Texts | Images,
        tensors: dict,
    ) -> tuple:
        """Triton's output, the version that served it and its entry. An unpinned request whose version
        Triton no longer has (unloaded while it was routed) goes once more, to a version still routable."""
        try:
            output, served = await self.calls.run(
                entry.name, chosen.version, chosen.output_name, entry.max_batch_size, tensors
            )
            return output, served, chosen
        except TritonUnavailable as err:
            other = self._other_version(entry, chosen, pinned, err)
            if other is None:
                raise
        log.info(
            "%s version %d is not loaded on Triton; sent to version %d",
            entry.name,
            chosen.version,
            other.version,
        )
        if other.image is None or other.image != chosen.image or other.input_names != chosen.input_names:
            tensors = await self._preprocess(inputs.kind, inputs, other)
        output, served = await self.calls.run(
            entry.name, other.version, other.output_name, entry.max_batch_size, tensors
        )
        return output, served, other

    def _other_version(
        self, entry: ModelEntry, chosen: VersionEntry, pinned: int | None, err: TritonUnavailable
    ) -> VersionEntry | None:
        """Where an unpinned request goes when Triton no longer has its version: another version of the
        split (after routing around the gone one), or None."""
        if pinned is not None or not err.version_gone:
            return None
        self.watcher.version_gone(entry, chosen.version)
        if chosen.version in entry.split:
            return None
        return entry.choose(None, self.rng)

    def _observe(self, route: str, model: str, version: str, status: int, elapsed: float) -> None:
        labels = {"model": model, "version": version, "endpoint": route}
        self.metrics["requests"].labels(**labels, status=str(status)).inc()
        if status >= 400:
            self.metrics["errors"].labels(**labels, status=str(status)).inc()
        else:
            self.metrics["latency"].labels(**labels).observe(elapsed)
        if self.settings.log_requests and status < 400:
            log.info(
                "%s %s",
                route,
                status,
                extra={
                    "fields": {
                        "endpoint": route,
                        "model": model,
                        "version": version,
                        "status": status,
                        "latency_ms": round(elapsed * 1000, 2),
                    }
                },
            )

    async def ready(self) -> bool:
        """Triton and every routable model version ready; a change of the answer is logged once."""
        self.watcher.start()
        routable = [(m.name, v) for m in self.models.values() for v in m.split]
        reason = await self.triton.readiness(routable)
        if reason != self._last_ready_reason:
            log.log(logging.WARNING if reason else logging.INFO, "readiness: %s", reason or "ready")
            self._last_ready_reason = reason
        return reason is None

    async def close(self) -> None:
        await self.watcher.close()
        self.decoder.shutdown(wait=False, cancel_futures=True)
        await self.triton.close()
