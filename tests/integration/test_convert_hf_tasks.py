"""Hugging Face models of every supported task, tiny and random, built from a config: the task read
from config.json, token classification with its labels and tokenizer, image classifiers with their
image processor's steps in the manifest (equal to the processor on real photographs), and the
refusals: a --task that disagrees with the architecture, an architecture not supported, no
architecture and no --task. Never a silent conversion into something else."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from converters.cli import main
from converters.hf2onnx import convert_hf
from converters.runtime import ort_session, run
from core.errors import InvalidArgument


def cli(*argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def real_photos():
    """Photographs and drawings shipped with matplotlib (a JPEG portrait, PNG logos), as RGB."""
    from matplotlib import cbook
    from PIL import Image

    names = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")
    return [Image.open(cbook.get_sample_data(name, asfileobj=False)).convert("RGB") for name in names]


@pytest.mark.parametrize(
    ("model", "task"),
    [
        ("ner", "token-classification"),
        ("sentiment", "text-classification"),
        ("convnext", "image-classification"),
    ],
)
def test_the_task_comes_from_the_architecture(model, task, tiny_hf_models, tmp_path, capsys):
    code, out, err = cli(
        "hf", tiny_hf_models[model], "--name", model, "--repository", tmp_path / "repo", capsys=capsys
    )
    assert code == 0, err
    manifest = json.loads((tmp_path / "repo" / model / "1" / "manifest.json").read_text())
    assert manifest["task"] == task and manifest["parity"]["passed"]
    assert (
        manifest["architecture"]
        == json.loads((tiny_hf_models[model] / "config.json").read_text())["architectures"][0]
    )


def test_token_classification_entry(any_model_repo, tiny_hf_models):
    """Per-token logits, the labels from id2label, the tokenizer in the version; ONNX equals PyTorch."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    id2label = json.loads((tiny_hf_models["ner"] / "config.json").read_text())["id2label"]
    labels = [id2label[str(i)] for i in range(len(id2label))]
    version = any_model_repo / "ner" / "1"
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["task"] == "token-classification"
    assert manifest["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, -1, len(labels)]}]
    assert manifest["labels"] == labels == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    assert (
        manifest["preprocessing"]["tokenizer"] == "tokenizer"
        and (version / "tokenizer" / "tokenizer.json").is_file()
    )
    tokenizer = AutoTokenizer.from_pretrained(str(version / "tokenizer"))
    feeds = tokenizer(["Ada Lovelace lived in London.", "Hi"], padding=True, return_tensors="np")
    feeds = {k: feeds[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
    got = run(ort_session(version / "model.onnx"), feeds)["logits"]
    model = AutoModelForTokenClassification.from_pretrained(str(tiny_hf_models["ner"])).eval()
    with torch.no_grad():
        expected = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
    assert got.shape == expected.shape == (2, feeds["input_ids"].shape[1], len(labels))
    np.testing.assert_allclose(got, expected, atol=1e-5)

    from converters.validate import validate

    assert validate("ner", repository=any_model_repo).outputs["passed"]


@pytest.mark.parametrize("model", ["vit", "convnext", "resnet"])
def test_image_classifier_preprocessing_equals_the_image_processor_on_real_photos(
    model, tiny_hf_models, tmp_path
):
    """The manifest's preprocessing block, run by the service's own ImagePipeline, gives the image
    processor's pixel_values on photographs (JPEG and PNG, various sizes); the ONNX model then equals
    PyTorch on them."""
    import torch
    from transformers import AutoModelForImageClassification

    from converters.hf2onnx import load_image_model
    from serving.preprocess import ImagePipeline

    result = convert_hf(tiny_hf_models[model], model, repository=tmp_path / "repo")
    manifest = result.manifest
    pre = manifest["preprocessing"]
    processor = load_image_model(tiny_hf_models[model])[0]
    assert manifest["task"] == "image-classification" and manifest["labels"] == ["cat", "dog", "bird"]
    assert manifest["inputs"] == [
        {"name": "input", "datatype": "FP32", "shape": [-1, 3, pre["height"], pre["width"]]}
    ]
    expected_blocks = {
        "vit": {"resize": {"height": 32, "width": 32}, "resample": "bilinear"},
        "convnext": {
            "resize": {"shortest_edge": 36},
            "resample": "bicubic",
            "crop": {"height": 32, "width": 32},
        },
        "resnet": {
            "resize": {"shortest_edge": 45},
            "resample": "bilinear",
            "crop": {"height": 40, "width": 40},
        },
    }
    assert {k: pre[k] for k in expected_blocks[model]} == expected_blocks[model]
    pipeline = ImagePipeline.from_manifest(pre, 4096 * 4096, model)
    session = ort_session(tmp_path / "repo" / model / "1" / "model.onnx")
    classifier = AutoModelForImageClassification.from_pretrained(str(tiny_hf_models[model])).eval()
    for photo in real_photos():
        expected = processor(images=[photo], return_tensors="np")["pixel_values"][0]
        got = pipeline.prepare(photo)
        assert got.shape == expected.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-5)
        with torch.no_grad():
            logits = classifier(pixel_values=torch.from_numpy(expected[None])).logits.numpy()
        np.testing.assert_allclose(run(session, {"input": got[None]})["logits"], logits, atol=1e-4)


def test_a_processor_the_block_misstates_is_caught(tiny_hf_models):
    from converters.hf2onnx import check_image_preprocessing, image_preprocessing, load_image_model

    processor = load_image_model(tiny_hf_models["convnext"])[0]
    block = image_preprocessing(processor, 3, "convnext")
    assert check_image_preprocessing(block, processor, "convnext") < 1e-4
    with pytest.raises(InvalidArgument, match="cannot reproduce"):
        check_image_preprocessing({**block, "resample": "nearest"}, processor, "convnext")
    with pytest.raises(InvalidArgument, match="cannot reproduce"):
        check_image_preprocessing(
            {**block, "crop": None, "resize": {"height": 32, "width": 32}}, processor, "convnext"
        )


def _without_architectures(source, target):
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    config.pop("architectures")
    (target / "config.json").write_text(json.dumps(config))
    return target


REFUSALS = [
    # (folder, --task or None, words of the one error line)
    (
        "ner",
        "feature-extraction",
        [
            "--task feature-extraction",
            "DistilBertForTokenClassification",
            "token-classification model",
            "Leave --task out",
        ],
    ),
    ("ner", "text-classification", ["--task text-classification", "token-classification model"]),
    (
        "sentiment",
        "token-classification",
        ["--task token-classification", "DistilBertForSequenceClassification"],
    ),
    (
        "vit",
        "text-classification",
        ["--task text-classification", "ViTForImageClassification", "image-classification model"],
    ),
    ("masked_lm", None, ["DistilBertForMaskedLM", "pre-training head", "pass --task feature-extraction"]),
    ("masked_lm", "image-classification", ["--task", "DistilBertForMaskedLM", "pre-training head"]),
    ("no_architecture", None, ["--task", "names no architecture", "token-classification"]),
    ("ner", "summarization", ["--task", "'summarization'", "image-classification"]),
]


@pytest.mark.parametrize(("folder", "task", "words"), REFUSALS, ids=[f"{f} {t}" for f, t, _ in REFUSALS])
def test_mismatches_and_unsupported_architectures_are_refused(
    folder, task, words, tiny_hf_models, tmp_path, capsys
):
    """The DistilBertForTokenClassification-as-embedder bug, and its kin: one line, exit 2, nothing
    published."""
    path = (
        _without_architectures(tiny_hf_models["ner"], tmp_path / "plain")
        if folder == "no_architecture"
        else tiny_hf_models[folder]
    )
    repo = tmp_path / "repo"
    code, out, err = cli(
        "hf", path, "--name", "m", *(["--task", task] if task else []), "--repository", repo, capsys=capsys
    )
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], lines[0]
    assert out == "" and not (repo / "m").exists()


def test_a_pretraining_head_is_exported_only_as_asked(tiny_hf_models, tmp_path, caplog):
    """A masked-LM folder (bert-base-uncased's kind) is refused without --task; with --task
    feature-extraction its encoder is exported, the head left out, and the log says so."""
    import logging

    with caplog.at_level(logging.WARNING, logger="converters.hf2onnx"):
        result = convert_hf(
            tiny_hf_models["masked_lm"], "mlm", task="feature-extraction", repository=tmp_path / "r"
        )
    assert result.manifest["task"] == "feature-extraction" and result.manifest["parity"]["passed"]
    assert result.manifest["architecture"] == "DistilBertForMaskedLM"
    assert "its head is left out" in caplog.text


def test_a_config_without_architectures_takes_the_task_given(tiny_hf_models, tmp_path):
    path = _without_architectures(tiny_hf_models["ner"], tmp_path / "plain")
    result = convert_hf(path, "plain", task="token-classification", repository=tmp_path / "repo")
    assert result.manifest["task"] == "token-classification" and result.manifest["architecture"] is None
