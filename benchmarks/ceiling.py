"""The ceiling: ONNX Runtime in this process, on the entry's own ``model.onnx``, at fixed batch sizes.

No server, no network, no serialisation: what the model costs on this machine. Served stacks are
reported as a fraction of the best of these figures (items per second).
"""

from __future__ import annotations

import logging
import time

from benchmarks.parsers import Point
from benchmarks.stats import latency_point
from benchmarks.workloads import Inputs
from converters.errors import CheckFailed
from converters.repository import Repository

log = logging.getLogger(__name__)

BATCH_SIZES = (1, 8, 32)


def measure_ceiling(
    inputs: Inputs,
    repository: Repository,
    *,
    batch_sizes=BATCH_SIZES,
    duration_s: float = 3.0,
    threads: int | None = None,
) -> list[Point]:
    """Items/s and per-call latency of ``session.run`` at each batch size, for ``duration_s`` each
    (after one warm-up call). Every output is checked for the batch size it should have."""
    from converters.runtime import ort_session

    model = inputs.workload.model
    version = repository.require(model)
    session = ort_session(repository.version_dir(model, version) / "model.onnx", threads=threads)
    wanted = {i.name for i in session.get_inputs()}
    output_names = [o.name for o in session.get_outputs()]
    points = []
    for batch_size in batch_sizes:
        feeds = {k: v for k, v in inputs.batch(batch_size).items() if k in wanted}
        outputs = session.run(output_names, feeds)  # warm-up, and the shape check
        if outputs[0].shape[0] != batch_size:
            raise CheckFailed(
                f"ceiling {model}: output {output_names[0]!r} has batch {outputs[0].shape[0]}, "
                f"sent {batch_size}"
            )
        latencies = []
        start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            session.run(output_names, feeds)
            t1 = time.perf_counter()
            latencies.append(t1 - t0)
            if t1 - start >= duration_s:
                break
        elapsed = time.perf_counter() - start
        point = latency_point(batch_size, batch_size * len(latencies), elapsed, latencies)
        log.info(
            "ceiling %s batch %d: %.1f items/s, p99 %.2f ms",
            inputs.workload.name,
            batch_size,
            point.throughput,
            point.p99,
        )
        points.append(point)
    return points
