"""End to end, the defects a hostile client found (issue 15), against the session's ``bento_server``:
content types, strict integers, image formats and bombs, the pixel budget, unknown paths and
``/metrics``, BentoML's 400s in the log; and ``bentoml serve`` without ``--host`` binding 127.0.0.1."""

from __future__ import annotations

import base64
import io
import os
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

pytestmark = [pytest.mark.triton, pytest.mark.bento, pytest.mark.slow]


def log_of(server) -> str:
    return Path(server.log_path).read_text(encoding="utf-8", errors="replace")


def explain(server, response: httpx.Response | None = None) -> str:
    """What a failed assertion shows: the answer, and the end of the server's log."""
    tail = "\n".join(log_of(server).splitlines()[-40:])
    answer = f"{response.status_code} {response.text[:500]}\n" if response is not None else ""
    return f"{answer}--- {server.log_path} ends with:\n{tail}"


def error_body(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error", "field", "request_id"}, body
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body


def png(pixels: np.ndarray, fmt: str = "PNG") -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


# ---- content types: JSON only, on every route ----------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", b'{"text": "hello"}'),
        ("application/x-www-form-urlencoded", b"text=hello"),
        ("multipart/form-data", b'--x\r\nContent-Disposition: form-data; name="text"\r\n\r\nhi\r\n--x--\r\n'),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="text"\r\n\r\nhi\r\n--x--\r\n',
        ),
        ("application/vnd.bentoml+pickle", b"\x80\x04K\x01."),
    ],
)
@pytest.mark.parametrize("route", ["/embed", "/predict/batch"])
def test_bodies_that_are_not_json_get_415_naming_content_type(bento_server, route, content_type, body):
    response = bento_server.client.post(route, content=body, headers={"Content-Type": content_type})
    assert response.status_code == 415, explain(bento_server, response)
    error = error_body(response)
    assert error["field"] == "Content-Type"
    assert content_type.split(";")[0] in error["error"] and "application/json" in error["error"]


def test_json_with_a_charset_is_json(bento_server):
    response = bento_server.client.post(
        "/embed", content=b'{"text": "hello"}', headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert response.status_code == 200, explain(bento_server, response)


# ---- strict integers ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, 1.0, "1"])
def test_version_must_be_an_integer(bento_server, value):
    response = bento_server.client.post("/embed", json={"text": "x", "version": value})
    assert response.status_code == 400, explain(bento_server, response)
    assert error_body(response)["field"] == "version"


# ---- images: formats, bombs, the pixel budget -----------------------------------------------------


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\nshowpage\n%%EOF\n"


def test_image_formats_outside_the_manifest_are_refused(bento_server):
    for raw_or_b64 in (base64.b64encode(EPS).decode(), png(np.zeros((8, 8, 3), np.uint8), "GIF")):
        response = bento_server.client.post("/predict", json={"image": raw_or_b64})
        assert response.status_code == 400, explain(bento_server, response)
        body = error_body(response)
        assert body["field"] == "image" and "PNG, JPEG" in body["error"]
    jpeg = bento_server.client.post("/predict", json={"image": png(np.zeros((8, 8, 3), np.uint8), "JPEG")})
    assert jpeg.status_code == 200, explain(bento_server, jpeg)


def test_png_bomb_is_413(bento_server):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    side = 20_000
    packer = zlib.compressobj(9)
    rows = b"".join(packer.compress(b"\x00" * (1 + side // 8)) for _ in range(side)) + packer.flush()
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", rows)
        + chunk(b"IEND", b"")
    )
    response = bento_server.client.post("/predict", json={"image": base64.b64encode(bomb).decode()})
    assert response.status_code == 413, explain(bento_server, response)
    assert error_body(response)["field"] == "image"


def test_request_pixel_budget_is_413(bento_server):
    """Two 4096 x 4096 1-bit PNGs (a few kB each): each within max_image_pixels, together over
    max_request_pixels (the default: one such image)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (4096, 4096)).save(buffer, format="PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    started = time.monotonic()
    response = bento_server.client.post("/predict/batch", json={"images": [image, image]})
    assert response.status_code == 413, explain(bento_server, response)
    body = error_body(response)
    assert body["field"] == "images" and "limits.max_request_pixels" in body["error"]
    one = bento_server.client.post("/predict/batch", json={"images": [image]})
    assert one.status_code == 200, explain(bento_server, one)
    assert time.monotonic() - started < 120  # a deadline on the waits, not a speed goal


def test_pixel_arrays_past_the_json_value_budget_are_413_before_parsing(bento_server):
    """A 400 x 400 pixel array is ~640,000 JSON values: BentoML would spend seconds parsing it on the
    event loop; the service refuses it from its separators first."""
    response = bento_server.client.post("/predict", json={"array": [[[0, 0, 0]] * 400] * 400})
    assert response.status_code == 413, explain(bento_server, response)
    body = error_body(response)
    assert body["field"] == "body" and "limits.max_json_values" in body["error"]
    small = bento_server.client.post("/predict", json={"array": [[[0, 0, 0]] * 200] * 200})
    assert small.status_code == 200, explain(bento_server, small)


# ---- unknown paths and /metrics -------------------------------------------------------------------


def test_unknown_paths_are_one_series_and_a_uniform_404(bento_server):
    paths = [f"/no/such/{i}-{os.getpid()}" for i in range(40)] + ["/static_content/nothing-here.js"]
    for path in paths:
        response = bento_server.client.get(path)
        assert response.status_code == 404, explain(bento_server, response)
        body = error_body(response)
        assert body["field"] == "path" and path in body["error"]
    metrics = bento_server.client.get("/metrics").text
    for path in paths:
        assert path not in metrics
    unmatched = [line for line in metrics.splitlines() if 'endpoint="/{unmatched}"' in line]
    assert unmatched, "no series for unmatched paths"
    # Known routes keep their own label.
    bento_server.client.post("/embed", json={"text": "labelled"})
    metrics = bento_server.client.get("/metrics").text
    assert re.search(r'bentoml_service_request_total\{[^}]*endpoint="/embed"', metrics)
    # Models and versions in modelpack_* labels are configured and served ones only.
    bento_server.client.post("/embed", json={"text": "x", "model": "made-up-name", "version": 77})
    metrics = bento_server.client.get("/metrics").text
    assert "made-up-name" not in metrics and 'version="77"' not in metrics


# ---- BentoML's own 400s: one WARNING line each, no traceback --------------------------------------


def test_validation_errors_are_logged_as_one_warning_line(bento_server):
    before = len(log_of(bento_server))
    marker = f"marker-{time.time_ns()}"
    response = bento_server.client.post(
        "/embed", json={"text": 5, "model": marker}, headers={"X-Request-ID": marker}
    )
    assert response.status_code == 400
    deadline = time.monotonic() + 15
    while marker not in log_of(bento_server)[before:]:
        assert time.monotonic() < deadline, explain(bento_server, response)
        time.sleep(0.1)
    written = log_of(bento_server)[before:]
    assert "Traceback" not in written, explain(bento_server, response)
    lines = [line for line in written.splitlines() if marker in line]
    assert len(lines) == 1 and "WARNING" in lines[0] and "ERROR" not in lines[0], lines


# ---- `bentoml serve` without --host binds 127.0.0.1 -----------------------------------------------


def listening_addresses(pid: int, port: int) -> set[str]:
    import psutil

    found = set()
    family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for proc in family:
        try:
            connections = proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        found |= {c.laddr.ip for c in connections if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    return found


@pytest.mark.parametrize(("env_host", "expected"), [(None, {"127.0.0.1"}), ("0.0.0.0", {"0.0.0.0"})])
def test_bentoml_serve_without_host_binds_loopback_unless_told(
    model_repo, service_config, tmp_path, env_host, expected
):
    import sys

    from core import processes
    from core.processes import free_port
    from serving.launcher import ROOT, SERVICE

    config = service_config(
        tmp_path / "service.yaml",
        model_repo,
        f"127.0.0.1:{free_port()}",  # no Triton: /healthz needs none
        [{"name": "minilm", "task": "feature-extraction"}],
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELPACK_", "BENTOML_HOST"))}
    env.update(
        MODELPACK_SERVICE_CONFIG=str(config), BENTOML_HOME=str(tmp_path / "home"), BENTOML_DO_NOT_TRACK="True"
    )
    if env_host:
        env["BENTOML_HOST"] = env_host
    bentoml = str(Path(sys.executable).parent / "bentoml")
    child = processes.start(
        "bentoml serve",
        [bentoml, "serve", SERVICE, "--port", str(port)],
        log_path=tmp_path / "bento.log",
        env=env,
        cwd=ROOT,
    )
    try:
        child.wait_ready(f"http://127.0.0.1:{port}/healthz", 120)
        assert listening_addresses(child.pid, port) == expected, child.log_tail(40)
    finally:
        child.stop()
