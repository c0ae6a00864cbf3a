"""Typed results of the conversion steps: what a step did, what it produced, how long it took."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class StepResult:
    """One step (export, parity, publish, quantize). ``outputs`` maps names to produced paths or values."""

    step: str
    status: str  # "ok" | "failed" | "skipped"
    duration_s: float
    outputs: dict = field(default_factory=dict)
    message: str = ""


@dataclass
class ConversionResult:
    """A whole command: the published entry and every step on the way."""

    name: str
    version: int
    path: Path
    manifest: dict
    steps: list[StepResult] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return sum(step.duration_s for step in self.steps)


class Timer:
    """``with Timer() as t: ...; t.elapsed`` in seconds."""

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        self.elapsed = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.elapsed = time.perf_counter() - self._start
