"""Triton, as the service calls it: one reused async gRPC channel (``TritonGateway``), and the merging
of concurrent requests for one model version into one call (``Coalescer``). gRPC failures that mean
"down, restarting, too slow or the version is not loaded" become ``TritonUnavailable`` (503 with
Retry-After), each saying which of these happened; Triton's address and its raw error go to the log,
never into the answer.

The channel spreads calls over every address of ``triton.url`` round-robin, per call (gRPC's
``round_robin`` policy): with ``dns:///name:port`` of a headless Service, every Triton pod gets calls,
not only the one a connection happened to reach. A channel resolves its name once; with
``triton.max_connection_age_s`` the gateway opens a new channel that often (resolving again, so pods
added since get calls) and closes the old one once the calls on it are done."""

import asyncio
import bisect
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.companions import length_buckets
from core.errors import InvalidArgument, ToolkitError, Unavailable
from serving.settings import Batching, TritonSettings

log = logging.getLogger(__name__)

# Triton's answer for a model version it does not have loaded (never loaded, loading, or unloading).
_VERSION_GONE = re.compile(
    r"unknown model: '[^']*'(?: version \d+)? is not (?:found|at ready state)|not ready"
)


class TritonUnavailable(Unavailable):
    """Triton did not serve a call, and why, in words for the client; ``detail`` (Triton's address,
    the gRPC status and message) is for the log. ``version_gone``: the version is not loaded on Triton
    (another version of the model may be)."""

    def __init__(self, message: str, *, retry_after_s: int, detail: str, version_gone: bool = False) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.detail = detail
        self.version_gone = version_gone


def classify_error(err: Any, model: str, version: int, settings: TritonSettings) -> ToolkitError:
    """A tritonclient InferenceServerException for a call of ``model`` ``version`` -> the error the
    client gets: what happened, without Triton's address or raw gRPC text (those go in ``detail``)."""
    status = str(err.status() or "").removeprefix("StatusCode.")
    message = str(err.message() or "")
    what = f"{model} version {version}"
    detail = f"Triton at {settings.url}: {status or 'error'}: {message}"
    retry = settings.retry_after_s
    if _VERSION_GONE.search(message) and status in ("UNAVAILABLE", "NOT_FOUND", ""):
        return TritonUnavailable(
            f"{what} is not loaded on Triton (being loaded or unloaded, or not loaded yet: "
            f"`python -m converters load {model}`); retry later",
            retry_after_s=retry,
            detail=detail,
            version_gone=True,
        )
    says = {
        "UNAVAILABLE": "Triton is not reachable (down or restarting)",
        "DEADLINE_EXCEEDED": f"Triton did not answer within {settings.timeout_s:g} s (triton.timeout_s)",
        "RESOURCE_EXHAUSTED": "Triton is overloaded (its queue is full)",
        "CANCELLED": "Triton dropped the call (stopping or restarting)",
        "ABORTED": "Triton dropped the call (stopping or restarting)",
    }.get(status)
    if says is not None:
        return TritonUnavailable(
            f"{says}; {what} was not served; retry later", retry_after_s=retry, detail=detail
        )
    if status == "INVALID_ARGUMENT":  # tensors Triton refused: they passed the manifest's checks, and
        # resending them fails the same way, so the request's fault (4xx); Triton's text goes to the log.
        log.warning("Triton refused the inputs for %s: %s", what, detail)
        return InvalidArgument(
            f"Triton refused the inputs for {what} (INVALID_ARGUMENT); the service log has its reason "
            "under this request_id",
            field="inputs",
        )
    log.error("Triton refused %s: %s", what, detail)
    return ToolkitError(
        f"Triton refused the call for {what} ({status or 'error'}); the service log has its reason under "
        "this request_id"
    )


class TritonGateway:
    """Async gRPC client of one Triton server, created on first use inside the serving event loop."""

    def __init__(self, settings: TritonSettings) -> None:
        self.settings = settings
        self._client: Any = None
        self._opened_at = 0.0
        self.channels_opened = 0  # channels opened so far (one more every max_connection_age_s)
        self._retiring: dict[asyncio.Task, Any] = {}  # old channels, closed once their calls are done

    def client(self) -> Any:
        age = self.settings.max_connection_age_s
        if self._client is not None and age and time.monotonic() - self._opened_at >= age:
            self._retire(self._client)
            self._client = None
        if self._client is None:
            from tritonclient.grpc import aio as grpcclient

            self._client = grpcclient.InferenceServerClient(
                self.settings.url,
                channel_args=[
                    ("grpc.max_send_message_length", 256 * 1024 * 1024),
                    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
                    # Every address of the target gets calls in turn (pick_first, gRPC's default, would
                    # send them all to the first one that answers).
                    ("grpc.lb_policy_name", "round_robin"),
                    # Reconnect quickly once a restarted Triton listens again.
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.min_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 1000),
                    ("grpc.keepalive_time_ms", 30_000),
                ],
            )
            self._opened_at = time.monotonic()
            self.channels_opened += 1
        return self._client

    def _retire(self, client: Any) -> None:
        """Close ``client`` once no call on it can still be running (each is bounded by timeout_s)."""
        grace = max(self.settings.timeout_s, self.settings.ready_timeout_s)

        async def close_later() -> None:
            await asyncio.sleep(grace)
            await client.close()

        task = asyncio.get_running_loop().create_task(close_later())
        self._retiring[task] = client
        task.add_done_callback(lambda done: self._retiring.pop(done, None))

    async def close(self) -> None:
        for task, client in list(self._retiring.items()):
            task.cancel()
            await client.close()
        self._retiring.clear()
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def infer(
        self, model: str, version: int, inputs: dict[str, np.ndarray], outputs: str | tuple[str, ...]
    ) -> tuple[Any, int]:
        """Triton's answer for ``inputs``: the array of ``outputs`` when it names one output, else a
        dict of arrays by name; and the version that served it."""
        from tritonclient.grpc import InferInput, InferRequestedOutput
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype

        names = (outputs,) if isinstance(outputs, str) else tuple(outputs)
        tensors = []
        for name, array in inputs.items():
            if array.ndim == 1:  # a [batch] tensor: its config says dims [1], reshaped to [] for the model
                array = array.reshape(-1, 1)
            tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        try:
            result = await self.client().infer(
                model,
                tensors,
                model_version=str(version),
                outputs=[InferRequestedOutput(name) for name in names],
                client_timeout=self.settings.timeout_s,
            )
        except InferenceServerException as err:
            raise classify_error(err, model, version, self.settings) from None
        served = int(result.get_response().model_version or version)
        if isinstance(outputs, str):
            return result.as_numpy(outputs), served
        return {name: result.as_numpy(name) for name in names}, served

    async def model_states(self) -> dict[tuple[str, int], str] | None:
        """Triton's state of every (model, version) it knows (READY, LOADING, UNLOADING, ...), from its
        repository index in one call; None when Triton does not answer."""
        from tritonclient.utils import InferenceServerException

        try:
            index = await self.client().get_model_repository_index(
                client_timeout=self.settings.ready_timeout_s
            )
        except InferenceServerException as err:
            log.debug("Triton's repository index: %s", err.message())
            return None
        return {(m.name, int(m.version)): m.state for m in index.models if m.version.isdigit()}

    async def readiness(self, versions: list[tuple[str, int]]) -> str | None:
        """None when the server is live and every (model, version) is ready, else the first reason why
        not. The server's own readiness is not asked: with Triton's default --strict-readiness it is
        false while any model of the repository loads, a new version of one entry included, which is
        no reason to refuse requests for versions that are ready.

        A call that gets no answer is made once more before it counts: over several Tritons
        (``triton.url`` with several addresses, or a name resolving to several pods) the channel sends
        each call to the next one, so one unanswered call says only that one of them is gone (gRPC
        stops routing to it once it sees the connection closed); with one address the second call
        fails as fast as the first."""
        from tritonclient.utils import InferenceServerException

        timeout = self.settings.ready_timeout_s

        async def answered(call, *args) -> bool:
            try:
                return await call(*args, client_timeout=timeout)
            except InferenceServerException:
                return await call(*args, client_timeout=timeout)

        try:
            if not await answered(self.client().is_server_live):
                return f"Triton at {self.settings.url} is not live"
            for name, version in versions:
                if not await answered(self.client().is_model_ready, name, str(version)):
                    return f"{name} version {version} is not ready on Triton at {self.settings.url}"
        except InferenceServerException as err:
            return f"Triton at {self.settings.url} did not answer: {err.message()}"
        return None


def rows_of(output: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of an output, or of each output of a dict of them."""
    if isinstance(output, dict):
        return {name: value[start:stop] for name, value in output.items()}
    return output[start:stop]


def merge_rows(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate requests along the batch axis, zero-padding shorter ones (token ids, masks). The
    request path merges only requests padding cannot change: text, or tensors of equal shapes."""
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
    queued_at: float = 0.0


InferFn = Callable[[dict[str, np.ndarray]], Awaitable[tuple[np.ndarray, int]]]


class Coalescer:
    """Merges concurrent requests for one model version into one Triton call.

    At most ``max_in_flight`` calls run at once; requests that arrive meanwhile wait and leave together
    in the next call (up to ``max_batch_size`` rows). Under light load a request goes out at once, so
    this adds no delay; under load it turns many small gRPC calls into a few batched ones.
    """

    def __init__(
        self,
        infer: InferFn,
        max_batch_size: int,
        max_in_flight: int,
        *,
        on_wait: Callable[[float], None] | None = None,
        waiting: Any = None,
        split_lengths: bool = False,
    ) -> None:
        self._infer = infer
        # Merged requests of different lengths go out as one call per length bucket (length_groups).
        self.split_lengths = split_lengths
        self.max_batch_size = max_batch_size
        self.max_in_flight = max_in_flight
        self._queue: deque[_Pending] = deque()
        self._in_flight = 0
        self._tasks: set[asyncio.Task] = set()
        # What the autoscaler of the Bento reads: how long requests wait here for a call slot, and how
        # many wait now (a Prometheus Histogram's observe and a Gauge, for this model version).
        self._on_wait = on_wait
        self._waiting = waiting

    async def submit(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, int]:
        rows = len(next(iter(inputs.values())))
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(inputs, rows, future, time.perf_counter()))
        if self._waiting is not None:
            self._waiting.inc()
        self._dispatch()
        return await future

    def _pop(self) -> _Pending:
        item = self._queue.popleft()
        if self._waiting is not None:
            self._waiting.dec()
        if self._on_wait is not None and not item.future.done():
            self._on_wait(time.perf_counter() - item.queued_at)
        return item

    def _dispatch(self) -> None:
        while self._queue and self._in_flight < self.max_in_flight:
            batch = [self._pop()]
            rows = batch[0].rows
            while self._queue and rows + self._queue[0].rows <= self.max_batch_size:
                item = self._pop()
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
            groups = length_groups(batch) if self.split_lengths else [batch]
            results = await asyncio.gather(*(self._infer(_merged(group)) for group in groups))
            for group, (output, version) in zip(groups, results, strict=True):
                offset = 0
                for item in group:
                    if not item.future.done():
                        item.future.set_result((rows_of(output, offset, offset + item.rows), version))
                    offset += item.rows
        except Exception as err:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(err)
        finally:
            self._in_flight -= 1
            self._dispatch()


def _merged(group: list[_Pending]) -> dict[str, np.ndarray]:
    return group[0].inputs if len(group) == 1 else merge_rows([item.inputs for item in group])


def _length(item: _Pending) -> int | None:
    """The padded axis of a request's rows (tokens), or None for inputs without one."""
    first = next(iter(item.inputs.values()))
    return int(first.shape[1]) if first.ndim >= 2 else None


def length_groups(batch: list[_Pending]) -> list[list[_Pending]]:
    """Requests of one merged call split by length bucket (``core.companions.length_buckets``: 16, 24,
    32, 48, 64, ...), shortest first, so that a short sentence is not padded to the longest one in
    the call: on mixed-length traffic that padding is most of the work. Requests whose rows share one
    length (every image, or texts of one length) stay one call."""
    lengths = [_length(item) for item in batch]
    if None in lengths or len(set(lengths)) <= 1:
        return [batch]
    buckets = length_buckets(max(lengths))
    groups: dict[int, list[_Pending]] = {}
    for item, length in zip(batch, lengths, strict=True):
        groups.setdefault(buckets[bisect.bisect_left(buckets, length)], []).append(item)
    return [groups[size] for size in sorted(groups)]


class TritonCalls:
    """How rows reach Triton for every model version: merged with concurrent requests for the same
    version (one Coalescer each; with ``batching.coalesce`` off, one call per request), split into
    calls of at most Triton's ``max_batch_size`` rows, answered within ``triton.timeout_s`` or 503."""

    def __init__(
        self,
        gateway: TritonGateway,
        batching: Batching,
        batch_rows: Any,
        *,
        queue_wait: Any = None,
        waiting: Any = None,
    ) -> None:
        self.gateway = gateway
        self.batching = batching
        self.batch_rows = batch_rows  # the Histogram of rows per Triton call (model, version)
        self.queue_wait = queue_wait  # the Histogram of seconds waited for a call slot (model, version)
        self.waiting = waiting  # the Gauge of requests waiting for a call slot (model, version)
        self._coalescers: dict[tuple[str, int], Coalescer] = {}

    async def run(
        self,
        model: str,
        version: int,
        outputs: str | tuple[str, ...],
        max_batch_size: int,
        inputs: dict[str, np.ndarray],
        *,
        pad: bool = True,
    ) -> tuple[Any, int]:
        """Triton's ``outputs`` for these rows (an array for one name, else a dict by name), and the
        version that served it. ``pad``: rows of different lengths may merge, zero-padded (token ids
        and masks); otherwise only requests of equal shapes merge, as padding would change a tensor."""
        shapes = None if pad else tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(inputs.items()))
        key = (model, version, outputs, shapes)
        coalescer = self._coalescers.get(key)
        if coalescer is None:
            batching = self.batching
            max_rows = min(batching.max_batch_size, max_batch_size) if batching.coalesce else 1

            async def infer(rows: dict[str, np.ndarray]) -> tuple[Any, int]:
                return await self._infer_chunked(model, version, outputs, max_batch_size, rows)

            in_flight = batching.max_in_flight if batching.coalesce else 1_000_000
            labels = {"model": model, "version": str(version)}
            coalescer = self._coalescers[key] = Coalescer(
                infer,
                max_rows,
                in_flight,
                on_wait=self.queue_wait.labels(**labels).observe if self.queue_wait is not None else None,
                waiting=self.waiting.labels(**labels) if self.waiting is not None else None,
                split_lengths=pad and batching.split_lengths,
            )
        settings = self.gateway.settings
        try:
            async with asyncio.timeout(settings.timeout_s):
                return await coalescer.submit(inputs)
        except TimeoutError:
            raise TritonUnavailable(
                f"Triton did not answer within {settings.timeout_s:g} s (triton.timeout_s); {model} version "
                f"{version} was not served; retry later",
                retry_after_s=settings.retry_after_s,
                detail=f"Triton at {settings.url}: no answer within {settings.timeout_s:g} s",
            ) from None

    async def _infer_chunked(
        self, model: str, version: int, outputs: str | tuple[str, ...], step: int, rows: dict[str, np.ndarray]
    ) -> tuple[Any, int]:
        count = len(next(iter(rows.values())))
        self.batch_rows.labels(model=model, version=str(version)).observe(count)
        if count <= step:
            return await self.gateway.infer(model, version, rows, outputs)
        chunks = [{k: v[i : i + step] for k, v in rows.items()} for i in range(0, count, step)]
        results = await asyncio.gather(*(self.gateway.infer(model, version, c, outputs) for c in chunks))
        if isinstance(outputs, str):
            return _concatenate([r[0] for r in results]), results[0][1]
        return {name: _concatenate([r[0][name] for r in results]) for name in outputs}, results[0][1]


def _concatenate(parts: list[np.ndarray]) -> np.ndarray:
    """Chunks' outputs in order; an axis that differs between chunks (padded tokens) is zero-padded."""
    if all(p.shape[1:] == parts[0].shape[1:] for p in parts):
        return np.concatenate(parts)
    return merge_rows([{"x": p} for p in parts])["x"]
