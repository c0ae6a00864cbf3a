"""The Bento's shared response cache: each item's model output row in Redis (``cache:`` in service.yaml).

Embedding and classification traffic repeats (the same queries, the same documents embedded again);
a hit skips the model run. What is cached is Triton's output row for one item (an embedding, or a
row of logits), not the answer: ``top_k``, similarity ranking and the reply's shape are applied after,
as on a miss. Several Bento replicas share one Redis, so a row computed by one serves all.

A row is stored under ``{prefix}:r1:{model}:{version}:{version digest}:{item digest}``:

- the version digest hashes everything that decides which tensors an item becomes and what the model
  answers: the version's manifest (its tensors, parity, ``created_at``: a version published again is
  another digest), the tokenizer files and ``max_length`` for texts, the image settings for images,
  the output's name, and where Triton runs it (``NAME`` given token tensors, or the texts sent to the
  ensemble ``NAME_text``, tokenized by ``NAME_tokenizer`` in Triton: ``tokenize: triton``). A row is
  therefore never served for another version, another model or another preprocessing, even by a Bento
  of an older release sharing the same Redis;
- the item digest hashes the item as sent, with its kind: a text's UTF-8 bytes, an image file's base64
  (a ``data:`` prefix dropped), a pixel array's JSON, a feature row's JSON.

Cached: the tasks that answer from one output with a fixed FP32 row per item (embeddings, the
classifiers' logits, ``/classify/features``); not cached: outputs with a dynamic axis (token
classification's per-token rows), the tensors task and the Open Inference Protocol route (every output,
any datatype), which go to Triton as before (Triton's own response cache still serves their repeats).

Redis down, slow (``cache.timeout_s`` per call) or answering errors: the request goes to Triton as
if there were no cache, the items are counted as ``bypassed`` and the failure in
``modelpack_cache_errors_total``; the cache is not tried again for ``cache.retry_after_s``, so an
outage costs one timeout, not one per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from serving.settings import CacheSettings

if TYPE_CHECKING:
    from serving.models import VersionEntry
    from serving.tasks import Features, Images, Tensors, Texts

log = logging.getLogger(__name__)

# The row format's version, in every key: a change of what is stored changes every key.
ROW_FORMAT = "r1"
ROW_DTYPE = np.dtype("<f4")  # every output of the task registry is FP32


def version_digest(version: VersionEntry) -> str | None:
    """What decides an item's tensors and the model's answer for this version, hashed; None when the
    output's row shape is not fixed by the manifest (such a version is not cached)."""
    row_shape = row_shape_of(version)
    if row_shape is None:
        return None
    digest = hashlib.sha256()

    def part(name: str, data: bytes) -> None:
        digest.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)

    part("manifest", json.dumps(version.manifest, sort_keys=True, default=str).encode())
    part("output", version.output_name.encode())
    # Where Triton runs it: the texts through NAME_text (tokenized in Triton) or tensors to NAME.
    part("triton", f"{version.triton_model}:{version.triton_version}:{version.via_text_model}".encode())
    if version.text is not None:
        part("max_length", str(version.text.max_length).encode())
        part("tokenizer", version.text.tokenizer.to_str().encode())
    if version.image is not None:
        image = version.image
        settings = [image.channels, image.height, image.width, image.mean, image.std, image.scale]
        part("image", json.dumps(settings).encode())
    return digest.hexdigest()[:32]


def row_shape_of(version: VersionEntry) -> tuple[int, ...] | None:
    """The shape of one row of the output the task reads (the manifest's shape without the batch axis),
    or None when an axis of it is dynamic or it is not FP32 (such a version is not cached)."""
    try:
        spec = version.manifest["outputs"][0]  # the output the task reads is the first
        if (
            spec.get("name", version.output_name) != version.output_name
            or spec.get("datatype", "FP32") != "FP32"
        ):
            return None
        shape = tuple(int(d) for d in spec["shape"][1:])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return shape if shape and all(d > 0 for d in shape) else None


def item_digests(inputs: Texts | Images | Features | Tensors) -> list[str] | None:
    """One digest per item, in the order the preprocessing stacks them (texts: field after field); None
    for inputs that are not items (named tensors)."""
    if inputs.kind == "text":
        items = [b"t\0" + text.encode("utf-8") for field in inputs.fields for text in field.texts]
    elif inputs.kind == "features":
        items = [b"r\0" + orjson.dumps(row) for row in inputs.rows]
    elif inputs.kind != "image":
        return None
    elif inputs.files is not None:
        items = [
            b"f\0" + (f.partition(",")[2] if f.startswith("data:") else f).encode() for f in inputs.files
        ]
    else:
        items = [b"a\0" + orjson.dumps(array) for array in inputs.arrays or []]
    return [hashlib.sha256(item).hexdigest() for item in items]


def take_rows(tensors: dict[str, np.ndarray], rows: Sequence[int]) -> dict[str, np.ndarray]:
    """The given rows of every tensor; token inputs cut to the longest of those rows when they are
    right-padded (the columns the attention mask leaves out of every kept row are padding)."""
    index = np.asarray(rows)
    taken = {name: array[index] for name, array in tensors.items()}
    mask = taken.get("attention_mask")
    if mask is not None and mask.ndim == 2:
        used = mask.any(axis=0)
        length = int(used.sum())
        if length and used[:length].all():  # right padding only: the used columns are a prefix
            taken = {
                name: array[:, :length] if array.ndim == 2 and array.shape[1] == mask.shape[1] else array
                for name, array in taken.items()
            }
    return taken


def redacted(url: str) -> str:
    """The Redis URL without its password, for logs."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


class ResponseCache:
    """Rows of model output in Redis, looked up and stored per item; every failure is a bypass."""

    def __init__(self, settings: CacheSettings, metrics: dict[str, Any]) -> None:
        self.settings = settings
        self.items = metrics["cache_items"]  # Counter: model, version, result (hit, miss, bypassed)
        self.errors = metrics["cache_errors"]  # Counter: operation (get, set)
        self._client: Any = None
        self.client()  # redis is imported now, at start-up, not inside a request's timeout
        self._down_until = 0.0  # time.monotonic() before which the cache is bypassed
        # (model, version, via NAME_text) -> (the manifest it was computed from, the version digest):
        # a version published again, or reloaded by the live watcher, is another manifest object.
        self._digests: dict[tuple[str, int, bool], tuple[dict, str | None]] = {}

    def client(self) -> Any:
        if self._client is None:
            import redis.asyncio as redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            timeout = self.settings.timeout_s
            self._client = redis.Redis.from_url(
                self.settings.redis_url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),  # a failed call is a bypass, never a retry
                max_connections=64,
            )
        return self._client

    def keys(
        self, model: str, version: VersionEntry, inputs: Texts | Images | Features | Tensors
    ) -> list[str] | None:
        """The key of every item of ``inputs`` for this model version; None: not cached (this version's
        output, or inputs that are not items)."""
        items = item_digests(inputs)
        if items is None:
            return None
        memo = (model, version.version, version.via_text_model)
        known = self._digests.get(memo)
        if known is not None and known[0] is version.manifest:
            digest = known[1]
        else:
            digest = version_digest(version)
            self._digests[memo] = (version.manifest, digest)
            if digest is None:
                log.warning(
                    "cache: %s version %d has no fixed output row shape; not cached", model, version.version
                )
        if digest is None:
            return None
        prefix = f"{self.settings.key_prefix}:{ROW_FORMAT}:{model}:{version.version}:{digest}:"
        return [prefix + item for item in items]

    @property
    def bypassing(self) -> bool:
        return time.monotonic() < self._down_until

    async def get(
        self, keys: list[str], row_shape: tuple[int, ...], labels: dict[str, str]
    ) -> list[Any] | None:
        """Each key's row (None: a miss), or None when the cache is bypassed (counted either way)."""
        if self.bypassing:
            self.items.labels(**labels, result="bypassed").inc(len(keys))
            return None
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                values = await self.client().mget(keys)
        except Exception as err:  # noqa: BLE001 - any Redis failure is a bypass, never the request's failure
            self._failed("get", err)
            self.items.labels(**labels, result="bypassed").inc(len(keys))
            return None
        size = int(np.prod(row_shape)) * ROW_DTYPE.itemsize
        rows = [
            np.frombuffer(value, dtype=ROW_DTYPE).reshape(row_shape)
            if isinstance(value, bytes) and len(value) == size
            else None
            for value in values
        ]
        hits = sum(row is not None for row in rows)
        if hits:
            self.items.labels(**labels, result="hit").inc(hits)
        if hits < len(rows):
            self.items.labels(**labels, result="miss").inc(len(rows) - hits)
        return rows

    async def put(self, rows: dict[str, np.ndarray]) -> None:
        """Store rows (key -> row) with the configured TTL; a failure is counted and logged, not raised."""
        if not rows or self.bypassing:
            return
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                pipe = self.client().pipeline(transaction=False)
                for key, row in rows.items():
                    pipe.set(
                        key, np.ascontiguousarray(row, dtype=ROW_DTYPE).tobytes(), ex=self.settings.ttl_s
                    )
                await pipe.execute()
        except Exception as err:  # noqa: BLE001 - as in get
            self._failed("set", err)

    def _failed(self, operation: str, err: BaseException) -> None:
        self.errors.labels(operation=operation).inc()
        was_up = not self.bypassing
        self._down_until = time.monotonic() + self.settings.retry_after_s
        if was_up:
            log.warning(
                "cache: Redis at %s failed on %s (%s: %s); bypassing the cache for %g s",
                redacted(self.settings.redis_url),
                operation,
                type(err).__name__,
                str(err) or "timed out",
                self.settings.retry_after_s,
            )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
