"""The one request path every endpoint takes.

``RequestPath.serve(route, model, version, inputs)``: the task registry (``core/tasks.py``) says which
task serves the route; the model is the one named (or the one configured with that task), the version
the pinned one (or the configured split's draw, e.g. a canary's {1: 90, 2: 10}); the inputs are checked
and preprocessed as the task's input kind says, sent to Triton (merged with concurrent requests), and
its output post-processed and shaped into the answer as the task and route say. The answer names
``model`` and the ``version`` that served it. With the response cache on (``cache:``), the rows Redis
holds for that version are taken from it and only the other items go to Triton (serving/cache.py).

Errors are JSON ``{"error", "field", "request_id"}`` with a 4xx naming the field, or 503 with
``Retry-After`` when Triton is down or slower than ``triton.timeout_s``; a bug is a 500 naming the
request id. Every request is counted and timed (``modelpack_*`` series) and logged as one JSON line.
"""

import logging
import random
import time

import numpy as np
from starlette.responses import Response

from core.errors import ToolkitError
from core.tasks import ROUTES
from serving.cache import ResponseCache, row_shape_of, take_rows
from serving.health import TritonHealth
from serving.http import error_response, json_response
from serving.models import ModelEntry, VersionEntry, find_model, load_models
from serving.observability import metrics
from serving.settings import ServiceSettings
from serving.tasks import POSTPROCESS, PREPROCESS, REPLIES, Images, Request, Texts
from serving.triton_client import TritonCalls, TritonGateway

log = logging.getLogger(__name__)


class RequestPath:
    """The configured models, the Triton client and the series they report to, and ``serve``."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.models = load_models(settings)
        self.triton = TritonGateway(settings.triton)
        self.rng = random.Random()
        self.metrics = metrics()
        self.calls = TritonCalls(
            self.triton,
            settings.batching,
            self.metrics["batch"],
            queue_wait=self.metrics["queue_wait"],
            waiting=self.metrics["waiting"],
        )
        # Triton checked in the background: /readyz reads it, requests fail fast while Triton is down.
        self.health = TritonHealth(
            self.triton, self._routable, settings.triton, ready_gauge=self.metrics["triton_ready"]
        )
        # The shared response cache in Redis (serving/cache.py), when service.yaml turns it on.
        self.cache = ResponseCache(settings.cache, self.metrics) if settings.cache.enabled else None
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
        try:
            entry = find_model(self.models, model, task.task, route)
            model_label = entry.name
            chosen = entry.choose(version, self.rng)
            version_label = str(chosen.version)
            if inputs.kind != task.input_kind:
                raise TypeError(f"{route} takes {task.input_kind} inputs, the endpoint gave {inputs.kind}")
            tensors = PREPROCESS[task.input_kind](inputs, chosen, self.settings.limits)
            output, served = await self._infer(entry, chosen, inputs, tensors)
            results = POSTPROCESS[task.postprocess](output, request, entry, chosen)
            body = {"model": entry.name, "version": served, **REPLIES[reply.reply](results, request)}
            version_label = str(served)
            response = json_response(body)
        except ToolkitError as err:
            response = error_response(err)
            level = logging.WARNING if response.status_code < 500 else logging.ERROR
            log.log(
                level,
                "%s %s: %s",
                route,
                response.status_code,
                err,
                extra={"fields": {"endpoint": route, "status": response.status_code}},
            )
        except Exception:  # a bug: answer 500 with the request id (and count it) rather than lose it
            log.exception(
                "%s 500: unexpected error", route, extra={"fields": {"endpoint": route, "status": 500}}
            )
            response = error_response(
                ToolkitError(f"{route}: internal error; the service log has it under this request_id")
            )
        self._observe(route, model_label, version_label, response.status_code, time.perf_counter() - started)
        return response

    async def _infer(
        self, entry: ModelEntry, chosen: VersionEntry, inputs: Texts | Images, tensors: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, int]:
        """Triton's output rows for ``tensors`` and the version that served them; with the response cache
        on, the rows cached for this version are taken from it and only the others go to Triton."""
        keys = self.cache.keys(entry.name, chosen, inputs) if self.cache is not None else None
        rows = None
        if keys is not None:
            labels = {"model": entry.name, "version": str(chosen.version)}
            rows = await self.cache.get(keys, row_shape_of(chosen), labels)
        if rows is None:  # no cache, or Redis down: every row from Triton
            self.health.raise_if_down()
            return await self.calls.run(
                entry.name, chosen.version, chosen.output_name, entry.max_batch_size, tensors
            )
        missing = [i for i, row in enumerate(rows) if row is None]
        if not missing:  # every row cached: Triton is not needed
            return np.stack(rows), chosen.version
        self.health.raise_if_down()
        computed, served = await self.calls.run(
            entry.name, chosen.version, chosen.output_name, entry.max_batch_size, take_rows(tensors, missing)
        )
        if served != chosen.version:  # never mix versions: the rows Triton gave are the answer's only rows
            return await self.calls.run(
                entry.name, chosen.version, chosen.output_name, entry.max_batch_size, tensors
            )
        await self.cache.put({keys[i]: computed[j] for j, i in enumerate(missing)})
        for j, i in enumerate(missing):
            rows[i] = computed[j]
        return np.stack(rows).astype(computed.dtype, copy=False), served

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

    def _routable(self) -> list[tuple[str, int]]:
        return [(m.name, v) for m in self.models.values() for v in m.split]

    async def ready(self) -> bool:
        """Triton and every routable model version ready, as the background check last found them
        (serving/health.py); a change of the answer is logged once."""
        return await self.health.ready()

    async def close(self) -> None:
        await self.health.close()
        if self.cache is not None:
            await self.cache.close()
        await self.triton.close()
