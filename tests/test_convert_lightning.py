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
