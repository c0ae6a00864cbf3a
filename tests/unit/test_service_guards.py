"""The service's defences without servers (issue 15): image formats by signature, decompression bombs,
the per-request pixel budget, decoding off the event loop with a deadline, strict integers on every
endpoint, BentoML's 400s logged as one line, Triton's failures told apart, and the version routing that
follows the repository live."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import shutil
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

import service
from core.errors import InvalidArgument, NotFound, PayloadTooLarge, Unavailable
from core.processes import free_port
from core.repository import Repository
from serving.models import load_models, routable_split
from serving.observability import REQUEST_ID, OneLineClientErrors
from serving.preprocess import ImagePipeline
from serving.requests import RequestPath
from serving.settings import Limits, ServiceSettings
from serving.tasks import Images, image_tensors
from serving.triton_client import TritonGateway, TritonUnavailable, classify_error

PRE = {"channels": 3, "height": 32, "width": 32, "mean": [0.5] * 3, "std": [0.25] * 3, "scale": 1 / 255}


def pipeline(max_pixels: int = 4096 * 4096, **extra) -> ImagePipeline:
    return ImagePipeline.from_manifest({**PRE, **extra}, max_pixels, "image_classifier version 1")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def encoded(pixels: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height pixels, all black: a few kB that decode to width*height."""
    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")
    )


EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
    b"newpath 0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n"
)


# ---- image formats: by the bytes' signature, before Pillow's plugins see them ----------------------


def test_png_and_jpeg_are_accepted_by_default():
    pixels = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for fmt in ("PNG", "JPEG"):
        assert pipeline().decode(b64(encoded(pixels, fmt)), "image").shape == (3, 32, 32)


def test_formats_the_manifest_does_not_declare_are_refused_by_signature():
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(InvalidArgument) as caught:
        pipeline().decode(b64(encoded(pixels, "GIF")), "images[1]")
    message = str(caught.value)
    assert caught.value.field == "images[1]" and not isinstance(caught.value, PayloadTooLarge)
    assert "GIF" in message and "PNG, JPEG" in message and "preprocessing.formats" in message
    # Declared in the manifest, the same bytes are welcome.
    assert pipeline(formats=["PNG", "GIF"]).decode(b64(encoded(pixels, "GIF")), "image").shape == (3, 32, 32)


def test_an_eps_upload_never_reaches_pillows_eps_plugin(monkeypatch):
    """Pillow would hand an EPS to Ghostscript; the signature check refuses it first."""
    from PIL import EpsImagePlugin

    reached = []

    def spy(*args, **kwargs):
        reached.append(args)
        raise AssertionError("Pillow's EPS plugin was reached")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", spy)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", spy)
    with pytest.raises(InvalidArgument) as caught:
        pipeline().decode(b64(EPS), "image")
    assert reached == []
    assert "PNG, JPEG" in str(caught.value) and caught.value.field == "image"


def test_a_manifest_naming_an_unknown_format_is_refused():
    with pytest.raises(InvalidArgument, match=r"preprocessing\.formats.*'EPS'.*PNG"):
        pipeline(formats=["PNG", "EPS"])


# ---- decompression bombs and the pixel budget: 413, before decoding -------------------------------


def test_png_bomb_is_413_not_damaged():
    """20000 x 20000 pixels in ~50 kB: over Pillow's own bomb threshold, refused as too large."""
    with pytest.raises(PayloadTooLarge) as caught:
        pipeline().decode(b64(png_bomb(20_000, 20_000)), "image")
    assert "400000000 pixels" in str(caught.value) and "max_image_pixels" in str(caught.value)


def test_png_text_chunk_bomb_is_413():
    """A zTXt chunk that inflates past Pillow's MAX_TEXT_CHUNK: a bomb too, not a damaged file."""
    from PIL import PngImagePlugin

    image = png_bomb(8, 8)
    text = b"Comment\x00\x00" + zlib.compress(b"a" * (PngImagePlugin.MAX_TEXT_CHUNK + 1024), 9)
    iend = image.rindex(b"IEND") - 4
    bomb = image[:iend] + png_chunk(b"zTXt", text) + image[iend:]
    with pytest.raises(PayloadTooLarge, match="image"):
        pipeline().decode(b64(bomb), "image")


def image_version(model_repo: Path, limits: Limits):
    settings = ServiceSettings.model_validate(
        {
            "repository": str(model_repo),
            "limits": limits.model_dump(),
            "models": [{"name": "image_classifier", "task": "image-classification"}],
        }
    )
    return load_models(settings)["image_classifier"].versions[1]


def test_request_pixel_budget_is_checked_before_any_image_is_decoded(model_repo):
    limits = Limits(max_request_pixels=100 * 100)
    version = image_version(model_repo, limits)
    fine = b64(encoded(np.zeros((80, 80, 3), np.uint8), "PNG"))
    truncated = b64(encoded(np.zeros((80, 80, 3), np.uint8), "PNG")[:60])  # its header says 80x80
    with pytest.raises(PayloadTooLarge) as caught:
        image_tensors(Images.many([fine, truncated], None), version, limits)
    assert caught.value.field == "images"
    assert "12800" in str(caught.value) and "limits.max_request_pixels" in str(caught.value)
    # One image alone may use the whole budget.
    assert image_tensors(Images.one(fine, None), version, limits)["input"].shape == (1, 3, 32, 32)


def test_request_pixel_budget_counts_arrays_from_their_lengths(model_repo):
    limits = Limits(max_request_pixels=100 * 100)
    version = image_version(model_repo, limits)
    square = np.zeros((80, 80, 3), np.uint8).tolist()
    with pytest.raises(PayloadTooLarge) as caught:
        image_tensors(Images.many(None, [square, square]), version, limits)
    assert caught.value.field == "arrays" and "limits.max_request_pixels" in str(caught.value)
    with pytest.raises(PayloadTooLarge) as caught:
        image_tensors(Images.one(None, np.zeros((120, 90, 3), np.uint8).tolist()), version, limits)
    assert caught.value.field == "array"


# ---- decoding off the event loop, within a deadline ----------------------------------------------


def request_path(model_repo: Path, **limits) -> RequestPath:
    """The shared request path over the image model, Triton at a port where nothing listens."""
    return RequestPath(
        ServiceSettings.model_validate(
            {
                "repository": str(model_repo),
                "triton": {"url": f"127.0.0.1:{free_port()}", "timeout_s": 5},
                "limits": limits,
                "models": [{"name": "image_classifier", "task": "image-classification"}],
            }
        )
    )


def serve(path: RequestPath, route: str, inputs) -> tuple[int, dict, dict]:
    async def scenario():
        token = REQUEST_ID.set("req-15")
        try:
            response = await path.serve(route, None, None, inputs)
        finally:
            REQUEST_ID.reset(token)
            await path.close()
        return response

    response = asyncio.run(scenario())
    return response.status_code, json.loads(response.body), dict(response.headers)


def test_images_and_arrays_are_decoded_off_the_event_loop(model_repo, monkeypatch):
    threads: list[str] = []
    original = ImagePipeline.prepare

    def spy(self, image):
        threads.append(threading.current_thread().name)
        return original(self, image)

    monkeypatch.setattr(ImagePipeline, "prepare", spy)
    image = b64(encoded(np.zeros((64, 64, 3), np.uint8), "PNG"))
    array = np.zeros((40, 40, 3), np.uint8).tolist()
    path = request_path(model_repo)
    status, _, _ = serve(path, "/predict/batch", Images.many([image, image], None))
    assert status == 503  # decoded, then Triton is not there
    path = request_path(model_repo)
    status, _, _ = serve(path, "/predict", Images.one(None, array))
    assert status == 503
    assert len(threads) == 3 and threading.main_thread().name not in threads, threads


def test_decoding_that_cannot_finish_in_time_is_503_naming_the_setting(model_repo):
    """The one decoding thread is held by another job: the request's decode deadline passes."""
    path = request_path(model_repo, decode_threads=1, decode_timeout_s=0.2)
    release = threading.Event()
    path.decoder.submit(release.wait, 30)
    try:
        status, body, headers = serve(
            path, "/predict", Images.one(b64(encoded(np.zeros((8, 8, 3), np.uint8), "PNG")), None)
        )
    finally:
        release.set()
    assert status == 503 and "Retry-After" in {k.title() for k in headers}
    assert "limits.decode_timeout_s" in body["error"] and body["request_id"] == "req-15"


# ---- strict integers on every endpoint ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(service.ModelService.apis))
def test_every_endpoint_refuses_a_boolean_or_a_float_for_an_integer(name):
    spec = service.ModelService.apis[name].input_spec
    integers = [field for field, info in spec.model_fields.items() if "int" in str(info.annotation).lower()]
    assert "version" in integers, integers
    for field in integers:
        for value in (True, 1.0):
            with pytest.raises(ValidationError) as caught:
                spec.model_validate_json(json.dumps({field: value}))
            assert any(e["loc"] == (field,) for e in caught.value.errors()), (field, value)


# ---- BentoML's own 400s: one WARNING line, no traceback ------------------------------------------


def test_bentomls_validation_errors_are_logged_as_one_warning_line(caplog):
    logger = logging.getLogger("bentoml._internal.server.http_app")
    quiet = OneLineClientErrors()
    logger.addFilter(quiet)
    try:
        with caplog.at_level(logging.INFO, logger=logger.name):
            try:
                service.ModelService.apis["embed"].input_spec.model_validate_json(b'{"text": 5}')
            except ValidationError:
                logger.error("Exception on %s [%s]", "/embed", "POST", exc_info=True)
            try:
                raise RuntimeError("a real bug")
            except RuntimeError:
                logger.error("Exception on %s [%s]", "/embed", "POST", exc_info=True)
    finally:
        logger.removeFilter(quiet)
    first, second = caplog.records
    assert first.levelno == logging.WARNING and first.exc_info is None and first.exc_text is None
    assert "/embed" in first.getMessage() and "text" in first.getMessage()
    assert second.levelno == logging.ERROR and second.exc_info is not None  # bugs keep their traceback


# ---- Triton's failures, told apart; no address or raw gRPC text in the answer ---------------------


def exception(message: str, status: str):
    from tritonclient.utils import InferenceServerException

    return InferenceServerException(message, status=status)


@pytest.mark.parametrize(
    ("message", "status", "says", "gone"),
    [
        (
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.3.7:8001: "
            "Failed to connect to remote host: Connection refused",
            "StatusCode.UNAVAILABLE",
            "not reachable",
            False,
        ),
        ("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED", "did not answer within 10 s", False),
        (
            "Request for unknown model: 'minilm' version 2 is not at ready state",
            "StatusCode.UNAVAILABLE",
            "not loaded",
            True,
        ),
        (
            "Request for unknown model: 'minilm' version 2 is not found",
            "StatusCode.NOT_FOUND",
            "not loaded",
            True,
        ),
        ("Exceeds maximum queue size", "StatusCode.RESOURCE_EXHAUSTED", "overloaded", False),
    ],
)
def test_triton_failures_say_what_happened(message, status, says, gone):
    from serving.settings import TritonSettings

    settings = TritonSettings(url="10.0.3.7:8001", timeout_s=10, retry_after_s=4)
    err = classify_error(exception(message, status), "minilm", 2, settings)
    assert isinstance(err, TritonUnavailable) and err.retry_after_s == 4
    assert says in str(err) and err.version_gone is gone
    assert "10.0.3.7" not in str(err) and "StatusCode" not in str(err) and "minilm version 2" in str(err)
    assert "10.0.3.7" in err.detail or "StatusCode" in err.detail  # the log keeps what happened


def test_triton_refusing_the_request_is_a_400_without_its_raw_text():
    """Tensors that passed the manifest's checks and that Triton still refuses: the request's fault,
    answered without Triton's text (its address, its raw error), which the log keeps."""
    from serving.settings import TritonSettings

    err = classify_error(
        exception("unexpected shape for input 'input' at 10.0.3.7", "StatusCode.INVALID_ARGUMENT"),
        "image_classifier",
        1,
        TritonSettings(url="10.0.3.7:8001"),
    )
    assert err.http_status == 400 and err.field == "inputs"
    assert "10.0.3.7" not in str(err) and "unexpected shape" not in str(err) and "request_id" in str(err)


def test_a_dead_triton_port_gives_a_clean_503(model_repo, caplog):
    """A real gRPC call to a port where nothing listens: the body names no address, the log does."""
    path = request_path(model_repo)
    url = path.settings.triton.url
    with caplog.at_level(logging.WARNING, logger="serving"):
        status, body, headers = serve(path, "/predict", Images.one(None, np.zeros((4, 4, 3)).tolist()))
    assert status == 503 and {k.title(): v for k, v in headers.items()}["Retry-After"] == "1"
    assert "Triton" in body["error"] and "not reachable" in body["error"]
    assert url not in body["error"] and "StatusCode" not in body["error"]
    assert any(url in json.dumps(getattr(r, "fields", {})) + r.getMessage() for r in caplog.records)


def test_gateway_reports_triton_not_reachable_for_readiness():
    gateway = TritonGateway(
        ServiceSettings.model_validate(
            {
                "triton": {"url": f"127.0.0.1:{free_port()}", "ready_timeout_s": 2},
                "models": [{"name": "m", "task": "feature-extraction"}],
            }
        ).triton
    )

    async def scenario():
        try:
            return await gateway.model_states()
        finally:
            await gateway.close()

    assert asyncio.run(scenario()) is None


# ---- version routing that follows the repository and Triton --------------------------------------


@pytest.mark.parametrize(
    ("configured", "served", "ready", "previous", "expected"),
    [
        # the latest served version, once Triton has it ready; until then the one routed before
        (None, [1], {1}, {1: 1.0}, {1: 1.0}),
        (None, [2], {1}, {1: 1.0}, {1: 1.0}),
        (None, [2], {1, 2}, {1: 1.0}, {2: 1.0}),
        (None, [2], {2}, {1: 1.0}, {2: 1.0}),
        # a rollback: version 1 served again, routed once Triton has loaded it
        (None, [1], {2}, {2: 1.0}, {2: 1.0}),
        (None, [1], {1}, {2: 1.0}, {1: 1.0}),
        # a canary split: versions drop out of it while they are not served or not ready
        ({1: 90.0, 2: 10.0}, [1, 2], {1, 2}, {1: 90.0, 2: 10.0}, {1: 90.0, 2: 10.0}),
        ({1: 90.0, 2: 10.0}, [1, 2], {1}, {1: 90.0, 2: 10.0}, {1: 90.0}),
        ({1: 90.0, 2: 10.0}, [2], {1, 2}, {1: 90.0, 2: 10.0}, {2: 10.0}),
        # a split naming only versions that are gone: the latest served and ready version
        ({1: 100.0}, [2, 3], {2, 3}, {1: 100.0}, {3: 1.0}),
        # Triton not answering (ready unknown): the repository alone decides
        (None, [2], None, {1: 1.0}, {2: 1.0}),
        # nothing served is ready, nothing routed before is ready: the latest served, Triton says why
        (None, [3], {1}, {2: 1.0}, {3: 1.0}),
    ],
)
def test_routable_split(configured, served, ready, previous, expected):
    assert routable_split(configured, served, ready, previous) == expected


def test_a_promotion_split_with_zero_weights_starts_without_the_retired_version(model_repo, tmp_path):
    """Issue 13's promotion path: split {1: 0, 2: 100}, then a repository without version 1."""
    repo = tmp_path / "repository"
    shutil.copytree(model_repo / "minilm", repo / "minilm")
    (repo / "minilm" / "1").rename(repo / "minilm" / "2")
    settings = ServiceSettings.model_validate(
        {
            "repository": str(repo),
            "models": [{"name": "minilm", "task": "feature-extraction", "versions": {1: 0, 2: 100}}],
        }
    )
    entry = load_models(settings)["minilm"]
    assert entry.split == {2: 100.0} and set(entry.versions) == {2}
    # A version with a weight that is not served still stops the start, naming it.
    bad = settings.model_copy(
        update={"models": [settings.models[0].model_copy(update={"versions": {3: 5, 2: 95}})]}
    )
    with pytest.raises(NotFound, match=r"versions \[3\] of the split are not served"):
        load_models(bad)
    assert Repository(repo).served_versions("minilm") == [2]


def test_unavailable_is_still_the_base_of_tritons_errors():
    assert issubclass(TritonUnavailable, Unavailable)


def test_an_unpinned_request_whose_version_was_unloaded_goes_to_the_one_now_loaded(model_repo):
    """Triton turns the old version UNLOADING the moment the new one is READY: a request routed to the
    old one is sent once more, to the new one; a pinned request is not."""
    import dataclasses

    path = request_path(model_repo)
    entry = path.models["image_classifier"]
    entry.versions[2] = dataclasses.replace(entry.versions[1], version=2)
    entry.served, entry.ready, entry.split = (2,), frozenset({1}), {1: 1.0}  # v2 published, loading
    gone = TritonUnavailable(
        "image_classifier version 1 is not loaded", retry_after_s=1, detail="x", version_gone=True
    )
    assert path._other_version(entry, entry.versions[1], 1, gone) is None  # pinned: answered 503
    other = path._other_version(entry, entry.versions[1], None, gone)
    assert other is not None and other.version == 2 and entry.split == {2: 1.0}
    down = TritonUnavailable("Triton is not reachable", retry_after_s=1, detail="x")
    assert path._other_version(entry, entry.versions[2], None, down) is None  # not a version problem


def test_metrics_see_route_templates_and_one_label_for_unknown_paths(tmp_path):
    """What the layers outside the request middleware (BentoML's HTTP metrics) see as the path: a
    fixed route's path, a parameterised route's template, a static file that exists, else one label;
    the routing inside still gets the real path."""
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    from serving.http import UNMATCHED, RequestContextMiddleware, RouteLabels

    (tmp_path / "app.js").write_text("js")

    async def echo(request):
        return PlainTextResponse(request.url.path)

    app = Starlette(
        routes=[
            Route("/embed", echo, methods=["POST"]),
            Route("/v2/models/{name}/infer", echo, methods=["POST"]),
            Mount("/static", StaticFiles(directory=tmp_path)),
        ]
    )
    seen: list[str] = []

    class OuterLayer:  # where BentoML's metrics middleware sits: outside RequestContextMiddleware
        routes = app.routes

        async def __call__(self, scope, receive, send):
            seen.append(scope["path"])
            await RequestContextMiddleware(app)(scope, receive, send)

    async def scenario():
        transport = httpx.ASGITransport(app=RouteLabels(OuterLayer()))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [
                await client.post("/embed", json={}),
                await client.post("/v2/models/minilm/infer", json={}),
                await client.get("/static/app.js"),
                await client.get("/static/missing.js"),
                await client.get("/no/such/path"),
            ]

    fixed, templated, static, missing, unknown = asyncio.run(scenario())
    assert (fixed.text, templated.text, static.text) == ("/embed", "/v2/models/minilm/infer", "js")
    assert seen == ["/embed", "/v2/models/{name}/infer", "/static/app.js", UNMATCHED, UNMATCHED]
    for response in (missing, unknown):
        assert response.status_code == 404 and response.json()["field"] == "path"
    assert "/no/such/path" in unknown.json()["error"]
