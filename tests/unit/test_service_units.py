"""The service's parts without servers: configuration, preprocessing against the reference
libraries, the model registry's checks, merging of concurrent requests."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

import service
from converters.sentences import SENTENCES
from core.errors import InvalidArgument, NotFound, PayloadTooLarge, Unavailable
from core.tasks import INFER_ROUTES, ROUTES, TASK_SPECS, TEXT_TASKS
from serving.models import load_models
from serving.observability import REQUEST_ID
from serving.preprocess import ImagePipeline, TextPipeline
from serving.requests import RequestPath
from serving.settings import Limits, ServiceSettings, read_settings
from serving.tasks import POSTPROCESS, PREPROCESS, REPLIES, Images, Texts
from serving.triton_client import Coalescer, merge_rows


def write(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data, encoding="utf-8")
    return path


MINIMAL = {"models": [{"name": "minilm", "task": "feature-extraction"}]}


# ---- configuration -------------------------------------------------------------------------------


def test_shipped_service_yaml_is_valid():
    settings = read_settings(Path(service.__file__).parent / "service.yaml", environ={})
    assert [m.name for m in settings.models] == ["minilm", "image_classifier"]
    assert settings.repository == Path(service.__file__).parent / "model_repository"
    assert settings.limits.max_items == 64 and settings.batching.coalesce is True


def test_defaults_relative_repository_and_environment_overrides(tmp_path):
    (tmp_path / "conf").mkdir()
    path = write(tmp_path / "conf" / "service.yaml", {**MINIMAL, "repository": "../repo"})
    settings = read_settings(path, environ={})
    assert settings.repository == (tmp_path / "repo").resolve()
    assert settings.triton.url == "127.0.0.1:8001" and settings.triton.timeout_s == 10.0
    overridden = read_settings(
        path, environ={"MODELPACK_TRITON_URL": "triton:9001", "MODELPACK_REPOSITORY": "/models"}
    )
    assert overridden.triton.url == "triton:9001" and overridden.repository == Path("/models")


@pytest.mark.parametrize(
    ("data", "names"),
    [
        ({**MINIMAL, "tritn": {"url": "x:1"}}, ["tritn", "Extra inputs are not permitted"]),
        ({**MINIMAL, "triton": {"url": "localhost"}}, ["triton.url", "'localhost'", "host:port"]),
        ({**MINIMAL, "triton": {"timeout_s": 0}}, ["triton.timeout_s", "greater than 0"]),
        ({**MINIMAL, "limits": {"max_items": 0}}, ["limits.max_items"]),
        ({"models": []}, ["models", "at least 1"]),
        ({"models": [{"name": "minilm"}]}, ["models.0.task", "Field required"]),
        ({"models": [{"name": "minilm", "task": "translation"}]}, ["models.0.task", "'translation'"]),
        (
            {"models": [{"name": "../etc", "task": "feature-extraction"}]},
            ["models.0.name", "not a safe model name"],
        ),
        (
            {"models": [{"name": "m", "task": "feature-extraction", "versions": {1: 0, 2: 0}}]},
            ["models.0.versions", "add up to 0"],
        ),
        (
            {"models": [{"name": "m", "task": "feature-extraction", "versions": {0: 100}}]},
            ["models.0.versions", "version 0"],
        ),
        (
            {
                "models": [
                    {"name": "m", "task": "feature-extraction"},
                    {"name": "m", "task": "feature-extraction"},
                ]
            },
            ["listed more than once"],
        ),
        (
            {"models": [{"name": "m", "task": "feature-extraction", "max_length": -3}]},
            ["models.0.max_length"],
        ),
        (
            {"models": [{"name": "m", "task": "feature-extraction", "tokenize": "client"}]},
            ["models.0.tokenize", "'service'", "'triton'"],
        ),
        (
            {"models": [{"name": "m", "task": "image-classification", "tokenize": "triton"}]},
            ["models.0", "image-classification models take no text", "leave `tokenize` out"],
        ),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else None,
)
def test_bad_settings_are_refused_naming_the_field(tmp_path, data, names):
    with pytest.raises(InvalidArgument) as caught:
        read_settings(write(tmp_path / "service.yaml", data), environ={})
    message = str(caught.value)
    assert str(tmp_path / "service.yaml") in message
    for name in names:
        assert name in message, message


@pytest.mark.parametrize(
    ("url", "addresses"),
    [
        ("127.0.0.1:8001", [("127.0.0.1", 8001)]),
        ("triton.modelpack.svc.cluster.local:8001", [("triton.modelpack.svc.cluster.local", 8001)]),
        (
            "dns:///triton-grpc.modelpack.svc.cluster.local:8001",
            [("triton-grpc.modelpack.svc.cluster.local", 8001)],
        ),
        ("ipv4:127.0.0.1:8001,127.0.0.1:9001", [("127.0.0.1", 8001), ("127.0.0.1", 9001)]),
        ("[::1]:8001", [("[::1]", 8001)]),
    ],
)
def test_triton_url_forms(tmp_path, url, addresses):
    """triton.url takes one address, a name resolving to several (dns:///) or a list (ipv4:)."""
    from serving.settings import triton_addresses

    path = write(tmp_path / "service.yaml", {**MINIMAL, "triton": {"url": url}})
    assert read_settings(path, environ={}).triton.url == url
    assert triton_addresses(url) == addresses


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("dns://triton:8001", "write dns:///name:port (three slashes)"),
        ("http://triton:8001", "Triton's gRPC address, not a URL"),
        ("10.0.0.1:8001,10.0.0.2:8001", "a list of addresses needs the ipv4: scheme"),
        ("ipv4:triton:8001", "'triton' is not an IPv4 address"),
        ("ipv4:10.0.0.1:8001,", "an empty address in the list"),
        ("ipv4:10.0.0.1:80000", "'10.0.0.1:80000' is not host:port"),
        ("dns:///triton", "'triton' is not host:port"),
    ],
)
def test_bad_triton_urls_say_which_form_to_use(tmp_path, url, says):
    path = write(tmp_path / "service.yaml", {**MINIMAL, "triton": {"url": url}})
    with pytest.raises(InvalidArgument) as caught:
        read_settings(path, environ={})
    message = str(caught.value)
    assert "triton.url" in message and repr(url) in message and says in message, message


def test_unreadable_config_files(tmp_path):
    with pytest.raises(NotFound, match="MODELPACK_SERVICE_CONFIG"):
        read_settings(tmp_path / "missing.yaml", environ={})
    with pytest.raises(InvalidArgument, match="not valid YAML"):
        read_settings(write(tmp_path / "a.yaml", "models: [unclosed"), environ={})
    with pytest.raises(InvalidArgument, match="expected a mapping"):
        read_settings(write(tmp_path / "b.yaml", "- just a list"), environ={})


# ---- the task registry: the one table the settings, the service and the docs read -----------------


def test_every_route_belongs_to_one_task():
    paths = [route.path for spec in TASK_SPECS.values() for route in spec.routes]
    assert len(paths) == len(set(paths)) == len(ROUTES), paths
    assert all(spec.routes for spec in TASK_SPECS.values())
    assert TEXT_TASKS == ("feature-extraction", "text-classification", "token-classification")


def test_settings_accept_exactly_the_registry_tasks():
    schema = ServiceSettings.model_json_schema()["$defs"]["ModelSettings"]["properties"]["task"]
    assert schema["enum"] == list(TASK_SPECS)


def test_docs_route_table_is_the_registry():
    """docs/service.md's table of POST routes names each registry route under its task, and no other
    (and the Open Inference Protocol's routes under "any")."""
    readme = (Path(service.__file__).parent / "docs" / "service.md").read_text(encoding="utf-8")
    documented = {}
    for line in readme.splitlines():
        if line.startswith("| `POST "):
            cells = [c.strip() for c in line.strip("|").split("|")]
            for path in re.findall(r"`(?:POST )?(/[^`]*)`", cells[0]):
                documented[path] = cells[1]
    protocol = {path for path, task in documented.items() if task == "any"}
    assert protocol == set(INFER_ROUTES)  # the Open Inference Protocol's routes take any task
    tasks = {path: task for path, task in documented.items() if task != "any"}
    assert tasks == {path: spec.task for path, (spec, _) in ROUTES.items()}


def test_service_endpoints_are_the_registry_routes():
    """The service has an endpoint for every registry route and no other; every name a task entry
    gives has its function in serving/tasks.py."""
    assert sorted(api.route for api in service.ModelService.apis.values()) == sorted(ROUTES)
    for spec in TASK_SPECS.values():
        assert spec.input_kind in PREPROCESS and spec.postprocess in POSTPROCESS, spec.task
        assert all(route.reply in REPLIES for route in spec.routes), spec.task


# ---- the model registry against a real repository ------------------------------------------------


def settings_for(repo: Path, models: list[dict]) -> ServiceSettings:
    return ServiceSettings.model_validate({"repository": str(repo), "models": models})


def test_load_models_reads_manifests_tokenizers_and_labels(model_repo):
    models = load_models(
        settings_for(
            model_repo,
            [
                {"name": "minilm", "task": "feature-extraction"},
                {"name": "image_classifier", "task": "image-classification"},
            ],
        )
    )
    minilm = models["minilm"]
    assert minilm.split == {1: 1.0} and minilm.max_batch_size == 64
    assert minilm.versions[1].input_names == ("input_ids", "attention_mask")
    assert minilm.versions[1].output_name == "embeddings"
    image = models["image_classifier"].versions[1]
    assert image.image.height == 32 and image.labels[0] == "airplane"


def test_load_models_refuses_what_the_repository_does_not_have(model_repo, tmp_path):
    with pytest.raises(NotFound, match=r"models\.0 \(bert\).*models there: image_classifier, minilm"):
        load_models(settings_for(model_repo, [{"name": "bert", "task": "feature-extraction"}]))
    with pytest.raises(
        NotFound, match=r"versions \[2\] of the split are not served \(served: \[1\]\)"
    ) as caught:
        load_models(
            settings_for(
                model_repo, [{"name": "minilm", "task": "feature-extraction", "versions": {1: 9, 2: 1}}]
            )
        )
    assert caught.value.field == "models.0.versions"
    with pytest.raises(InvalidArgument, match="manifest says task 'feature-extraction'"):
        load_models(settings_for(model_repo, [{"name": "minilm", "task": "text-classification"}]))
    with pytest.raises(InvalidArgument, match="max_length 9999 exceeds the entry's 256"):
        load_models(
            settings_for(model_repo, [{"name": "minilm", "task": "feature-extraction", "max_length": 9999}])
        )
    broken = tmp_path / "repo"
    shutil.copytree(model_repo / "minilm", broken / "minilm")
    (broken / "minilm" / "1" / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(NotFound, match="no fast tokenizer file"):
        load_models(settings_for(broken, [{"name": "minilm", "task": "feature-extraction"}]))


def test_tokenize_triton_routes_the_newest_served_version_through_the_ensemble(model_repo, tmp_path):
    from core.repository import Repository
    from serving.settings import DEFAULT_TOKENIZE

    models = load_models(settings_for(model_repo, [{"name": "minilm", "task": "feature-extraction"}]))
    assert models["minilm"].tokenize == DEFAULT_TOKENIZE
    version = models["minilm"].versions[1]
    assert (version.triton_model, version.triton_version, version.via_text_model) == ("minilm", 1, False)

    models = load_models(
        settings_for(model_repo, [{"name": "minilm", "task": "feature-extraction", "tokenize": "triton"}])
    )
    entry = models["minilm"]
    version = entry.choose(None, random.Random(0))
    assert (version.triton_model, version.triton_version, version.via_text_model) == ("minilm_text", 1, True)
    pinned = entry.choose(1, random.Random(0))
    assert pinned.via_text_model and entry.versions[1].triton_model == "minilm"  # the entry is not changed
    # The ensemble runs Triton's newest ready version: texts go to it only for the newest served
    # version, once it is also the newest ready one.
    entry.ready = frozenset({1})
    assert entry.via_text(1)
    entry.ready = frozenset({1, 2})  # a rolled-back version 2 still loaded: the ensemble would run it
    assert not entry.via_text(1) and not entry.choose(1, random.Random(0)).via_text_model
    entry.ready, entry.served = frozenset({1}), (1, 2)  # version 2 published, not loaded yet
    assert not entry.via_text(1) and not entry.via_text(2)
    entry.ready, entry.served = None, (1,)
    texts = Texts.of(texts=["a", "b c"])
    tensors = PREPROCESS["text"](texts, version, Limits())
    assert list(tensors) == ["text"] and tensors["text"].tolist() == [[b"a"], [b"b c"]]

    with pytest.raises(InvalidArgument, match="'minilm_text' is a companion model of 'minilm'"):
        load_models(settings_for(model_repo, [{"name": "minilm_text", "task": "feature-extraction"}]))
    bare = tmp_path / "repository"
    shutil.copytree(model_repo / "minilm", bare / "minilm")  # an entry without its companions
    assert Repository(bare).companions("minilm") == []
    with pytest.raises(
        NotFound, match=r"tokenize: triton sends texts to minilm_text.*converters companions minilm"
    ):
        load_models(
            settings_for(bare, [{"name": "minilm", "task": "feature-extraction", "tokenize": "triton"}])
        )


def test_version_choice_pins_and_splits(model_repo):
    entry = load_models(settings_for(model_repo, [{"name": "minilm", "task": "feature-extraction"}]))[
        "minilm"
    ]
    rng = None  # a pinned version draws nothing
    assert entry.choose(1, rng).version == 1
    with pytest.raises(NotFound, match="no served version 4; served versions: 1") as caught:
        entry.choose(4, rng)
    assert caught.value.field == "version"
    # A 75/25 split over two versions: the choice follows the weights (4 sd tolerance over 4000 draws).
    import dataclasses
    import random

    entry.versions[2] = dataclasses.replace(entry.versions[1], version=2)
    entry.split = {1: 75.0, 2: 25.0}
    chooser = random.Random(11)
    ones = sum(entry.choose(None, chooser).version == 1 for _ in range(4000))
    assert abs(ones - 3000) < 4 * np.sqrt(4000 * 0.25 * 0.75)


# ---- preprocessing equals the reference libraries -------------------------------------------------


def test_tokenizer_matches_transformers(model_repo):
    from transformers import AutoTokenizer

    folder = model_repo / "minilm" / "1" / "tokenizer"
    texts = [*SENTENCES, "word " * 400]  # the last one is truncated
    ours = TextPipeline(folder, max_length=32).encode(texts)
    reference = AutoTokenizer.from_pretrained(folder)(
        texts, padding=True, truncation=True, max_length=32, return_tensors="np"
    )
    np.testing.assert_array_equal(ours["input_ids"], reference["input_ids"])
    np.testing.assert_array_equal(ours["attention_mask"], reference["attention_mask"])
    assert ours["input_ids"].dtype == np.int64 and ours["input_ids"].shape[1] == 32
    single = TextPipeline(folder, max_length=32).encode([SENTENCES[1]])
    np.testing.assert_array_equal(
        single["input_ids"][0], reference["input_ids"][1][: single["input_ids"].shape[1]]
    )


def image_pipeline(model_repo: Path, max_pixels: int = 4096 * 4096) -> ImagePipeline:
    manifest = json.loads((model_repo / "image_classifier" / "1" / "manifest.json").read_text())
    return ImagePipeline.from_manifest(manifest["preprocessing"], max_pixels, "test")


def png(pixels: np.ndarray, fmt: str = "PNG") -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def test_image_decode_normalises_as_the_manifest_declares(model_repo):
    pipeline = image_pipeline(model_repo)
    pixels = np.random.default_rng(3).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    expected = ((pixels / 255.0 - np.array(pipeline.mean)) / np.array(pipeline.std)).transpose(2, 0, 1)
    np.testing.assert_allclose(pipeline.decode(png(pixels), "image"), expected, atol=1e-5)
    np.testing.assert_allclose(
        pipeline.decode("data:image/png;base64," + png(pixels), "image"), expected, atol=1e-5
    )
    np.testing.assert_allclose(pipeline.from_array(pixels.tolist(), "array"), expected, atol=1e-5)
    # Other sizes and grey images are converted and resized to 3x32x32.
    assert pipeline.decode(png(pixels[:20, :30, 0]), "image").shape == (3, 32, 32)
    assert pipeline.from_array(np.zeros((8, 8, 3)).tolist(), "array").shape == (3, 32, 32)


def test_image_normalisation_equals_values_computed_by_hand():
    """(pixel / 255 - mean) / std per channel, with a mean and a std that differ in every channel, so
    swapping them (or the channels) changes the result; the expected values are worked out by hand."""
    pipeline = ImagePipeline.from_manifest(
        {"channels": 3, "height": 2, "width": 2, "mean": [0.5, 0.25, 0.125], "std": [0.25, 0.5, 2.0]},
        4096,
        "test",
    )
    pixels = np.array(
        [[[255, 0, 255], [0, 255, 0]], [[0, 0, 0], [255, 255, 255]]], dtype=np.uint8
    )  # HWC: red+blue, green / black, white
    # R: 255 -> (1 - 0.5) / 0.25 = 2, 0 -> (0 - 0.5) / 0.25 = -2
    # G: 255 -> (1 - 0.25) / 0.5 = 1.5, 0 -> -0.5
    # B: 255 -> (1 - 0.125) / 2 = 0.4375, 0 -> -0.0625
    expected = np.array(
        [
            [[2.0, -2.0], [-2.0, 2.0]],
            [[-0.5, 1.5], [-0.5, 1.5]],
            [[0.4375, -0.0625], [-0.0625, 0.4375]],
        ],
        dtype=np.float32,
    )
    np.testing.assert_allclose(pipeline.from_array(pixels.tolist(), "array"), expected, atol=1e-6)
    np.testing.assert_allclose(pipeline.decode(png(pixels), "image"), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda p: p.decode("@@@", "images[2]"), InvalidArgument, ["images[2]", "not valid base64"]),
        (
            lambda p: p.decode(base64.b64encode(b"GIF89a broken").decode(), "image"),
            InvalidArgument,
            ["image"],
        ),
        (lambda p: p.decode(png(np.zeros((3, 3), np.uint8))[:40], "image"), InvalidArgument, ["image"]),
        (lambda p: p.from_array([[1, 2], [3]], "array"), InvalidArgument, ["array", "rectangular"]),
        (lambda p: p.from_array([[[1, 2]]], "arrays[0]"), InvalidArgument, ["arrays[0]", "shape [1, 1, 2]"]),
        (lambda p: p.from_array([[[1, 2, -5]]], "array"), InvalidArgument, ["0..255"]),
        (lambda p: p.from_array([[[1, 2, float("nan")]]], "array"), InvalidArgument, ["finite"]),
    ],
)
def test_bad_images_name_the_field(model_repo, call, error, words):
    with pytest.raises(error) as caught:
        call(image_pipeline(model_repo))
    for word in words:
        assert word in str(caught.value)


def test_image_pixel_limit(model_repo):
    pipeline = image_pipeline(model_repo, max_pixels=32 * 32)
    with pytest.raises(PayloadTooLarge, match="max_image_pixels"):
        pipeline.decode(png(np.zeros((64, 64, 3), np.uint8)), "image")
    with pytest.raises(PayloadTooLarge):
        pipeline.from_array(np.zeros((64, 64, 3)).tolist(), "array")


def test_bad_preprocessing_block_is_refused():
    with pytest.raises(InvalidArgument, match="preprocessing needs channels"):
        ImagePipeline.from_manifest({"channels": 3}, 100, "image_classifier version 1")
    with pytest.raises(InvalidArgument, match="one non-zero std"):
        ImagePipeline.from_manifest(
            {"channels": 3, "height": 2, "width": 2, "mean": [0, 0, 0], "std": [1, 0, 1]}, 100, "x"
        )


# ---- merging concurrent requests ------------------------------------------------------------------


def test_merge_rows_pads_token_inputs():
    a = {"input_ids": np.array([[101, 7, 102]]), "attention_mask": np.array([[1, 1, 1]])}
    b = {"input_ids": np.array([[101, 102], [101, 102]]), "attention_mask": np.array([[1, 1], [1, 1]])}
    merged = merge_rows([a, b])
    np.testing.assert_array_equal(merged["input_ids"], [[101, 7, 102], [101, 102, 0], [101, 102, 0]])
    np.testing.assert_array_equal(merged["attention_mask"], [[1, 1, 1], [1, 1, 0], [1, 1, 0]])


def test_coalescer_merges_concurrent_requests_and_splits_results():
    calls: list[int] = []

    async def infer(rows):
        """Row-wise: output = 2 * sum of the row's ids + 1 (a deterministic stand-in for a model)."""
        calls.append(len(rows["x"]))
        await asyncio.sleep(0.01)
        return rows["x"].sum(axis=1, keepdims=True) * 2 + 1, 7

    async def scenario():
        coalescer = Coalescer(infer, max_batch_size=8, max_in_flight=1)
        requests = [{"x": np.full((1 + i % 3, 2 + i % 2), i)} for i in range(12)]
        results = await asyncio.gather(*(coalescer.submit(r) for r in requests))
        return requests, results

    requests, results = asyncio.run(scenario())
    for request, (output, version) in zip(requests, results, strict=True):
        assert version == 7
        np.testing.assert_array_equal(output, request["x"].sum(axis=1, keepdims=True) * 2 + 1)
    assert sum(calls) == sum(len(r["x"]) for r in requests)
    assert len(calls) < len(requests) and max(calls) <= 8  # merged, never over max_batch_size


def test_coalescer_failure_reaches_every_waiting_request():
    async def infer(rows):
        await asyncio.sleep(0.01)
        raise Unavailable("Triton is down", retry_after_s=2)

    async def scenario():
        coalescer = Coalescer(infer, max_batch_size=4, max_in_flight=1)
        return await asyncio.gather(
            *(coalescer.submit({"x": np.ones((1, 1))}) for _ in range(5)), return_exceptions=True
        )

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, Unavailable) and o.retry_after_s == 2 for o in outcomes)


def test_unexpected_error_is_answered_500_with_the_request_id(model_repo):
    """A bug inside an endpoint becomes a counted 500 naming the request id, never a lost request.
    The bug here: an endpoint handing /embed image inputs. (The shared request path alone: the
    service's __init__ would set up logging for this process.)"""
    import prometheus_client

    path = RequestPath(settings_for(model_repo, MINIMAL["models"]))
    counted = {"model": "minilm", "version": "1", "endpoint": "/embed", "status_class": "5xx"}
    series = "modelpack_request_duration_seconds_count"
    before = prometheus_client.REGISTRY.get_sample_value(series, counted) or 0.0

    async def scenario():
        token = REQUEST_ID.set("req-1")
        try:
            return await path.serve("/embed", None, None, Images.one(None, [[[0, 0, 0]]]))
        finally:
            REQUEST_ID.reset(token)

    response = asyncio.run(scenario())
    body = json.loads(response.body)
    assert response.status_code == 500
    assert body["request_id"] == "req-1" and "internal error" in body["error"]
    assert prometheus_client.REGISTRY.get_sample_value(series, counted) == before + 1


def test_coalescer_reports_queue_wait_and_waiting_requests():
    """What the Bento's autoscaler reads: every request's wait for a call slot, and how many wait."""
    import prometheus_client

    registry = prometheus_client.CollectorRegistry()
    waits = prometheus_client.Histogram("test_wait_seconds", "w", ["model"], registry=registry)
    waiting = prometheus_client.Gauge("test_waiting", "n", ["model"], registry=registry)
    waited: list[float] = []
    release = asyncio.Event()

    async def infer(rows):
        await release.wait()
        return rows["x"], 1

    async def scenario():
        wait = waits.labels(model="m")
        coalescer = Coalescer(
            infer,
            max_batch_size=2,
            max_in_flight=1,
            on_wait=lambda seconds: (wait.observe(seconds), waited.append(seconds)),
            waiting=waiting.labels(model="m"),
        )
        tasks = [asyncio.create_task(coalescer.submit({"x": np.ones((1, 1))})) for _ in range(5)]
        await asyncio.sleep(0.05)
        queued = registry.get_sample_value("test_waiting", {"model": "m"})
        release.set()
        await asyncio.gather(*tasks)
        return queued

    queued = asyncio.run(scenario())
    # The first request left at once; four waited behind its call (slot 1 of 1), then left two by two.
    assert queued == 4
    assert registry.get_sample_value("test_waiting", {"model": "m"}) == 0
    assert registry.get_sample_value("test_wait_seconds_count", {"model": "m"}) == 5
    # The first left at once; the four queued behind it waited while its call held the slot.
    assert len(waited) == 5 and sorted(waited)[1] >= 0.05


# ---- OpenAI's embeddings route: its answer and its error shape -------------------------------------


def test_openai_reply_floats_base64_usage_and_dimensions():
    from serving.tasks import Request, Texts

    vectors = np.array([[0.5, -0.25, 1e-3], [1.0, 2.0, 3.0]], dtype=np.float32)
    request = Request(Texts.of(input=["a", "b"]), tokens=(4, 7))
    floats = REPLIES["openai_embeddings"](vectors, request)
    assert floats["object"] == "list" and floats["usage"] == {"prompt_tokens": 11, "total_tokens": 11}
    assert [d["index"] for d in floats["data"]] == [0, 1] and {d["object"] for d in floats["data"]} == {
        "embedding"
    }
    np.testing.assert_array_equal(np.asarray([d["embedding"] for d in floats["data"]]), vectors)

    request = Request(Texts.of(input=["a", "b"]), encoding_format="base64", dimensions=3, tokens=(4, 7))
    encoded = REPLIES["openai_embeddings"](vectors, request)["data"]
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in encoded]
    np.testing.assert_array_equal(np.stack(decoded), vectors)  # little-endian float32, bit for bit

    with pytest.raises(InvalidArgument, match=r"dimensions: 256 is not this model's width; .* 3") as caught:
        REPLIES["openai_embeddings"](vectors, Request(Texts.of(input="a"), dimensions=256))
    assert caught.value.field == "dimensions"


def test_token_arrays_are_refused_naming_input(model_repo):
    from serving.tasks import Texts

    entry = load_models(settings_for(model_repo, MINIMAL["models"]))["minilm"].versions[1]
    limits = settings_for(model_repo, MINIMAL["models"]).limits
    for sent in ([101, 7592, 102], [[101, 7592, 102]]):
        with pytest.raises(InvalidArgument, match=r"input\[0\]: .* is not text; token ids are not accepted"):
            PREPROCESS["text"](Texts.of(input=sent), entry, limits)
    texts = Texts.of(input=["hello world", "a"])
    tensors = PREPROCESS["text"](texts, entry, limits)
    from dataclasses import replace

    from serving.tasks import token_counts

    assert token_counts(tensors, texts, entry) == (4, 3)  # [CLS] hello world [SEP]; [CLS] a [SEP]
    # Texts sent to the ensemble (tokenize: triton) carry no mask: counted with the same tokenizer.
    via_text = replace(entry, via_text_model=True)
    strings = PREPROCESS["text"](texts, via_text, limits)
    assert "attention_mask" not in strings
    assert token_counts(strings, texts, via_text) == (4, 3)


def test_openai_error_bodies():
    from serving.http import error_response, uniform_validation_error

    def body(err, errors="openai"):
        response = error_response(err, errors)
        return response.status_code, json.loads(response.body), response.headers

    status, data, _ = body(NotFound("model: 'gpt' is not served here", field="model"))
    assert status == 404 and data == {
        "error": {
            "message": "model: 'gpt' is not served here",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
    status, data, headers = body(Unavailable("Triton is down", retry_after_s=3))
    assert status == 503 and headers["retry-after"] == "3"
    assert data["error"]["type"] == "server_error" and data["error"]["code"] == "service_unavailable"
    status, data, _ = body(PayloadTooLarge("input: 65 items", field="input"))
    assert (status, data["error"]["param"], data["error"]["code"]) == (413, "input", "request_too_large")
    # The service's own shape everywhere else, unchanged.
    status, data, _ = body(NotFound("model: x", field="model"), "service")
    assert set(data) == {"error", "field", "request_id"} and data["field"] == "model"
    # BentoML's pydantic errors on the OpenAI route, rewritten to OpenAI's shape.
    pydantic = json.dumps(
        {"error": "1 validation error", "detail": [{"loc": ["encoding_format"], "msg": "Input should be"}]}
    ).encode()
    rewritten = json.loads(uniform_validation_error(pydantic, "openai"))
    assert rewritten["error"]["param"] == "encoding_format"
    assert rewritten["error"]["message"].startswith("encoding_format: Input should be")
    # A union's alternatives (input: str | list[str] | ...) are named in the message, not in `param`.
    union = json.dumps(
        {"detail": [{"loc": ["input", "str"], "msg": "no"}, {"loc": ["input", "list[str]", 0]}]}
    )
    rewritten = json.loads(uniform_validation_error(union.encode(), "openai"))
    assert rewritten["error"]["param"] == "input"
    assert rewritten["error"]["message"].startswith("input.str: no; input.list[str][0]: invalid")
