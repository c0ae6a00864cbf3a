"""The BentoML service in front of Triton: text and images in, embeddings, rankings and labels out.

Triton serves tensors; this service is what clients call. For each model named in its configuration
file (``service.yaml``, see ``ServiceSettings``) it reads the entries of the model repository
(manifest, tokenizer files, labels), turns requests into the tensors the manifest declares, calls
Triton by async gRPC over one reused channel, and turns the outputs back into JSON.

Endpoints (POST, JSON bodies; ``model`` may be left out when one configured model has the task):

==================  ====================  ===========================================================
route               task                  body
==================  ====================  ===========================================================
/embed              feature-extraction    ``text``                  -> ``embedding``
/embed/batch        feature-extraction    ``texts``                 -> ``embeddings``
/similarity         feature-extraction    ``query``, ``candidates`` -> ranked ``results``
/classify           text-classification   ``text``, ``top_k``       -> ``predictions``
/classify/batch     text-classification   ``texts``, ``top_k``      -> ``results``
/predict            image-classification  ``image`` (base64) or ``array``, ``top_k``  -> ``predictions``
/predict/batch      image-classification  ``images`` or ``arrays``, ``top_k``         -> ``results``
==================  ====================  ===========================================================

plus ``GET /models`` (names, versions, tensors, parity from the manifests), BentoML's ``/healthz``
(live), ``/readyz`` (ready only when Triton and every routable model version are ready) and
``/metrics`` (BentoML's metrics plus ``modelpack_*`` per model and version).

Every request may pin ``version``; otherwise the model's configured split (a canary such as
``{1: 90, 2: 10}``) picks one, and the response says which version served it. Errors are JSON
``{"error", "field", "request_id"}`` with a 4xx naming the field, or 503 with ``Retry-After`` when
Triton is down or slower than ``triton.timeout_s``. Every response carries ``X-Request-ID``.

Run it: ``bentoml serve service:ModelService`` from the repository root (configuration from
``$MODELPACK_SERVICE_CONFIG``, default ``service.yaml`` beside this file).
"""

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

import bentoml
import numpy as np
from fastapi import FastAPI
from pydantic import Field
from starlette.responses import Response

from core.errors import InvalidArgument, NotFound, ToolkitError, Unavailable
from core.tasks import TASK_SPECS
from serving.http import RequestContextMiddleware, check_items, check_texts, error_response, json_response
from serving.lifecycle import die_with_parent
from serving.models import ModelEntry, VersionEntry, load_models
from serving.observability import configure_logging, metrics
from serving.settings import load_settings
from serving.triton_client import Coalescer, TritonGateway

log = logging.getLogger(f"serving.{__name__}")  # until the request path moves into serving/


def check_top_k(top_k: int | None, entry: VersionEntry, default: int) -> int:
    top_k = default if top_k is None else top_k
    return min(top_k, len(entry.labels)) if entry.labels else top_k


def top_labels(logits: np.ndarray, labels: tuple[str, ...], top_k: int) -> list[list[dict]]:
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    order = np.argsort(-probs, axis=1)[:, :top_k]
    return [
        [
            {"label": labels[j] if j < len(labels) else str(j), "index": int(j), "score": float(row[j])}
            for j in idx
        ]
        for row, idx in zip(probs, order, strict=True)
    ]


def labels_body(
    entry: "ModelEntry",
    chosen: "VersionEntry",
    logits: np.ndarray,
    served: int,
    top_k: int | None,
    *,
    single: bool,
) -> dict:
    """The answer of a classifier endpoint: the top-k labels of one item, or of each."""
    ranked = top_labels(logits, chosen.labels, check_top_k(top_k, chosen, entry.top_k))
    if single:
        return {"model": entry.name, "version": served, "predictions": ranked[0]}
    return {"model": entry.name, "version": served, "results": [{"predictions": p} for p in ranked]}


# ---- the service ----------------------------------------------------------------------------------

models_app = FastAPI(title="modelpack models", docs_url=None, redoc_url=None, openapi_url=None)

TopK = Annotated[int | None, Field(ge=1, le=1000, description="labels per item (default: the model's top_k)")]
Version = Annotated[int | None, Field(ge=1, description="pin a version; default: the configured split")]
ModelName = Annotated[
    str | None, Field(description="a configured model; may be left out when one has the task")
]


@bentoml.service(
    name="modelpack",
    workers=1,
    traffic={"timeout": 60},
    logging={"access": {"enabled": False}},  # the JSON request log below carries the request id
    # OpenTelemetry's ASGI middleware costs ~14% of this worker's CPU per request even when no trace is
    # sampled (BentoML's default sample_rate is 0): skip it on the inference routes. To trace them,
    # set tracing.sample_rate and drop this list (BENTOML_CONFIG_OPTIONS or a bentoml config file).
    tracing={"excluded_urls": ["/embed", "/similarity", "/classify", "/predict"]},
)
@bentoml.asgi_app(models_app, path="/")
class ModelService:
    def __init__(self) -> None:
        configure_logging()
        die_with_parent()
        self.settings = load_settings()
        self.models = load_models(self.settings)
        self.triton = TritonGateway(self.settings.triton)
        self.rng = random.Random()
        self.coalescers: dict[tuple[str, int], Coalescer] = {}
        self.metrics = metrics()
        self._last_ready_reason: str | None = "not checked yet"
        log.info(
            "serving %s from %s via Triton at %s",
            ", ".join(f"{m.name} ({m.task}, split {m.split})" for m in self.models.values()),
            self.settings.repository,
            self.settings.triton.url,
        )

    @bentoml.on_shutdown
    async def shutdown(self) -> None:
        await self.triton.close()

    async def __is_ready__(self) -> bool:
        routable = [(m.name, v) for m in self.models.values() for v in m.split]
        reason = await self.triton.readiness(routable)
        if reason != self._last_ready_reason:
            log.log(logging.WARNING if reason else logging.INFO, "readiness: %s", reason or "ready")
            self._last_ready_reason = reason
        return reason is None

    # ---- shared request path ----

    def _model(self, name: str | None, task: str, endpoint: str) -> ModelEntry:
        if name is None:
            candidates = [m for m in self.models.values() if m.task == task]
            if len(candidates) == 1:
                return candidates[0]
            names = ", ".join(m.name for m in candidates) or "none"
            raise InvalidArgument(
                f"model: {endpoint} needs a {task} model and {'several are' if candidates else 'none is'} "
                f"configured ({names}); name one in `model`",
                field="model",
            )
        entry = self.models.get(name)
        if entry is None:
            names = ", ".join(m.name for m in self.models.values() if m.task == task) or "none"
            raise NotFound(f"model: {name!r} is not served here; {task} models: {names}", field="model")
        if entry.task != task:
            other = TASK_SPECS[entry.task].routes[0].path
            raise InvalidArgument(
                f"model: {name!r} serves {entry.task} and {endpoint} needs {task}; "
                f"call {other} with it instead",
                field="model",
            )
        return entry

    async def _run(
        self, entry: ModelEntry, version: VersionEntry, inputs: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, int]:
        """Send rows to Triton (merged with concurrent requests if batching.coalesce), within the timeout."""
        key = (entry.name, version.version)
        coalescer = self.coalescers.get(key)
        if coalescer is None:
            batching = self.settings.batching
            max_rows = min(batching.max_batch_size, entry.max_batch_size) if batching.coalesce else 1

            async def infer(rows: dict[str, np.ndarray]) -> tuple[np.ndarray, int]:
                return await self._infer_chunked(entry, version, rows)

            in_flight = batching.max_in_flight if batching.coalesce else 1_000_000
            coalescer = self.coalescers[key] = Coalescer(infer, max_rows, in_flight)
        try:
            async with asyncio.timeout(self.settings.triton.timeout_s):
                return await coalescer.submit(inputs)
        except TimeoutError:
            raise Unavailable(
                f"Triton at {self.settings.triton.url} did not answer for {entry.name} version "
                f"{version.version} within {self.settings.triton.timeout_s:g} s (triton.timeout_s); "
                "retry later",
                retry_after_s=self.settings.triton.retry_after_s,
            ) from None

    async def _infer_chunked(
        self, entry: ModelEntry, version: VersionEntry, rows: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, int]:
        count = len(next(iter(rows.values())))
        self.metrics["batch"].labels(model=entry.name, version=str(version.version)).observe(count)
        step = entry.max_batch_size
        if count <= step:
            return await self.triton.infer(entry.name, version.version, rows, version.output_name)
        chunks = [{k: v[i : i + step] for k, v in rows.items()} for i in range(0, count, step)]
        results = await asyncio.gather(
            *(self.triton.infer(entry.name, version.version, c, version.output_name) for c in chunks)
        )
        return np.concatenate([r[0] for r in results]), results[0][1]

    async def _serve(
        self,
        endpoint: str,
        task: str,
        model: str | None,
        version: int | None,
        work: Callable[[ModelEntry, VersionEntry], Awaitable[dict]],
    ) -> Response:
        started = time.perf_counter()
        model_label, version_label = "unknown", ""
        try:
            entry = self._model(model, task, endpoint)
            model_label = entry.name
            chosen = entry.choose(version, self.rng)
            version_label = str(chosen.version)
            body = await work(entry, chosen)
            version_label = str(body["version"])
            response = json_response(body)
        except ToolkitError as err:
            response = error_response(err)
            level = logging.WARNING if response.status_code < 500 else logging.ERROR
            log.log(
                level,
                "%s %s: %s",
                endpoint,
                response.status_code,
                err,
                extra={"fields": {"endpoint": endpoint, "status": response.status_code}},
            )
        except Exception:  # a bug: answer 500 with the request id (and count it) rather than lose it
            log.exception(
                "%s 500: unexpected error", endpoint, extra={"fields": {"endpoint": endpoint, "status": 500}}
            )
            response = error_response(
                ToolkitError(f"{endpoint}: internal error; the service log has it under this request_id")
            )
        elapsed = time.perf_counter() - started
        status = str(response.status_code)
        labels = {"model": model_label, "version": version_label, "endpoint": endpoint}
        self.metrics["requests"].labels(**labels, status=status).inc()
        if response.status_code >= 400:
            self.metrics["errors"].labels(**labels, status=status).inc()
        else:
            self.metrics["latency"].labels(**labels).observe(elapsed)
        if self.settings.log_requests and response.status_code < 400:
            log.info(
                "%s %s",
                endpoint,
                status,
                extra={
                    "fields": {
                        "endpoint": endpoint,
                        "model": model_label,
                        "version": version_label,
                        "status": response.status_code,
                        "latency_ms": round(elapsed * 1000, 2),
                    }
                },
            )
        return response

    async def _encode(
        self, entry: ModelEntry, version: VersionEntry, texts: list[str]
    ) -> tuple[np.ndarray, int]:
        inputs = version.text.encode(texts)
        return await self._run(entry, version, {name: inputs[name] for name in version.input_names})

    async def _images(
        self,
        entry: ModelEntry,
        version: VersionEntry,
        images: list[str] | None,
        arrays: list | None,
        single: bool,
    ) -> tuple[np.ndarray, int]:
        names = ("image", "array") if single else ("images", "arrays")
        if (images is None) == (arrays is None):
            raise InvalidArgument(
                f"{names[0]}/{names[1]}: send exactly one of `{names[0]}` (base64 file bytes) or "
                f"`{names[1]}` (pixel values)",
                field=names[0],
            )
        items = images if images is not None else arrays
        field_name = names[0] if images is not None else names[1]
        if not single:
            check_items(items, field_name, self.settings.limits)
        tensors = []
        for i, item in enumerate(items):
            where = field_name if single else f"{field_name}[{i}]"
            if images is not None:
                tensors.append(version.image.decode(item, where))
            else:
                tensors.append(version.image.from_array(item, where))
        return await self._run(entry, version, {version.input_names[0]: np.stack(tensors)})

    # ---- endpoints ----

    @bentoml.api(route="/embed")
    async def embed(self, text: str, model: ModelName = None, version: Version = None) -> dict:
        """The embedding of one text (L2-normalised, as the entry's pooling declares)."""

        async def work(entry: ModelEntry, chosen: VersionEntry) -> dict:
            check_texts([text], "text", self.settings.limits)
            vectors, served = await self._encode(entry, chosen, [text])
            return {"model": entry.name, "version": served, "embedding": vectors[0]}

        return await self._serve("/embed", "feature-extraction", model, version, work)

    @bentoml.api(route="/embed/batch")
    async def embed_batch(self, texts: list[str], model: ModelName = None, version: Version = None) -> dict:
        """Embeddings of several texts, in order."""

        async def work(entry: ModelEntry, chosen: VersionEntry) -> dict:
            check_items(texts, "texts", self.settings.limits)
            check_texts(texts, "texts", self.settings.limits)
            vectors, served = await self._encode(entry, chosen, texts)
            return {"model": entry.name, "version": served, "embeddings": vectors}

        return await self._serve("/embed/batch", "feature-extraction", model, version, work)

    @bentoml.api(route="/similarity")
    async def similarity(
        self,
        query: str,
        candidates: list[str],
        top_k: TopK = None,
        model: ModelName = None,
        version: Version = None,
    ) -> dict:
        """Candidates ranked by cosine similarity to the query, best first."""

        async def work(entry: ModelEntry, chosen: VersionEntry) -> dict:
            check_items(candidates, "candidates", self.settings.limits)
            check_texts([query], "query", self.settings.limits)
            check_texts(candidates, "candidates", self.settings.limits)
            vectors, served = await self._encode(entry, chosen, [query, *candidates])
            unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            scores = unit[1:] @ unit[0]
            order = np.argsort(-scores, kind="stable")[: top_k or len(candidates)]
            results = [{"index": int(i), "text": candidates[i], "score": float(scores[i])} for i in order]
            return {"model": entry.name, "version": served, "results": results}

        return await self._serve("/similarity", "feature-extraction", model, version, work)

    @bentoml.api(route="/classify")
    async def classify(
        self, text: str, top_k: TopK = None, model: ModelName = None, version: Version = None
    ) -> dict:
        """The top-k labels of one text, with probabilities."""

        async def work(entry: ModelEntry, chosen: VersionEntry) -> dict:
            check_texts([text], "text", self.settings.limits)
            logits, served = await self._encode(entry, chosen, [text])
            return labels_body(entry, chosen, logits, served, top_k, single=True)

        return await self._serve("/classify", "text-classification", model, version, work)

    @bentoml.api(route="/classify/batch")
    async def classify_batch(
        self, texts: list[str], top_k: TopK = None, model: ModelName = None, version: Version = None
    ) -> dict:
        """The top-k labels of each text."""

        async def work(entry: ModelEntry, chosen: VersionEntry) -> dict:
            check_items(texts, "texts", self.settings.limits)
            check_texts(texts, "texts", self.settings.limits)
            logits, served = await self._encode(entry, chosen, texts)
            return labels_body(entry, chosen, logits, served, top_k, single=False)

        return await self._serve("/classify/batch", "text-classification", model, version, work)

    @bentoml.api(route="/predict")
    async def predict(
        self,
        image: Annotated[str | None, Field(description="an image file (PNG, JPEG), base64")] = None,
        array: Annotated[list | None, Field(description="pixels, height x width x channels, 0..255")] = None,
        top_k: TopK = None,
        model: ModelName = None,
        version: Version = None,
    ) -> dict:
        """The top-k labels of one image, with probabilities."""

        async def work(entry: ModelEntry, chosen: VersionEntry) -> dict:
            logits, served = await self._images(
                entry, chosen, None if image is None else [image], None if array is None else [array], True
            )
            return labels_body(entry, chosen, logits, served, top_k, single=True)

        return await self._serve("/predict", "image-classification", model, version, work)

    @bentoml.api(route="/predict/batch")
    async def predict_batch(
        self,
        images: Annotated[list[str] | None, Field(description="image files (PNG, JPEG), base64")] = None,
        arrays: Annotated[list[list] | None, Field(description="pixel arrays, H x W x C, 0..255")] = None,
        top_k: TopK = None,
        model: ModelName = None,
        version: Version = None,
    ) -> dict:
        """The top-k labels of each image."""

        async def work(entry: ModelEntry, chosen: VersionEntry) -> dict:
            logits, served = await self._images(entry, chosen, images, arrays, False)
            return labels_body(entry, chosen, logits, served, top_k, single=False)

        return await self._serve("/predict/batch", "image-classification", model, version, work)

    @models_app.get("/models")
    async def list_models(self) -> dict:
        """Every configured model: task, split, and per served version its tensors, parity and size."""
        models = []
        for entry in self.models.values():
            versions = []
            for number, version in sorted(entry.versions.items()):
                manifest = version.manifest
                versions.append(
                    {
                        "version": number,
                        "weight": entry.split.get(number, 0.0) / sum(entry.split.values()),
                        "inputs": manifest.get("inputs"),
                        "outputs": manifest.get("outputs"),
                        "parity": manifest.get("parity"),
                        "precision": manifest.get("precision"),
                        "preprocessing": manifest.get("preprocessing"),
                        "labels": list(version.labels) or None,
                        "created_at": manifest.get("created_at"),
                        "size_bytes": manifest.get("size_bytes"),
                    }
                )
            models.append(
                {
                    "name": entry.name,
                    "task": entry.task,
                    "max_batch_size": entry.max_batch_size,
                    "versions": versions,
                }
            )
        return {"models": models}


ModelService.add_asgi_middleware(RequestContextMiddleware)
