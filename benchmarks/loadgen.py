"""Load generators driven as the tools themselves: ``locust --headless`` and perf_analyzer.

Each run writes its raw files (Locust: ``_stats.csv``, ``_stats_history.csv``, ``.html``, ``.json``;
perf_analyzer: its ``-f`` CSV) under the run folder and is parsed back into ``Point``\\ s from those
files, so what the report shows is what the tools wrote.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.parsers import Point, locust_point, parse_locust_history
from converters.errors import CheckFailed, MissingDependency

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent


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
    run_env = {**os.environ, **(env or {})}
    log.info("locust %s: %d users for %.0f s", host, users, duration_s)
    with open(f"{prefix}.log", "wb") as log_file:
        try:
            completed = subprocess.run(
                argv,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=run_env,
                cwd=ROOT,
                timeout=timeout_s or duration_s + 30,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"locust at {users} users did not finish in time; see {prefix}.log") from None
    stats = Path(f"{prefix}_stats.csv")
    if not stats.is_file():
        tail = "\n".join(Path(f"{prefix}.log").read_text(errors="replace").splitlines()[-15:])
        raise CheckFailed(
            f"locust at {users} users wrote no {stats.name} (exit {completed.returncode}):\n{tail}"
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
