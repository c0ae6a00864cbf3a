"""The int8 variant: its own gate against fp32, a new version, size and speed in the manifest."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from converters.onnx2int8 import activation_outliers, gate, quantize
from converters.validate import validate
from core.errors import CheckFailed, InvalidArgument
from core.repository import Repository


def test_cosine_gate_on_exact_vectors():
    fp32 = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    int8 = np.array([[1.0, 0.0], [1.0, 1.0]], dtype=np.float32)  # second row: cosine 1/sqrt(2)
    result = gate("feature-extraction", fp32, int8, min_cosine=0.7, min_top1=0.9)
    assert result["kind"] == "cosine" and result["min_cosine"] == pytest.approx(2**-0.5)
    assert result["passed"] and result["max_abs_err"] == 1.0
    assert not gate("feature-extraction", fp32, int8, min_cosine=0.71, min_top1=0.9)["passed"]


def test_top1_gate_on_exact_logits():
    fp32 = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, 4.0], [1.0, 0.0]])
    int8 = np.array([[2.0, 1.5], [0.0, 3.0], [4.0, 5.0], [1.0, 0.5]])  # one of four flips
    result = gate("image-classification", fp32, int8, min_cosine=0.99, min_top1=0.75)
    assert result["kind"] == "top1" and result["top1_agreement"] == 0.75 and result["passed"]
    assert not gate("text-classification", fp32, int8, min_cosine=0.99, min_top1=0.8)["passed"]


def test_both_gates_pass_at_their_threshold_exactly():
    """The gates keep what reaches the threshold (>=): a version exactly at it is published."""
    fp32 = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)  # every cosine with itself is exactly 1
    assert gate("feature-extraction", fp32, fp32.copy(), min_cosine=1.0, min_top1=1.0)["passed"]
    logits = np.array([[2.0, 1.0], [0.0, 3.0]])
    assert gate("image-classification", logits, logits * 2, min_cosine=1.0, min_top1=1.0)["passed"]


@pytest.fixture(scope="module")
def quantized(model_repo, tmp_path_factory):
    """A copy of the session repository, with minilm and image_classifier quantised once."""
    repo = tmp_path_factory.mktemp("quantize") / "repository"
    shutil.copytree(model_repo, repo)
    results = {
        name: quantize(name, repository=repo, speed_seconds=0.2) for name in ("minilm", "image_classifier")
    }
    return repo, results


@pytest.mark.slow  # shares a module fixture that quantises MiniLM (~20-30 s)
def test_minilm_int8_passes_its_gate_as_version_2(quantized):
    repo, results = quantized
    result = results["minilm"]
    assert result.version == 2
    manifest = result.manifest
    assert manifest["precision"] == "int8" and manifest["task"] == "feature-extraction"
    assert manifest["outputs"] == [{"name": "embeddings", "datatype": "FP32", "shape": [-1, 384]}]
    q = manifest["quantization"]
    assert q["source_version"] == 1 and q["weight_type"] == "QInt8" and q["per_channel"]
    assert q["gate"]["kind"] == "cosine" and q["gate"]["min_cosine"] >= 0.99 and q["gate"]["samples"] == 32
    assert manifest["parity"]["passed"] and manifest["parity"]["reference"] == "minilm:1 (fp32)"
    assert q["model_bytes"]["int8"] < 0.6 * q["model_bytes"]["fp32"]
    for batch in ("batch_1", "batch_32"):
        figures = q["throughput"][batch]
        assert figures["fp32_per_s"] > 0 and figures["int8_per_s"] > 0
        assert figures["ratio"] == pytest.approx(figures["int8_per_s"] / figures["fp32_per_s"], rel=1e-2)
    assert (repo / "minilm" / "2" / "tokenizer" / "tokenizer.json").is_file()
    # The model card and license of the fp32 version carry over.
    assert manifest["license"] == "apache-2.0"
    card = (repo / "minilm" / "1" / "model_card" / "README.md").read_bytes()
    assert (repo / "minilm" / "2" / "model_card" / "README.md").read_bytes() == card
    assert Repository(repo).served_versions("minilm") == [2]


@pytest.mark.slow  # shares a module fixture that quantises MiniLM (~20-30 s)
def test_fp32_nodes_are_the_most_outlier_heavy(quantized, model_repo):
    from converters.inputs import EntryInputs

    repo, results = quantized
    kept = results["minilm"].manifest["quantization"]["fp32_nodes"]
    source = Repository(model_repo)
    feeds = EntryInputs(source.manifest("minilm", 1), source.version_dir("minilm", 1)).feeds(8)
    ranked = activation_outliers(source.version_dir("minilm", 1) / "model.onnx", feeds)
    assert len(ranked) == 36  # 6 layers x (q, k, v, attention out, FFN in, FFN out)
    assert [score for _, score in ranked] == sorted((score for _, score in ranked), reverse=True)
    assert set(kept) <= {node for node, _ in ranked[: len(kept) + 4]}


@pytest.mark.slow  # shares a module fixture that quantises MiniLM (~20-30 s)
def test_image_classifier_int8_keeps_top1_labels_and_preprocessing(quantized, model_repo):
    _, results = quantized
    manifest = results["image_classifier"].manifest
    fp32 = Repository(model_repo).manifest("image_classifier", 1)
    assert manifest["quantization"]["gate"]["kind"] == "top1"
    assert manifest["quantization"]["gate"]["top1_agreement"] >= 0.9
    assert manifest["labels"] == fp32["labels"] and manifest["preprocessing"] == fp32["preprocessing"]


@pytest.mark.slow  # shares a module fixture that quantises MiniLM (~20-30 s)
def test_validate_reruns_the_int8_gate(quantized):
    repo, _ = quantized
    result = validate("minilm:2", repository=repo)
    assert result.status == "ok" and result.outputs["min_cosine"] >= 0.99


@pytest.mark.slow  # shares a module fixture that quantises MiniLM (~20-30 s)
def test_a_failing_gate_publishes_nothing(quantized):
    repo, _ = quantized
    before = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*"))
    with pytest.raises(CheckFailed, match=r"int8 gate of minilm:1 failed.*nothing published") as caught:
        quantize("minilm:1", repository=repo, min_cosine=0.99999, max_fp32_nodes=0)
    assert "- embeddings with 0 nodes kept fp32: cosine" in str(caught.value)
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*")) == before


@pytest.mark.slow  # shares a module fixture that quantises MiniLM (~20-30 s)
def test_an_int8_version_is_not_quantised_again(quantized):
    repo, _ = quantized
    with pytest.raises(InvalidArgument, match="minilm:2 is int8, not fp32"):
        quantize("minilm:2", repository=repo)
