"""How long and how wide a run measures: durations and sweeps per mode, as data.

``full`` (the default) is sized to finish within 5 minutes on this 2-core machine, ``quick`` within
90 s. Every sweep starts at 1 (concurrency or users): the low end of the curve, held against the
ceiling's batch-1 latency, is as much a result as the saturation end.

``scaled(f)`` shrinks every duration by ``f`` (the smoke test runs ``--quick`` at a small
factor); the sweeps stay as they are, so the shape of the output does not change.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from core.errors import InvalidArgument


@dataclass(frozen=True)
class Plan:
    mode: str
    budget_s: float  # the whole run, start-ups and model building included
    ceiling_s: float  # per batch size
    batch_sizes: tuple[int, ...]
    triton_window_ms: int  # perf_analyzer's measurement window
    triton_concurrency: tuple[int, ...]
    protocols: tuple[str, ...]
    locust_s: float  # per users level
    locust_users: tuple[int, ...]
    # Measure the ceiling again once every server has stopped, and keep the better figure.
    ceiling_again: bool = True
    # Workloads that get the narrower sweeps below (the long sequences are 8x the work per item).
    narrow_workloads: tuple[str, ...] = ()
    narrow_concurrency: tuple[int, ...] = ()
    narrow_users: tuple[int, ...] = ()

    def concurrency_for(self, workload: str) -> tuple[int, ...]:
        return (
            self.narrow_concurrency
            if workload in self.narrow_workloads and self.narrow_concurrency
            else self.triton_concurrency
        )

    def users_for(self, workload: str) -> tuple[int, ...]:
        return (
            self.narrow_users
            if workload in self.narrow_workloads and self.narrow_users
            else self.locust_users
        )

    def scaled(self, factor: float) -> Plan:
        if not 0 < factor <= 10:
            raise InvalidArgument(f"--time-scale: must be in (0, 10], got {factor}", field="time_scale")
        return replace(
            self,
            budget_s=self.budget_s * max(factor, 1.0),  # start-ups do not shrink
            ceiling_s=self.ceiling_s * factor,
            triton_window_ms=max(400, int(self.triton_window_ms * factor)),
            # Locust needs ~1 s to load the inputs and spawn its users before the first request.
            locust_s=max(3.0, self.locust_s * factor),
        )


PLANS: dict[str, Plan] = {
    "full": Plan(
        mode="full",
        budget_s=292,  # + interpreter start and the report: <= 5 min
        ceiling_s=2.0,
        batch_sizes=(1, 8, 32),
        triton_window_ms=1000,
        triton_concurrency=(1, 4, 8, 16, 32),
        protocols=("grpc", "http"),
        locust_s=5.0,
        locust_users=(1, 4, 8, 16, 32),
        narrow_workloads=("minilm-long", "minilm-mixed", "image"),
        narrow_concurrency=(1, 4, 8),
        narrow_users=(1, 8),
    ),
    "quick": Plan(
        mode="quick",
        budget_s=84,  # + interpreter start and the report: <= 90 s
        ceiling_s=0.5,
        batch_sizes=(1, 8, 32),
        triton_window_ms=500,
        triton_concurrency=(1, 4),
        protocols=("grpc", "http"),
        locust_s=3.0,
        locust_users=(1, 4),
        ceiling_again=False,
    ),
}
