"""Triton's health as this worker last saw it, checked in the background.

A task in the worker's event loop asks Triton whether it is live and every routable model version ready
every ``triton.ready_interval_s`` (each check bounded by ``triton.ready_timeout_s``). ``/readyz``
answers from the last check at once, so a probe never waits on a stalled Triton (the load balancer's
probe would time out instead of reading 503). While the last check says Triton itself is down or did
not answer, requests are answered 503 with Retry-After at once (``raise_if_down``) instead of each
waiting ``triton.timeout_s`` for a call that cannot succeed; a request only reaches Triton while the
last check found it up, so a request that succeeded means ``/readyz`` says ready too.

The state is per worker: every worker checks for itself (the service runs one).
"""

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.errors import Unavailable
from serving.settings import TritonSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HealthState:
    """One check's answer: ``reason`` why not ready (None: ready); ``server_down``: Triton itself did not
    answer or is not ready (not only a model version); ``checked_at``: its ``time.monotonic()``."""

    reason: str | None
    server_down: bool
    checked_at: float

    @property
    def ready(self) -> bool:
        return self.reason is None


NOT_CHECKED = HealthState(reason="Triton not checked yet", server_down=False, checked_at=0.0)


class TritonHealth:
    """The background check of one ``TritonGateway``; ``routable`` gives the (model, version) pairs that
    must be ready (read at every check, so a change of the served versions is followed)."""

    def __init__(
        self,
        gateway: Any,
        routable: Callable[[], list[tuple[str, int]]],
        settings: TritonSettings,
        *,
        ready_gauge: Any = None,
    ) -> None:
        self.gateway = gateway
        self.ready_gauge = ready_gauge  # a Prometheus Gauge set to 1/0 after every check
        self.routable = routable
        self.settings = settings
        self.state = NOT_CHECKED
        self.checks = 0  # checks done so far
        self._task: asyncio.Task | None = None
        self._checked = asyncio.Event()

    def start(self) -> None:
        """Start the background check in the running event loop (once; later calls do nothing)."""
        if self._task is None or self._task.done():
            # A context of its own: started from a request (the first /readyz), it would otherwise log
            # every later check under that request's id.
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="triton-health", context=contextvars.Context()
            )

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # the loop must outlive any surprise; the state keeps the last answer
                log.exception("readiness: the background check of Triton failed")
            await asyncio.sleep(self.settings.ready_interval_s)

    async def check(self) -> HealthState:
        """Ask Triton now (server live, then each routable version ready), ``ready_timeout_s`` in all."""
        url, timeout = self.settings.url, self.settings.ready_timeout_s
        try:
            async with asyncio.timeout(timeout):
                server = await self.gateway.readiness([])
                reason = server or await self.gateway.readiness(self.routable())
            state = HealthState(reason, server_down=server is not None, checked_at=time.monotonic())
        except TimeoutError:
            reason = f"Triton at {url} did not answer within {timeout:g} s (triton.ready_timeout_s)"
            state = HealthState(reason, server_down=True, checked_at=time.monotonic())
        if state.reason != self.state.reason:
            level = logging.WARNING if state.reason else logging.INFO
            log.log(level, "readiness: %s", state.reason or "ready")
        self.state = state
        if self.ready_gauge is not None:
            self.ready_gauge.set(1 if state.ready else 0)
        self.checks += 1
        self._checked.set()
        return state

    async def ready(self) -> bool:
        """The last check's answer; before the first one, wait for it (bounded by ``ready_timeout_s``)."""
        self.start()
        if self.state.checked_at == 0.0:
            try:
                async with asyncio.timeout(self.settings.ready_timeout_s + 1.0):
                    await self._checked.wait()
            except TimeoutError:
                return False
        return self.state.ready

    def raise_if_down(self) -> None:
        """Unavailable (503, Retry-After) when the last check found Triton itself down or silent."""
        self.start()
        state = self.state
        if state.server_down:
            age, every = time.monotonic() - state.checked_at, self.settings.ready_interval_s
            raise Unavailable(
                f"{state.reason} (checked {age:.1f} s ago, again every {every:g} s); retry later",
                retry_after_s=self.settings.retry_after_s,
            )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
