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
import base64
import binascii
import contextvars
import functools
import io
import json
import logging
import math
import os
import random
import re
import sys
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import bentoml
import numpy as np
import orjson
import yaml
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from starlette.responses import Response

from core.errors import InvalidArgument, NotFound, PayloadTooLarge, ToolkitError, Unavailable
from core.repository import Repository, validate_name
from core.tasks import TEXT_TASKS

log = logging.getLogger(__name__)

CONFIG_ENV = "MODELPACK_SERVICE_CONFIG"
TRITON_URL_ENV = "MODELPACK_TRITON_URL"
REPOSITORY_ENV = "MODELPACK_REPOSITORY"
DEFAULT_CONFIG = Path(__file__).resolve().parent / "service.yaml"

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# The request id of the request being served, for log lines and error bodies.
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


# ---- configuration --------------------------------------------------------------------------------


class _Strict(BaseModel):
    """Unknown keys are refused: a typo in service.yaml is an error, not a silently ignored line."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TritonSettings(_Strict):
    url: str = Field("127.0.0.1:8001", description="Triton's gRPC endpoint, host:port")
    timeout_s: float = Field(10.0, gt=0, le=300, description="longest wait for Triton per request, then 503")
    retry_after_s: int = Field(1, ge=1, le=3600, description="Retry-After sent with a 503")
    ready_timeout_s: float = Field(2.0, gt=0, le=60, description="per readiness probe call")

    @field_validator("url")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} is not host:port; write Triton's gRPC address, e.g. 127.0.0.1:8001")
        return value


class Limits(_Strict):
    max_items: int = Field(64, ge=1, le=4096, description="texts, candidates or images per request")
    max_text_chars: int = Field(10_000, ge=1, description="characters per text, before tokenizing")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="request body size, else 413")
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="decoded width*height per image")


class Batching(_Strict):
    """Merge concurrent requests for one model version into one Triton call (see README's figures)."""

    coalesce: bool = True
    max_batch_size: int = Field(
        64, ge=1, le=4096, description="rows per merged call (also capped by Triton's)"
    )
    max_in_flight: int = Field(2, ge=1, le=64, description="Triton calls in flight per model version")


class ModelSettings(_Strict):
    name: str
    task: Literal["feature-extraction", "text-classification", "image-classification"]
    versions: dict[int, float] | None = Field(
        None, description="canary split, version -> weight (e.g. {1: 90, 2: 10}); default: the latest version"
    )
    max_length: int | None = Field(None, ge=1, description="tokens after truncation; at most the manifest's")
    top_k: int = Field(5, ge=1, description="default number of labels returned by classifiers")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        try:
            return validate_name(value)
        except InvalidArgument as err:
            raise ValueError(str(err).removeprefix("--name: ")) from None

    @field_validator("versions")
    @classmethod
    def _split(cls, value: dict[int, float] | None) -> dict[int, float] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("an empty split; leave `versions` out to serve the latest version")
        for version, weight in value.items():
            if version < 1:
                raise ValueError(f"version {version} is not a positive integer")
            if not weight >= 0 or math.isinf(weight):
                raise ValueError(f"weight {weight} of version {version} must be a finite number >= 0")
        if sum(value.values()) <= 0:
            raise ValueError(f"the weights {dict(value)} add up to 0; give at least one version a weight > 0")
        return value


class ServiceSettings(_Strict):
    repository: Path = Field(Path("model_repository"), description="relative paths: to this file's folder")
    triton: TritonSettings = TritonSettings()
    limits: Limits = Limits()
    batching: Batching = Batching()
    log_requests: bool = Field(True, description="one JSON log line per request")
    models: list[ModelSettings] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> "ServiceSettings":
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"models: {', '.join(duplicates)} listed more than once; list each model once")
        return self


def read_settings(path: str | os.PathLike, *, environ: dict[str, str] | None = None) -> ServiceSettings:
    """Parse and validate a service configuration file; one error listing every bad field.

    ``$MODELPACK_TRITON_URL`` and ``$MODELPACK_REPOSITORY`` (from ``environ``, default ``os.environ``)
    override ``triton.url`` and ``repository``, for containers that get them from their deployment.
    """
    environ = os.environ if environ is None else environ
    path = Path(path)
    if not path.is_file():
        raise NotFound(
            f"{path}: no service configuration there; write one (see service.yaml) "
            f"or point ${CONFIG_ENV} at it",
            field="config",
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise InvalidArgument(f"{path}: not valid YAML: {err}", field="config") from err
    if not isinstance(data, dict):
        raise InvalidArgument(
            f"{path}: expected a mapping with a `models` list, got {type(data).__name__}", field="config"
        )
    if environ.get(TRITON_URL_ENV):
        data.setdefault("triton", {})
        if isinstance(data["triton"], dict):
            data["triton"]["url"] = environ[TRITON_URL_ENV]
    if environ.get(REPOSITORY_ENV):
        data["repository"] = environ[REPOSITORY_ENV]
    try:
        settings = ServiceSettings.model_validate(data)
    except ValidationError as err:
        lines = []
        for problem in err.errors(include_url=False):
            where = ".".join(str(p) for p in problem["loc"]) or "(top level)"
            given = f" (given: {problem['input']!r})" if problem["type"] != "missing" else ""
            lines.append(f"- {where}: {problem['msg']}{given}")
        first = str(err.errors()[0]["loc"][0]) if err.errors() and err.errors()[0]["loc"] else "config"
        raise InvalidArgument(
            f"{path}: {err.error_count()} invalid setting(s):\n" + "\n".join(lines), field=first
        ) from None
    if not settings.repository.is_absolute():
        settings = settings.model_copy(update={"repository": (path.parent / settings.repository).resolve()})
    return settings


@functools.lru_cache(maxsize=1)
def load_settings() -> ServiceSettings:
    """The settings of this process: ``$MODELPACK_SERVICE_CONFIG`` or service.yaml beside this file."""
    return read_settings(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


# ---- preprocessing --------------------------------------------------------------------------------


class TextPipeline:
    """An entry's own fast tokenizer: batched, truncated to ``max_length``, padded to the longest text."""

    def __init__(self, tokenizer_dir: Path, max_length: int) -> None:
        from tokenizers import Tokenizer

        path = tokenizer_dir / "tokenizer.json"
        if not path.is_file():
            raise NotFound(
                f"{path}: the entry has no fast tokenizer file; re-publish it with the converters",
                field="tokenizer",
            )
        self.tokenizer = Tokenizer.from_file(str(path))
        self.max_length = max_length
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_length)
        pad_token, pad_id = _pad_token(tokenizer_dir, self.tokenizer)
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        if len(texts) == 1:
            encodings = [self.tokenizer.encode(texts[0])]
        else:
            encodings = self.tokenizer.encode_batch(texts)
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }


def _pad_token(tokenizer_dir: Path, tokenizer: Any) -> tuple[str, int]:
    """The pad token named in tokenizer_config.json (or [PAD]/<pad>), and its id."""
    names = []
    config = tokenizer_dir / "tokenizer_config.json"
    if config.is_file():
        pad = json.loads(config.read_text(encoding="utf-8")).get("pad_token")
        names.append(pad.get("content") if isinstance(pad, dict) else pad)
    for name in [*names, "[PAD]", "<pad>"]:
        if isinstance(name, str) and tokenizer.token_to_id(name) is not None:
            return name, tokenizer.token_to_id(name)
    return "[PAD]", 0  # padded positions are masked out, so the id only has to be a valid one


@dataclass(frozen=True)
class ImagePipeline:
    """Decode, resize and normalise as the manifest's ``preprocessing`` block declares."""

    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float
    max_pixels: int

    @classmethod
    def from_manifest(cls, pre: dict, max_pixels: int, where: str) -> "ImagePipeline":
        try:
            channels, height, width = int(pre["channels"]), int(pre["height"]), int(pre["width"])
            mean = tuple(float(v) for v in pre.get("mean", [0.0] * channels))
            std = tuple(float(v) for v in pre.get("std", [1.0] * channels))
            scale = float(pre.get("scale", 1 / 255))
        except (KeyError, TypeError, ValueError) as err:
            raise InvalidArgument(
                f"{where}: preprocessing needs channels, height, width (and mean, std, scale): {err}",
                field="preprocessing",
            ) from None
        if channels not in (1, 3) or len(mean) != channels or len(std) != channels or 0 in std:
            raise InvalidArgument(
                f"{where}: preprocessing has channels={channels}, mean={list(mean)}, std={list(std)}; "
                "channels must be 1 or 3 with one non-zero std and one mean per channel",
                field="preprocessing",
            )
        return cls(channels, height, width, mean, std, scale, max_pixels)

    def decode(self, data: str, field_name: str) -> np.ndarray:
        """A base64 image (PNG, JPEG, ...; a data: URL prefix is accepted) -> the model's CHW input."""
        from PIL import Image, UnidentifiedImageError

        if data.startswith("data:"):
            data = data.partition(",")[2]
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgument(
                f"{field_name}: not valid base64 (standard alphabet, padded); send the image file's bytes "
                "base64-encoded, e.g. base64.b64encode(open('cat.png','rb').read()).decode()",
                field=field_name,
            ) from None
        try:
            with Image.open(io.BytesIO(raw)) as image:
                if image.width * image.height > self.max_pixels:
                    raise PayloadTooLarge(
                        f"{field_name}: the image is {image.width}x{image.height} pixels; the limit is "
                        f"{self.max_pixels} pixels (limits.max_image_pixels); send a smaller image",
                        field=field_name,
                    )
                image.load()
                return self._normalise(image)
        except UnidentifiedImageError:
            raise InvalidArgument(
                f"{field_name}: the {len(raw)} decoded bytes are not in an image format Pillow knows; "
                "send a PNG or JPEG file",
                field=field_name,
            ) from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise InvalidArgument(
                f"{field_name}: the image is damaged or truncated ({err}); send a complete PNG or JPEG file",
                field=field_name,
            ) from None

    def from_array(self, values: Any, field_name: str) -> np.ndarray:
        """Pixels as nested lists, HxWxC (or HxW for one channel), values 0..255 -> the model's CHW input."""
        from PIL import Image

        try:
            array = np.asarray(values, dtype=np.float32)
        except (ValueError, TypeError):
            raise InvalidArgument(
                f"{field_name}: not a rectangular array of numbers; "
                f"send H x W x {self.channels} pixel values",
                field=field_name,
            ) from None
        if array.ndim == 2 and self.channels == 1:
            array = array[:, :, None]
        if array.ndim != 3 or array.shape[2] != self.channels or 0 in array.shape:
            raise InvalidArgument(
                f"{field_name}: shape {list(array.shape)}; expected height x width x {self.channels} "
                f"(e.g. {self.height} x {self.width} x {self.channels}) pixel values 0..255",
                field=field_name,
            )
        if array.shape[0] * array.shape[1] > self.max_pixels:
            raise PayloadTooLarge(
                f"{field_name}: {array.shape[0]}x{array.shape[1]} pixels; the limit is {self.max_pixels}",
                field=field_name,
            )
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
            raise InvalidArgument(
                f"{field_name}: values must be finite pixel values in 0..255 (got min {array.min()}, "
                f"max {array.max()})",
                field=field_name,
            )
        if array.shape[:2] != (self.height, self.width):
            pixels = array.round().astype(np.uint8)
            mode = "L" if self.channels == 1 else "RGB"
            image = Image.fromarray(pixels[:, :, 0] if self.channels == 1 else pixels, mode=mode)
            return self._normalise(image)
        return self._scale(array)

    def _normalise(self, image: Any) -> np.ndarray:
        from PIL import Image

        image = image.convert("L" if self.channels == 1 else "RGB")
        if image.size != (self.width, self.height):
            image = image.resize((self.width, self.height), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.float32)
        if array.ndim == 2:
            array = array[:, :, None]
        return self._scale(array)

    def _scale(self, hwc: np.ndarray) -> np.ndarray:
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(((hwc * np.float32(self.scale) - mean) / std).transpose(2, 0, 1))


# ---- the model registry: what the repository holds for each configured model ---------------------


@dataclass
class VersionEntry:
    version: int
    manifest: dict
    input_names: tuple[str, ...]
    output_name: str
    labels: tuple[str, ...]
    text: TextPipeline | None = None
    image: ImagePipeline | None = None


@dataclass
class ModelEntry:
    name: str
    task: str
    top_k: int
    max_batch_size: int  # Triton's, from config.pbtxt
    versions: dict[int, VersionEntry]
    split: dict[int, float]  # routable versions -> weight

    def choose(self, pinned: int | None, rng: random.Random) -> VersionEntry:
        if pinned is not None:
            if pinned not in self.versions:
                served = ", ".join(map(str, sorted(self.versions)))
                raise NotFound(
                    f"version: {self.name} has no served version {pinned}; served versions: {served} "
                    "(leave `version` out to use the configured split)",
                    field="version",
                )
            return self.versions[pinned]
        if len(self.split) == 1:
            return self.versions[next(iter(self.split))]
        return self.versions[rng.choices(list(self.split), weights=list(self.split.values()))[0]]


def load_models(settings: ServiceSettings) -> dict[str, ModelEntry]:
    """Read every configured model's served versions from the repository; errors name the setting."""
    repo = Repository(settings.repository)
    models = {}
    for index, spec in enumerate(settings.models):
        where = f"models.{index} ({spec.name})"
        if spec.name not in repo.models():
            known = ", ".join(repo.models()) or "none"
            raise NotFound(
                f"{where}: {spec.name!r} is not in the repository {repo.root} (models there: {known}); "
                "publish it with `python -m converters` or fix `repository`/`name`",
                field=f"models.{index}.name",
            )
        config = repo.config(spec.name)
        served = repo.served_versions(spec.name)
        if not served:
            raise NotFound(
                f"{where}: {repo.model_dir(spec.name)} has no served version", field=f"models.{index}"
            )
        versions = {v: _version_entry(repo, spec, v, settings.limits, where) for v in served}
        split = dict(spec.versions) if spec.versions else {served[-1]: 1.0}
        missing = sorted(set(split) - set(versions))
        if missing:
            raise NotFound(
                f"{where}: versions {missing} of the split are not served (served: {served}); publish them "
                "or change `versions`",
                field=f"models.{index}.versions",
            )
        split = {v: w for v, w in split.items() if w > 0}
        models[spec.name] = ModelEntry(
            name=spec.name,
            task=spec.task,
            top_k=spec.top_k,
            max_batch_size=max(1, int(config.max_batch_size)),
            versions=versions,
            split=split,
        )
    return models


def _version_entry(
    repo: Repository, spec: ModelSettings, version: int, limits: Limits, where: str
) -> VersionEntry:
    manifest = repo.manifest(spec.name, version)
    where = f"{where} version {version}"
    if manifest.get("task") != spec.task:
        raise InvalidArgument(
            f"{where}: the manifest says task {manifest.get('task')!r} but service.yaml says {spec.task!r}; "
            "make `task` match the entry",
            field="task",
        )
    try:
        input_names = tuple(t["name"] for t in manifest["inputs"])
        output_name = manifest["outputs"][0]["name"]
    except (KeyError, IndexError, TypeError):
        raise InvalidArgument(
            f"{where}: the manifest lacks inputs/outputs; re-publish the entry", field="manifest"
        ) from None
    pre = manifest.get("preprocessing") or {}
    entry = VersionEntry(version, manifest, input_names, output_name, tuple(manifest.get("labels") or ()))
    if spec.task in TEXT_TASKS:
        declared = int(pre.get("max_length") or 512)
        if spec.max_length is not None and spec.max_length > declared:
            raise InvalidArgument(
                f"{where}: max_length {spec.max_length} exceeds the entry's {declared}; "
                f"use at most {declared}",
                field="max_length",
            )
        tokenizer_dir = repo.version_dir(spec.name, version) / pre.get("tokenizer", "tokenizer")
        entry.text = TextPipeline(tokenizer_dir, spec.max_length or declared)
    else:
        entry.image = ImagePipeline.from_manifest(pre, limits.max_image_pixels, where)
    if spec.task != "feature-extraction" and not entry.labels:
        num = (manifest["outputs"][0].get("shape") or [-1, -1])[-1]
        if num > 0:
            entry.labels = tuple(str(i) for i in range(num))
    return entry


# ---- Triton: one reused async gRPC channel, merged calls -----------------------------------------

# gRPC status codes that mean "Triton is down, restarting or too slow": answered with 503.
_UNAVAILABLE_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED", "ABORTED")


class TritonGateway:
    """Async gRPC client of one Triton server, created on first use inside the serving event loop."""

    def __init__(self, settings: TritonSettings) -> None:
        self.settings = settings
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            from tritonclient.grpc import aio as grpcclient

            self._client = grpcclient.InferenceServerClient(
                self.settings.url,
                channel_args=[
                    ("grpc.max_send_message_length", 256 * 1024 * 1024),
                    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
                    # Reconnect quickly once a restarted Triton listens again.
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.min_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 1000),
                    ("grpc.keepalive_time_ms", 30_000),
                ],
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def infer(
        self, model: str, version: int, inputs: dict[str, np.ndarray], output: str
    ) -> tuple[np.ndarray, int]:
        from tritonclient.grpc import InferInput, InferRequestedOutput
        from tritonclient.utils import InferenceServerException

        tensors = []
        for name, array in inputs.items():
            tensor = InferInput(name, list(array.shape), "INT64" if array.dtype == np.int64 else "FP32")
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        try:
            result = await self.client().infer(
                model,
                tensors,
                model_version=str(version),
                outputs=[InferRequestedOutput(output)],
                client_timeout=self.settings.timeout_s,
            )
        except InferenceServerException as err:
            raise self._error(err, f"{model} version {version}") from None
        served = int(result.get_response().model_version or version)
        return result.as_numpy(output), served

    def _error(self, err: Any, what: str) -> ToolkitError:
        status = str(err.status() or "")
        if any(code in status for code in _UNAVAILABLE_CODES) or "not ready" in str(err.message()):
            return Unavailable(
                f"Triton at {self.settings.url} did not answer for {what} within "
                f"{self.settings.timeout_s:g} s ({status or 'error'}: {err.message()}); retry later",
                retry_after_s=self.settings.retry_after_s,
            )
        return ToolkitError(f"Triton failed on {what}: {status} {err.message()}")

    async def readiness(self, versions: list[tuple[str, int]]) -> str | None:
        """None when the server and every (model, version) are ready, else the first reason why not."""
        from tritonclient.utils import InferenceServerException

        timeout = self.settings.ready_timeout_s
        try:
            if not await self.client().is_server_ready(client_timeout=timeout):
                return f"Triton at {self.settings.url} is not ready"
            for name, version in versions:
                if not await self.client().is_model_ready(name, str(version), client_timeout=timeout):
                    return f"{name} version {version} is not ready on Triton at {self.settings.url}"
        except InferenceServerException as err:
            return f"Triton at {self.settings.url} did not answer: {err.message()}"
        return None


def merge_rows(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate requests along the batch axis, zero-padding shorter ones (token ids, masks)."""
    merged = {}
    for name in parts[0]:
        arrays = [p[name] for p in parts]
        target = tuple(max(a.shape[axis] for a in arrays) for axis in range(1, arrays[0].ndim))
        padded = [
            a
            if a.shape[1:] == target
            else np.pad(a, [(0, 0)] + [(0, t - s) for s, t in zip(a.shape[1:], target, strict=True)])
            for a in arrays
        ]
        merged[name] = np.concatenate(padded)
    return merged


@dataclass
class _Pending:
    inputs: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future


InferFn = Callable[[dict[str, np.ndarray]], Awaitable[tuple[np.ndarray, int]]]


class Coalescer:
    """Merges concurrent requests for one model version into one Triton call.

    At most ``max_in_flight`` calls run at once; requests that arrive meanwhile wait and leave together
    in the next call (up to ``max_batch_size`` rows). Under light load a request goes out at once, so
    this adds no delay; under load it turns many small gRPC calls into a few batched ones.
    """

    def __init__(self, infer: InferFn, max_batch_size: int, max_in_flight: int) -> None:
        self._infer = infer
        self.max_batch_size = max_batch_size
        self.max_in_flight = max_in_flight
        self._queue: deque[_Pending] = deque()
        self._in_flight = 0
        self._tasks: set[asyncio.Task] = set()

    async def submit(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, int]:
        rows = len(next(iter(inputs.values())))
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(inputs, rows, future))
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        while self._queue and self._in_flight < self.max_in_flight:
            batch = [self._queue.popleft()]
            rows = batch[0].rows
            while self._queue and rows + self._queue[0].rows <= self.max_batch_size:
                item = self._queue.popleft()
                batch.append(item)
                rows += item.rows
            batch = [item for item in batch if not item.future.done()]  # callers that gave up
            if not batch:
                continue
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[_Pending]) -> None:
        try:
            inputs = batch[0].inputs if len(batch) == 1 else merge_rows([item.inputs for item in batch])
            output, version = await self._infer(inputs)
            offset = 0
            for item in batch:
                if not item.future.done():
                    item.future.set_result((output[offset : offset + item.rows], version))
                offset += item.rows
        except Exception as err:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(err)
        finally:
            self._in_flight -= 1
            self._dispatch()


# ---- metrics and logs -----------------------------------------------------------------------------


@functools.cache
def _metrics() -> dict[str, Any]:
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


def configure_logging() -> None:
    """JSON lines on stderr for this module's logger; called when the service starts (its entry point)."""
    if any(isinstance(h.formatter, JsonFormatter) for h in log.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def die_with_parent() -> None:
    """Have Linux SIGTERM this worker when the process that started it dies. BentoML runs its workers
    in sessions of their own, so killing ``bentoml serve`` (its whole process group, SIGKILL) would
    otherwise leave the worker behind, holding the port and the Triton channel.

    A parent gone before the call is seen as a parent pid that changed during it. Not as a parent pid
    of 1: in a container ``bentoml serve`` is the entrypoint, PID 1, the worker's living parent."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    if os.getppid() != parent:  # the parent died before the call took effect: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)


class RequestContextMiddleware:
    """ASGI middleware: a request id for every request (the client's ``X-Request-ID`` when it is sane),
    returned in the response header; bodies over ``limits.max_body_bytes`` refused with 413 before
    they are parsed."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if REQUEST_ID_PATTERN.fullmatch(given) else uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        id_header = (b"x-request-id", request_id.encode())

        held: dict | None = None  # a 400's start message, while its body is rewritten
        held_body = bytearray()

        async def send_with_id(message: dict) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), id_header]}
                if message["status"] == 400:  # maybe BentoML's pydantic error: hold it, see below
                    held = message
                    return
            elif held is not None and message["type"] == "http.response.body":
                held_body.extend(message.get("body", b""))
                if message.get("more_body", False):
                    return
                body = uniform_validation_error(bytes(held_body)) or bytes(held_body)
                headers = [(k, v) for k, v in held["headers"] if k.lower() != b"content-length"]
                await send({**held, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
                message, held = {"type": "http.response.body", "body": body}, None
            await send(message)

        try:
            limit = load_settings().limits.max_body_bytes
            length = headers.get(b"content-length")
            if length is not None:
                if length.isdigit() and int(length) > limit:
                    await self._too_large(send_with_id, int(length), limit)
                    return
                await self.app(scope, receive, send_with_id)
                return
            # No Content-Length (chunked): read the body here, counting, then hand it on in one piece.
            body, more = bytearray(), True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    await self.app(scope, receive, send_with_id)
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > limit:
                    await self._too_large(send_with_id, len(body), limit)
                    return
            replayed = False

            async def replay() -> dict:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": bytes(body), "more_body": False}
                return await receive()

            await self.app(scope, replay, send_with_id)
        finally:
            REQUEST_ID.reset(token)

    @staticmethod
    async def _too_large(send: Callable, size: int, limit: int) -> None:
        err = PayloadTooLarge(
            f"body: {size} bytes is over the limit of {limit} bytes (limits.max_body_bytes); "
            "send fewer or smaller items per request",
            field="body",
        )
        log.warning("refused: %s", err, extra={"fields": {"status": 413}})
        response = error_response(err)
        await response({"type": "http"}, _no_receive, send)


def uniform_validation_error(body: bytes) -> bytes | None:
    """BentoML answers a body that fails its pydantic model with ``{"error": "1 validation error for
    Input", "detail": [{"loc": [...], "msg": ...}]}``; rewrite it as this service's errors are
    (``error`` naming the field and the problem, ``field``, ``request_id``). None: not such a body."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    problems = data.get("detail") if isinstance(data, dict) else None
    if not isinstance(problems, list) or not problems or not all(isinstance(p, dict) for p in problems):
        return None
    fields, lines = [], []
    for problem in problems:
        where = ""
        for part in problem.get("loc") or []:
            where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
        fields.append(where or "body")
        lines.append(f"{where or 'body'}: {problem.get('msg', 'invalid')}")
    message = "; ".join(lines) + " (the endpoints' schemas: GET /docs.json)"
    return orjson.dumps({"error": message, "field": fields[0], "request_id": REQUEST_ID.get()})


async def _no_receive() -> dict:
    return {"type": "http.disconnect"}


def json_response(body: dict, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """orjson, numpy arrays included: a 384-float embedding encodes ~10x faster than with json.dumps."""
    content = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(content, status_code=status, headers=headers, media_type="application/json")


def error_response(err: ToolkitError) -> Response:
    body = {"error": str(err), "field": getattr(err, "field", None), "request_id": REQUEST_ID.get()}
    headers = {}
    if isinstance(err, Unavailable):
        headers["Retry-After"] = str(err.retry_after_s)
    return json_response(body, err.http_status, headers)


# ---- request checks -------------------------------------------------------------------------------


def check_items(items: list, field_name: str, limits: Limits) -> None:
    if not items:
        raise InvalidArgument(f"{field_name}: the list is empty; send at least one item", field=field_name)
    if len(items) > limits.max_items:
        raise PayloadTooLarge(
            f"{field_name}: {len(items)} items is over the limit of {limits.max_items} per request "
            "(limits.max_items); split them over several requests",
            field=field_name,
        )


def check_texts(texts: list[str], field_name: str, limits: Limits) -> None:
    for i, text in enumerate(texts):
        if len(text) > limits.max_text_chars:
            where = f"{field_name}[{i}]" if field_name.endswith("s") else field_name
            raise PayloadTooLarge(
                f"{where}: {len(text)} characters is over the limit of {limits.max_text_chars} "
                "(limits.max_text_chars); shorten the text",
                field=where,
            )


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
        self.metrics = _metrics()
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
            other = {
                "feature-extraction": "/embed",
                "text-classification": "/classify",
                "image-classification": "/predict",
            }[entry.task]
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
