"""Triton killed (SIGKILL) and frozen (SIGSTOP) under load: how soon the Bento answers 503, whether any
request hangs, is lost or gets a wrong answer, and whether it serves again once Triton is back, with
no restart of the Bento."""

from __future__ import annotations

import logging
import os
import signal
import time

from benchmarks.faults.load import Load, summarise

log = logging.getLogger(__name__)


def _first_after(outcomes, since: float, status: int) -> float | None:
    ends = [o.ended - since for o in outcomes if o.status == status and o.ended >= since]
    return round(min(ends), 3) if ends else None


def kill(stack, *, warm_s: float, down_s: float, clients: int) -> dict:
    """SIGKILL Triton's process group mid-load; restart it after ``down_s`` on the same ports."""
    load = Load(stack.bento.url, stack.expected, clients=clients, timeout_s=stack.timeout_s + 30).start()
    time.sleep(warm_s)
    killed_at = time.monotonic()
    stack.triton.kill()
    time.sleep(down_s)
    restart_at = time.monotonic()
    stack.triton.start()
    ready_at = time.monotonic()
    recovered_at = _wait_for_200(load, ready_at, timeout_s=60)
    time.sleep(1.0)
    outcomes = load.stop()
    return _report(stack, outcomes, killed_at, restart_at, ready_at, recovered_at)


def freeze(stack, *, warm_s: float, frozen_s: float, clients: int) -> dict:
    """SIGSTOP Triton's process group mid-load for ``frozen_s``, then SIGCONT."""
    load = Load(stack.bento.url, stack.expected, clients=clients, timeout_s=stack.timeout_s + 30).start()
    time.sleep(warm_s)
    stopped_at = time.monotonic()
    os.killpg(stack.triton.pid, signal.SIGSTOP)
    try:
        time.sleep(frozen_s)
    finally:
        os.killpg(stack.triton.pid, signal.SIGCONT)
    resumed_at = time.monotonic()
    recovered_at = _wait_for_200(load, resumed_at, timeout_s=60)
    time.sleep(1.0)
    outcomes = load.stop()
    return _report(stack, outcomes, stopped_at, resumed_at, resumed_at, recovered_at)


def _wait_for_200(load: Load, since: float, timeout_s: float) -> float | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = [o.ended for o in list(load.outcomes) if o.status == 200 and o.started >= since]
        if done:
            return min(done)
        time.sleep(0.05)
    return None


def _report(stack, outcomes, fault_at: float, back_at: float, ready_at: float, recovered_at) -> dict:
    during = [o for o in outcomes if o.ended >= fault_at and o.started < ready_at]
    unavailable = [o for o in outcomes if o.status == 503]
    messages: dict[str, int] = {}
    for outcome in unavailable:
        messages[outcome.error or ""] = messages.get(outcome.error or "", 0) + 1
    return {
        **summarise(outcomes, hung_s=stack.timeout_s + 1.0),
        "during_fault": summarise(during, hung_s=stack.timeout_s + 1.0),
        "first_503_after_s": _first_after(outcomes, fault_at, 503),
        "back_after_s": round(back_at - fault_at, 3),
        "triton_ready_after_s": round(ready_at - fault_at, 3),
        "recovered": recovered_at is not None,
        "recovery_s": None if recovered_at is None else round(recovered_at - ready_at, 3),
        "503_without_retry_after": sum(o.retry_after is None for o in unavailable),
        "503_messages": dict(sorted(messages.items(), key=lambda kv: -kv[1])[:3]),
        "bento_restarted": stack.bento_restarted(),
    }
