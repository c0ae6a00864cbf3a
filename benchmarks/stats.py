"""Percentiles and the comparisons the report makes between curves of Points."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from benchmarks.parsers import Point


def latency_point(
    concurrency: int, items: int, elapsed_s: float, latencies_s: Sequence[float], failures: int = 0
) -> Point:
    """A Point from raw per-call latencies (seconds) measured in this process."""
    ms = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    p50, p90, p95, p99 = (float(v) for v in np.percentile(ms, [50, 90, 95, 99]))
    return Point(
        concurrency=concurrency,
        throughput=items / elapsed_s,
        p50=p50,
        p90=p90,
        p95=p95,
        p99=p99,
        avg=float(ms.mean()),
        requests=len(ms),
        failures=failures,
    )


def best(points: Sequence[Point]) -> Point | None:
    """The point with the most throughput."""
    return max(points, key=lambda p: p.throughput, default=None)


def throughput_at_p99(points: Sequence[Point], p99_ms: float) -> float | None:
    """The most throughput the curve reaches with p99 <= ``p99_ms``.

    Points are taken in order of load (concurrency). Between two neighbours where p99 crosses the
    target, throughput is interpolated linearly in p99, so a target that falls between two measured
    load levels is credited with what lies between them. None when even the lightest load is over.
    """
    ordered = sorted(points, key=lambda p: p.concurrency)
    reached: list[float] = [p.throughput for p in ordered if p.p99 <= p99_ms]
    for low, high in zip(ordered, ordered[1:], strict=False):
        if low.p99 <= p99_ms < high.p99:
            fraction = (p99_ms - low.p99) / (high.p99 - low.p99)
            reached.append(low.throughput + fraction * (high.throughput - low.throughput))
    return max(reached) if reached else None
