"""Text into Triton, as a plain ``tritonclient`` user sends it: the ensemble ``NAME_text`` (tokenizer
model, then the encoder) over HTTP and gRPC, with texts of very different lengths in one request and
across concurrent requests. Embeddings equal sentence-transformers' (cosine >= 0.9999), a classifier's
logits equal its ONNX model's and its labels come back through Triton's classification extension, the
encoder's batcher merges the tokenizer's padded requests (Triton's statistics), and a new version or a
rollback of NAME moves its ensemble with it."""

from __future__ import annotations

import concurrent.futures
import shutil

import numpy as np
import pytest

from converters.runtime import ort_session, run
from core.repository import Repository
from tests.integration.test_triton_inference import settled_counts

pytestmark = pytest.mark.triton

MIN_COSINE = 0.9999
LOGITS_TOLERANCE = 1e-5
PASSAGE = " ".join(
    ["Triton serves many models at once, batching the requests of each model dynamically."] * 40
)
TEXTS = [
    "Hi.",
    "",
    "Grüße aus Köln – 東京の天気は晴れです。",
    "The quick brown fox jumps over the lazy dog, then rests under the old oak tree by the river.",
    PASSAGE,  # longer than max_length: truncated, as sentence-transformers does
]


def _client(protocol: str, server):
    if protocol == "http":
        import tritonclient.http as module

        return module, module.InferenceServerClient(server.http_url)
    import tritonclient.grpc as module

    return module, module.InferenceServerClient(server.grpc_url)


def _text_input(module, texts: list[str]):
    array = np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_)
    tensor = module.InferInput("text", list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return tensor


@pytest.fixture(scope="module")
def reference(minilm_path, model_repo):
    """sentence-transformers on the packaged MiniLM at the entry's max_length."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_path), device="cpu")
    model.max_seq_length = Repository(model_repo).manifest("minilm")["preprocessing"]["max_length"]

    def encode(texts: list[str]) -> np.ndarray:
        return model.encode(texts, normalize_embeddings=True, show_progress_bar=False)

    return encode


def _min_cosine(got: np.ndarray, want: np.ndarray) -> float:
    unit = got / np.linalg.norm(got, axis=1, keepdims=True)
    return float((unit * want).sum(axis=1).min())


def test_the_text_model_takes_strings_and_gives_the_encoders_outputs(triton_server):
    with triton_server.client() as client:
        metadata = client.get_model_metadata("minilm_text")
        config = client.get_model_config("minilm_text")
    assert metadata["platform"] == "ensemble"
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1, 1]}]
    assert metadata["outputs"] == [{"name": "embeddings", "datatype": "FP32", "shape": [-1, 384]}]
    assert [s["model_name"] for s in config["ensemble_scheduling"]["step"]] == ["minilm_tokenizer", "minilm"]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_texts_of_very_different_lengths_in_one_request(triton_server, reference, protocol):
    module, client = _client(protocol, triton_server)
    try:
        result = client.infer("minilm_text", [_text_input(module, TEXTS)])
    finally:
        client.close()
    embeddings = result.as_numpy("embeddings")
    assert embeddings.shape == (len(TEXTS), 384) and embeddings.dtype == np.float32
    assert _min_cosine(embeddings, reference(TEXTS)) >= MIN_COSINE


def test_concurrent_text_requests_are_batched_on_the_encoder(triton_server, reference):
    """32 requests of one text each, at once, of lengths from 3 to 256 tokens: every answer matches
    sentence-transformers, and the encoder ran fewer executions than it answered requests (the
    tokenizer model pads each execution's rows to one bucket length, so its requests meet in the
    encoder's batcher)."""
    import tritonclient.grpc as grpcclient

    texts = [" ".join(PASSAGE.split()[: 1 + (i * 13) % 220]) for i in range(32)]
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    stats = client.get_inference_statistics("minilm", as_json=True)["model_stats"][0]
    before = int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))

    def send(text: str) -> np.ndarray:
        return client.infer("minilm_text", [_text_input(grpcclient, [text])]).as_numpy("embeddings")

    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(send, texts))
    after = settled_counts(client, "minilm", before[0] + 32)
    client.close()
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert _min_cosine(np.concatenate(results), reference(texts)) >= MIN_COSINE
    assert inferences == 32
    assert executions < inferences, f"{executions} encoder executions for {inferences} requests"


def test_a_text_that_is_not_utf8_fails_alone(triton_server):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    try:
        bad = grpcclient.InferInput("text", [1, 1], "BYTES")
        bad.set_data_from_numpy(np.array([[b"\xff\xfe not text"]], dtype=np.object_))
        with pytest.raises(InferenceServerException, match="not UTF-8"):
            client.infer("minilm_text", [bad])
        assert client.is_model_ready("minilm_text")
        good = client.infer("minilm_text", [_text_input(grpcclient, ["still fine"])])
        assert good.as_numpy("embeddings").shape == (1, 384)
    finally:
        client.close()


# ---- a classifier: logits and labels -----------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier(minilm_path, tmp_path_factory):
    """MiniLM with a (seeded) two-label classification head, converted by the real converters with its
    companions, served by a Triton of this module's own."""
    from converters.hf2onnx import convert_hf
    from local_triton.server import TritonServer

    folder = tmp_path_factory.mktemp("classifier")
    repo = folder / "repository"
    convert_hf(minilm_path, "clf", task="text-classification", repository=repo)
    with TritonServer(repo, log_path=folder / "triton.log", die_with_parent=True) as server:
        yield Repository(repo), server


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_classifier_logits_equal_the_onnx_model_and_labels_come_back(classifier, protocol):
    from converters.inputs import load_tokenizer, tokenize

    repo, server = classifier
    folder = repo.version_dir("clf", 1)
    manifest = repo.manifest("clf", 1)
    session = ort_session(folder / "model.onnx")
    tokenizer = load_tokenizer(folder / "tokenizer")
    max_length = manifest["preprocessing"]["max_length"]
    expected = np.concatenate([run(session, tokenize(tokenizer, [t], max_length))["logits"] for t in TEXTS])

    module, client = _client(protocol, server)
    try:
        logits = client.infer("clf_text", [_text_input(module, TEXTS)]).as_numpy("logits")
        ranked = client.infer(
            "clf_text",
            [_text_input(module, TEXTS)],
            outputs=[module.InferRequestedOutput("logits", class_count=2)],
        ).as_numpy("logits")
    finally:
        client.close()
    assert logits.shape == (len(TEXTS), 2)
    assert np.abs(logits - expected).max() <= LOGITS_TOLERANCE
    labels = manifest["labels"]
    for row, values in zip(ranked, expected, strict=True):
        entries = [item.decode().split(":") for item in row]
        assert [int(index) for _, index, _ in entries] == list(np.argsort(-values))
        assert [label for _, _, label in entries] == [labels[int(index)] for _, index, _ in entries]
        scores = [float(score) for score, _, _ in entries]
        assert scores == pytest.approx(sorted(values, reverse=True), abs=1e-5)


# ---- versions -------------------------------------------------------------------------------------------


def test_a_new_version_and_a_rollback_move_the_ensemble_with_the_entry(model_repo, tmp_path, reference):
    """Publish minilm 2 (with another max_length, so its tokenizer model differs), load it the way
    `converters load minilm` does (through the ensemble): both steps serve version 2. Roll back: both
    serve version 1 again. The ensemble answers throughout."""
    import json

    from converters.pipeline import TOKENIZER_MODEL
    from local_triton.server import TritonServer, load_model

    root = tmp_path / "repository"
    shutil.copytree(model_repo, root)
    repo = Repository(root)
    with repo.stage("minilm") as staged:
        for item in ("model.onnx", "tokenizer"):
            source = repo.version_dir("minilm", 1) / item
            (shutil.copytree if source.is_dir() else shutil.copy)(source, staged.dir / item)
        manifest = json.loads((repo.version_dir("minilm", 1) / "manifest.json").read_text())
        manifest["preprocessing"]["max_length"] = 64
        repo.commit(staged, repo.config("minilm"), manifest, tokenizer_model=TOKENIZER_MODEL.read_bytes())

    def ready(client) -> dict[str, list[str]]:
        index = client.get_model_repository_index()
        return {
            name: sorted(m["version"] for m in index if m["name"] == name and m.get("state") == "READY")
            for name in ("minilm", "minilm_tokenizer", "minilm_text")
        }

    with TritonServer(
        root, log_path=tmp_path / "triton.log", models=["minilm_text"], die_with_parent=True
    ) as server:
        with server.client() as client:
            assert ready(client) == {"minilm": ["2"], "minilm_tokenizer": ["2"], "minilm_text": ["1"]}
        repo.set_version_policy("minilm", [1])
        assert load_model(server.http_url, "minilm") == ["1"]
        with server.client() as client:
            assert ready(client) == {"minilm": ["1"], "minilm_tokenizer": ["1"], "minilm_text": ["1"]}
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            got = client.infer("minilm_text", [_text_input(grpcclient, TEXTS)]).as_numpy("embeddings")
        finally:
            client.close()
    assert _min_cosine(got, reference(TEXTS)) >= MIN_COSINE  # version 1's 256 tokens, not 64
