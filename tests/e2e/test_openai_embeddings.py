"""``POST /v1/embeddings`` through the official ``openai`` client, pointed at the real service
(``bento_server``: ``bentoml serve`` in front of the session's Triton): the vectors equal the in-process
pipeline (tokenizer + ONNX Runtime) whether the client asks for floats or base64 (its default), usage
counts the real tokens, and errors come back as the client's own exceptions with ``param`` and ``code``."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from converters.sentences import SENTENCES

pytestmark = [pytest.mark.triton, pytest.mark.bento, pytest.mark.slow]


def reference(version_dir, texts: list[str]) -> tuple[np.ndarray, list[int]]:
    """transformers' AutoTokenizer + model.onnx in ONNX Runtime: the embeddings and the tokens per text."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    manifest = json.loads((version_dir / "manifest.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(version_dir / "tokenizer")
    encoded = tokenizer(
        texts,
        padding=True,
        truncation=True,
        max_length=manifest["preprocessing"]["max_length"],
        return_tensors="np",
    )
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {name: encoded[name].astype(np.int64) for name in ("input_ids", "attention_mask")}
    return session.run(["embeddings"], feeds)[0], [int(n) for n in encoded["attention_mask"].sum(axis=1)]


@pytest.fixture(scope="module")
def client(bento_server):
    import openai

    # No key is checked here; the client insists on one. No retries: a failure must show at once.
    with openai.OpenAI(base_url=f"{bento_server.url}/v1", api_key="unused", max_retries=0) as client:
        yield client


@pytest.mark.parametrize("encoding_format", ["float", "base64", None])
def test_openai_client_gets_the_in_process_embeddings(client, model_repo, encoding_format):
    texts = list(SENTENCES)
    expected, tokens = reference(model_repo / "minilm" / "1", texts)
    options = {} if encoding_format is None else {"encoding_format": encoding_format}
    # None: the client's default, which asks for base64 and decodes it into floats itself.
    answer = client.embeddings.create(model="minilm", input=texts, **options)
    assert answer.object == "list" and answer.model == "minilm"
    assert [item.index for item in answer.data] == list(range(len(texts)))
    if encoding_format == "base64":  # asked for explicitly, the client hands the strings over as they are
        vectors = [np.frombuffer(base64.b64decode(item.embedding), dtype="<f4") for item in answer.data]
    else:
        vectors = [item.embedding for item in answer.data]
    got = np.asarray(vectors)
    assert got.shape == expected.shape == (len(texts), 384)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == sum(tokens)


def test_one_string_the_width_and_the_raw_body(client, bento_server, model_repo):
    expected, tokens = reference(model_repo / "minilm" / "1", ["Paris is the capital of France."])
    answer = client.embeddings.create(model="minilm", input="Paris is the capital of France.", dimensions=384)
    assert len(answer.data) == 1 and answer.usage.prompt_tokens == tokens[0]
    np.testing.assert_allclose(answer.data[0].embedding, expected[0], atol=1e-5)
    # Without `model`: the one configured feature-extraction model answers; the body names it.
    raw = bento_server.client.post(
        "/v1/embeddings", json={"input": ["a", "b"]}, headers={"X-Request-ID": "oa-1"}
    )
    assert raw.status_code == 200 and raw.headers["X-Request-ID"] == "oa-1"
    body = raw.json()
    assert set(body) == {"model", "version", "object", "data", "usage"} and body["model"] == "minilm"
    assert body["version"] == 1 and all(isinstance(x, float) for x in body["data"][0]["embedding"])


ERRORS = [
    # (request, exception class name, status, param, code, words in the message)
    (
        {"model": "text-embedding-3-small", "input": "x"},
        "NotFoundError",
        404,
        "model",
        "model_not_found",
        ["'text-embedding-3-small' is not served here", "minilm"],
    ),
    (
        {"model": "image_classifier", "input": "x"},
        "BadRequestError",
        400,
        "model",
        None,
        ["serves image-classification", "/predict"],
    ),
    (
        {"model": "minilm", "input": [101, 7592, 102]},
        "BadRequestError",
        400,
        "input",
        None,
        ["input[0]: 101 is not text", "token ids are not accepted"],
    ),
    ({"model": "minilm", "input": []}, "BadRequestError", 400, "input", None, ["input: the list is empty"]),
    (
        {"model": "minilm", "input": "x", "dimensions": 256},
        "BadRequestError",
        400,
        "dimensions",
        None,
        ["dimensions: 256 is not this model's width", "384"],
    ),
    (
        {"model": "minilm", "input": ["x"] * 65},
        "APIStatusError",
        413,
        "input",
        "request_too_large",
        ["65 items", "limits.max_items"],
    ),
    (
        {"model": "minilm", "input": "x", "encoding_format": "int8"},
        "BadRequestError",
        400,
        "encoding_format",
        None,
        ["encoding_format: Input should be 'float' or 'base64'"],
    ),
]


@pytest.mark.parametrize(
    ("body", "kind", "status", "param", "code", "words"), ERRORS, ids=[e[3] + "-" + str(e[2]) for e in ERRORS]
)
def test_errors_reach_the_client_in_openais_shape(
    client, bento_server, body, kind, status, param, code, words
):
    import openai

    with pytest.raises(openai.APIStatusError) as caught:
        client.embeddings.create(**body)
    err = caught.value
    assert type(err).__name__ == kind and err.status_code == status
    assert (err.param, err.code, err.type) == (param, code, "invalid_request_error")
    for word in words:
        assert word in err.message, err.message
    assert err.response.headers["X-Request-ID"]
    # The body itself: exactly OpenAI's keys.
    raw = bento_server.client.post("/v1/embeddings", json=body)
    assert raw.status_code == status and set(raw.json()) == {"error"}
    assert set(raw.json()["error"]) == {"message", "type", "param", "code"}


def test_a_body_without_input_is_refused_in_openais_shape(bento_server):
    """(The client cannot send it: ``input`` is a required argument there.)"""
    raw = bento_server.client.post("/v1/embeddings", json={"model": "minilm"})
    assert raw.status_code == 400
    error = raw.json()["error"]
    assert (error["param"], error["type"]) == ("input", "invalid_request_error")
    assert error["message"].startswith("input: Field required")
