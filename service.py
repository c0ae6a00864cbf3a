"""The BentoML service in front of Triton: the service class and its endpoints, nothing else.

Each endpoint declares its request fields and is one call into the shared request path
(``serving/requests.py``). Which task serves a route, how its inputs become tensors and how Triton's
output becomes its answer, is the task registry's (``core/tasks.py``); the machinery is in ``serving/``
(settings, preprocessing, models and version routing, the Triton client, HTTP glue, observability).
docs/service.md gives each route's body and answer. Besides the POST routes below: the Open
Inference Protocol's ``POST /v2/models/{name}/infer`` (and ``.../versions/{version}/infer``) for any
configured model, ``GET /models`` (on the FastAPI app mounted beside them: routes with path parameters
live there), and BentoML's ``/healthz``, ``/readyz`` (Triton and every routable model version ready)
and ``/metrics``. With ``access.require_keys`` every
route but those three (and ``/livez``) needs an API key (serving/access.py), the protocol's and
``/models`` included.

Run it: ``bentoml serve service:ModelService`` from the repository root (configuration from
``$MODELPACK_SERVICE_CONFIG``, default ``service.yaml`` beside this file). It listens on 127.0.0.1
unless told otherwise (``--host`` or ``$BENTOML_HOST``; the bento's image sets ``BENTOML_HOST=0.0.0.0``).
"""

import gc
from typing import Annotated, Any, Literal

import bentoml
from fastapi import FastAPI, Request
from pydantic import Field

from core.processes import die_with_parent
from core.tasks import ROUTES
from serving.access import AccessMiddleware, AccessPolicy
from serving.http import GuardedService, RequestContextMiddleware
from serving.models import describe
from serving.observability import configure_logging
from serving.requests import RequestPath
from serving.settings import load_settings
from serving.tasks import Features, Images, Tensors, Texts

models_app = FastAPI(title="modelpack models", docs_url=None, redoc_url=None, openapi_url=None)

TopK = Annotated[int | None, Field(ge=1, le=1000, description="labels per item (default: the model's top_k)")]
Version = Annotated[int | None, Field(ge=1, description="pin a version; default: the configured split")]
ModelName = Annotated[
    str | None, Field(description="a configured model; may be left out when one has the task")
]


@bentoml.service(
    name="modelpack",
    service_class=GuardedService,  # strict bodies, bounded metrics labels: serving/http.py
    http={"host": "127.0.0.1"},  # bentoml's default is 0.0.0.0; --host or $BENTOML_HOST overrides this
    workers=1,
    traffic={"timeout": 60},
    logging={"access": {"enabled": False}},  # the JSON request log (serving/requests.py) has the request id
    # OpenTelemetry's ASGI middleware costs ~14% of this worker's CPU per request even when no trace is
    # sampled (BentoML's default sample_rate is 0): skip it on the inference routes. To trace them,
    # set tracing.sample_rate and drop this list (BENTOML_CONFIG_OPTIONS or a bentoml config file).
    tracing={"excluded_urls": [*ROUTES, "/v2/models/"]},
)
@bentoml.asgi_app(models_app, path="/")
class ModelService:
    @bentoml.on_deployment
    def json_logs() -> None:
        """``bentoml serve``'s own process (once, before the workers start) logs JSON lines too."""
        configure_logging()

    def __init__(self) -> None:
        configure_logging()
        die_with_parent()
        settings = load_settings()
        # The keys are read now, so a service that requires keys nobody has refuses to start (the
        # middleware itself is built at the first request).
        AccessPolicy.from_settings(settings.access)
        self.requests = RequestPath(settings)
        # What start-up built lives as long as the worker: take it out of the collector's full passes,
        # which otherwise scan it all while a large body is parsed (a 224 x 224 pixel array: 30-390 ms
        # of the event loop, 50-80 ms frozen; measured on 2 busy cores).
        gc.freeze()

    @bentoml.on_shutdown
    async def shutdown(self) -> None:
        await self.requests.close()

    async def __is_ready__(self) -> bool:
        return await self.requests.ready()

    # ---- feature-extraction ----

    @bentoml.api(route="/embed")
    async def embed(self, text: str, model: ModelName = None, version: Version = None) -> dict:
        """The embedding of one text (L2-normalised, as the entry's pooling declares)."""
        return await self.requests.serve("/embed", model, version, Texts.of(text=text))

    @bentoml.api(route="/embed/batch")
    async def embed_batch(self, texts: list[str], model: ModelName = None, version: Version = None) -> dict:
        """Embeddings of several texts, in order."""
        return await self.requests.serve("/embed/batch", model, version, Texts.of(texts=texts))

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
        inputs = Texts.of(query=query, candidates=candidates)
        return await self.requests.serve("/similarity", model, version, inputs, top_k=top_k)

    @bentoml.api(route="/v1/embeddings")
    async def openai_embeddings(
        self,
        input: Annotated[
            # Any list, so that OpenAI's token arrays reach the request path and are refused there with
            # what to send instead (text: each model tokenizes with its own tokenizer).
            str | list[str] | list[Any],
            Field(description="a text or a list of texts (token arrays are refused: send text)"),
        ],
        model: Annotated[
            str | None,
            Field(description="a configured feature-extraction model; may be left out when there is one"),
        ] = None,
        encoding_format: Annotated[
            Literal["float", "base64"], Field(description="base64: little-endian float32 bytes")
        ] = "float",
        dimensions: Annotated[int | None, Field(ge=1, description="only the model's own width")] = None,
        user: Annotated[str | None, Field(description="accepted and ignored")] = None,
        version: Version = None,
    ) -> dict:
        """OpenAI's embeddings API: ``data[].embedding`` in input order, ``usage`` in tokens. ``version``
        (ours, not OpenAI's: the openai client's ``extra_body``) pins a version as on every route."""
        return await self.requests.serve(
            "/v1/embeddings",
            model,
            version,
            Texts.of(input=input),
            encoding_format=encoding_format,
            dimensions=dimensions,
        )

    # ---- text-classification ----

    @bentoml.api(route="/classify")
    async def classify(
        self, text: str, top_k: TopK = None, model: ModelName = None, version: Version = None
    ) -> dict:
        """The top-k labels of one text, with probabilities."""
        return await self.requests.serve("/classify", model, version, Texts.of(text=text), top_k=top_k)

    @bentoml.api(route="/classify/batch")
    async def classify_batch(
        self, texts: list[str], top_k: TopK = None, model: ModelName = None, version: Version = None
    ) -> dict:
        """The top-k labels of each text."""
        return await self.requests.serve(
            "/classify/batch", model, version, Texts.of(texts=texts), top_k=top_k
        )

    # ---- token-classification ----

    @bentoml.api(route="/entities")
    async def entities(self, text: str, model: ModelName = None, version: Version = None) -> dict:
        """The entities of one text: label, score, the span's text and its character offsets."""
        return await self.requests.serve("/entities", model, version, Texts.of(text=text))

    @bentoml.api(route="/entities/batch")
    async def entities_batch(
        self, texts: list[str], model: ModelName = None, version: Version = None
    ) -> dict:
        """The entities of each text."""
        return await self.requests.serve("/entities/batch", model, version, Texts.of(texts=texts))

    # ---- image-classification ----

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
        return await self.requests.serve("/predict", model, version, Images.one(image, array), top_k=top_k)

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
        inputs = Images.many(images, arrays)
        return await self.requests.serve("/predict/batch", model, version, inputs, top_k=top_k)

    # ---- classification (a row of features) ----

    @bentoml.api(route="/classify/features")
    async def classify_features(
        self,
        features: Annotated[list[float], Field(description="one row: the model's features, in order")],
        top_k: TopK = None,
        model: ModelName = None,
        version: Version = None,
    ) -> dict:
        """The top-k labels of one row of features, with probabilities."""
        inputs = Features.one(features)
        return await self.requests.serve("/classify/features", model, version, inputs, top_k=top_k)

    @bentoml.api(route="/classify/features/batch")
    async def classify_features_batch(
        self,
        rows: Annotated[list[list[float]], Field(description="rows of features")],
        top_k: TopK = None,
        model: ModelName = None,
        version: Version = None,
    ) -> dict:
        """The top-k labels of each row."""
        inputs = Features.of(rows)
        return await self.requests.serve("/classify/features/batch", model, version, inputs, top_k=top_k)

    # ---- tensor (any signature) ----

    @bentoml.api(route="/tensors")
    async def tensors(
        self,
        inputs: Annotated[
            dict[str, list], Field(description="every input of the model by name, as nested lists")
        ],
        model: ModelName = None,
        version: Version = None,
    ) -> dict:
        """Every output of the model by name, as nested lists."""
        return await self.requests.serve("/tensors", model, version, Tensors(inputs))

    # ---- the Open Inference Protocol (KServe v2), for any configured model ----

    @models_app.post("/v2/models/{name}/infer")
    async def infer(self, name: str, request: Request):
        """Named tensors in, named tensors out, checked against the served version's manifest."""
        return await self.requests.infer(name, None, await request.body())

    @models_app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer_version(self, name: str, version: str, request: Request):
        """The same, for one version (404 when it is not served)."""
        return await self.requests.infer(name, version, await request.body())

    # ---- the repository's view ----

    @models_app.get("/models")
    async def list_models(self) -> dict:
        """Every configured model: task, split, and per served version its tensors, parity and size."""
        return describe(self.requests.models)


# The first added is the outermost: the request id and body limit first, then API keys and rate limits
# (serving/access.py), in front of every route, BentoML's and the mounted app's included.
ModelService.add_asgi_middleware(RequestContextMiddleware)
ModelService.add_asgi_middleware(AccessMiddleware)
