"""In-process speed of an ONNX Runtime session, for manifests and benchmarks. Speed is always
reported as a ratio against a baseline measured in the same run."""

from __future__ import annotations

import time

import numpy as np

from core.errors import CheckFailed


def timed_calls(
    session, feeds: dict[str, np.ndarray], *, seconds: float = 1.0, min_runs: int = 3, label: str = "session"
) -> tuple[list[float], float]:
    """Per-call latencies (s) of ``session.run`` on ``feeds`` and the wall time they took: one warm-up
    call, then calls until both ``min_runs`` and ``seconds`` are reached. Every call's output batch is
    checked against the input batch (``label`` names the model in that error)."""
    batch = int(next(iter(feeds.values())).shape[0])
    names = [o.name for o in session.get_outputs()]

    def run() -> None:
        outputs = session.run(names, feeds)
        if outputs[0].shape[0] != batch:
            raise CheckFailed(f"{label}: output {names[0]!r} has batch {outputs[0].shape[0]}, sent {batch}")

    run()
    latencies = []
    start = time.perf_counter()
    while True:
        began = time.perf_counter()
        run()
        latencies.append(time.perf_counter() - began)
        elapsed = time.perf_counter() - start
        if len(latencies) >= min_runs and elapsed >= seconds:
            return latencies, elapsed


def measure(session, feeds: dict[str, np.ndarray], *, seconds: float = 1.0, min_runs: int = 3) -> dict:
    """Items/s and per-call latency percentiles of ``session`` on ``feeds`` (see ``timed_calls``)."""
    batch = int(next(iter(feeds.values())).shape[0])
    latencies, elapsed = timed_calls(session, feeds, seconds=seconds, min_runs=min_runs)
    ms = np.asarray(latencies) * 1000.0
    p50, p95, p99 = (float(v) for v in np.percentile(ms, [50, 95, 99]))
    return {
        "batch": batch,
        "runs": len(latencies),
        "items_per_s": len(latencies) * batch / elapsed,
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": p99,
    }


def throughput(session, feeds: dict[str, np.ndarray], *, seconds: float = 1.0, min_runs: int = 3) -> float:
    """Items per second of ``session`` on ``feeds``."""
    return measure(session, feeds, seconds=seconds, min_runs=min_runs)["items_per_s"]
