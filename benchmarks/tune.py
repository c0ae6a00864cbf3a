"""``python -m benchmarks tune NAME --p99-ms X``: Triton's batching settings, chosen by measurement.

A grid of ``max_queue_delay_microseconds`` x preferred batch sizes x instance count. For each point
the model is reloaded in a real Triton server with that configuration (tritonclient ``load_model``
with a config override, so the repository is never touched), perf_analyzer measures a concurrency
sweep over gRPC, and the point's score is the most throughput it reaches with p99 at or under the
target (``stats.throughput_at_p99``).

Benchmarks measure, converters write: the outcome is a tuning result (``core.tuning``: the chosen
settings, the target, every point's curve, the date, the command), written as ``tuning.json`` with
``tuning.csv`` beside it in the run folder (``runs/tune-<name>-<UTC time>/`` or ``--out``; the raw
perf_analyzer files and logs under its ``raw/``). ``python -m converters configure NAME --tuning
<folder>/tuning.json`` applies it to the entry; ``tune`` prints that command. When no point meets the
target the result still holds every curve, with ``chosen: null``, and the command exits 1.
"""

from __future__ import annotations

import csv
import itertools
import logging
import shlex
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.loadgen import perf_sweep
from benchmarks.parsers import Point
from benchmarks.report import new_run_folder
from benchmarks.stats import throughput_at_p99
from benchmarks.workloads import WORKLOADS, load_inputs, write_perf_analyzer_data
from core.errors import CheckFailed, InvalidArgument
from core.repository import Repository
from core.tuning import TIME_FORMAT, CurvePoint, GridResult, Settings, Target, TuningResult

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
PROTOCOL = "grpc"


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
    out_dir: Path | None = None  # new or empty; default runs/tune-<name>-<UTC time>/


@dataclass
class GridPoint:
    settings: Settings
    curve: list[Point] = field(default_factory=list)
    score: float | None = None  # items/s within the p99 target; None: not reached or failed
    error: str | None = None

    def result(self) -> GridResult:
        curve = tuple(CurvePoint(p.concurrency, p.throughput, p.p50, p.p90, p.p95, p.p99) for p in self.curve)
        return GridResult(self.settings, self.score, self.error, curve)


@dataclass
class TuneResult:
    result: TuningResult
    grid: list[GridPoint]
    chosen: GridPoint | None
    path: Path  # tuning.json
    csv_path: Path
    repository: Path | None  # as given (None: the default repository)

    def apply_command(self) -> str:
        """The converters command that applies this result to the entry."""
        argv = ["configure", self.result.model, "--tuning", str(self.path)]
        if self.repository is not None:
            argv += ["--repository", str(self.repository)]
        return "python -m converters " + shlex.join(argv)

    def table(self) -> str:
        lines = [f"{'point':<50} {'best items/s under p99':>24}"]
        for point in self.grid:
            value = point.error or ("-" if point.score is None else f"{point.score:.1f}")
            mark = "  <- chosen" if point is self.chosen else ""
            lines.append(f"{point.settings.label():<50} {value:>24}{mark}")
        if self.chosen is None:
            lines.append(
                f"no configuration kept p99 <= {self.result.target.p99_ms} ms: nothing to apply; "
                f"the curves are in {self.path}"
            )
        else:
            lines.append(f"tuning result: {self.path} ({self.chosen.settings.label()})")
            lines.append(f"apply it with: {self.apply_command()}")
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


def _check_served(server, name: str, settings: Settings) -> None:
    """The server reports the point's settings back (the override really took effect)."""
    client = server.client()
    try:
        served = client.get_model_config(name)
    finally:
        client.close()
    batching = served.get("dynamic_batching", {})
    got = Settings(
        int(batching.get("max_queue_delay_microseconds", 0)),
        tuple(int(x) for x in batching.get("preferred_batch_size", [])),
        sum(int(g.get("count", 1)) for g in served.get("instance_group", [])),
    )
    if got != settings:
        raise CheckFailed(f"{name}: Triton serves {got.label()} after loading {settings.label()}")


def _command(options: TuneOptions, target: Target, grid: list[GridPoint]) -> str:
    """The command that repeats this measurement, every grid value spelled out."""
    argv = [options.name, "--p99-ms", f"{target.p99_ms:g}", "--workload", target.workload]
    if options.repository is not None:
        argv += ["--repository", str(options.repository)]

    def values(attribute) -> str:
        return ",".join(dict.fromkeys(str(attribute(p.settings)) for p in grid))

    argv += ["--delays-us", values(lambda s: s.max_queue_delay_microseconds)]
    argv += ["--preferred", values(lambda s: "+".join(map(str, s.preferred_batch_size)))]
    argv += ["--instances", values(lambda s: s.instance_count)]
    argv += ["--concurrency", ",".join(map(str, target.concurrency)), "--window-ms", str(target.window_ms)]
    return "python -m benchmarks tune " + shlex.join(argv)


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
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = new_run_folder((options.out_dir or ROOT / "runs" / f"tune-{options.name}-{stamp}").absolute())
    work = out / "raw"
    inputs = load_inputs(WORKLOADS[workload_name], repo)
    data = write_perf_analyzer_data(inputs, work / "input.json")
    target = Target(options.p99_ms, workload_name, PROTOCOL, tuple(concurrency), options.window_ms)

    grid = [GridPoint(Settings(d, p, i)) for d, p, i in itertools.product(delays, preferred, instances)]
    with TritonServer(
        repo.root, models=[options.name], log_path=work / "triton.log", die_with_parent=True
    ) as server:
        for index, point in enumerate(grid):
            config = type(base)()
            config.CopyFrom(base)
            point.settings.apply(config)
            override = MessageToDict(config, preserving_proto_field_name=True)
            try:
                server.load(options.name, config=override)
                _check_served(server, options.name, point.settings)
                point.curve = perf_sweep(
                    options.name,
                    server.grpc_url,
                    PROTOCOL,
                    concurrency,
                    data,
                    work / f"point{index}.csv",
                    window_ms=options.window_ms,
                )
            except Exception as err:  # noqa: BLE001 - a point that fails is recorded, the others still run
                point.error = str(err).splitlines()[0]
                log.warning("%s: %s", point.settings.label(), point.error)
                continue
            point.score = throughput_at_p99(point.curve, options.p99_ms)
            log.info(
                "%s: %s",
                point.settings.label(),
                "p99 target not reached" if point.score is None else f"{point.score:.1f} items/s",
            )
    # Most throughput; on a tie the simpler point (fewer instances, then the shorter delay).
    scored = [p for p in grid if p.score is not None]
    chosen = max(
        scored,
        key=lambda p: (p.score, -p.settings.instance_count, -p.settings.max_queue_delay_microseconds),
        default=None,
    )
    result = TuningResult(
        model=options.name,
        version=version,
        target=target,
        chosen=None if chosen is None else chosen.settings,
        grid=tuple(p.result() for p in grid),
        measured_at=datetime.now(UTC).strftime(TIME_FORMAT),
        command=_command(options, target, grid),
    )
    path = result.write(out / "tuning.json")
    csv_path = _write_csv(out / "tuning.csv", grid, chosen, options.p99_ms)
    log.info("tuning result in %s", path)
    return TuneResult(result, grid, chosen, path, csv_path, options.repository)


def _write_csv(path: Path, grid: list[GridPoint], chosen: GridPoint | None, p99_ms: float) -> Path:
    """Every point's curve as one table, for a spreadsheet (the JSON is what the converters read)."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
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
            settings = point.settings
            for p in point.curve:
                writer.writerow(
                    [
                        settings.max_queue_delay_microseconds,
                        "+".join(map(str, settings.preferred_batch_size)),
                        settings.instance_count,
                        p.concurrency,
                        f"{p.throughput:.3f}",
                        f"{p.p50:.3f}",
                        f"{p.p90:.3f}",
                        f"{p.p95:.3f}",
                        f"{p.p99:.3f}",
                        p.p99 <= p99_ms,
                        point is chosen,
                    ]
                )
    return path
