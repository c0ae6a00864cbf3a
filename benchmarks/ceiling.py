"""The ceiling: ONNX Runtime in this process, on the entry's own ``model.onnx``, at fixed batch sizes.

No server, no network, no serialisation: what the model costs on this machine. Served stacks are
reported as a fraction of the best of these figures (items per second).

Each batch size is measured with ONNX Runtime's default intra-op pool (one thread per core) and with
a single thread, and the better of the two is the ceiling: on a machine whose cores are busy with
other work, the spinning two-thread pool can fall below one thread, and a ceiling that low would
flatter every served stack. The point records which setting won and what both gave, in items/s and in
CPU milliseconds per item (``cpu_ms_per_item``): on one thread that is what the model itself costs,
the figure the Triton step's CPU time per item is held against (it does not swing with the machine's
load as throughput does).

A mixed-length workload's ceiling runs every item once per round, sorted by length and cut into
batches each padded only to its own longest member (``Inputs.sorted_batches``): the least padding
any server could do with those items. Its points also hold tokens/s (real tokens, padding excluded).
"""

from __future__ import annotations

import logging
import time

from benchmarks.parsers import Point
from benchmarks.stats import latency_point
from benchmarks.workloads import Inputs
from converters.speed import timed_calls
from core.repository import Repository

log = logging.getLogger(__name__)

BATCH_SIZES = (1, 8, 32)
# intra-op threads: 0 = ONNX Runtime's default (one per core), 1 = a single thread.
THREAD_SETTINGS = (0, 1)
# Calls per measurement at the least, however long they take (a batch of 32 long sequences can take
# longer than the whole window).
MIN_CALLS = 3


def measure_ceiling(
    inputs: Inputs,
    repository: Repository,
    *,
    batch_sizes=BATCH_SIZES,
    duration_s: float = 3.0,
    thread_settings: tuple[int, ...] = THREAD_SETTINGS,
) -> list[Point]:
    """Items/s and per-call latency of ``session.run`` at each batch size, ``duration_s`` per batch size
    split between the thread settings (after one warm-up call each). Every output is checked for the
    batch size it should have."""
    from converters.runtime import ort_session

    model = inputs.workload.model
    version = repository.require(model)
    path = repository.version_dir(model, version) / "model.onnx"
    sessions = {threads: ort_session(path, threads=threads or None) for threads in thread_settings}
    points = []
    for batch_size in batch_sizes:
        candidates = {
            threads: _measure(session, inputs, batch_size, duration_s / len(sessions))
            for threads, session in sessions.items()
        }
        winner = max(candidates, key=lambda t: candidates[t].throughput)
        point = candidates[winner]
        point.extra = {
            **{k: v for k, v in point.extra.items() if k in ("tokens_per_s", "length_sorted")},
            "intra_op_threads": winner or "default",
            "by_threads": {str(t or "default"): round(p.throughput, 2) for t, p in candidates.items()},
            "cpu_ms_per_item": {
                str(t or "default"): p.extra["cpu_ms_per_item"] for t, p in candidates.items()
            },
        }
        log.info(
            "ceiling %s batch %d: %.1f items/s (%s), p99 %.2f ms",
            inputs.workload.name,
            batch_size,
            point.throughput,
            point.extra["by_threads"],
            point.p99,
        )
        points.append(point)
    return points


def _measure(session, inputs: Inputs, batch_size: int, duration_s: float) -> Point:
    if inputs.workload.lengths:
        return _measure_sorted(session, inputs, batch_size, duration_s)
    wanted = {i.name for i in session.get_inputs()}
    feeds = {k: v for k, v in inputs.batch(batch_size).items() if k in wanted}
    session.run(None, feeds)  # the first call at a batch size allocates: kept out of the CPU time
    cpu = time.process_time()
    latencies, elapsed = timed_calls(
        session, feeds, seconds=duration_s, min_runs=MIN_CALLS, label=f"ceiling {inputs.workload.model}"
    )
    cpu_s = time.process_time() - cpu
    point = latency_point(batch_size, batch_size * len(latencies), elapsed, latencies)
    # timed_calls makes one untimed call before the timed ones: its CPU time is in cpu_s too.
    point.extra["cpu_ms_per_item"] = cpu_s * 1000 / (batch_size * (len(latencies) + 1))
    return point


def _measure_sorted(session, inputs: Inputs, batch_size: int, duration_s: float) -> Point:
    """Rounds over every item, in length-sorted batches of ``batch_size``, until ``duration_s`` and at
    least one round; latencies are per call (batches of different lengths). Outputs are checked."""
    from core.errors import CheckFailed

    wanted = {i.name for i in session.get_inputs()}
    batches = [{k: v for k, v in b.items() if k in wanted} for b in inputs.sorted_batches(batch_size)]
    names = [o.name for o in session.get_outputs()]

    def run(feeds: dict) -> None:
        sent = len(next(iter(feeds.values())))
        got = session.run(names, feeds)[0].shape[0]
        if got != sent:
            raise CheckFailed(
                f"ceiling {inputs.workload.model}: output {names[0]!r} has batch {got}, sent {sent}"
            )

    run(batches[-1])  # the longest: allocates what the others reuse; kept out of the figures
    cpu, latencies, items = time.process_time(), [], 0
    start = time.perf_counter()
    while not latencies or time.perf_counter() - start < duration_s:
        for feeds in batches:
            began = time.perf_counter()
            run(feeds)
            latencies.append(time.perf_counter() - began)
        items += len(inputs.tensors)
    elapsed = time.perf_counter() - start
    cpu_s = time.process_time() - cpu
    point = latency_point(batch_size, items, elapsed, latencies)
    point.extra["cpu_ms_per_item"] = cpu_s * 1000 / items
    point.extra["tokens_per_s"] = items * inputs.mean_tokens() / elapsed
    point.extra["length_sorted"] = True
    return point
