"""MiniLM to ONNX: the embeddings in the graph equal sentence-transformers' on real sentences."""

from __future__ import annotations

import json

import numpy as np
import pytest

from converters.runtime import ort_session, run
from core.repository import Repository
from core.triton_config import read_config


@pytest.fixture(scope="module")
def minilm_entry(model_repo):
    return model_repo / "minilm"


def test_entry_layout_and_manifest(minilm_entry, minilm_path):
    version = minilm_entry / "1"
    assert (minilm_entry / "config.pbtxt").is_file()
    assert (version / "model.onnx").is_file()
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["name"] == "minilm" and manifest["version"] == 1
    assert manifest["task"] == "feature-extraction"
    assert manifest["source"]["path"] == str(minilm_path) and len(manifest["source"]["sha256"]) == 64
    assert manifest["inputs"] == [
        {"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]},
        {"name": "attention_mask", "datatype": "INT64", "shape": [-1, -1]},
    ]
    assert manifest["outputs"] == [{"name": "embeddings", "datatype": "FP32", "shape": [-1, 384]}]
    assert manifest["parity"]["passed"] is True
    assert manifest["parity"]["max_abs_err"] < 1e-4
    assert {o["name"] for o in manifest["parity"]["outputs"]} == {
        "embeddings[batch=1]",
        "embeddings[batch=8]",
    }
    assert manifest["preprocessing"] == {"tokenizer": "tokenizer", "max_length": 256}
    assert manifest["versions"]["opset"] == 17 and manifest["precision"] == "fp32"
    assert manifest["size_bytes"] > 80_000_000
    assert manifest["created_at"].endswith("Z")
    assert read_config(minilm_entry / "config.pbtxt").name == "minilm"


def test_onnx_embeddings_equal_sentence_transformers_on_unseen_sentences(minilm_entry, minilm_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    sentences = [
        "A completely different sentence.",
        "Short",
        "Models are served by Triton over gRPC and HTTP.",
    ]
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_entry / "1" / "tokenizer"))
    feeds = tokenizer(sentences, padding=True, return_tensors="np")
    session = ort_session(minilm_entry / "1" / "model.onnx")
    got = run(session, {k: feeds[k].astype(np.int64) for k in ("input_ids", "attention_mask")})["embeddings"]
    expected = SentenceTransformer(str(minilm_path), device="cpu").encode(
        sentences, normalize_embeddings=True
    )
    assert got.shape == (3, 384)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_tokenizer_json_loads_with_the_tokenizers_library(minilm_entry):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm_entry / "1" / "tokenizer" / "tokenizer.json"))
    assert tokenizer.encode("hello world").ids[0] == 101  # [CLS]


def test_the_repository_lists_the_session_entries(model_repo):
    repo = Repository(model_repo)
    assert repo.models() == ["image_classifier", "minilm", "minilm_text", "minilm_tokenizer"]
    assert repo.companions("minilm") == ["minilm_tokenizer", "minilm_text"]
    assert repo.companions("image_classifier") == []  # an image entry takes no text
    assert repo.versions("minilm") == [1]
    assert repo.served_versions("minilm") == [1] and repo.served_versions("minilm_tokenizer") == [1]


def test_text_classification_entry_gives_logits_and_labels(minilm_path, tmp_path):
    from converters.hf2onnx import convert_hf

    result = convert_hf(
        minilm_path, "minilm_classifier", task="text-classification", repository=tmp_path / "repo"
    )
    manifest = result.manifest
    assert manifest["task"] == "text-classification"
    assert manifest["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 2]}]
    assert manifest["labels"] == ["LABEL_0", "LABEL_1"]
    assert manifest["parity"]["passed"] and manifest["parity"]["max_abs_err"] < 1e-4
    config = read_config(tmp_path / "repo" / "minilm_classifier" / "config.pbtxt")
    assert [o.name for o in config.output] == ["logits"] and list(config.output[0].dims) == [2]
    assert [step.step for step in result.steps] == ["load", "export", "parity", "publish"]
    assert result.steps[-1].outputs["companions"] == ["minilm_classifier_tokenizer", "minilm_classifier_text"]
    assert (tmp_path / "repo" / "minilm_classifier_text" / "labels.txt").read_text() == "LABEL_0\nLABEL_1\n"

    from converters.validate import validate

    # The head of a bare encoder is initialised from a fixed seed, so validate rebuilds the same model.
    assert validate("minilm_classifier", repository=tmp_path / "repo").outputs["max_abs_err"] < 1e-4


def test_a_text_classifier_cannot_join_a_feature_extraction_entry(minilm_path, writable_model_repo):
    from converters.hf2onnx import convert_hf
    from core.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="'minilm' holds feature-extraction versions"):
        convert_hf(minilm_path, "minilm", task="text-classification", repository=writable_model_repo)
    assert Repository(writable_model_repo).versions("minilm") == [1]


def test_validate_reruns_parity_against_sentence_transformers(model_repo):
    from converters.validate import validate

    result = validate("minilm:1", repository=model_repo)
    assert result.status == "ok" and result.outputs["passed"] and result.outputs["max_abs_err"] < 1e-4


def _minilm_with_pooling(minilm_path, folder, **modes):
    """The MiniLM folder (weights linked) with another sentence-transformers pooling config."""
    folder.mkdir()
    for entry in minilm_path.iterdir():
        if entry.name != "1_Pooling":
            (folder / entry.name).symlink_to(entry)
    (folder / "1_Pooling").mkdir()
    config = json.loads((minilm_path / "1_Pooling" / "config.json").read_text())
    config.update({"pooling_mode_mean_tokens": False, **modes})
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(config))
    return folder


def test_cls_pooling_folders_export_their_own_pooling(minilm_path, tmp_path):
    from converters.hf2onnx import convert_hf

    folder = _minilm_with_pooling(minilm_path, tmp_path / "cls", pooling_mode_cls_token=True)
    result = convert_hf(folder, "cls", repository=tmp_path / "repo")  # parity against sentence-transformers
    assert result.manifest["parity"]["passed"] and result.manifest["parity"]["max_abs_err"] < 1e-4


def test_an_unsupported_pooling_is_refused_before_export(minilm_path, tmp_path):
    from converters.hf2onnx import convert_hf
    from core.errors import InvalidArgument

    folder = _minilm_with_pooling(minilm_path, tmp_path / "max", pooling_mode_max_tokens=True)
    with pytest.raises(
        InvalidArgument, match=r"pools with \['max_tokens'\]; the exporter supports one of mean, cls"
    ):
        convert_hf(folder, "max", repository=tmp_path / "repo")
    assert not (tmp_path / "repo" / "max").exists()
