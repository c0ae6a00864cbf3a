"""The one request path every endpoint takes.

``RequestPath.serve(route, model, version, inputs)``: the task registry (``core/tasks.py``) says which
task serves the route; the model is the one named (or the one configured with that task), the version
the pinned one (or the configured split's draw, e.g. a canary's {1: 90, 2: 10}); the inputs are checked
and preprocessed as the task's input kind says, sent to Triton (merged with concurrent requests), and
its output post-processed and shaped into the answer as the task and route say. The answer names
``model`` and the ``version`` that served it. With the response cache on (``cache:``), the rows Redis
holds for that version are taken from it and only the other items go to Triton (serving/cache.py).

``RequestPath.infer(name, version, body)``: the Open Inference Protocol route, for any configured
model: the request's tensors checked against the chosen version's manifest (``serving/protocol.py``),
the same version choice, Triton call, errors, counting and logging.

Images, pixel arrays, feature rows and tensors are decoded in a small thread pool
(``limits.decode_threads``), within ``limits.decode_timeout_s``, so that a large request never stalls
the event loop (``/healthz`` and every other request); so are texts past ``OFFLOAD_TEXT_CHARS``. The
versions follow the repository and Triton live (``serving/live.py``); an unpinned request that finds
its version unloaded is sent once more, to a version still routable.

Errors are JSON ``{"error", "field", "request_id"}`` (OpenAI's ``{"error": {"message", "type", "param",
"code"}}`` on its route) with a 4xx naming the field, or 503 with ``Retry-After`` when Triton is down,
slower than ``triton.timeout_s`` or lacks the version, or decoding took longer than
``limits.decode_timeout_s``; a bug is a 500 naming the request id. Every answered request is timed by
model, version, endpoint and status class (``modelpack_request_duration_seconds``; BentoML's own series
count it by exact status) and logged as one JSON line.
"""

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
from starlette.responses import Response

from core.companions import ENSEMBLE_VERSION, text_name
from core.errors import InvalidArgument, ToolkitError, Unavailable
from core.tasks import INFER_ROUTES, ROUTES, TASK_SPECS
from serving.cache import ResponseCache, row_shape_of, take_rows
from serving.health import TritonHealth
from serving.http import error_response, json_response
from serving.live import ModelWatcher
from serving.models import ModelEntry, VersionEntry, find_model, load_models, served_model
from serving.observability import metrics
from serving.protocol import infer_response, parse_infer_request
from serving.settings import ServiceSettings
from serving.tasks import (
    POSTPROCESS,
    PREPROCESS,
    REPLIES,
    Features,
    Images,
    Request,
    Tensors,
    Texts,
    token_counts,
)
from serving.triton_client import TritonCalls, TritonGateway, TritonUnavailable

log = logging.getLogger(__name__)

# Texts are tokenized on the event loop (a short request takes ~0.1 ms, less than a thread hop) unless
# the request carries more characters than this; every other input kind goes to the decoding threads.
OFFLOAD_TEXT_CHARS = 20_000


def text_chars(inputs: Texts) -> int:
    """The characters of a request's texts; items that are not text (OpenAI's token arrays, refused by
    the text preprocessing with what to send instead) count for nothing."""
    return sum(len(t) for f in inputs.fields for t in f.texts if isinstance(t, str))


def as_declared(outputs: dict[str, np.ndarray], chosen: VersionEntry) -> dict[str, np.ndarray]:
    """Triton's outputs in the manifest's shapes: a [batch] output comes back as [batch, 1] (its config
    declares dims [1], reshaped to [] for the model) and is given as [batch]."""
    ranks = {spec.name: len(spec.shape) for spec in chosen.outputs}
    return {
        name: array.reshape(len(array)) if ranks.get(name) == 1 and array.ndim == 2 else array
        for name, array in outputs.items()
    }


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
        # The versions follow the repository and Triton while the service runs.
        self.watcher = ModelWatcher(settings, self.models, self.triton)
        self.decoder = ThreadPoolExecutor(settings.limits.decode_threads, thread_name_prefix="decode")
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
        inputs: Texts | Images | Features | Tensors,
        *,
        top_k: int | None = None,
        encoding_format: str = "float",
        dimensions: int | None = None,
    ) -> Response:
        """The answer to one request of ``route``, errors included; timed and logged."""
        task, reply = ROUTES[route]
        request = Request(inputs, top_k, encoding_format, dimensions)

        async def answer(labels: dict[str, str]) -> Response:
            self.watcher.start()
            entry = find_model(self.models, model, task.task, route)
            labels["model"] = entry.name
            chosen = entry.choose(version, self.rng)
            labels["version"] = str(chosen.version)
            if inputs.kind != task.input_kind:
                raise TypeError(f"{route} takes {task.input_kind} inputs, the endpoint gave {inputs.kind}")
            tensors = await self._preprocess(task.input_kind, inputs, chosen)
            counted = request
            if reply.reply == "openai_embeddings":  # OpenAI's answer reports the tokens in `usage`
                counted = replace(request, tokens=await self._token_counts(tensors, inputs, chosen))
            # Text rows may merge with others zero-padded (masked out); other tensors merge only with
            # rows of their own shapes. The tensors task answers with every output, the others with one.
            every_output = task.postprocess == "tensors"
            pad = task.input_kind == "text"
            (output, served), chosen = await self._cached(
                entry, chosen, version, inputs, tensors, every_output, pad
            )
            results = POSTPROCESS[task.postprocess](as_declared(output, chosen), counted, entry, chosen)
            labels["version"] = str(served)
            return json_response(
                {"model": entry.name, "version": served, **REPLIES[reply.reply](results, counted)}
            )

        return await self._handle(route, answer, reply.errors)

    async def infer(self, name: str, version: str | None, body: bytes) -> Response:
        """An Open Inference Protocol request for any configured model: its tensors checked against
        the chosen version's manifest, sent to Triton, every output (or those asked for) returned.
        ``version``: the path's (None: the configured split)."""
        route = INFER_ROUTES[0] if version is None else INFER_ROUTES[1]

        async def answer(labels: dict[str, str]) -> Response:
            self.watcher.start()
            entry = served_model(self.models, name)
            labels["model"] = entry.name
            if version is not None and not (version.isdigit() and int(version) > 0):
                raise InvalidArgument(
                    f"version: {version!r} is not a version number; write e.g. "
                    f"/v2/models/{name}/versions/1/infer",
                    field="version",
                )
            chosen = entry.choose(None if version is None else int(version), self.rng)
            labels["version"] = str(chosen.version)
            # The body is parsed and its tensors built in the decoding threads (a large tensor is a
            # large JSON list), within limits.decode_timeout_s.
            request = await self._decoded(
                parse_infer_request,
                body,
                entry.name,
                list(chosen.inputs),
                list(chosen.outputs),
                self.settings.limits.max_items,
            )
            pad = TASK_SPECS[entry.task].input_kind == "text"
            self.health.raise_if_down()
            outputs, served = await self.calls.run(
                entry.name, chosen.version, request.outputs, entry.max_batch_size, request.inputs, pad=pad
            )
            labels["version"] = str(served)
            outputs = as_declared(outputs, chosen)
            return json_response(
                infer_response(entry.name, served, request.id, outputs, list(chosen.outputs))
            )

        return await self._handle(route, answer)

    async def _handle(
        self,
        route: str,
        answer: Callable[[dict[str, str]], Awaitable[Response]],
        errors: str = "service",
    ) -> Response:
        """``answer``'s response, or the error's (in the route's ``errors`` shape); timed and logged
        under ``route`` and the model and version ``answer`` put in the labels as it learns them."""
        started = time.perf_counter()
        labels = {"model": "unknown", "version": ""}
        try:
            response = await answer(labels)
        except ToolkitError as err:
            response = error_response(err, errors)
            level = logging.WARNING if response.status_code < 500 else logging.ERROR
            fields = {"endpoint": route, "status": response.status_code}
            if getattr(err, "detail", None):  # e.g. Triton's address and gRPC error: for the log only
                fields["detail"] = err.detail
            log.log(level, "%s %s: %s", route, response.status_code, err, extra={"fields": fields})
        except Exception:  # a bug: answer 500 with the request id (and count it) rather than lose it
            log.exception(
                "%s 500: unexpected error", route, extra={"fields": {"endpoint": route, "status": 500}}
            )
            where = "this request_id" if errors == "service" else "this response's X-Request-ID"
            response = error_response(
                ToolkitError(f"{route}: internal error; the service log has it under {where}"), errors
            )
        elapsed = time.perf_counter() - started
        self._observe(route, labels["model"], labels["version"], response.status_code, elapsed)
        return response

    async def _preprocess(
        self, kind: str, inputs: Texts | Images | Features | Tensors, chosen: VersionEntry
    ) -> dict:
        """The request's tensors for ``chosen``: short texts on the event loop, everything else in the
        decoding threads (``_decoded``)."""
        limits = self.settings.limits
        if kind == "text" and text_chars(inputs) <= OFFLOAD_TEXT_CHARS:
            return PREPROCESS[kind](inputs, chosen, limits)
        return await self._decoded(PREPROCESS[kind], inputs, chosen, limits)

    async def _token_counts(self, tensors: dict, inputs: Texts, chosen: VersionEntry) -> tuple[int, ...]:
        """Tokens per text for OpenAI's ``usage``: from the attention mask, or, for texts going to the
        ensemble, tokenized again for the count, in the decoding threads as ``_preprocess`` would."""
        if "attention_mask" in tensors or text_chars(inputs) <= OFFLOAD_TEXT_CHARS:
            return token_counts(tensors, inputs, chosen)
        return await self._decoded(token_counts, tensors, inputs, chosen)

    async def _decoded(self, work: Callable, *args):
        """``work(*args)`` in the decoding threads, within ``limits.decode_timeout_s`` (a job still
        queued then is cancelled): a large request never stalls the event loop."""
        limits = self.settings.limits
        job = asyncio.get_running_loop().run_in_executor(self.decoder, work, *args)
        try:
            return await asyncio.wait_for(job, limits.decode_timeout_s)
        except TimeoutError:
            raise Unavailable(
                f"the request's inputs were not decoded within {limits.decode_timeout_s:g} s "
                "(limits.decode_timeout_s): the service is busy decoding others; retry later, or send "
                "fewer or smaller inputs",
                retry_after_s=self.settings.triton.retry_after_s,
            ) from None

    async def _cached(
        self,
        entry: ModelEntry,
        chosen: VersionEntry,
        pinned: int | None,
        inputs: Texts | Images | Features | Tensors,
        tensors: dict,
        every_output: bool,
        pad: bool,
    ) -> tuple:
        """``_infer``'s answer; with the response cache on, the rows cached for ``chosen`` are taken from
        it and only the other items go to Triton. Rows of two versions are never mixed: when Triton
        answers the missing items from another version (``chosen`` unloaded meanwhile), the cached rows
        are dropped and the whole request is answered without the cache."""
        keys = None
        if self.cache is not None and not every_output:
            keys = self.cache.keys(entry.name, chosen, inputs)
        rows = None
        if keys is not None:
            labels = {"model": entry.name, "version": str(chosen.version)}
            rows = await self.cache.get(keys, row_shape_of(chosen), labels)
        if rows is None:  # no cache, a version it does not hold, or Redis bypassed
            self.health.raise_if_down()
            return await self._infer(entry, chosen, pinned, inputs, tensors, every_output, pad)
        missing = [i for i, row in enumerate(rows) if row is None]
        if not missing:  # every row cached: Triton is not needed
            return ({chosen.output_name: np.stack(rows)}, chosen.version), chosen
        self.health.raise_if_down()
        (output, served), used = await self._infer(
            entry, chosen, pinned, inputs, take_rows(tensors, missing), every_output, pad
        )
        if used is not chosen or served != chosen.version:
            return await self._infer(entry, chosen, pinned, inputs, tensors, every_output, pad)
        computed = output[chosen.output_name]
        await self.cache.put({keys[i]: computed[j] for j, i in enumerate(missing)})
        for j, i in enumerate(missing):
            rows[i] = computed[j]
        return ({chosen.output_name: np.stack(rows).astype(computed.dtype, copy=False)}, served), chosen

    async def _infer(
        self,
        entry: ModelEntry,
        chosen: VersionEntry,
        pinned: int | None,
        inputs: Texts | Images | Features | Tensors,
        tensors: dict,
        every_output: bool,
        pad: bool,
    ) -> tuple:
        """Triton's output (every output of the version, else its first), the version that served it and
        its entry. An unpinned request whose version Triton no longer has (unloaded while it was routed)
        goes once more, to a version still routable."""
        try:
            return await self._run(entry, chosen, tensors, every_output, pad), chosen
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
        return await self._run(entry, other, tensors, every_output, pad), other

    async def _run(
        self, entry: ModelEntry, chosen: VersionEntry, tensors: dict, every_output: bool, pad: bool
    ) -> tuple:
        """Triton's output for ``chosen`` (at ``chosen.triton_model``: NAME, or the texts to NAME_text)
        and the version that served it."""
        outputs = chosen.output_names if every_output else (chosen.output_name,)
        output, served = await self.calls.run(
            chosen.triton_model, chosen.triton_version, outputs, entry.max_batch_size, tensors, pad=pad
        )
        if chosen.via_text_model:  # the ensemble reports its own version, not its steps'
            served = chosen.version
        return output, served

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
        # Every label value is bounded: the route is one of the registry's (or the protocol's templates),
        # the model a configured one (else "unknown"), the version a served one (else ""), the status its
        # class.
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
        """Every routable (model, version) of Triton: each model's split, and the ensemble NAME_text
        where the split's texts go through it."""
        routable = [(m.name, v) for m in self.models.values() for v in m.split]
        routable += [
            (text_name(m.name), ENSEMBLE_VERSION)
            for m in self.models.values()
            if any(m.via_text(v) for v in m.split)
        ]
        return routable

    async def ready(self) -> bool:
        """Triton and every routable model version ready, as the background check last found them
        (serving/health.py); a change of the answer is logged once."""
        self.watcher.start()
        return await self.health.ready()

    async def close(self) -> None:
        await self.health.close()
        await self.watcher.close()
        self.decoder.shutdown(wait=False, cancel_futures=True)
        if self.cache is not None:
            await self.cache.close()
        await self.triton.close()
