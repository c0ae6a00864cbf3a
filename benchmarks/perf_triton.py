"""Triton direct against in-process ONNX Runtime, in one run: how much of the model's speed the server keeps.

perf_analyzer (``.tools/bin/perf_analyzer``, from the tritonclient 2.51.0 wheel) drives MiniLM on the
local Triton server over gRPC and HTTP at concurrency 1..8, one 16-token sentence per request
(workload ``minilm-short``); ONNX Runtime runs the same ``model.onnx`` in this process at batch 32,
once before and once after the sweeps. The ratio is the best Triton throughput over the mean of the
two in-process figures: both sides see the same load from whatever else runs on the machine.

    python -m benchmarks.perf_triton [--repository DIR] [--quick] [--out DIR]

Throughput on this shared machine swings with whatever else runs, so each level also records CPU time
per item, which does not: the server's (tritonserver and its stubs) and perf_analyzer's, beside what
ONNX Runtime alone spends per item in this process (one thread, batch 32). Server CPU per item minus
the in-process figure is what serving adds (gRPC/HTTP, batching, the python backend's IPC, copies).

``measure()`` returns the parsed rows, for ``python -m benchmarks`` and for tests.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.ceiling import measure_ceiling
from benchmarks.loadgen import _merge_csv, perf_sweep
from benchmarks.parsers import Point
from benchmarks.workloads import WORKLOADS, load_inputs, write_perf_analyzer_data
from core.errors import InvalidArgument
from core.repository import Repository, default_repository

log = logging.getLogger(__name__)

GOAL = 0.90  # Triton direct should keep >= 90% of the in-process figure
CEILING_BATCH = 32
PROTOCOLS = ("grpc", "http")


@dataclass
class PerfTritonResult:
    workload: str
    grpc: list[Point] = field(default_factory=list)
    http: list[Point] = field(default_factory=list)
    ceiling_before: Point | None = None
    ceiling_after: Point | None = None
    # ONNX Runtime alone, one intra-op thread: CPU ms per item at batch sizes 1, 8 and 32
    inprocess_cpu_ms_per_item: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ceiling(self) -> float:
        """Items/s of in-process ONNX Runtime at batch 32: the mean of the two measurements."""
        values = [p.throughput for p in (self.ceiling_before, self.ceiling_after) if p is not None]
        return sum(values) / len(values) if values else 0.0

    def best(self) -> tuple[str, Point] | None:
        candidates = [(protocol, p) for protocol in PROTOCOLS for p in getattr(self, protocol)]
        return max(candidates, key=lambda c: c[1].throughput, default=None)

    @property
    def ratio(self) -> float | None:
        best = self.best()
        return best[1].throughput / self.ceiling if best and self.ceiling else None

    def rows(self) -> list[dict]:
        """One dict per measured point: stack, load level, items/s, latency percentiles (ms)."""
        rows = []
        for protocol in PROTOCOLS:
            for p in getattr(self, protocol):
                rows.append(_row(f"triton-{protocol}", "concurrency", p))
        for when, p in (("before", self.ceiling_before), ("after", self.ceiling_after)):
            if p is not None:
                rows.append({**_row("onnxruntime-in-process", "batch", p), "when": when})
        return rows

    def to_dict(self) -> dict:
        best = self.best()
        return {
            "workload": self.workload,
            "rows": self.rows(),
            "ceiling_items_per_s": self.ceiling,
            "best": {
                "protocol": best[0],
                "concurrency": best[1].concurrency,
                "items_per_s": best[1].throughput,
            }
            if best
            else None,
            "ratio": self.ratio,
            "inprocess_cpu_ms_per_item": self.inprocess_cpu_ms_per_item,
            "goal": GOAL,
            "seconds": self.seconds,
        }

    def table(self) -> str:
        lines = [
            f"{'stack':<24} {'level':>6} {'items/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
            f"{'batch':>5} {'server CPU ms/item':>18} {'client CPU ms/item':>18}"
        ]
        for row in self.rows():
            level = f"{row['level_kind'][0]}={row['level']}"
            lines.append(
                f"{row['stack']:<24} {level:>6} {row['items_per_s']:>8.1f} {row['p50_ms']:>7.2f} "
                f"{row['p95_ms']:>7.2f} {row['p99_ms']:>7.2f} {_fmt(row.get('avg_batch'), 5, 1)} "
                f"{_fmt(row.get('server_cpu_ms_per_item'), 18, 3)} "
                f"{_fmt(row.get('client_cpu_ms_per_item'), 18, 3)}"
            )
        if self.inprocess_cpu_ms_per_item:
            figures = ", ".join(
                f"batch {b}: {ms:.3f}" for b, ms in sorted(self.inprocess_cpu_ms_per_item.items())
            )
            lines.append(f"ONNX Runtime alone, 1 thread, CPU ms/item: {figures}")
        best = self.best()
        if best and self.ceiling:
            verdict = "meets" if self.ratio >= GOAL else "misses"
            lines.append(
                f"Triton best: {best[1].throughput:.1f} items/s ({best[0]}, concurrency "
                f"{best[1].concurrency}) = {self.ratio:.0%} of in-process ONNX Runtime at batch "
                f"{CEILING_BATCH} ({self.ceiling:.1f} items/s); {verdict} the {GOAL:.0%} goal"
            )
        return "\n".join(lines)


def _row(stack: str, level_kind: str, p: Point) -> dict:
    row = {
        "stack": stack,
        "level_kind": level_kind,
        "level": p.concurrency,
        "items_per_s": p.throughput,
        "p50_ms": p.p50,
        "p95_ms": p.p95,
        "p99_ms": p.p99,
    }
    for key in ("avg_batch", "server_cpu_ms_per_item", "client_cpu_ms_per_item"):
        if key in p.extra:
            row[key] = p.extra[key]
    return row


def _fmt(value: float | None, width: int, digits: int) -> str:
    return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _counts(server, model: str) -> tuple[int, int]:
    stats = server.statistics(model)["model_stats"]
    return (
        sum(int(m.get("inference_count", 0)) for m in stats),
        sum(int(m.get("execution_count", 0)) for m in stats),
    )


def _sweep(
    server, model: str, protocol: str, levels, data: Path, csv_path: Path, window_ms: int
) -> list[Point]:
    """perf_analyzer one level at a time, with the server's and the client's CPU time per item and the
    mean batch Triton formed, from its own statistics."""
    url = server.grpc_url if protocol == "grpc" else server.http_url
    points, level_csvs = [], []
    for level in levels:
        server_cpu, client_cpu = server.cpu_times(), _children_cpu_s()
        items, executions = _counts(server, model)
        # One level per call (its CPU and counts are per level); the levels' CSVs are merged below.
        level_csv = csv_path.with_name(f"{csv_path.stem}_c{level}.csv")
        level_csvs.append(level_csv)
        point = perf_sweep(model, url, protocol, [level], data, level_csv, window_ms=window_ms)[0]
        served, executed = _counts(server, model)
        items, executions = served - items, executed - executions
        if items > 0:
            point.extra["server_cpu_ms_per_item"] = server.cpu_delta(server_cpu) * 1000 / items
            point.extra["client_cpu_ms_per_item"] = (_children_cpu_s() - client_cpu) * 1000 / items
            point.extra["avg_batch"] = items / max(executions, 1)
        points.append(point)
    _merge_csv(level_csvs, csv_path)
    return points


def inprocess_cpu_ms_per_item(
    inputs, repo: Repository, batch_sizes=(1, 8, CEILING_BATCH), duration_s: float = 1.0
) -> dict[int, float]:
    """CPU milliseconds ONNX Runtime alone spends per item, one intra-op thread, at each batch size:
    what the model itself costs, to hold the server's CPU per item against at a similar batch."""
    from converters.runtime import ort_session

    model = inputs.workload.model
    session = ort_session(repo.version_dir(model, repo.require(model)) / "model.onnx", threads=1)
    wanted = {i.name for i in session.get_inputs()}
    figures = {}
    for batch in batch_sizes:
        feeds = {k: v for k, v in inputs.batch(batch).items() if k in wanted}
        session.run(None, feeds)
        calls, cpu0, start = 0, time.process_time(), time.monotonic()
        while time.monotonic() - start < duration_s:
            session.run(None, feeds)
            calls += 1
        figures[batch] = (time.process_time() - cpu0) * 1000 / (calls * batch)
    return figures


def measure(
    repository: str | Path | None = None,
    *,
    server=None,
    workload: str = "minilm-short",
    concurrency: tuple[int, ...] = tuple(range(1, 9)),
    protocols: tuple[str, ...] = PROTOCOLS,
    window_ms: int = 2000,
    ceiling_s: float = 3.0,
    out: str | Path | None = None,
) -> PerfTritonResult:
    """Run the comparison. ``server``: a running ``TritonServer`` serving ``repository``; when None,
    one is started for the run (only the workload's model loaded) and stopped after it."""
    from local_triton.server import TritonServer

    if workload not in WORKLOADS:
        raise InvalidArgument(
            f"workload: {workload!r} is not one of {', '.join(WORKLOADS)}", field="workload"
        )
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise InvalidArgument(f"protocols: {unknown} not in {PROTOCOLS}", field="protocols")
    repo = Repository(repository or default_repository())
    spec = WORKLOADS[workload]
    inputs = load_inputs(spec, repo)
    out = Path(out) if out else Path(tempfile.mkdtemp(prefix="perf_triton-"))
    data = write_perf_analyzer_data(inputs, out / f"{workload}_input.json")
    result = PerfTritonResult(workload=workload)
    started = time.monotonic()

    def ceiling() -> Point:
        return measure_ceiling(inputs, repo, batch_sizes=(CEILING_BATCH,), duration_s=ceiling_s)[0]

    own = server is None
    if own:
        server = TritonServer(repo.root, models=[spec.model], log_path=out / "tritonserver.log").start()
    try:
        result.ceiling_before = ceiling()
        for protocol in protocols:
            csv_path = out / f"{workload}_{protocol}.csv"
            setattr(
                result, protocol, _sweep(server, spec.model, protocol, concurrency, data, csv_path, window_ms)
            )
        result.ceiling_after = ceiling()
        result.inprocess_cpu_ms_per_item = inprocess_cpu_ms_per_item(inputs, repo)
    finally:
        if own:
            server.stop()
    result.seconds = time.monotonic() - started
    (out / "perf_triton.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    log.info("perf_triton: results in %s", out)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.perf_triton", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--repository", type=Path, default=None, help="model repository (default model_repository/)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="concurrency 1,4,8 with 1 s windows instead of 1..8"
    )
    parser.add_argument(
        "--protocol", choices=PROTOCOLS, action="append", help="only this protocol (repeatable)"
    )
    parser.add_argument("--out", type=Path, default=None, help="where CSVs, logs and perf_triton.json go")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from core.errors import ToolkitError

    try:
        result = measure(
            args.repository,
            concurrency=(1, 4, 8) if args.quick else tuple(range(1, 9)),
            protocols=tuple(args.protocol or PROTOCOLS),
            window_ms=1000 if args.quick else 2000,
            ceiling_s=2.0 if args.quick else 3.0,
            out=args.out,
        )
    except ToolkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print(result.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
