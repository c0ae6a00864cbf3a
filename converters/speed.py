"""In-process throughput of an ONNX Runtime session (items per second), for manifests and benchmarks.
Speed is always reported as a ratio against a baseline measured in the same run."""

from __future__ import annotations

import time

import numpy as np


def throughput(session, feeds: dict[str, np.ndarray], *, seconds: float = 1.0, min_runs: int = 3) -> float:
    """Items per second of ``session`` on ``feeds`` (one warm-up run, then at least ``min_runs`` runs
    and ``seconds`` of wall time)."""
    batch = int(next(iter(feeds.values())).shape[0])
    names = [o.name for o in session.get_outputs()]
    session.run(names, feeds)
    runs = 0
    start = time.perf_counter()
    while True:
        session.run(names, feeds)
        runs += 1
        elapsed = time.perf_counter() - start
        if runs >= min_runs and elapsed >= seconds:
            return runs * batch / elapsed
