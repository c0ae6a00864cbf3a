"""Inference through the real Triton server (session fixture ``triton_server`` serving ``model_repo``):
tritonclient over HTTP and gRPC equals in-process ONNX Runtime, dynamic batching of equal-shaped token
inputs (requests of other lengths run apart, never padded together), and bad requests failing alone
while the server stays ready."""

from __future__ import annotations

import concurrent.futures
import json
import time

import numpy as np
import pytest

from converters.inputs import EntryInputs, load_tokenizer, seeded_images, sentences
from converters.runtime import ort_session, run
from core.repository import Repository
from local_triton.server import CALL_TIMEOUT_S

pytestmark = pytest.mark.triton

TOLERANCE = 1e-5


def _infer(protocol: str, url: str, model: str, feeds: dict[str, np.ndarray], version: str = "") -> dict:
    if protocol == "http":
        import tritonclient.http as client_module
    else:
        import tritonclient.grpc as client_module
    client = client_module.InferenceServerClient(url)
    try:
        inputs = []
        for name, array in feeds.items():
            datatype = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}.get(array.dtype, "FP64")
            tensor = client_module.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        # A deadline per call (http's client has one built in): a stalled server fails the test.
        deadline = {} if protocol == "http" else {"client_timeout": CALL_TIMEOUT_S}
        result = client.infer(model, inputs, model_version=version, **deadline)
        response = result.get_response()
        outputs = response["outputs"] if protocol == "http" else response.outputs
        names = [o["name"] if protocol == "http" else o.name for o in outputs]
        return {name: result.as_numpy(name) for name in names}
    finally:
        client.close()


def _grpc_inputs(feeds: dict[str, np.ndarray]) -> list:
    import tritonclient.grpc as grpcclient

    inputs = []
    for name, array in feeds.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def _url(server, protocol: str) -> str:
    return server.http_url if protocol == "http" else server.grpc_url


@pytest.fixture(scope="module")
def entries(model_repo):
    repo = Repository(model_repo)
    out = {}
    for name in ("minilm", "image_classifier"):
        version = repo.versions(name)[-1]
        folder = repo.version_dir(name, version)
        out[name] = {
            "session": ort_session(folder / "model.onnx"),
            "inputs": EntryInputs(repo.manifest(name, version), folder),
            "folder": folder,
        }
    return out


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_minilm_equals_onnxruntime(triton_server, entries, protocol):
    entry = entries["minilm"]
    feeds = entry["inputs"].feeds(5)  # padded to the longest of 5 real sentences
    expected = run(entry["session"], feeds)["embeddings"]
    got = _infer(protocol, _url(triton_server, protocol), "minilm", feeds)
    assert set(got) == {"embeddings"}
    assert got["embeddings"].shape == (5, 384) and got["embeddings"].dtype == np.float32
    assert np.abs(got["embeddings"] - expected).max() <= TOLERANCE
    np.testing.assert_allclose(np.linalg.norm(got["embeddings"], axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_image_classifier_equals_onnxruntime(triton_server, entries, protocol):
    entry = entries["image_classifier"]
    images = seeded_images((3, 32, 32), 4, seed=7)
    expected = run(entry["session"], {"input": images})["logits"]
    got = _infer(protocol, _url(triton_server, protocol), "image_classifier", {"input": images})
    assert got["logits"].shape == (4, 10)
    assert np.abs(got["logits"] - expected).max() <= TOLERANCE


def test_concurrent_requests_are_batched_by_shape_and_never_mixed(triton_server, entries):
    """24 single-sentence requests at once, 12 of one length then 12 of another: Triton's statistics
    show fewer executions than inferences (dynamic batching), each answer equals ONNX Runtime on that
    sentence alone, and no execution held requests of both lengths (Triton's core batcher merges only
    equal shapes, as NVIDIA's backend relies on; the local backend would log such an execution). The
    batcher takes requests in arrival order and closes a batch at the first of another shape, which is
    why the tokenizer model pads to a few bucket lengths."""
    import tritonclient.grpc as grpcclient

    entry = entries["minilm"]
    tokenizer = load_tokenizer(entry["folder"] / "tokenizer")
    singles = []
    for i, sentence in enumerate(sentences(24)):
        length = 12 if i < 12 else 40
        encoded = tokenizer(" ".join([sentence] * 20), truncation=True, max_length=length)
        singles.append({k: np.asarray([encoded[k]], dtype=np.int64) for k in ("input_ids", "attention_mask")})
    assert {s["input_ids"].shape[1] for s in singles} == {12, 40}
    expected = [run(entry["session"], s)["embeddings"] for s in singles]

    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    before = _counts(client.get_inference_statistics("minilm", as_json=True))
    log_start = len(triton_server.log_text())

    def send(feeds):
        return client.infer("minilm", _grpc_inputs(feeds), client_timeout=CALL_TIMEOUT_S).as_numpy(
            "embeddings"
        )

    with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(send, singles))
    after = settled_counts(client, "minilm", before[0] + 24)
    client.close()

    for got, want in zip(results, expected, strict=True):
        assert got.shape == (1, 384)
        assert np.abs(got - want).max() <= TOLERANCE
    inferences = after[0] - before[0]
    executions = after[1] - before[1]
    assert inferences == 24
    assert 2 <= executions <= inferences // 2, f"{executions} executions for {inferences} requests"
    assert "different shapes" not in triton_server.log_text()[log_start:]


def _counts(stats: dict) -> tuple[int, int]:
    model = stats["model_stats"][0]
    return int(model.get("inference_count", 0)), int(model.get("execution_count", 0))


def settled_counts(client, model: str, inferences: int, timeout_s: float = 10.0) -> tuple[int, int]:
    """(inferences, executions) of ``model`` once Triton has counted ``inferences``: a backend reports
    a request's statistics after sending its response, so the client may see the answer first."""
    deadline = time.monotonic() + timeout_s
    counts = _counts(client.get_inference_statistics(model, as_json=True))
    while counts[0] < inferences and time.monotonic() < deadline:
        time.sleep(0.05)
        counts = _counts(client.get_inference_statistics(model, as_json=True))
    return counts


def _bad(protocol: str, server, feeds: dict, model: str = "minilm") -> str:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as caught:
        _infer(protocol, _url(server, protocol), model, feeds)
    return str(caught.value)


GOOD = {
    "input_ids": np.array([[101, 7592, 2088, 102]], dtype=np.int64),
    "attention_mask": np.ones((1, 4), dtype=np.int64),
}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize(
    "case, feeds, expected",
    [
        ("unknown input", {**GOOD, "token_type_ids": GOOD["attention_mask"]}, "token_type_ids"),
        ("missing input", {"input_ids": GOOD["input_ids"]}, "attention_mask"),
        ("wrong type", {**GOOD, "input_ids": GOOD["input_ids"].astype(np.float32)}, "input_ids"),
        ("wrong rank", {**GOOD, "input_ids": GOOD["input_ids"][None]}, "input_ids"),
        ("unequal lengths", {**GOOD, "attention_mask": np.ones((1, 3), dtype=np.int64)}, "must be equal"),
        ("unequal batch", {**GOOD, "attention_mask": np.ones((2, 4), dtype=np.int64)}, "batch"),
        (
            "batch above max",
            {k: np.repeat(v, 65, axis=0) for k, v in GOOD.items()},
            "batch",
        ),
        ("token id out of range", {**GOOD, "input_ids": np.array([[101, 10**7, 102, 0]])}, "ONNX Runtime"),
    ],
)
def test_bad_request_fails_alone(triton_server, protocol, case, feeds, expected):
    message = _bad(protocol, triton_server, feeds)
    assert expected in message, f"{case}: {message}"
    # The server and the model stay up, and the next good request is answered.
    with triton_server.client() as client:
        assert client.is_model_ready("minilm")
    assert _infer(protocol, _url(triton_server, protocol), "minilm", GOOD)["embeddings"].shape == (1, 384)


def test_bad_request_in_a_batch_does_not_fail_the_others(triton_server, entries):
    """A request that ONNX Runtime rejects is batched with good ones: only it gets the error."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    bad = {**GOOD, "input_ids": np.array([[101, 10**7, 102, 0]], dtype=np.int64)}
    expected = run(entries["minilm"]["session"], GOOD)["embeddings"]
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)

    def send(feeds):
        try:
            return client.infer("minilm", _grpc_inputs(feeds), client_timeout=CALL_TIMEOUT_S).as_numpy(
                "embeddings"
            )
        except InferenceServerException as err:
            return err

    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(send, [bad if i % 4 == 0 else GOOD for i in range(12)]))
    client.close()
    for i, result in enumerate(results):
        if i % 4 == 0:
            assert isinstance(result, InferenceServerException) and "ONNX Runtime" in str(result)
        else:
            assert not isinstance(result, Exception), result
            assert np.abs(result - expected).max() <= TOLERANCE


def test_config_and_metadata_are_served_unchanged(triton_server, model_repo):
    """Triton serves the repository's config.pbtxt as written (platform onnxruntime_onnx, token inputs
    without allow_ragged_batch, the warm-up samples), through the python-based onnxruntime backend."""
    with triton_server.client() as client:
        config = client.get_model_config("minilm")
        metadata = client.get_model_metadata("minilm")
    assert config["platform"] == "onnxruntime_onnx"
    assert config["backend"] == "onnxruntime"
    assert [i["name"] for i in config["input"]] == ["input_ids", "attention_mask"]
    assert not any(i["allow_ragged_batch"] for i in config["input"])
    assert [w["batch_size"] for w in config["model_warmup"]] == [1] * 9 + [32]  # 9 pad lengths up to 256
    assert {o["name"]: o["datatype"] for o in metadata["outputs"]} == {"embeddings": "FP32"}
    assert (
        json.loads((model_repo / "minilm" / "1" / "manifest.json").read_text())["task"]
        == "feature-extraction"
    )
