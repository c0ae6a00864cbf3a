"""Load generators driven as the tools themselves: ``locust --headless`` and perf_analyzer.

Each run writes its raw files (Locust: ``_stats.csv``, ``_stats_history.csv``, ``.html``, ``.json``;
perf_analyzer: its ``-f`` CSV) under the run folder and is parsed back into ``Point``\\ s from those
files, so what the report shows is what the tools wrote. ``run_logged`` is how every tool the
benchmarks run to its end is started (the load generators, and the converters that build a run's models).
"""

from __future__ import annotations

import logging
import os
import re
import resource
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.parsers import Point, locust_point, parse_locust_history, parse_perf_analyzer_csv
from core.errors import CheckFailed, InvalidArgument, MissingDependency

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent


def run_logged(
    argv: list[str], log_path: Path, timeout_s: float, too_long: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run a tool to its end in a session of its own, its output into ``log_path``;
    CheckFailed(``too_long``) when it runs past ``timeout_s`` (it is killed then)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log_file:
        try:
            return subprocess.run(
                argv,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
                timeout=timeout_s,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            raise CheckFailed(too_long) from None


def log_tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a tool's log, for the error that reports its failure."""
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])


@dataclass
class LocustRun:
    point: Point
    files: list[Path] = field(default_factory=list)
    exit_code: int = 0


def locust_bin() -> Path:
    path = Path(sys.executable).parent / "locust"
    if not path.exists():
        raise MissingDependency(f"{path}: locust is not installed in this venv; run `make setup`")
    return path


def run_locust(
    locustfile: Path,
    host: str,
    users: int,
    duration_s: float,
    prefix: Path,
    *,
    user_classes: list[str] | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float | None = None,
) -> LocustRun:
    """One headless Locust run at ``users`` users, all spawned at once, for ``duration_s`` seconds.
    Statistics are reset once every user is running, so the ramp is not in the figures."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        str(locust_bin()),
        "-f",
        str(locustfile),
        "--headless",
        "--host",
        host,
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{max(1, round(duration_s))}s",
        "--stop-timeout",
        "5",
        "--reset-stats",
        "--only-summary",
        "--csv",
        str(prefix),
        "--html",
        f"{prefix}.html",
        "--json-file",
        str(prefix),
        "--loglevel",
        "WARNING",
        *(user_classes or []),
    ]
    log.info("locust %s: %d users for %.0f s", host, users, duration_s)
    completed = run_logged(
        argv,
        Path(f"{prefix}.log"),
        timeout_s or duration_s + 30,
        f"locust at {users} users did not finish in time; see {prefix}.log",
        env={**os.environ, **(env or {})},
    )
    stats = Path(f"{prefix}_stats.csv")
    if not stats.is_file():
        raise CheckFailed(
            f"locust at {users} users wrote no {stats.name} (exit {completed.returncode}):\n"
            + log_tail(Path(f"{prefix}.log"), 15)
        )
    point = locust_point(stats, users)
    history = parse_locust_history(Path(f"{prefix}_stats_history.csv"))
    point.extra["seconds_recorded"] = len(history)
    # Locust exits 1 when any request failed: that is recorded as failures, not hidden.
    files = [
        p
        for p in (stats, Path(f"{prefix}_stats_history.csv"), Path(f"{prefix}.html"), Path(f"{prefix}.json"))
        if p.exists()
    ]
    return LocustRun(point=point, files=files, exit_code=completed.returncode)


# ---- perf_analyzer -------------------------------------------------------------------------------

PERF_ANALYZER = ROOT / ".tools" / "bin" / "perf_analyzer"
RETRY_MESSAGES = ("No valid requests recorded", "Failed to obtain stable measurement")


def perf_analyzer_bin() -> Path:
    if not PERF_ANALYZER.exists():
        raise MissingDependency(f"{PERF_ANALYZER}: perf_analyzer is not installed; run `make setup`")
    return PERF_ANALYZER


def perf_sweep(
    model: str,
    url: str,
    protocol: str,
    concurrency: list[int] | tuple[int, ...],
    input_data: Path,
    csv_path: Path,
    *,
    window_ms: int = 1000,
    timeout_s: float | None = None,
    server=None,
) -> list[Point]:
    """perf_analyzer against ``model`` at ``url`` over ``protocol`` ("grpc" | "http"), one level per
    concurrency value, one item per request (``input_data``: its ``--input-data`` JSON). Its ``-f`` CSV
    is kept at ``csv_path`` and parsed back.

    ``server``: the running ``TritonServer`` behind ``url``; each level's point then also holds the CPU
    time serving one item cost (``CpuMeter``).

    Stability: the shared 2-core machine is noisy, so a level counts as stable when its last 3 windows
    are within 100% of each other (``-s 100``), with up to 5 windows per level (``-r 5``)."""
    if protocol not in ("grpc", "http"):
        raise InvalidArgument(f"protocol: {protocol!r} is not one of grpc, http", field="protocol")
    levels = sorted(set(concurrency))
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    points: list[Point] = []
    level_csvs: list[Path] = []
    # One perf_analyzer per level: a level that cannot stabilise costs that level, not the sweep.
    for level in levels:
        level_csv = csv_path.with_name(f"{csv_path.stem}_c{level}.csv")
        level_csvs.append(level_csv)
        log_path = csv_path.with_name(f"{csv_path.stem}_c{level}.log")
        window = window_ms
        meter = CpuMeter(server, model) if server is not None else None
        for attempt in (1, 2):
            argv = [
                str(perf_analyzer_bin()),
                "-m",
                model,
                "-u",
                url,
                "-i",
                protocol,
                "--concurrency-range",
                str(level),
                "-p",
                str(window),
                "-s",
                "100",
                "-r",
                "6",
                "--input-data",
                str(input_data),
                "-f",
                str(level_csv),
            ]
            done = run_logged(
                argv,
                log_path,
                timeout_s or (6 * window / 1000 + 30),
                f"perf_analyzer {model} {protocol} c={level} did not finish in time",
            )
            if done.returncode == 0 and level_csv.is_file():
                break
            text = log_path.read_text(errors="replace")
            # A window too short for this machine's noise: one more try with a window twice as long.
            if attempt == 1 and any(m in text for m in RETRY_MESSAGES):
                log.info(
                    "perf_analyzer %s c=%d: %s; retrying with a %d ms window",
                    protocol,
                    level,
                    text.strip().splitlines()[-1],
                    2 * window,
                )
                window *= 2
                continue
            raise CheckFailed(
                f"perf_analyzer {model} {protocol} at concurrency {level} failed "
                f"(exit {done.returncode}):\n{log_tail(log_path, 6)}"
            )
        level_points = parse_perf_analyzer_csv(level_csv)
        counts = server_counts(log_path.read_text(errors="replace"))
        cpu = meter.per_item() if meter is not None else {}
        for point in level_points:
            point.extra.update(counts, **cpu)
        points += level_points
    _merge_csv(level_csvs, csv_path)
    return sorted(points, key=lambda p: p.concurrency)


def server_counts(output: str) -> dict:
    """Triton's own counts for the measured window, from perf_analyzer's report: inferences (items),
    executions (model runs) and their ratio, the average batch the dynamic batcher formed."""
    inferences = re.search(r"Server:\s+Inference count: (\d+)\s+Execution count: (\d+)", output)
    if not inferences:
        return {}
    items, executions = int(inferences.group(1)), int(inferences.group(2))
    return {
        "server_inferences": items,
        "server_executions": executions,
        "avg_batch": round(items / executions, 2) if executions else None,
    }


class CpuMeter:
    """CPU time per item over one perf_analyzer call: the server's (tritonserver and its python-backend
    stubs, from /proc) and perf_analyzer's (this process's children that ended meanwhile), divided by
    the items Triton itself counted meanwhile (its statistics). Throughput on a shared machine swings
    with whatever else runs on it; CPU time per item does not, so it is the figure to hold against what
    ONNX Runtime alone spends per item (the ceiling's ``cpu_ms_per_item``)."""

    def __init__(self, server, model: str) -> None:
        self.server, self.model = server, model
        self.server_cpu = server.cpu_times()
        self.client_cpu = _children_cpu_s()
        self.items = self._items()

    def _items(self) -> int:
        stats = self.server.statistics(self.model)["model_stats"]
        return sum(int(m.get("inference_count", 0)) for m in stats)

    def per_item(self) -> dict:
        items = self._items() - self.items
        if items <= 0:
            return {}
        return {
            "server_cpu_ms_per_item": self.server.cpu_delta(self.server_cpu) * 1000 / items,
            "client_cpu_ms_per_item": (_children_cpu_s() - self.client_cpu) * 1000 / items,
        }


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _merge_csv(parts: list[Path], target: Path) -> None:
    """One CSV of the sweep: the header once, then every level's rows, in concurrency order."""
    lines: list[str] = []
    for part in parts:
        text = part.read_text(encoding="utf-8").splitlines()
        if not lines:
            lines.append(text[0])
        lines += [line for line in text[1:] if line.strip()]
        part.unlink()
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
