"""TensorRT: without TensorRT and a GPU the command exits 2 naming what is missing, repository
untouched; the optimisation profiles come from the entry's dynamic axes; on a GPU, a real build."""

from __future__ import annotations

import shutil

import pytest

from converters.cli import main
from converters.onnx2trt import convert_trt, missing_requirements, optimisation_profiles
from core.repository import Repository

MISSING = missing_requirements()


def test_profiles_follow_the_dynamic_axes(model_repo):
    repo = Repository(model_repo)
    text = optimisation_profiles(repo.manifest("minilm", 1), 64, [16, 32])
    assert text == {
        "input_ids": ((1, 1), (32, 128), (64, 256)),
        "attention_mask": ((1, 1), (32, 128), (64, 256)),
    }
    image = optimisation_profiles(repo.manifest("image_classifier", 1), 8, [])
    assert image == {"input": ((1, 3, 32, 32), (8, 3, 32, 32), (8, 3, 32, 32))}


@pytest.mark.skipif(not MISSING, reason="TensorRT and a GPU are present: the refusal cannot happen here")
def test_without_tensorrt_or_gpu_it_exits_2_and_touches_nothing(model_repo, tmp_path, capsys):
    repo = tmp_path / "repository"
    shutil.copytree(model_repo, repo)
    before = sorted((p.relative_to(tmp_path).as_posix(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    code = main(["tensorrt", "minilm", "--fp16", "--repository", str(repo)])
    err = capsys.readouterr().err
    assert code == 2
    line = err.strip()
    assert line.startswith(
        "error: tensorrt: cannot build a TensorRT plan of minilm:1 on this machine: missing "
    )
    for what in MISSING:
        assert what in line
    assert "The repository is unchanged." in line
    assert (
        sorted((p.relative_to(tmp_path).as_posix(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
        == before
    )


@pytest.mark.gpu
@pytest.mark.skipif(bool(MISSING), reason=f"needs {' and '.join(MISSING)}")
def test_plan_of_the_image_classifier_matches_onnx_runtime(model_repo, tmp_path):
    repo = tmp_path / "repository"
    shutil.copytree(model_repo, repo)
    result = convert_trt("image_classifier", repository=repo)
    assert result.name == "image_classifier_trt" and result.version == 1
    assert (result.path / "model.plan").stat().st_size > 0
    assert result.manifest["parity"]["passed"]
    assert Repository(repo).config("image_classifier_trt").platform == "tensorrt_plan"
