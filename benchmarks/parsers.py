"""Readers for the CSV files of perf_analyzer (``-f``) and Locust (``--csv``): one ``Point`` per row.

A ``Point`` is one measured load level of one stack: throughput in items per second (one item = one
sentence or one image; every request here carries one) and latency percentiles in milliseconds.
perf_analyzer writes latencies in microseconds, Locust in milliseconds; both come out in ms.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.errors import CheckFailed, InvalidArgument, NotFound

PERCENTILES = ("p50", "p90", "p95", "p99")


@dataclass
class Point:
    """One load level: ``concurrency`` is perf_analyzer's concurrency, Locust's users, or the
    in-process batch size for the ceiling."""

    concurrency: int
    throughput: float  # items/s
    p50: float  # ms
    p90: float
    p95: float
    p99: float
    avg: float | None  # ms
    requests: int | None = None  # None: the tool does not say (perf_analyzer's CSV)
    failures: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Point:
        return cls(**data)


def _read_rows(path: Path, required: tuple[str, ...], what: str) -> list[dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"{path}: no {what} CSV there", field="csv")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [name for name in required if name not in header]
        if missing:
            raise InvalidArgument(
                f"{path}: not a {what} CSV: missing column(s) {', '.join(missing)} (header: {header})",
                field="csv",
            )
        return list(reader)


def _number(path: Path, row: dict[str, str], column: str) -> float:
    raw = (row.get(column) or "").strip()
    try:
        value = float(raw)
    except ValueError:
        raise InvalidArgument(
            f"{path}: column {column!r} holds {raw!r}, not a number", field=column
        ) from None
    if math.isnan(value):
        raise InvalidArgument(f"{path}: column {column!r} is NaN", field=column)
    return value


# ---- perf_analyzer -------------------------------------------------------------------------------

PERF_ANALYZER_COLUMNS = (
    "Concurrency",
    "Inferences/Second",
    "p50 latency",
    "p90 latency",
    "p95 latency",
    "p99 latency",
)
# Where the time of a request goes (microseconds in the CSV, ms in Point.extra). Together they make the
# client's average latency: "Network+Server Send/Recv" is what is left of it once the others are taken.
PERF_ANALYZER_BREAKDOWN = (
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
)


def parse_perf_analyzer_csv(path: str | Path) -> list[Point]:
    """perf_analyzer's ``-f`` CSV (its rows come sorted by throughput): points sorted by concurrency.

    perf_analyzer 2.51 writes no "Avg latency" column; the average is then the sum of the breakdown
    columns (which is how perf_analyzer splits it up)."""
    path = Path(path)
    rows = _read_rows(path, PERF_ANALYZER_COLUMNS, "perf_analyzer")
    if not rows:
        raise CheckFailed(f"{path}: perf_analyzer wrote a header but no measurement")
    points = []
    for row in rows:
        ms = {col: _number(path, row, col) / 1000.0 for col in PERF_ANALYZER_COLUMNS[2:]}
        breakdown = {col: _number(path, row, col) / 1000.0 for col in PERF_ANALYZER_BREAKDOWN if col in row}
        if "Avg latency" in row:
            avg = _number(path, row, "Avg latency") / 1000.0
        elif len(breakdown) == len(PERF_ANALYZER_BREAKDOWN):
            avg = sum(breakdown.values())
        else:
            avg = None
        points.append(
            Point(
                concurrency=int(_number(path, row, "Concurrency")),
                throughput=_number(path, row, "Inferences/Second"),
                p50=ms["p50 latency"],
                p90=ms["p90 latency"],
                p95=ms["p95 latency"],
                p99=ms["p99 latency"],
                avg=avg,
                extra={"breakdown_ms": breakdown} if breakdown else {},
            )
        )
    return sorted(points, key=lambda p: p.concurrency)


# ---- Locust --------------------------------------------------------------------------------------

LOCUST_STATS_COLUMNS = (
    "Type",
    "Name",
    "Request Count",
    "Failure Count",
    "Average Response Time",
    "Requests/s",
    "50%",
    "90%",
    "95%",
    "99%",
)
LOCUST_HISTORY_COLUMNS = (
    "Timestamp",
    "User Count",
    "Name",
    "Requests/s",
    "Failures/s",
    "50%",
    "95%",
    "99%",
    "Total Request Count",
)


@dataclass
class LocustRow:
    """One row of ``<prefix>_stats.csv``: an endpoint, or the ``Aggregated`` total."""

    method: str
    name: str
    requests: int
    failures: int
    rps: float
    avg: float | None  # ms
    p50: float
    p90: float
    p95: float
    p99: float


def parse_locust_stats(path: str | Path) -> list[LocustRow]:
    """Every row of Locust's ``_stats.csv``, the ``Aggregated`` one included (named "Aggregated")."""
    path = Path(path)
    rows = _read_rows(path, LOCUST_STATS_COLUMNS, "Locust _stats")
    result = []
    for row in rows:
        requests = int(_number(path, row, "Request Count"))
        # Locust writes "N/A" percentiles for an endpoint that got no answer at all.
        pct = {c: (_number(path, row, c) if requests else 0.0) for c in ("50%", "90%", "95%", "99%")}
        result.append(
            LocustRow(
                method=row["Type"],
                name=row["Name"],
                requests=requests,
                failures=int(_number(path, row, "Failure Count")),
                rps=_number(path, row, "Requests/s"),
                avg=_number(path, row, "Average Response Time") if requests else 0.0,
                p50=pct["50%"],
                p90=pct["90%"],
                p95=pct["95%"],
                p99=pct["99%"],
            )
        )
    return result


def locust_point(path: str | Path, users: int) -> Point:
    """The ``Aggregated`` row of a Locust ``_stats.csv`` as the Point of ``users``."""
    rows = parse_locust_stats(path)
    total = [r for r in rows if r.name == "Aggregated"]
    if not total:
        raise InvalidArgument(f"{path}: no 'Aggregated' row; is this Locust's _stats.csv?", field="csv")
    row = total[0]
    if row.requests == 0:
        raise CheckFailed(f"{path}: Locust recorded no request at {users} users")
    return Point(
        concurrency=users,
        throughput=row.rps,
        p50=row.p50,
        p90=row.p90,
        p95=row.p95,
        p99=row.p99,
        avg=row.avg,
        requests=row.requests,
        failures=row.failures,
    )


@dataclass
class HistoryRow:
    timestamp: int
    users: int
    rps: float
    failures_per_s: float
    p50: float | None
    p95: float | None
    p99: float | None
    total_requests: int


def parse_locust_history(path: str | Path) -> list[HistoryRow]:
    """The ``Aggregated`` rows of ``_stats_history.csv`` (one per second), in time order.
    Percentiles are None while nothing has been answered yet (Locust writes "N/A")."""
    path = Path(path)
    rows = _read_rows(path, LOCUST_HISTORY_COLUMNS, "Locust _stats_history")

    def optional(row: dict[str, str], column: str) -> float | None:
        return None if row[column].strip() in ("N/A", "") else _number(path, row, column)

    history = [
        HistoryRow(
            timestamp=int(_number(path, row, "Timestamp")),
            users=int(_number(path, row, "User Count")),
            rps=_number(path, row, "Requests/s"),
            failures_per_s=_number(path, row, "Failures/s"),
            p50=optional(row, "50%"),
            p95=optional(row, "95%"),
            p99=optional(row, "99%"),
            total_requests=int(_number(path, row, "Total Request Count")),
        )
        for row in rows
        if row["Name"] == "Aggregated"
    ]
    return sorted(history, key=lambda r: r.timestamp)
