"""End to end: ``bentoml serve`` in front of a real tritonserver, over real HTTP.

- ``bento_server`` (tests/conftest.py) fronts the session's ``triton_server`` (``model_repo``: minilm
  and image_classifier, version 1): results against the in-process pipeline, the bad-input matrix,
  request ids, metrics, ``/models``.
- ``canary`` (this module) has its own Triton over a copy of the repository where the converters
  published minilm version 2, with a 90/10 split: the split, pinning, and Triton killed or frozen
  mid-run (it is this module's own server, so the session's one is never disturbed).
"""

from __future__ import annotations

import base64
import io
import math
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from converters.sentences import SENTENCES

pytestmark = [pytest.mark.triton, pytest.mark.bento, pytest.mark.slow]


# ---- the in-process pipeline the service must equal ----------------------------------------------


def reference_outputs(version_dir: Path, texts: list[str], output: str = "embeddings") -> np.ndarray:
    """Tokenize with transformers' AutoTokenizer, run model.onnx in ONNX Runtime and return ``output``
    (``embeddings``: pooling and L2 normalisation are inside the graph; ``logits`` of a classifier)."""
    import json

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
    return session.run([output], feeds)[0]


def reference_image_probs(version_dir: Path, pixels: np.ndarray) -> np.ndarray:
    """HWC uint8 pixels, normalised as the manifest declares, through model.onnx, softmax."""
    import json

    import onnxruntime as ort

    pre = json.loads((version_dir / "manifest.json").read_text())["preprocessing"]
    mean = np.asarray(pre["mean"], dtype=np.float32)
    std = np.asarray(pre["std"], dtype=np.float32)
    chw = ((pixels.astype(np.float32) * np.float32(pre["scale"]) - mean) / std).transpose(2, 0, 1)
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"input": chw[None].astype(np.float32)})[0][0]
    exp = np.exp(logits - logits.max())
    return exp / exp.sum()


def png_b64(pixels: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def post(server, route: str, body: dict | None = None, **kwargs) -> httpx.Response:
    return server.client.post(route, json=body, **kwargs)


def error_field(response: httpx.Response) -> str:
    """The field an error names; every error body has the same keys, BentoML's own 400s included."""
    body = response.json()
    assert set(body) == {"error", "field", "request_id"}, body
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body["field"]


# ---- results equal the in-process pipeline --------------------------------------------------------


def test_embed_equals_in_process_pipeline(bento_server, model_repo):
    texts = list(SENTENCES)
    expected = reference_outputs(model_repo / "minilm" / "1", texts)

    single = post(bento_server, "/embed", {"text": texts[3]})
    assert single.status_code == 200, single.text
    assert single.json()["model"] == "minilm" and single.json()["version"] == 1
    np.testing.assert_allclose(single.json()["embedding"], expected[3], atol=1e-5)

    batch = post(bento_server, "/embed/batch", {"texts": texts, "model": "minilm"})
    assert batch.status_code == 200, batch.text
    got = np.asarray(batch.json()["embeddings"])
    assert got.shape == expected.shape == (len(texts), 384)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_similarity_ranks_like_in_process_cosine(bento_server, model_repo):
    query, candidates = "Where is the capital of France?", list(SENTENCES)
    vectors = reference_outputs(model_repo / "minilm" / "1", [query, *candidates])
    scores = vectors[1:] @ vectors[0]

    response = post(bento_server, "/similarity", {"query": query, "candidates": candidates, "top_k": 3})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == list(np.argsort(-scores)[:3])
    assert results[0]["text"] == "Paris is the capital of France."
    np.testing.assert_allclose([r["score"] for r in results], np.sort(scores)[::-1][:3], atol=1e-5)


def test_predict_equals_in_process_pipeline(bento_server, model_repo):
    version_dir = model_repo / "image_classifier" / "1"
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8) for _ in range(3)]
    expected = [reference_image_probs(version_dir, image) for image in images]
    labels = __import__("json").loads((version_dir / "manifest.json").read_text())["labels"]

    single = post(bento_server, "/predict", {"image": png_b64(images[0]), "top_k": 2})
    assert single.status_code == 200, single.text
    predictions = single.json()["predictions"]
    top = np.argsort(-expected[0])[:2]
    assert [p["index"] for p in predictions] == list(top)
    assert [p["label"] for p in predictions] == [labels[i] for i in top]
    np.testing.assert_allclose([p["score"] for p in predictions], expected[0][top], atol=1e-5)

    # The batch form, once as PNG files and once as pixel arrays: the same answer either way.
    by_png = post(bento_server, "/predict/batch", {"images": [png_b64(i) for i in images], "top_k": 10})
    by_array = post(bento_server, "/predict/batch", {"arrays": [i.tolist() for i in images], "top_k": 10})
    for response in (by_png, by_array):
        assert response.status_code == 200, response.text
        for result, probs in zip(response.json()["results"], expected, strict=True):
            got = {p["index"]: p["score"] for p in result["predictions"]}
            np.testing.assert_allclose([got[i] for i in range(10)], probs, atol=1e-5)

    # A larger image is resized to the declared 32x32 first: it still gets a full answer.
    big = post(
        bento_server, "/predict", {"image": png_b64(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8))}
    )
    assert big.status_code == 200 and len(big.json()["predictions"]) == 3  # the fixture's top_k


def test_models_lists_versions_tensors_and_parity(bento_server):
    response = bento_server.client.get("/models", timeout=10)
    assert response.status_code == 200
    models = {m["name"]: m for m in response.json()["models"]}
    assert set(models) == {"minilm", "image_classifier"}
    minilm = models["minilm"]["versions"][0]
    assert minilm["version"] == 1 and minilm["weight"] == 1.0
    assert [t["name"] for t in minilm["inputs"]] == ["input_ids", "attention_mask"]
    assert minilm["outputs"][0] == {"name": "embeddings", "datatype": "FP32", "shape": [-1, 384]}
    assert minilm["parity"]["passed"] is True
    assert minilm["license"] == "apache-2.0"  # from the packaged model's card (its README front matter)
    assert models["image_classifier"]["versions"][0]["license"] is None  # the example says none
    assert models["image_classifier"]["versions"][0]["labels"][0] == "airplane"


def test_request_id_health_and_metrics(bento_server):
    mine = post(bento_server, "/embed", {"text": "hello"}, headers={"X-Request-ID": "client-42"})
    assert mine.headers["X-Request-ID"] == "client-42"
    generated = post(
        bento_server, "/embed", {"text": "hello"}, headers={"X-Request-ID": "not a valid id; " + "x" * 80}
    )
    assert len(generated.headers["X-Request-ID"]) == 32 and generated.headers["X-Request-ID"] != "client-42"
    failed = post(bento_server, "/embed", {"text": "x", "model": "nope"})
    assert failed.json()["request_id"] == failed.headers["X-Request-ID"]

    assert bento_server.client.get("/healthz", timeout=5).status_code == 200
    assert bento_server.client.get("/readyz", timeout=5).status_code == 200
    metrics = bento_server.client.get("/metrics", timeout=5).text
    ok = 'endpoint="/embed",model="minilm",status_class="2xx",version="1"'
    assert f"modelpack_request_duration_seconds_count{{{ok}}}" in metrics
    unknown = 'endpoint="/embed",model="unknown",status_class="4xx",version=""'
    assert f"modelpack_request_duration_seconds_count{{{unknown}}}" in metrics
    assert "modelpack_request_duration_seconds_bucket" in metrics
    assert "bentoml_service_request_total" in metrics  # BentoML's own series are still there


# ---- the bad-input matrix: a 4xx naming the field ------------------------------------------------

PIXELS = np.zeros((32, 32, 3), dtype=np.uint8)

BAD_INPUTS = [
    # route, body, status, field
    ("/embed/batch", {"texts": []}, 400, "texts"),
    ("/embed/batch", {"texts": ["a"] * 65}, 413, "texts"),
    ("/embed/batch", {"texts": "not a list"}, 400, "texts"),
    ("/embed/batch", {"texts": ["ok", "x" * 10_001]}, 413, "texts[1]"),
    ("/embed", {"text": "x" * 10_001}, 413, "text"),
    ("/embed", {"text": 5}, 400, "text"),
    ("/embed", {}, 400, "text"),
    ("/embed", {"text": "x", "model": "nope"}, 404, "model"),
    ("/embed", {"text": "x", "version": 9}, 404, "version"),
    ("/embed", {"text": "x", "version": 0}, 400, "version"),
    ("/embed", {"text": "x", "version": "one"}, 400, "version"),
    ("/embed", {"text": "x", "model": "image_classifier"}, 400, "model"),
    ("/similarity", {"query": "q", "candidates": []}, 400, "candidates"),
    ("/similarity", {"query": "q", "candidates": ["a"] * 65}, 413, "candidates"),
    ("/classify", {"text": "x"}, 400, "model"),  # no text classifier is configured here
    ("/predict", {}, 400, "image"),
    ("/predict", {"image": "%%% not base64 %%%"}, 400, "image"),
    ("/predict", {"image": base64.b64encode(b"hello, not an image").decode()}, 400, "image"),
    ("/predict", {"image": png_b64(PIXELS), "array": PIXELS.tolist()}, 400, "image"),
    ("/predict", {"array": "pixels"}, 400, "array"),
    ("/predict", {"array": [[1, 2], [3]]}, 400, "array"),
    ("/predict", {"image": png_b64(PIXELS), "top_k": 0}, 400, "top_k"),
    ("/predict/batch", {"arrays": [PIXELS.tolist(), [[[1, 2]]]]}, 400, "arrays[1]"),
    ("/predict/batch", {"arrays": [np.full((32, 32, 3), 300).tolist()]}, 400, "arrays[0]"),
    ("/predict/batch", {"images": []}, 400, "images"),
]


@pytest.mark.parametrize(
    ("route", "body", "status", "field"), BAD_INPUTS, ids=[f"{r} {f}" for r, _, _, f in BAD_INPUTS]
)
def test_bad_input_gets_4xx_naming_the_field(bento_server, route, body, status, field):
    response = post(bento_server, route, body)
    assert response.status_code == status, response.text
    assert error_field(response) == field, response.text
    assert "X-Request-ID" in response.headers


def test_malformed_and_oversized_bodies(bento_server):
    broken = bento_server.client.post(
        "/embed",
        content=b'{"text": ',
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert broken.status_code == 400 and error_field(broken) == "body" and "json" in broken.text.lower()

    too_big = b'{"text": "' + b"a" * (17 * 1024 * 1024) + b'"}'
    response = bento_server.client.post(
        "/embed", content=too_big, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert response.status_code == 413
    assert response.json()["field"] == "body" and "max_body_bytes" in response.json()["error"]

    # Chunked (no Content-Length): counted as it arrives, refused the same way.
    def chunks():
        for _ in range(17):
            yield b"a" * (1024 * 1024)

    chunked = bento_server.client.post(
        "/embed",
        content=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert chunked.status_code == 413


# ---- canary split, pinning, Triton down or frozen -------------------------------------------------


@pytest.fixture(scope="module")
def canary_servers(model_repo, minilm_path, service_config, tmp_path_factory):
    """minilm versions 1 and 2 (v2 published by the converters), split 90/10, on a Triton and a Bento
    of this module's own. Tests take ``canary``, which brings both back after a test that killed or
    froze one of them."""
    import shutil

    from converters.hf2onnx import convert_hf
    from core.repository import Repository
    from local_triton.server import TritonServer
    from serving.launcher import BentoServer

    folder = tmp_path_factory.mktemp("canary")
    repo = folder / "repository"
    shutil.copytree(model_repo / "minilm", repo / "minilm")
    assert convert_hf(minilm_path, "minilm", repository=repo).version == 2
    Repository(repo).set_version_policy("minilm", "all")
    # A text classifier: MiniLM with a (seeded, untrained) sequence-classification head.
    convert_hf(minilm_path, "classifier", task="text-classification", repository=repo)

    triton = TritonServer(repo, log_path=folder / "tritonserver.log", die_with_parent=True).start()
    try:  # Triton stops even when the Bento fails to start
        config = service_config(
            folder / "service.yaml",
            repo,
            triton.grpc_url,
            [
                {"name": "minilm", "task": "feature-extraction", "versions": {1: 90, 2: 10}},
                {"name": "classifier", "task": "text-classification", "top_k": 1},
            ],
            triton={"url": triton.grpc_url, "timeout_s": 2, "retry_after_s": 3, "ready_timeout_s": 1},
        )
        bento = BentoServer(config, folder / "home", folder / "bento.log", die_with_parent=True).start()
        try:
            yield bento, triton
        finally:
            bento.stop()
    finally:
        triton.stop()


@pytest.fixture
def canary(canary_servers):
    """The module's Bento and Triton, serving again when the test ends whatever it did to them (killed
    Triton, froze it, killed the Bento), even when its assertions failed half way: the tests after it,
    in whatever order they run, find both up."""
    bento, triton = canary_servers
    yield bento, triton
    if triton.running:
        os.killpg(triton.pid, signal.SIGCONT)  # harmless unless a failed test left it frozen
    else:
        triton.start()
    if not bento.running:
        bento.stop()  # reaps what is left and closes the client bound to the old port
        bento.start()


def test_classify_equals_in_process_pipeline(canary):
    bento, _ = canary
    version_dir = Path(bento.config).parent / "repository" / "classifier" / "1"
    texts = list(SENTENCES[:4])
    logits = reference_outputs(version_dir, texts, "logits")
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)

    single = post(bento, "/classify", {"text": texts[0]})  # the model's top_k (1)
    assert single.status_code == 200, single.text
    assert single.json()["model"] == "classifier"
    [top] = single.json()["predictions"]
    assert top["label"] == f"LABEL_{int(np.argmax(probs[0]))}"
    np.testing.assert_allclose(top["score"], probs[0].max(), atol=1e-5)

    batch = post(bento, "/classify/batch", {"texts": texts, "top_k": 2, "model": "classifier"})
    assert batch.status_code == 200, batch.text
    for result, row in zip(batch.json()["results"], probs, strict=True):
        assert [p["label"] for p in result["predictions"]] == [f"LABEL_{i}" for i in np.argsort(-row)]
        np.testing.assert_allclose([p["score"] for p in result["predictions"]], np.sort(row)[::-1], atol=1e-5)
    # /embed with the classifier, and /classify with the encoder: the wrong task, named.
    wrong = post(bento, "/embed", {"text": "x", "model": "classifier"})
    assert wrong.status_code == 400 and "call /classify" in wrong.json()["error"]


def test_canary_split_and_pinning(canary):
    bento, _ = canary
    n = 300

    def one(i: int) -> int:
        response = post(bento, "/embed", {"text": SENTENCES[i % len(SENTENCES)]})
        assert response.status_code == 200, response.text
        return response.json()["version"]

    with ThreadPoolExecutor(8) as pool:
        versions = list(pool.map(one, range(n)))
    assert set(versions) <= {1, 2}
    # Binomial(300, 0.1): mean 30, sd 5.2. Within 4 sd (10..50): a false failure has p < 1e-4.
    tolerance = 4 * math.sqrt(n * 0.1 * 0.9)
    assert abs(versions.count(2) - 0.1 * n) <= tolerance, versions.count(2)

    for pinned in (1, 2):
        response = post(bento, "/embed", {"text": "pinned", "version": pinned})
        assert response.status_code == 200 and response.json()["version"] == pinned

    metrics = bento.client.get("/metrics", timeout=5).text
    for version in ("1", "2"):
        labels = f'endpoint="/embed",model="minilm",status_class="2xx",version="{version}"'
        assert f"modelpack_request_duration_seconds_count{{{labels}}}" in metrics


@pytest.fixture(scope="module")
def text_bento(canary_servers, service_config, tmp_path_factory):
    """A second Bento on the canary's Triton, its text models with ``tokenize: triton``: the newest
    served version's texts go to NAME_text, the others' are tokenized here (an ensemble is not pinned)."""
    from serving.launcher import BentoServer

    _, triton = canary_servers
    folder = tmp_path_factory.mktemp("text_bento")
    config = service_config(
        folder / "service.yaml",
        triton.repository,
        triton.grpc_url,
        [
            {
                "name": "minilm",
                "task": "feature-extraction",
                "versions": {1: 50, 2: 50},
                "tokenize": "triton",
            },
            {"name": "classifier", "task": "text-classification", "top_k": 2, "tokenize": "triton"},
        ],
    )
    server = BentoServer(config, folder / "home", folder / "bento.log", die_with_parent=True).start()
    yield server, triton
    server.stop()


def test_tokenize_triton_sends_the_newest_versions_texts_to_the_ensemble(text_bento):
    """Pinned to the newest served version (2), the texts go to minilm_text (its count moves); pinned to
    1, they are tokenized here and go to minilm version 1 (minilm_text's count stays). Both equal the
    in-process pipeline of their version, and the classifier's labels too."""
    bento, triton = text_bento
    repository = Path(triton.repository)
    texts = [SENTENCES[0], SENTENCES[3] * 4, "short"]

    def ensemble_count() -> int:
        stats = triton.statistics("minilm_text")["model_stats"][0]
        return int(stats.get("inference_count", 0))

    for version, through_ensemble in ((2, True), (1, False)):
        before = ensemble_count()
        response = post(bento, "/embed/batch", {"texts": texts, "version": version})
        assert response.status_code == 200, response.text
        assert response.json()["version"] == version
        expected = reference_outputs(repository / "minilm" / str(version), texts)
        np.testing.assert_allclose(response.json()["embeddings"], expected, atol=1e-5)
        deadline = time.monotonic() + 10  # Triton counts a request after answering it
        while through_ensemble and ensemble_count() == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (ensemble_count() - before > 0) is through_ensemble

    logits = reference_outputs(repository / "classifier" / "1", texts, "logits")
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    batch = post(bento, "/classify/batch", {"texts": texts})
    assert batch.status_code == 200, batch.text
    for result, row in zip(batch.json()["results"], probs, strict=True):
        assert [p["label"] for p in result["predictions"]] == [f"LABEL_{i}" for i in np.argsort(-row)]
        np.testing.assert_allclose([p["score"] for p in result["predictions"]], np.sort(row)[::-1], atol=1e-5)

    described = {m["name"]: m for m in bento.client.get("/models").json()["models"]}
    assert described["minilm"]["tokenize"] == "triton" and described["classifier"]["tokenize"] == "triton"
    assert bento.client.get("/readyz").status_code == 200


def test_openai_embeddings_through_the_ensemble_count_the_models_tokens(text_bento):
    """/v1/embeddings pinned (``version``, the openai client's extra_body) to the version whose texts go
    to minilm_text: the embeddings equal the in-process pipeline's, and ``usage`` counts the tokens the
    model was given (transformers' tokenizer of that version, truncated at its max_length), though the
    ensemble answers with the embeddings only."""
    import json

    from transformers import AutoTokenizer

    bento, triton = text_bento
    version_dir = Path(triton.repository) / "minilm" / "2"
    texts = [SENTENCES[0], SENTENCES[3] * 40, "short"]

    def ensemble_count() -> int:
        return int(triton.statistics("minilm_text")["model_stats"][0].get("inference_count", 0))

    before = ensemble_count()
    response = post(bento, "/v1/embeddings", {"model": "minilm", "input": texts, "version": 2})
    assert response.status_code == 200, response.text
    # Triton counts a request after answering it.
    wait_for(lambda: ensemble_count() > before, "minilm_text's inference count moving", timeout_s=10)
    body = response.json()
    np.testing.assert_allclose(
        [d["embedding"] for d in body["data"]], reference_outputs(version_dir, texts), atol=1e-5
    )
    max_length = json.loads((version_dir / "manifest.json").read_text())["preprocessing"]["max_length"]
    tokenizer = AutoTokenizer.from_pretrained(version_dir / "tokenizer")
    tokens = sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"])
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert tokens > 3 * 3  # the long text was counted, truncated


# A request either gets its answer from the service (which gives up on Triton after triton.timeout_s,
# 2 s here) or hangs until the client gives up. The client's timeout is set far above the service's, so
# "answered before the client gave up" tells the two apart on a machine of any speed; no test asserts
# how fast the answer came.
CLIENT_TIMEOUT_S = 30.0


def wait_for(condition, what: str, timeout_s: float = 60.0, poll_s: float = 0.05):
    """Poll ``condition()`` until it returns something truthy (returned); fail naming ``what`` after
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what}: not seen within {timeout_s:.0f} s"
        time.sleep(poll_s)


def test_triton_killed_mid_run_gives_503_then_recovers(canary):
    bento, triton = canary
    outcomes: list[tuple[int, float, str | None]] = []
    done = False

    def hammer() -> None:
        while not done:
            started = time.monotonic()
            response = post(bento, "/embed", {"text": "still there?"}, timeout=CLIENT_TIMEOUT_S)
            outcomes.append(
                (response.status_code, time.monotonic() - started, response.headers.get("Retry-After"))
            )

    with ThreadPoolExecutor(4) as pool:
        workers = [pool.submit(hammer) for _ in range(4)]
        try:
            wait_for(lambda: any(status == 200 for status, _, _ in outcomes), "a 200 before the kill")
            triton.kill()

            # Requests in flight at the kill may still have been answered; the first answer after it
            # that is not a 200 must be the 503.
            def not_200() -> httpx.Response | None:
                response = post(bento, "/embed", {"text": "down"}, timeout=CLIENT_TIMEOUT_S)
                return response if response.status_code != 200 else None

            down = wait_for(not_200, "an answer other than 200 after Triton was killed")
            assert down.status_code == 503 and down.headers["Retry-After"] == "3", down.text
            assert "Triton" in down.json()["error"]
            # /readyz answers from the background check (every triton.ready_interval_s): the next one
            # finds Triton gone.
            wait_for(
                lambda: bento.client.get("/readyz", timeout=CLIENT_TIMEOUT_S).status_code == 503,
                "/readyz 503 after Triton was killed",
            )
            triton.start()
            restarted = len(outcomes)
            wait_for(lambda: any(s == 200 for s, _, _ in outcomes[restarted:]), "a 200 after the restart")
        finally:
            done = True
            for worker in workers:
                worker.result()  # a hung request would have raised the client's timeout here

    statuses = {status for status, _, _ in outcomes}
    assert statuses <= {200, 503}, statuses  # never a 500, never a dropped connection
    assert 503 in statuses
    assert max(seconds for _, seconds, _ in outcomes) < CLIENT_TIMEOUT_S  # every request answered: no hang
    assert all(retry == "3" for status, _, retry in outcomes if status == 503)
    assert post(bento, "/embed", {"text": "back"}).status_code == 200
    assert bento.client.get("/readyz", timeout=10).status_code == 200


def test_frozen_triton_gives_503_within_the_timeout(canary):
    bento, triton = canary
    os.killpg(triton.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        response = post(bento, "/embed", {"text": "anyone?"}, timeout=CLIENT_TIMEOUT_S)
        elapsed = time.monotonic() - started
    finally:
        os.killpg(triton.pid, signal.SIGCONT)
    assert response.status_code == 503, response.text
    # The service waited for Triton up to its deadline (triton.timeout_s is 2; a deadline never fires
    # early), then answered on its own, long before the client would have given up.
    assert 1.5 <= elapsed < CLIENT_TIMEOUT_S, elapsed
    assert response.headers["Retry-After"] == "3"
    deadline = time.monotonic() + 30
    while post(bento, "/embed", {"text": "thawed"}).status_code != 200:
        assert time.monotonic() < deadline, "no answer 30 s after Triton resumed"
        time.sleep(0.2)


def test_worker_dies_with_a_killed_server(canary):
    """SIGKILL to ``bentoml serve``'s process group leaves no worker behind (BentoML's workers run in
    sessions of their own; the service asks Linux to end them with it). ``canary`` starts the Bento
    again for the tests that run after this one."""
    from core.processes import alive, descendants

    bento, _ = canary
    arbiter = bento.pid
    workers = descendants(arbiter)
    assert workers, "bentoml serve has no worker process"
    os.killpg(arbiter, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if alive(pid)]


# ---- the Locust users the benchmarks drive ---------------------------------------------------------


@pytest.mark.parametrize("user", ["BentoUser", "TritonUser"])
def test_locust_users_run_without_failures(bento_server, triton_server, model_repo, tmp_path, user):
    import subprocess
    import sys

    from benchmarks.parsers import locust_point

    host = bento_server.url if user == "BentoUser" else f"http://{triton_server.http_url}"
    prefix = tmp_path / user
    env = {**os.environ, "MODELPACK_WORKLOAD": "minilm-short", "MODELPACK_REPOSITORY": str(model_repo)}
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "locust"),
            "-f",
            "benchmarks/locustfile.py",
            "--headless",
            "-u",
            "2",
            "-r",
            "2",
            "-t",
            "3s",
            "--host",
            host,
            "--only-summary",
            "--csv",
            str(prefix),
            user,
        ],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
    )
    assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-1500:]
    total = locust_point(f"{prefix}_stats.csv", users=2)  # the Aggregated row, read as the benchmarks do
    assert total.requests > 5 and total.failures == 0
