"""``python -m benchmarks tune NAME --p99-ms X``: Triton's batching settings, chosen by measurement.

A grid of ``max_queue_delay_microseconds`` x preferred batch sizes x instance count. For each point
the model is reloaded in a real Triton server with that configuration (tritonclient ``load_model``
with a config override: the repository is not touched while measuring), perf_analyzer measures a
concurrency sweep over gRPC, and the point's score is the most throughput it reaches with p99 at or
under the target (``stats.throughput_at_p99``). The best point is written back to the entry's
``config.pbtxt`` through ``core.triton_config`` (read, change, atomic write, under the
repository's lock), and the measured curve is written beside it as ``tuning.json`` and
``tuning.csv`` (raw perf_analyzer files and logs under ``runs/tune-<name>-<time>/``, or ``--out``).
When no point meets the target nothing is written and the command exits 1.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.loadgen import perf_sweep
from benchmarks.parsers import Point
from benchmarks.stats import throughput_at_p99
from benchmarks.workloads import WORKLOADS, load_inputs, write_perf_analyzer_data
from core.errors import CheckFailed, InvalidArgument
from core.repository import CONFIG, Repository

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_DELAYS_US = (0, 1000, 4000)
DEFAULT_PREFERRED = ((8,), (16, 32))
DEFAULT_INSTANCES = (1, 2)
DEFAULT_CONCURRENCY = (1, 4, 8, 16)
TASK_WORKLOADS = {
    "feature-extraction": "minilm-short",
    "text-classification": "minilm-short",
    "image-classification": "image",
}


@dataclass
class TuneOptions:
    name: str
    p99_ms: float
    repository: Path | None = None
    workload: str | None = None
    delays_us: list[int] | None = None
    preferred: list[list[int]] | None = None
    instances: list[int] | None = None
    concurrency: list[int] | None = None
    window_ms: int = 1000
    out_dir: Path | None = None
    write: bool = True


@dataclass
class GridPoint:
    delay_us: int
    preferred: tuple[int, ...]
    instances: int
    curve: list[Point] = field(default_factory=list)
    score: float | None = None  # items/s within the p99 target; None: not reached or failed
    error: str | None = None

    def label(self) -> str:
        preferred = "+".join(map(str, self.preferred))
        return f"delay={self.delay_us}us preferred={preferred} instances={self.instances}"

    def to_dict(self) -> dict:
        return {
            "max_queue_delay_microseconds": self.delay_us,
            "preferred_batch_size": list(self.preferred),
            "instance_count": self.instances,
            "score": self.score,
            "error": self.error,
            "curve": [p.to_dict() for p in self.curve],
        }


@dataclass
class TuneResult:
    name: str
    p99_ms: float
    grid: list[GridPoint]
    chosen: GridPoint | None
    config_path: Path | None
    curve_json: Path
    curve_csv: Path

    def table(self) -> str:
        lines = [f"{'point':<50} {'best items/s under p99':>24}"]
        for point in self.grid:
            value = point.error or ("-" if point.score is None else f"{point.score:.1f}")
            mark = "  <- chosen" if point is self.chosen else ""
            lines.append(f"{point.label():<50} {value:>24}{mark}")
        if self.chosen is None:
            lines.append(f"no configuration kept p99 <= {self.p99_ms} ms: config left as it was")
        elif self.config_path is not None:
            lines.append(f"wrote {self.config_path} ({self.chosen.label()}); curve: {self.curve_json}")
        else:
            lines.append(f"dry run: would write {self.chosen.label()}; curve: {self.curve_json}")
        return "\n".join(lines)


def _validate(options: TuneOptions, max_batch_size: int) -> tuple[list, list, list, list]:
    if not options.p99_ms > 0:
        raise InvalidArgument(
            f"--p99-ms: must be a positive number of milliseconds, got {options.p99_ms}", field="p99_ms"
        )
    delays = list(options.delays_us if options.delays_us is not None else DEFAULT_DELAYS_US)
    preferred = [
        tuple(p) for p in (options.preferred if options.preferred is not None else DEFAULT_PREFERRED)
    ]
    instances = list(options.instances if options.instances is not None else DEFAULT_INSTANCES)
    concurrency = list(options.concurrency if options.concurrency is not None else DEFAULT_CONCURRENCY)
    for field_name, values in (
        ("--delays-us", delays),
        ("--instances", instances),
        ("--concurrency", concurrency),
    ):
        if not values:
            raise InvalidArgument(f"{field_name}: give at least one value", field=field_name)
    if any(d < 0 for d in delays):
        raise InvalidArgument(f"--delays-us: values must be >= 0, got {delays}", field="delays_us")
    for field_name, values in (("instances", instances), ("concurrency", concurrency)):
        if any(v <= 0 for v in values):
            raise InvalidArgument(
                f"--{field_name}: values must be positive integers, got {values}", field=field_name
            )
    for group in preferred:
        if not group or any(size <= 0 or size > max_batch_size for size in group):
            raise InvalidArgument(
                f"--preferred: {'+'.join(map(str, group))} must be sizes between 1 and the entry's "
                f"max_batch_size {max_batch_size}",
                field="preferred",
            )
    if options.window_ms < 100:
        raise InvalidArgument(f"--window-ms: at least 100, got {options.window_ms}", field="window_ms")
    return delays, preferred, instances, concurrency


def apply_point(config, point: GridPoint) -> None:
    """Set the grid point's batching and instance count on a ModelConfig (in place)."""
    config.dynamic_batching.max_queue_delay_microseconds = point.delay_us
    del config.dynamic_batching.preferred_batch_size[:]
    config.dynamic_batching.preferred_batch_size.extend(point.preferred)
    if not config.instance_group:
        config.instance_group.add()
    for group in config.instance_group:
        group.count = point.instances


def _check_served(server, name: str, point: GridPoint) -> None:
    """The server reports the point's settings back (the override really took effect)."""
    client = server.client()
    try:
        served = client.get_model_config(name)
    finally:
        client.close()
    batching = served.get("dynamic_batching", {})
    got = (
        int(batching.get("max_queue_delay_microseconds", 0)),
        tuple(int(x) for x in batching.get("preferred_batch_size", [])),
        sum(int(g.get("count", 1)) for g in served.get("instance_group", [])),
    )
    if got != (point.delay_us, point.preferred, point.instances):
        raise CheckFailed(
            f"{name}: Triton serves delay/preferred/instances {got} after loading {point.label()}"
        )


def tune(options: TuneOptions) -> TuneResult:
    from google.protobuf.json_format import MessageToDict

    from local_triton.server import TritonServer

    repo = Repository(options.repository)
    version = repo.require(options.name)
    manifest = repo.manifest(options.name, version)
    workload_name = options.workload or TASK_WORKLOADS.get(manifest.get("task"), "")
    if workload_name not in WORKLOADS or WORKLOADS[workload_name].model != options.name:
        matching = [w.name for w in WORKLOADS.values() if w.model == options.name]
        raise InvalidArgument(
            f"--workload: {workload_name!r} does not measure entry {options.name!r}; "
            f"use one of {', '.join(matching) or '(none: add a workload to benchmarks/workloads.py)'}",
            field="workload",
        )
    base = repo.config(options.name)
    delays, preferred, instances, concurrency = _validate(options, base.max_batch_size)
    # The curve goes beside the config; the raw files (perf_analyzer CSVs and logs, Triton's log) go to
    # the run folder, never into the model's folder that Triton reads.
    out = options.out_dir or repo.model_dir(options.name)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    work = options.out_dir / "raw" if options.out_dir else ROOT / "runs" / f"tune-{options.name}-{stamp}"
    inputs = load_inputs(WORKLOADS[workload_name], repo)
    data = write_perf_analyzer_data(inputs, work / "input.json")

    grid = [GridPoint(d, p, i) for d, p, i in itertools.product(delays, preferred, instances)]
    with TritonServer(repo.root, models=[options.name], log_path=work / "triton.log") as server:
        for index, point in enumerate(grid):
            config = type(base)()
            config.CopyFrom(base)
            apply_point(config, point)
            override = MessageToDict(config, preserving_proto_field_name=True)
            try:
                server.load(options.name, config=override)
                _check_served(server, options.name, point)
                point.curve = perf_sweep(
                    options.name,
                    server.grpc_url,
                    "grpc",
                    concurrency,
                    data,
                    work / f"point{index}.csv",
                    window_ms=options.window_ms,
                )
            except Exception as err:  # noqa: BLE001 - a point that fails is recorded, the others still run
                point.error = str(err).splitlines()[0]
                log.warning("%s: %s", point.label(), point.error)
                continue
            point.score = throughput_at_p99(point.curve, options.p99_ms)
            log.info(
                "%s: %s",
                point.label(),
                "p99 target not reached" if point.score is None else f"{point.score:.1f} items/s",
            )
    # Most throughput; on a tie the simpler point (fewer instances, then the shorter delay).
    scored = [p for p in grid if p.score is not None]
    chosen = max(scored, key=lambda p: (p.score, -p.instances, -p.delay_us), default=None)
    curve_json, curve_csv = _write_curve(out, options, workload_name, grid, chosen)
    config_path = None
    if chosen is not None and options.write:
        repo.update_config(options.name, lambda config: apply_point(config, chosen))
        config_path = repo.model_dir(options.name) / CONFIG
        log.info("wrote %s: %s", config_path, chosen.label())
    return TuneResult(options.name, options.p99_ms, grid, chosen, config_path, curve_json, curve_csv)


def _write_curve(
    out: Path, options: TuneOptions, workload: str, grid: list[GridPoint], chosen: GridPoint | None
) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    curve_json = out / "tuning.json"
    curve_json.write_text(
        json.dumps(
            {
                "model": options.name,
                "p99_ms": options.p99_ms,
                "workload": workload,
                "protocol": "grpc",
                "measured_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "chosen": None if chosen is None else chosen.to_dict(),
                "written": chosen is not None and options.write,
                "grid": [p.to_dict() for p in grid],
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    curve_csv = out / "tuning.csv"
    with open(curve_csv, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "max_queue_delay_us",
                "preferred_batch_size",
                "instance_count",
                "concurrency",
                "items_per_s",
                "p50_ms",
                "p90_ms",
                "p95_ms",
                "p99_ms",
                "within_target",
                "chosen",
            ]
        )
        for point in grid:
            for p in point.curve:
                writer.writerow(
                    [
                        point.delay_us,
                        "+".join(map(str, point.preferred)),
                        point.instances,
                        p.concurrency,
                        f"{p.throughput:.3f}",
                        f"{p.p50:.3f}",
                        f"{p.p90:.3f}",
                        f"{p.p95:.3f}",
                        f"{p.p99:.3f}",
                        p.p99 <= options.p99_ms,
                        point is chosen,
                    ]
                )
    return curve_json, curve_csv
