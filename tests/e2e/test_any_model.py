"""End to end, for models the project had never seen: one request per task through ``bentoml serve``
and a real tritonserver (``any_model_server``: tabular, tuplenet, dictnet, undeclared, ner, vit,
classifier), each
answer equal to the in-process pipeline (ONNX Runtime; for entities, transformers' own pipeline); the
Open Inference Protocol route for every entry, and its refusals, each naming the tensor."""

from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from converters.runtime import ort_session, run

pytestmark = [pytest.mark.triton, pytest.mark.bento, pytest.mark.slow]

TEXTS = [
    "Ada Lovelace met Charles Babbage in London.",
    "Marie Curie moved from Warsaw to Paris to study physics.",
    "hello",
    "The Eiffel Tower is in Paris, France, and Big Ben is in London.",
]


def post(server, path: str, body) -> httpx.Response:
    return server.client.post(path, json=body, timeout=30)


def session_of(repo, name: str):
    return ort_session(repo / name / "1" / "model.onnx")


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def error_of(response: httpx.Response) -> tuple[str, str]:
    body = response.json()
    assert set(body) == {"error", "field", "request_id"}, body
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body["field"], body["error"]


# ---- one request per task ---------------------------------------------------------------------------


def test_entities_equal_the_hugging_face_pipeline(any_model_server, tiny_hf_models):
    """The same entities as transformers' token-classification pipeline with aggregation_strategy
    "simple" on the same model: label, span and score; ``text`` is the span of the original text."""
    from transformers import pipeline

    ner = pipeline(
        "token-classification", model=str(tiny_hf_models["ner"]), aggregation_strategy="simple", device="cpu"
    )
    response = post(any_model_server, "/entities/batch", {"texts": TEXTS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "ner" and body["version"] == 1
    for text, result in zip(TEXTS, body["results"], strict=True):
        expected = ner(text)
        got = result["entities"]
        assert [(e["label"], e["start"], e["end"]) for e in got] == [
            (e["entity_group"], e["start"], e["end"]) for e in expected
        ], text
        np.testing.assert_allclose(
            [e["score"] for e in got], [float(e["score"]) for e in expected], atol=1e-4
        )
        assert all(e["text"] == text[e["start"] : e["end"]] for e in got)
    assert sum(len(r["entities"]) for r in body["results"]) > 0  # the comparison compared something
    single = post(any_model_server, "/entities", {"text": TEXTS[0]})
    assert single.status_code == 200 and single.json()["entities"] == body["results"][0]["entities"]


def test_predict_with_a_hugging_face_image_classifier(any_model_server, any_model_repo, tiny_hf_models):
    """/predict on a ViT entry: the photograph resized and normalised as its image processor does,
    the probabilities those of the ONNX model on the processor's own pixel values."""
    from matplotlib import cbook
    from PIL import Image

    from converters.hf2onnx import load_image_model

    photo = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    response = post(
        any_model_server,
        "/predict",
        {"image": base64.b64encode(buffer.getvalue()).decode(), "model": "vit", "top_k": 3},
    )
    assert response.status_code == 200, response.text
    processor = load_image_model(tiny_hf_models["vit"])[0]
    pixels = processor(images=[photo], return_tensors="np")["pixel_values"].astype(np.float32)
    probs = softmax(run(session_of(any_model_repo, "vit"), {"input": pixels})["logits"])[0]
    predictions = response.json()["predictions"]
    assert [p["label"] for p in predictions] == [["cat", "dog", "bird"][i] for i in np.argsort(-probs)]
    np.testing.assert_allclose([p["score"] for p in predictions], np.sort(probs)[::-1], atol=1e-5)


def test_classify_features(any_model_server, any_model_repo):
    rows = np.random.default_rng(11).standard_normal((3, 12)).astype(np.float32)
    probs = softmax(run(session_of(any_model_repo, "tabular"), {"input": rows})["logits"])
    one = post(any_model_server, "/classify/features", {"features": rows[0].tolist(), "top_k": 1})
    assert one.status_code == 200, one.text
    assert one.json()["model"] == "tabular"
    assert one.json()["predictions"][0]["label"] == ["low", "mid", "high"][int(np.argmax(probs[0]))]
    many = post(any_model_server, "/classify/features/batch", {"rows": rows.tolist()})
    assert many.status_code == 200, many.text
    for result, expected in zip(many.json()["results"], probs, strict=True):
        got = {p["index"]: p["score"] for p in result["predictions"]}
        np.testing.assert_allclose([got[i] for i in range(3)], expected, atol=1e-5)
    short = post(any_model_server, "/classify/features", {"features": [0.0] * 11})
    assert short.status_code == 400 and error_of(short)[0] == "features" and "12 numbers" in short.text


def test_tensors_route_any_signature(any_model_server, any_model_repo):
    """Named tensors in, every output by name out; FP16, INT32 and BOOL through Triton and back."""
    rng = np.random.default_rng(2)
    feeds = {
        "features": rng.standard_normal((2, 5)).astype(np.float16),
        "ids": rng.integers(0, 20, (2, 7)).astype(np.int32),
        "mask": rng.integers(0, 2, (2, 7)).astype(bool),
    }
    expected = run(session_of(any_model_repo, "dictnet"), feeds)
    response = post(
        any_model_server,
        "/tensors",
        {"model": "dictnet", "inputs": {k: v.tolist() for k, v in feeds.items()}},
    )
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    assert set(outputs) == {"logits", "count", "kept", "half"}
    np.testing.assert_allclose(outputs["logits"], expected["logits"], atol=1e-3)
    assert outputs["count"] == expected["count"].tolist()  # a [batch] output, as the manifest declares it
    assert outputs["kept"] == expected["kept"].tolist()
    np.testing.assert_allclose(outputs["half"], expected["half"].astype(np.float32), atol=1e-2)


def test_concurrent_tensor_requests_of_different_lengths_are_not_padded_together(
    any_model_server, any_model_repo
):
    """Requests of a tensor entry merge only with requests of their own shapes: zero padding would
    change what a module without a mask computes."""
    rng = np.random.default_rng(4)
    bodies = []
    for length in (3, 11, 3, 20, 7, 11, 5, 20):
        dense = rng.standard_normal((2, 6)).astype(np.float32)
        ids = rng.integers(0, 50, (2, length)).astype(np.int64)
        bodies.append((dense, ids))
    session = session_of(any_model_repo, "tuplenet")

    def send(pair):
        dense, ids = pair
        body = {"model": "tuplenet", "inputs": {"dense": dense.tolist(), "ids": ids.tolist()}}
        return post(any_model_server, "/tensors", body)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(send, bodies))
    for (dense, ids), response in zip(bodies, responses, strict=True):
        assert response.status_code == 200, response.text
        expected = run(session, {"dense": dense, "ids": ids})
        np.testing.assert_allclose(response.json()["outputs"]["score"], expected["score"], atol=1e-5)
        assert np.asarray(response.json()["outputs"]["states"]).shape == (2, ids.shape[1], 4)


# ---- the Open Inference Protocol, for every entry ------------------------------------------------------


def oip_inputs(feeds: dict[str, np.ndarray], datatypes: dict[str, str]) -> list[dict]:
    return [
        {
            "name": name,
            "shape": list(value.shape),
            "datatype": datatypes[name],
            "data": value.reshape(-1).tolist(),
        }
        for name, value in feeds.items()
    ]


def entry_feeds(repo, name: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Fresh inputs for ``name`` (batch 2) and its datatypes, from its manifest."""
    from converters.inputs import EntryInputs

    manifest = json.loads((repo / name / "1" / "manifest.json").read_text())
    feeds = EntryInputs(manifest, repo / name / "1").feeds(2)
    return {t["name"]: feeds[t["name"]] for t in manifest["inputs"]}, {
        t["name"]: t["datatype"] for t in (*manifest["inputs"], *manifest["outputs"])
    }


@pytest.mark.parametrize("name", ["tabular", "tuplenet", "dictnet", "undeclared", "ner", "vit", "classifier"])
def test_open_inference_protocol_for_every_task(any_model_server, any_model_repo, name):
    feeds, datatypes = entry_feeds(any_model_repo, name)
    expected = run(session_of(any_model_repo, name), feeds)
    body = {"id": f"req-{name}", "inputs": oip_inputs(feeds, datatypes)}
    for path in (f"/v2/models/{name}/infer", f"/v2/models/{name}/versions/1/infer"):
        response = post(any_model_server, path, body)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert (answer["model_name"], answer["model_version"], answer["id"]) == (name, "1", f"req-{name}")
        assert [o["name"] for o in answer["outputs"]] == list(expected)
        for output in answer["outputs"]:
            want = expected[output["name"]]
            assert output["datatype"] == datatypes[output["name"]]
            assert output["shape"] == list(want.shape)
            got = np.asarray(output["data"]).reshape(output["shape"])
            if want.dtype.kind in "fc":
                np.testing.assert_allclose(
                    got, want.astype(np.float32), atol=1e-2 if want.dtype == np.float16 else 1e-5
                )
            else:
                assert got.tolist() == want.tolist()


def test_open_inference_protocol_outputs_asked_for(any_model_server, any_model_repo):
    feeds, datatypes = entry_feeds(any_model_repo, "dictnet")
    body = {"inputs": oip_inputs(feeds, datatypes), "outputs": [{"name": "count"}, {"name": "kept"}]}
    response = post(any_model_server, "/v2/models/dictnet/infer", body)
    assert response.status_code == 200, response.text
    assert [o["name"] for o in response.json()["outputs"]] == ["count", "kept"]
    assert "id" not in response.json()


def _tabular_body(**change) -> dict:
    tensor = {"name": "input", "shape": [1, 12], "datatype": "FP32", "data": [0.5] * 12}
    tensor.update(change)
    return {"inputs": [tensor]}


OIP_REFUSALS = [
    # (path, body, status, field, words)
    (
        "/v2/models/tabular/infer",
        _tabular_body(name="features"),
        400,
        "inputs[0].name",
        ["'features' is not an input of tabular", "input"],
    ),
    (
        "/v2/models/tabular/infer",
        _tabular_body(datatype="FP64"),
        400,
        "inputs[0].datatype",
        ["(input)", "'FP64'", "FP32"],
    ),
    (
        "/v2/models/tabular/infer",
        _tabular_body(shape=[1, 11], data=[0.5] * 11),
        400,
        "inputs[0]",
        ["(input)", "shape [1, 11]", "[batch, 12]"],
    ),
    ("/v2/models/tabular/infer", _tabular_body(shape=[12]), 400, "inputs[0]", ["(input)", "shape [12]"]),
    (
        "/v2/models/tabular/infer",
        _tabular_body(data=[0.5] * 11),
        400,
        "inputs[0]",
        ["11 values do not fill shape [1, 12]"],
    ),
    (
        "/v2/models/tabular/infer",
        _tabular_body(data=["a"] * 12),
        400,
        "inputs[0]",
        ["FP32 data must be numbers"],
    ),
    (
        "/v2/models/tabular/infer",
        _tabular_body(shape=[65, 12], data=[0.5] * 780),
        413,
        "inputs[0]",
        ["65 rows", "limits.max_items"],
    ),
    (
        "/v2/models/tabular/infer",
        _tabular_body(parameters={"binary_data_size": 48}),
        400,
        "inputs[0].parameters",
        ["binary tensor extension"],
    ),
    ("/v2/models/tabular/infer", {"inputs": []}, 400, "inputs", ["non-empty list"]),
    (
        "/v2/models/tabular/infer",
        {"inputs": [{"name": "input"}]},
        400,
        "inputs[0]",
        ["missing shape, datatype, data"],
    ),
    (
        "/v2/models/tabular/infer",
        {**_tabular_body(), "outputs": [{"name": "probs"}]},
        400,
        "outputs[0].name",
        ["'probs' is not an output", "logits"],
    ),
    ("/v2/models/tabular/infer", {**_tabular_body(), "extra": 1}, 400, "body", ["unknown keys ['extra']"]),
    (
        "/v2/models/tuplenet/infer",
        {"inputs": [{"name": "dense", "shape": [1, 6], "datatype": "FP32", "data": [0] * 6}]},
        400,
        "inputs",
        ["also needs 'ids'"],
    ),
    (
        "/v2/models/tuplenet/infer",
        {
            "inputs": [
                {"name": "dense", "shape": [1, 6], "datatype": "FP32", "data": [0] * 6},
                {"name": "ids", "shape": [1, 3], "datatype": "INT64", "data": [1.5, 2, 3]},
            ]
        },
        400,
        "inputs[1]",
        ["(ids)", "INT64 data must be integers", "floats"],
    ),
    (
        "/v2/models/tuplenet/infer",
        {
            "inputs": [
                {"name": "dense", "shape": [2, 6], "datatype": "FP32", "data": [0] * 12},
                {"name": "ids", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]},
            ]
        },
        400,
        "inputs",
        ["different batch sizes"],
    ),
    (
        "/v2/models/dictnet/infer",
        {"inputs": [{"name": "mask", "shape": [1, 7], "datatype": "BOOL", "data": [1] * 7}]},
        400,
        "inputs[0]",
        ["(mask)", "BOOL data must be true/false"],
    ),
    ("/v2/models/nope/infer", _tabular_body(), 404, "model", ["'nope' is not served here", "tabular"]),
    ("/v2/models/tabular/versions/7/infer", _tabular_body(), 404, "version", ["no served version 7"]),
    ("/v2/models/tabular/versions/x/infer", _tabular_body(), 400, "version", ["'x' is not a version number"]),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "field", "words"),
    OIP_REFUSALS,
    ids=[f"{p} {f} {w[0][:20]}" for p, _, _, f, w in OIP_REFUSALS],
)
def test_open_inference_protocol_refusals_name_the_tensor(any_model_server, path, body, status, field, words):
    response = post(any_model_server, path, body)
    assert response.status_code == status, response.text
    got_field, message = error_of(response)
    assert got_field == field, message
    for word in words:
        assert word in message, message


def test_open_inference_protocol_malformed_json(any_model_server):
    response = any_model_server.client.post(
        "/v2/models/tabular/infer",
        content=b'{"inputs": [',
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400 and error_of(response)[0] == "body"


def test_models_lists_every_signature(any_model_server, any_model_repo):
    response = any_model_server.client.get("/models", timeout=10)
    assert response.status_code == 200
    models = {m["name"]: m for m in response.json()["models"]}
    for name, model in models.items():
        manifest = json.loads((any_model_repo / name / "1" / "manifest.json").read_text())
        version = model["versions"][0]
        assert model["task"] == manifest["task"]
        assert version["inputs"] == manifest["inputs"] and version["outputs"] == manifest["outputs"]
    assert models["ner"]["versions"][0]["labels"] == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    metrics = any_model_server.client.get("/metrics", timeout=10).text
    assert 'endpoint="/v2/models/{name}/infer",model="tabular"' in metrics


def test_every_route_is_timed_by_its_label_and_status_class(any_model_server, any_model_repo):
    """The latency histogram (read with Prometheus' text parser) counts one request of each of these
    routes, 2xx and 4xx alike, under the route's template, a configured model or ``unknown``, and the
    status class; the entries' licenses are listed by /models (null: these tiny models say none)."""
    from prometheus_client.parser import text_string_to_metric_families

    def counts() -> dict[tuple[str, str, str], float]:
        text = any_model_server.client.get("/metrics", timeout=10).text
        parsed = {f.name: f for f in text_string_to_metric_families(text)}
        family = parsed["modelpack_request_duration_seconds"]
        return {
            (s.labels["endpoint"], s.labels["model"], s.labels["status_class"]): s.value
            for s in family.samples
            if s.name.endswith("_count")
        }

    feeds, datatypes = entry_feeds(any_model_repo, "tabular")
    sent = {
        ("/entities", "ner", "2xx"): ("/entities", {"text": TEXTS[0]}, 200),
        ("/classify/features", "tabular", "4xx"): ("/classify/features", {"features": [0.0] * 11}, 400),
        ("/v2/models/{name}/infer", "tabular", "2xx"): (
            "/v2/models/tabular/infer",
            {"inputs": oip_inputs(feeds, datatypes)},
            200,
        ),
        ("/v2/models/{name}/versions/{version}/infer", "unknown", "4xx"): (
            "/v2/models/no_such_model/versions/1/infer",
            {"inputs": oip_inputs(feeds, datatypes)},
            404,
        ),
    }
    before = counts()
    for path, body, status in sent.values():
        response = post(any_model_server, path, body)
        assert response.status_code == status, (path, response.text)
    after = counts()
    for key in sent:
        assert after.get(key, 0) - before.get(key, 0) == 1, (key, before.get(key), after.get(key))
    models = any_model_server.client.get("/models", timeout=10).json()["models"]
    assert all("license" in version for model in models for version in model["versions"])
