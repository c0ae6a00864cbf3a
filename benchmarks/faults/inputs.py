"""Bad inputs: a matrix of malformed requests with the status each must get, and a bounded schemathesis
run of the service's own OpenAPI schema. 5xx answers are counted from the service's own
``bentoml_service_request_total`` series (every route, every answer), crashes from its processes."""

from __future__ import annotations

import base64
import io
import logging
import os
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    status: int  # the status it must get
    json: object = None
    content: bytes | None = None
    headers: dict | None = None


def _png(width: int, height: int) -> str:
    """A 1-bit PNG of width x height, all black: a few kB of base64 for millions of pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    rows = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    raw = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", rows)
        + chunk(b"IEND", b"")
    )
    return base64.b64encode(raw).decode()


def _encoded(fmt: str) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def cases() -> list[Case]:
    eps = base64.b64encode(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n%%EOF\n").decode()
    big = _png(4096, 4096)
    multipart = b'--x\r\nContent-Disposition: form-data; name="text"\r\n\r\nhi\r\n--x--\r\n'
    pixel = [[[0, 0, 0]]]
    return [
        # shapes and types of fields
        Case("texts empty", "POST", "/embed/batch", 400, {"texts": []}),
        Case("texts over max_items", "POST", "/embed/batch", 413, {"texts": ["a"] * 65}),
        Case("texts not a list", "POST", "/embed/batch", 400, {"texts": "abc"}),
        Case("text too long", "POST", "/embed", 413, {"text": "x" * 10_001}),
        Case("text a number", "POST", "/embed", 400, {"text": 5}),
        Case("text missing", "POST", "/embed", 400, {}),
        Case("text null", "POST", "/embed", 400, {"text": None}),
        Case("body a list", "POST", "/embed", 400, ["x"]),
        Case("unknown model", "POST", "/embed", 404, {"text": "x", "model": "nope"}),
        Case("model path traversal", "POST", "/embed", 404, {"text": "x", "model": "../minilm"}),
        Case("unknown version", "POST", "/embed", 404, {"text": "x", "version": 99}),
        Case("version 0", "POST", "/embed", 400, {"text": "x", "version": 0}),
        Case("version true", "POST", "/embed", 400, {"text": "x", "version": True}),
        Case("version 1.0", "POST", "/embed", 400, {"text": "x", "version": 1.0}),
        Case("version '1'", "POST", "/embed", 400, {"text": "x", "version": "1"}),
        Case("version huge", "POST", "/embed", 404, {"text": "x", "version": 2**62}),
        Case("model of another task", "POST", "/embed", 400, {"text": "x", "model": "image_classifier"}),
        Case("top_k 0", "POST", "/similarity", 400, {"query": "q", "candidates": ["a"], "top_k": 0}),
        Case("top_k huge", "POST", "/similarity", 400, {"query": "q", "candidates": ["a"], "top_k": 10**9}),
        Case("no text classifier", "POST", "/classify", 400, {"text": "x"}),
        # images
        Case("image missing", "POST", "/predict", 400, {}),
        Case("image not base64", "POST", "/predict", 400, {"image": "%%% not base64"}),
        Case("image not an image", "POST", "/predict", 400, {"image": base64.b64encode(b"hello").decode()}),
        Case("image and array", "POST", "/predict", 400, {"image": _encoded("PNG"), "array": pixel}),
        Case("image EPS", "POST", "/predict", 400, {"image": eps}),
        Case("image GIF", "POST", "/predict", 400, {"image": _encoded("GIF")}),
        Case("image PNG bomb 20000x20000", "POST", "/predict", 413, {"image": _png(20_000, 20_000)}),
        Case("images over the pixel budget", "POST", "/predict/batch", 413, {"images": [big, big]}),
        Case("64 images of 4096x4096", "POST", "/predict/batch", 413, {"images": [big] * 64}),
        Case(
            "array 400x400x3 (over max_json_values)",
            "POST",
            "/predict",
            413,
            {"array": [[pixel[0][0]] * 400] * 400},
        ),
        Case("array ragged", "POST", "/predict", 400, {"array": [[1, 2], [3]]}),
        Case("array values over 255", "POST", "/predict", 400, {"array": [[[300, 0, 0]]]}),
        Case("array of strings", "POST", "/predict", 400, {"array": [[["a", "b", "c"]]]}),
        Case("array empty", "POST", "/predict", 400, {"array": []}),
        Case("arrays empty", "POST", "/predict/batch", 400, {"arrays": []}),
        # bodies and content types
        Case(
            "JSON cut short",
            "POST",
            "/embed",
            400,
            content=b'{"text": ',
            headers={"Content-Type": "application/json"},
        ),
        Case(
            "JSON not UTF-8",
            "POST",
            "/embed",
            400,
            content=b'{"text": "\xff\xfe"}',
            headers={"Content-Type": "application/json"},
        ),
        Case(
            "body over max_body_bytes",
            "POST",
            "/embed",
            413,
            content=b'{"text": "' + b"a" * (17 << 20) + b'"}',
            headers={"Content-Type": "application/json"},
        ),
        Case(
            "JSON as text/plain",
            "POST",
            "/embed",
            415,
            content=b'{"text": "x"}',
            headers={"Content-Type": "text/plain"},
        ),
        Case(
            "form-urlencoded",
            "POST",
            "/embed",
            415,
            content=b"text=x",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        Case(
            "multipart without boundary",
            "POST",
            "/embed",
            415,
            content=multipart,
            headers={"Content-Type": "multipart/form-data"},
        ),
        Case(
            "multipart with boundary",
            "POST",
            "/embed",
            415,
            content=multipart,
            headers={"Content-Type": "multipart/form-data; boundary=x"},
        ),
        Case(
            "BentoML pickle",
            "POST",
            "/embed",
            415,
            content=b"\x80\x04K\x01.",
            headers={"Content-Type": "application/vnd.bentoml+pickle"},
        ),
        # paths and methods
        Case("unknown path", "GET", "/admin", 404),
        Case("path traversal", "GET", "/static_content/../../service.py", 404),
        Case("encoded traversal", "GET", "/static_content/%2e%2e/%2e%2e/service.yaml", 404),
        Case("POST to a GET route", "POST", "/models", 405, {}),
        Case("GET on a POST route", "GET", "/embed", 405),
        Case(
            "request id too long", "POST", "/embed", 200, {"text": "x"}, headers={"X-Request-ID": "x" * 500}
        ),
    ]


def run_cases(client) -> dict:
    results = []
    for case in cases():
        started = time.monotonic()
        try:
            response = client.request(
                case.method, case.path, json=case.json, content=case.content, headers=case.headers
            )
            status: int | None = response.status_code
            shaped = response.status_code < 400 or _error_shaped(response)
        except Exception as err:  # noqa: BLE001 - a connection dropped is the finding
            status, shaped = None, False
            log.warning("%s: no answer: %s", case.name, err)
        results.append(
            {
                "case": case.name,
                "route": f"{case.method} {case.path[:60]}",
                "expected": case.status,
                "got": status,
                "error_body": shaped,
                "seconds": round(time.monotonic() - started, 3),
            }
        )
    return {
        "cases": len(results),
        "as_expected": sum(r["got"] == r["expected"] and r["error_body"] for r in results),
        "5xx": sum(r["got"] is not None and r["got"] >= 500 for r in results),
        "no_answer": sum(r["got"] is None for r in results),
        "results": results,
    }


def _error_shaped(response) -> bool:
    """4xx/5xx answers carry {"error", "field", "request_id"} (405 is Starlette's own, plain)."""
    if response.status_code == 405:
        return True
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and set(body) == {"error", "field", "request_id"}


def fuzz(url: str, out: Path, *, max_examples: int, max_time_s: int) -> dict:
    """schemathesis against ``{url}/docs.json``: every operation, at most ``max_examples`` cases each,
    at most ``max_time_s`` in all; only ``not_a_server_error`` is checked (the 5xx figure is the
    service's own count)."""
    out.mkdir(parents=True, exist_ok=True)
    argv = [
        str(Path(sys.executable).parent / "st"),
        "run",
        f"{url}/docs.json",
        "--url",
        url,
        "--checks",
        "not_a_server_error",
        "--max-examples",
        str(max_examples),
        "--max-time",
        str(max_time_s),
        "--workers",
        "2",
        "--seed",
        "15",
        "--request-timeout",
        "30",
        "--suppress-health-check",
        "all",
        "--no-shrink",
        "--report",
        "junit",
        "--report-junit-path",
        str(out / "junit.xml"),
    ]
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["NO_PROXY"] = "127.0.0.1,localhost"
    started = time.monotonic()
    with open(out / "schemathesis.log", "wb") as log_file:
        try:
            done = subprocess.run(  # in the run folder: schemathesis keeps a cache in its working dir
                argv, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=out, timeout=max_time_s + 120
            )
            code: int | None = done.returncode
        except subprocess.TimeoutExpired:
            code = None
    return {
        "exit_code": code,
        "seconds": round(time.monotonic() - started, 1),
        "max_examples": max_examples,
        "max_time_s": max_time_s,
        "operations": _junit_count(out / "junit.xml"),
        "log": str(out / "schemathesis.log"),
    }


def _junit_count(path: Path) -> dict:
    """Operations tested and failed, from schemathesis' JUnit report."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    cases = list(root.iter("testcase"))
    failed = [c.get("name") for c in cases if c.find("failure") is not None or c.find("error") is not None]
    return {"tested": len(cases), "failed": len(failed), "failed_names": failed[:10]}
