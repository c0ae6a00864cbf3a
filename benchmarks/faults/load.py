"""Clients that keep calling the Bento while a fault is made, and what their answers say.

Each client is a thread with its own HTTP connection, calling one route in a loop; every answer is
recorded with its start and end times, its status, the version that served it and whether its body was
right (the same input always gets the same answer, taken once before the fault). A request that gets
no answer at all (connection reset, no response) is *lost*; one whose answer took longer than the
``hung_s`` threshold is *hung*.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

# What the clients send: a small pixel array (image_classifier answers in a few ms).
ARRAY = [[[10, 20, 30], [40, 50, 60]], [[70, 80, 90], [100, 110, 120]]]
BODY = {"array": ARRAY, "top_k": 3}


@dataclass
class Outcome:
    started: float  # time.monotonic()
    ended: float
    status: int | None  # None: no answer (lost)
    version: int | None = None
    right: bool | None = None  # a 200 whose body equals the reference; None for other statuses
    retry_after: str | None = None
    error: str | None = None

    @property
    def seconds(self) -> float:
        return self.ended - self.started


def reference(client, route: str = "/predict", body: dict | None = None) -> dict:
    """The answer every healthy call must give (labels and scores of the fixed input)."""
    response = client.post(route, json=body or BODY, timeout=30)
    response.raise_for_status()
    return response.json()


def same_answer(got: dict, expected: dict) -> bool:
    """Same labels in the same order, scores within 1e-5 (any version: they are the same model)."""
    try:
        a, b = got["predictions"], expected["predictions"]
        return [p["label"] for p in a] == [p["label"] for p in b] and np.allclose(
            [p["score"] for p in a], [p["score"] for p in b], atol=1e-5
        )
    except (KeyError, TypeError):
        return False


@dataclass
class Load:
    """``clients`` threads calling ``route`` on ``url`` until ``stop()``."""

    url: str
    expected: dict
    clients: int = 4
    route: str = "/predict"
    body: dict = field(default_factory=lambda: dict(BODY))
    timeout_s: float = 60.0
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> list[Outcome]:
        """Stop the clients; their calls in flight finish first (each within ``timeout_s``)."""
        self._halt.set()
        for thread in self._threads:
            thread.join(self.timeout_s + 5)
        with self._lock:
            return sorted(self.outcomes, key=lambda o: o.started)

    def _client(self) -> None:
        import httpx

        with httpx.Client(base_url=self.url, timeout=self.timeout_s) as client:
            while not self._halt.is_set():
                started = time.monotonic()
                try:
                    response = client.post(self.route, json=self.body)
                except httpx.HTTPError as err:
                    outcome = Outcome(started, time.monotonic(), None, error=f"{type(err).__name__}: {err}")
                else:
                    outcome = Outcome(started, time.monotonic(), response.status_code)
                    outcome.retry_after = response.headers.get("Retry-After")
                    try:
                        body = response.json()
                    except ValueError:
                        body = {}
                    if response.status_code == 200:
                        outcome.version = body.get("version")
                        outcome.right = same_answer(body, self.expected)
                    else:
                        outcome.error = str(body.get("error", response.text[:200]))
                with self._lock:
                    self.outcomes.append(outcome)


def summarise(outcomes: list[Outcome], hung_s: float) -> dict:
    """Counts over a list of outcomes: by status, lost, hung (slower than ``hung_s``), wrong (a 200
    with another answer, or a status other than 200/503), and the slowest answer."""
    statuses: dict[str, int] = {}
    for outcome in outcomes:
        key = "lost" if outcome.status is None else str(outcome.status)
        statuses[key] = statuses.get(key, 0) + 1
    return {
        "requests": len(outcomes),
        "statuses": statuses,
        "lost": sum(o.status is None for o in outcomes),
        "hung": sum(o.seconds > hung_s for o in outcomes),
        "wrong": sum((o.status == 200 and not o.right) or o.status not in (200, 503, None) for o in outcomes),
        "slowest_s": round(max((o.seconds for o in outcomes), default=0.0), 3),
    }
