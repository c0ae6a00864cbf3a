"""Two probes of the service's own health: ``/healthz`` latency while the largest request the limits
allow is decoded (the event loop must stay free), and ``/metrics`` before and after many requests for
paths that do not exist (its series must stay bounded)."""

from __future__ import annotations

import base64
import statistics
import threading
import time
import uuid

from benchmarks.faults.inputs import _png


def largest_array_side(limit: int) -> int:
    """The side of the largest square RGB pixel array whose JSON body stays within ``limit`` values
    (limits.max_json_values, counted as the service counts them)."""
    import orjson

    side = int((limit / 4) ** 0.5) + 2
    while side > 1:
        body = orjson.dumps({"array": [[[0, 0, 0]] * side] * side})
        if body.count(b",") + body.count(b"[") + body.count(b"{") <= limit:
            return side
        side -= 1
    return side


def largest_requests() -> dict[str, tuple[str, dict]]:
    """The largest requests the default limits allow (limits.max_request_pixels: one 4096 x 4096 image,
    or 64 of 512 x 512; limits.max_json_values: a 224 x 224 pixel array), and the issue's two attacks
    (64 images of 4096 x 4096; a 1400 x 1400 pixel array, 15.7 MB of JSON), refused now. Names with
    "array" are pixel arrays, the others image files."""
    from serving.settings import Limits

    side = largest_array_side(Limits().max_json_values)
    big = _png(4096, 4096)
    return {
        "one 4096x4096 PNG": ("/predict", {"image": big}),
        "64 PNGs of 512x512": ("/predict/batch", {"images": [_png(512, 512)] * 64}),
        f"array {side}x{side}x3": ("/predict", {"array": [[[0, 0, 0]] * side] * side}),
        "64 PNGs of 4096x4096 (refused)": ("/predict/batch", {"images": [big] * 64}),
        "array 1400x1400x3, 15.7 MB (refused)": ("/predict", {"array": [[[0, 0, 0]] * 1400] * 1400}),
    }


def healthz_while(url: str, route: str, body: dict, *, timeout_s: float = 120.0) -> dict:
    """Send ``body`` to ``route`` once and, meanwhile, ``/healthz`` in a loop on another connection;
    the latencies of the probes that overlapped the big request."""
    import httpx
    import orjson

    content = orjson.dumps(body)
    outcome: dict = {}

    def big_request() -> None:
        started = time.monotonic()
        with httpx.Client(base_url=url, timeout=timeout_s) as client:
            response = client.post(route, content=content, headers={"Content-Type": "application/json"})
        outcome.update(
            status=response.status_code, seconds=time.monotonic() - started, ended=time.monotonic()
        )

    probes: list[tuple[float, float]] = []  # (sent at, latency)
    with httpx.Client(base_url=url, timeout=timeout_s) as client:
        client.get("/healthz")  # the connection is open before the big request starts
        worker = threading.Thread(target=big_request, daemon=True)
        started = time.monotonic()
        worker.start()
        while worker.is_alive() and time.monotonic() - started < timeout_s:
            sent = time.monotonic()
            client.get("/healthz")
            probes.append((sent, time.monotonic() - sent))
            time.sleep(0.01)
        worker.join(timeout_s)
    ended = outcome.get("ended", time.monotonic())
    during = [latency for sent, latency in probes if sent < ended]
    return {
        "route": route,
        "body_bytes": len(content),
        "status": outcome.get("status"),
        "request_s": round(outcome.get("seconds", float("nan")), 3),
        "probes": len(during),
        "healthz_max_ms": round(1000 * max(during, default=0.0), 1),
        "healthz_p50_ms": round(1000 * statistics.median(during), 1) if during else None,
    }


def blocking(url: str, repeats: int) -> dict:
    import httpx

    with httpx.Client(base_url=url, timeout=10) as client:
        idle = []
        for _ in range(20):
            sent = time.monotonic()
            client.get("/healthz")
            idle.append(time.monotonic() - sent)
    results = {}
    for name, (route, body) in largest_requests().items():
        runs = [healthz_while(url, route, body) for _ in range(repeats)]
        results[name] = {**runs[-1], "healthz_max_ms": max(r["healthz_max_ms"] for r in runs), "runs": runs}
    allowed = [r for name, r in results.items() if "refused" not in name]
    files = [r["healthz_max_ms"] for name, r in results.items() if "array" not in name]
    arrays = [r["healthz_max_ms"] for name, r in results.items() if "array" in name]
    return {
        "idle_healthz_max_ms": round(1000 * max(idle), 1),
        "requests": results,
        # image files are decoded in the decoding threads: the event loop stays free
        "healthz_max_ms": max(files),
        # a pixel array is parsed from JSON by BentoML, on the event loop, before the service sees it
        "array_healthz_max_ms": max(arrays),
        "largest_allowed_ok": all(r["status"] == 200 for r in allowed),
    }


def metrics_growth(url: str, paths: int) -> dict:
    """``/metrics`` size, series and scrape time before and after ``paths`` requests for unknown paths."""
    import httpx

    def scrape(client) -> tuple[str, float]:
        sent = time.monotonic()
        text = client.get("/metrics").text
        return text, time.monotonic() - sent

    with httpx.Client(base_url=url, timeout=60) as client:
        before, before_s = scrape(client)
        tag = uuid.uuid4().hex[:8]
        statuses: dict[int, int] = {}
        for i in range(paths):
            status = client.get(
                f"/fault-{tag}/{i}/{base64.urlsafe_b64encode(str(i).encode()).decode()}"
            ).status_code
            statuses[status] = statuses.get(status, 0) + 1
        after, after_s = scrape(client)
    series = lambda text: sum(1 for line in text.splitlines() if line and not line.startswith("#"))  # noqa: E731
    return {
        "unknown_paths": paths,
        "statuses": {str(k): v for k, v in statuses.items()},
        "bytes_before": len(before),
        "bytes_after": len(after),
        "series_before": series(before),
        "series_after": series(after),
        "new_series": series(after) - series(before),
        "scrape_ms_before": round(1000 * before_s, 1),
        "scrape_ms_after": round(1000 * after_s, 1),
        "unknown_paths_in_metrics": f"fault-{tag}" in after,
    }
