"""The one request path every endpoint takes.

``RequestPath.serve(route, model, version, inputs)``: the task registry (``core/tasks.py``) says which
task serves the route; the model is the one named (or the one configured with that task), the version
the pinned one (or the configured split's draw, e.g. a canary's {1: 90, 2: 10}); the inputs are checked
and preprocessed as the task's input kind says, sent to Triton (merged with concurrent requests), and
its output post-processed and shaped into the answer as the task and route say. The answer names
``model`` and the ``version`` that served it.

Errors are JSON ``{"error", "field", "request_id"}`` (OpenAI's ``{"error": {"message", "type", "param",
"code"}}`` on its route) with a 4xx naming the field, or 503 with ``Retry-After`` when Triton is down or
slower than ``triton.timeout_s``; a bug is a 500 naming the request id. Every answered request is timed
by model, version, endpoint and status class (``modelpack_request_duration_seconds``; BentoML's own
series count it by exact status) and logged as one JSON line.
"""

import logging
import random
import time
from dataclasses import replace

from starlette.responses import Response

from core.errors import ToolkitError
from core.tasks import ROUTES
from serving.health import TritonHealth
from serving.http import error_response, json_response
from serving.models import find_model, load_models
from serving.observability import metrics
from serving.settings import ServiceSettings
from serving.tasks import POSTPROCESS, PREPROCESS, REPLIES, Images, Request, Texts, token_counts
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
        self.health = TritonHealth(self.triton, self._routable, settings.triton)
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
        encoding_format: str = "float",
        dimensions: int | None = None,
    ) -> Response:
        """The answer to one request of ``route``, errors included; timed and logged."""
        task, reply = ROUTES[route]
        request = Request(inputs, top_k, encoding_format, dimensions)
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
            request = replace(request, tokens=token_counts(tensors))
            self.health.raise_if_down()
            output, served = await self.calls.run(
                entry.name, chosen.version, chosen.output_name, entry.max_batch_size, tensors
            )
            results = POSTPROCESS[task.postprocess](output, request, entry, chosen)
            body = {"model": entry.name, "version": served, **REPLIES[reply.reply](results, request)}
            version_label = str(served)
            response = json_response(body)
        except ToolkitError as err:
            response = error_response(err, reply.errors)
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
            where = "this request_id" if reply.errors == "service" else "this response's X-Request-ID"
            response = error_response(
                ToolkitError(f"{route}: internal error; the service log has it under {where}"), reply.errors
            )
        self._observe(route, model_label, version_label, response.status_code, time.perf_counter() - started)
        return response

    def _observe(self, route: str, model: str, version: str, status: int, elapsed: float) -> None:
        # Every label value is bounded: the route is one of the registry's, the model a configured one
        # (else "unknown"), the version a served one (else ""), the status its class.
        self.metrics["latency"].labels(
            model=model, version=version, endpoint=route, status_class=f"{status // 100}xx"
        ).observe(elapsed)
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
        await self.triton.close()
