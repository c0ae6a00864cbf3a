"""The Lightning example: trained for a few steps, converted, checked, and its manifest complete."""

from __future__ import annotations

import json

import numpy as np

from converters.examples.image_classifier import LABELS, MEAN, STD, ImageClassifier
from converters.runtime import ort_session, run


def test_checkpoint_is_a_real_lightning_checkpoint(lightning_ckpt):
    import torch

    checkpoint = torch.load(str(lightning_ckpt), map_location="cpu", weights_only=True)
    assert "pytorch-lightning_version" in checkpoint and checkpoint["global_step"] == 10
    assert checkpoint["hyper_parameters"]["labels"] == list(LABELS)


def test_entry_matches_the_module_on_fresh_inputs(model_repo, lightning_ckpt):
    import torch

    module = ImageClassifier.load_from_checkpoint(
        str(lightning_ckpt), map_location="cpu", weights_only=True
    ).eval()
    x = np.random.default_rng(7).standard_normal((5, 3, 32, 32)).astype(np.float32)
    got = run(ort_session(model_repo / "image_classifier" / "1" / "model.onnx"), {"input": x})["logits"]
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert got.shape == (5, 10)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_manifest_declares_preprocessing_and_labels(model_repo, lightning_ckpt):
    manifest = json.loads((model_repo / "image_classifier" / "1" / "manifest.json").read_text())
    assert manifest["task"] == "image-classification"
    assert manifest["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
    assert manifest["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert manifest["labels"] == list(LABELS)
    assert manifest["preprocessing"] == {
        "channels": 3,
        "height": 32,
        "width": 32,
        "mean": list(MEAN),
        "std": list(STD),
        "scale": 1 / 255,
    }
    assert manifest["source"]["path"] == str(lightning_ckpt)
    assert manifest["parity"]["passed"] and manifest["parity"]["max_abs_err"] < 1e-4


def test_training_command_writes_a_checkpoint_that_converts(tmp_path, capsys):
    import torch

    from converters.examples.image_classifier import main
    from converters.lightning2onnx import convert_lightning

    out = tmp_path / "ckpt" / "ic.ckpt"
    assert main(["--out", str(out), "--steps", "2", "--seed", "3"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert torch.load(str(out), map_location="cpu", weights_only=True)["global_step"] == 2
    result = convert_lightning(
        out, "converters.examples.image_classifier:ImageClassifier", "ic", repository=tmp_path / "r"
    )
    assert result.version == 1 and result.manifest["parity"]["passed"]


def test_training_command_refuses_zero_steps(tmp_path, capsys):
    from converters.examples.image_classifier import main

    assert main(["--out", str(tmp_path / "x.ckpt"), "--steps", "0"]) == 2
    assert "--steps: must be a positive integer, got 0" in capsys.readouterr().err
    assert not (tmp_path / "x.ckpt").exists()


def test_synthetic_data_is_learnable(lightning_ckpt):
    """After 10 steps the classifier beats chance clearly on fresh samples of the same classes."""
    import torch

    from converters.examples.image_classifier import synthetic_dataset

    module = ImageClassifier.load_from_checkpoint(
        str(lightning_ckpt), map_location="cpu", weights_only=True
    ).eval()
    images, targets = synthetic_dataset(256, seed=0)[:]
    with torch.no_grad():
        accuracy = (module(images).argmax(1) == targets).float().mean().item()
    assert accuracy > 0.3  # chance is 0.1
