"""Triton, as the service calls it: one reused async gRPC channel (``TritonGateway``), and the merging
of concurrent requests for one model version into one call (``Coalescer``). gRPC failures that mean
"down, restarting or too slow" become ``Unavailable`` (503 with Retry-After)."""

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import ToolkitError, Unavailable
from serving.settings import Batching, TritonSettings

# numpy kind -> Triton datatype of what the service sends: token ids, pixels, texts (UTF-8 bytes).
_DATATYPES = {"i": "INT64", "f": "FP32", "O": "BYTES", "S": "BYTES"}
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
            tensor = InferInput(name, list(array.shape), _DATATYPES.get(array.dtype.kind, "FP32"))
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


class TritonCalls:
    """How rows reach Triton for every model version: merged with concurrent requests for the same
    version (one Coalescer each; with ``batching.coalesce`` off, one call per request), split into
    calls of at most Triton's ``max_batch_size`` rows, answered within ``triton.timeout_s`` or 503."""

    def __init__(self, gateway: TritonGateway, batching: Batching, batch_rows: Any) -> None:
        self.gateway = gateway
        self.batching = batching
        self.batch_rows = batch_rows  # the Histogram of rows per Triton call (model, version)
        self._coalescers: dict[tuple[str, int], Coalescer] = {}

    async def run(
        self, model: str, version: int, output: str, max_batch_size: int, inputs: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, int]:
        """Triton's ``output`` for these rows, and the version that served them."""
        key = (model, version)
        coalescer = self._coalescers.get(key)
        if coalescer is None:
            batching = self.batching
            max_rows = min(batching.max_batch_size, max_batch_size) if batching.coalesce else 1

            async def infer(rows: dict[str, np.ndarray]) -> tuple[np.ndarray, int]:
                return await self._infer_chunked(model, version, output, max_batch_size, rows)

            in_flight = batching.max_in_flight if batching.coalesce else 1_000_000
            coalescer = self._coalescers[key] = Coalescer(infer, max_rows, in_flight)
        settings = self.gateway.settings
        try:
            async with asyncio.timeout(settings.timeout_s):
                return await coalescer.submit(inputs)
        except TimeoutError:
            raise Unavailable(
                f"Triton at {settings.url} did not answer for {model} version {version} within "
                f"{settings.timeout_s:g} s (triton.timeout_s); retry later",
                retry_after_s=settings.retry_after_s,
            ) from None

    async def _infer_chunked(
        self, model: str, version: int, output: str, step: int, rows: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, int]:
        count = len(next(iter(rows.values())))
        self.batch_rows.labels(model=model, version=str(version)).observe(count)
        if count <= step:
            return await self.gateway.infer(model, version, rows, output)
        chunks = [{k: v[i : i + step] for k, v in rows.items()} for i in range(0, count, step)]
        results = await asyncio.gather(*(self.gateway.infer(model, version, c, output) for c in chunks))
        return np.concatenate([r[0] for r in results]), results[0][1]
