"""The BentoML service in front of Triton: the service class and its endpoints, nothing else.

Each endpoint declares its request fields and is one call into the shared request path
(``serving/requests.py``). Which task serves a route, how its inputs become tensors and how Triton's
output becomes its answer, is the task registry's (``core/tasks.py``); the machinery is in ``serving/``
(settings, preprocessing, models and version routing, the Triton client, HTTP glue, observability).
docs/service.md gives each route's body and answer. Besides the POST routes below:
``GET /models``, and BentoML's ``/healthz``, ``/readyz`` (Triton and every routable model version
ready) and ``/metrics``.

Run it: ``bentoml serve service:ModelService`` from the repository root (configuration from
``$MODELPACK_SERVICE_CONFIG``, default ``service.yaml`` beside this file).
"""

from typing import Annotated, Literal

import bentoml
from fastapi import FastAPI
from pydantic import Field

from core.processes import die_with_parent
from core.tasks import ROUTES
from serving.http import RequestContextMiddleware
from serving.models import describe
from serving.observability import configure_logging
from serving.requests import RequestPath
from serving.settings import load_settings
from serving.tasks import Images, Texts

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
    logging={"access": {"enabled": False}},  # the JSON request log (serving/requests.py) has the request id
    # OpenTelemetry's ASGI middleware costs ~14% of this worker's CPU per request even when no trace is
    # sampled (BentoML's default sample_rate is 0): skip it on the inference routes. To trace them,
    # set tracing.sample_rate and drop this list (BENTOML_CONFIG_OPTIONS or a bentoml config file).
    tracing={"excluded_urls": list(ROUTES)},
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
        self.requests = RequestPath(load_settings())

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
            str | list[str] | list[int] | list[list[int]],
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
    ) -> dict:
        """OpenAI's embeddings API: ``data[].embedding`` in input order, ``usage`` in tokens."""
        return await self.requests.serve(
            "/v1/embeddings",
            model,
            None,
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

    # ---- the repository's view ----

    @models_app.get("/models")
    async def list_models(self) -> dict:
        """Every configured model: task, split, and per served version its tensors, parity and size."""
        return describe(self.requests.models)


ModelService.add_asgi_middleware(RequestContextMiddleware)
