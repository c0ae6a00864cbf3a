"""The repository as the real tritonserver sees it: staging folders never show up as models, a
published version goes live on reload, and rollback serves the previous version."""

from __future__ import annotations

import shutil

import pytest

from converters.lightning2onnx import convert_lightning
from core.repository import Repository

pytestmark = pytest.mark.triton

MODULE = "converters.examples.image_classifier:ImageClassifier"


def _ready(server) -> set[tuple[str, str]]:
    return {(m["name"], m["version"]) for m in server.index() if m.get("state") == "READY"}


def test_publish_and_rollback_on_a_running_server(model_repo, lightning_ckpt, tmp_path):
    from local_triton.server import TritonServer

    root = tmp_path / "repository"
    root.mkdir()
    shutil.copytree(model_repo / "image_classifier", root / "image_classifier")
    repo = Repository(root)
    # What a killed publisher leaves behind: a staging folder in the workspace, beside the repository.
    leftover = repo.workspace() / "staging-1-dead" / "image_classifier" / "pending"
    leftover.mkdir(parents=True)
    (leftover / "model.onnx").write_bytes(b"half written")

    with TritonServer(root, log_path=tmp_path / "triton.log", die_with_parent=True) as server:
        assert _ready(server) == {("image_classifier", "1")}
        assert [m["name"] for m in server.index()] == ["image_classifier"]

        convert_lightning(lightning_ckpt, MODULE, "image_classifier", repository=root)
        server.load("image_classifier")
        assert _ready(server) == {("image_classifier", "2")}

        assert repo.rollback("image_classifier") == [1]  # what `rollback image_classifier` does
        server.load("image_classifier")
        assert _ready(server) == {("image_classifier", "1")}
        assert repo.versions("image_classifier") == [1, 2]  # nothing deleted
