"""deploy.release on a repository built by the real converters (the session's ``model_repo``): the
check names what NVIDIA's image would not serve as intended, the export fixes it in a new folder and
leaves the source alone, and the exported repository loads and answers in a real tritonserver."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from core.errors import CheckFailed, InvalidArgument
from core.triton_config import read_config
from deploy import release


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_check_names_ragged_token_inputs(model_repo):
    problems = release.release_problems(model_repo, "cpu")
    assert len(problems) == 2, problems
    for tensor in ("input_ids", "attention_mask"):
        assert any(p.startswith(f"minilm: input {tensor} has allow_ragged_batch") for p in problems)
    assert not any(p.startswith("image_classifier") for p in problems)
    with pytest.raises(CheckFailed, match="not ready for NVIDIA's Triton image on cpu nodes"):
        release.check(model_repo, "cpu")


def test_check_for_gpu_names_cpu_instance_groups(model_repo):
    problems = release.release_problems(model_repo, "gpu")
    for name in ("minilm", "image_classifier"):
        assert (
            f"{name}: instance_group kind KIND_CPU on gpu nodes; export with --target gpu (sets KIND_GPU)"
            in problems
        )


@pytest.mark.parametrize("target", release.TARGETS)
def test_export_fixes_a_copy_and_leaves_the_source(model_repo, tmp_path, target):
    before = {p: p.read_bytes() for p in model_repo.glob("*/config.pbtxt")}
    out = tmp_path / f"release-{target}"
    result = release.export(model_repo, out, target)

    assert result.models == ["image_classifier", "minilm"]
    assert "minilm: input input_ids: allow_ragged_batch cleared" in result.changes
    assert release.release_problems(out, target) == []
    kind = "KIND_GPU" if target == "gpu" else "KIND_CPU"
    for name in result.models:
        config = read_config(out / name / "config.pbtxt")
        assert not any(t.allow_ragged_batch for t in config.input)
        assert {config.instance_group[0].__class__.Kind.Name(g.kind) for g in config.instance_group} == {kind}
        assert _digest(out / name / "1" / "model.onnx") == _digest(model_repo / name / "1" / "model.onnx")
    assert {p: p.read_bytes() for p in model_repo.glob("*/config.pbtxt")} == before
    assert not list(tmp_path.glob(".*partial"))


def test_export_refuses_a_folder_that_is_not_empty(model_repo, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(InvalidArgument, match="already exists and is not empty"):
        release.export(model_repo, tmp_path / "taken", "cpu")
    with pytest.raises(InvalidArgument, match="--target: 'tpu' is not one of cpu, gpu"):
        release.export(model_repo, tmp_path / "new", "tpu")


def test_cli(model_repo, tmp_path, capsys):
    assert release.main(["check", str(model_repo), "--target", "cpu"]) == 1
    assert "allow_ragged_batch" in capsys.readouterr().err
    out = tmp_path / "release"
    assert release.main(["export", str(model_repo), str(out), "--target", "cpu"]) == 0
    assert "2 model(s) ready for cpu nodes" in capsys.readouterr().out
    assert release.main(["check", str(out), "--target", "cpu"]) == 0


@pytest.mark.triton
def test_exported_repository_serves_on_a_real_triton(model_repo, minilm_path, tmp_path):
    """The exported configs load in tritonserver with explicit model control, and the text model
    answers a [batch, seq] request (now batched by shape instead of ragged) with the embeddings
    sentence-transformers gives for the same sentences."""
    import numpy as np
    import tritonclient.http as httpclient
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    from local_triton.server import TritonServer

    texts = ["hello world", "this"]
    tokenizer = AutoTokenizer.from_pretrained(model_repo / "minilm" / "1" / "tokenizer")
    encoded = tokenizer(texts, padding=True, return_tensors="np")
    expected = SentenceTransformer(str(minilm_path), device="cpu").encode(texts, normalize_embeddings=True)
    out = release.export(model_repo, tmp_path / "release", "cpu").destination
    with TritonServer(out, log_path=tmp_path / "triton.log", die_with_parent=True) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        assert client.is_model_ready("minilm") and client.is_model_ready("image_classifier")
        ids = np.array([[101, 7592, 2088, 102], [101, 2023, 102, 0]], dtype=np.int64)
        np.testing.assert_array_equal(encoded["input_ids"], ids)  # the two sentences, padded
        inputs = []
        for name, value in (("input_ids", ids), ("attention_mask", (ids > 0).astype(np.int64))):
            tensor = httpclient.InferInput(name, list(value.shape), "INT64")
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        embeddings = client.infer("minilm", inputs).as_numpy("embeddings")
    assert embeddings.shape == (2, 384)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(embeddings, expected, atol=1e-4)
