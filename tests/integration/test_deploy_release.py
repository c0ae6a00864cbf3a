"""deploy.release on a repository built by the real converters (the session's ``model_repo``): the
repository the converters write passes the audit of NVIDIA's image as it is; the check names what
the image would refuse (each problem with its rule); the export only copies and sets the target's
instance kind, leaves the source alone, refuses a repository that does not pass, and the exported
repository loads and answers, text included, in a real tritonserver."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from core.errors import CheckFailed, InvalidArgument
from core.triton_config import read_config, write_config
from deploy import release


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_converters_repository_passes_as_it_is(model_repo):
    assert release.release_problems(model_repo, "cpu") == []
    release.check(model_repo, "cpu")


def test_check_names_ragged_token_inputs(model_repo, tmp_path):
    """The config the converters wrote before (token inputs with allow_ragged_batch): the native
    backend refuses to load it, and the check says so."""
    root = tmp_path / "repository"
    shutil.copytree(model_repo, root)
    config = read_config(root / "minilm" / "config.pbtxt")
    for tensor in config.input:
        tensor.allow_ragged_batch = True
    write_config(root / "minilm" / "config.pbtxt", config)
    problems = release.release_problems(root, "cpu")
    assert len(problems) == 2, problems
    for tensor in ("input_ids", "attention_mask"):
        assert any(p.startswith(f"ragged: minilm: input {tensor} has allow_ragged_batch") for p in problems)
    assert not any("image_classifier" in p for p in problems)
    with pytest.raises(CheckFailed, match="not ready for NVIDIA's Triton image on cpu nodes"):
        release.check(root, "cpu")
    with pytest.raises(CheckFailed, match="ragged: minilm"):
        release.export(root, tmp_path / "out", "cpu")  # no longer rewritten: refused
    assert not (tmp_path / "out").exists()


def test_check_for_gpu_names_cpu_instance_groups(model_repo):
    problems = release.release_problems(model_repo, "gpu")
    for name in ("minilm", "image_classifier"):
        assert (
            f"instances: {name}: instance_group kind KIND_CPU on gpu nodes; export with --target gpu "
            "(sets KIND_GPU)" in problems
        )
    # The tokenizer model runs on CPU on either kind of node; the ensemble has no instances.
    assert not any(p.startswith(("instances: minilm_tokenizer", "instances: minilm_text")) for p in problems)


@pytest.mark.parametrize("target", release.TARGETS)
def test_export_copies_sets_the_kind_only_and_leaves_the_source(model_repo, tmp_path, target):
    before = {p: p.read_bytes() for p in model_repo.glob("*/config.pbtxt")}
    out = tmp_path / f"release-{target}"
    result = release.export(model_repo, out, target)

    assert result.models == ["image_classifier", "minilm", "minilm_text", "minilm_tokenizer"]
    assert release.release_problems(out, target) == []
    kind = "KIND_GPU" if target == "gpu" else "KIND_CPU"
    for name in ("image_classifier", "minilm"):
        config = read_config(out / name / "config.pbtxt")
        assert {config.instance_group[0].__class__.Kind.Name(g.kind) for g in config.instance_group} == {kind}
        assert _digest(out / name / "1" / "model.onnx") == _digest(model_repo / name / "1" / "model.onnx")
        # Nothing but the kind changed.
        source = read_config(model_repo / name / "config.pbtxt")
        for group in source.instance_group:
            group.kind = config.instance_group[0].kind
        assert config == source
    for name in ("minilm_tokenizer", "minilm_text"):  # copied byte for byte
        assert (out / name / "config.pbtxt").read_bytes() == (model_repo / name / "config.pbtxt").read_bytes()
    expected = (
        [] if target == "cpu" else [f"{n}: instance_group KIND_CPU -> KIND_GPU" for n in result.models[:2]]
    )
    assert result.changes == expected
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
    assert release.main(["check", str(model_repo), "--target", "cpu"]) == 0
    assert "ready for NVIDIA's Triton image on cpu nodes" in capsys.readouterr().out
    assert release.main(["check", str(model_repo), "--target", "gpu"]) == 1
    assert "instances: minilm" in capsys.readouterr().err
    out = tmp_path / "release"
    assert release.main(["export", str(model_repo), str(out), "--target", "cpu"]) == 0
    assert "4 model(s) ready for cpu nodes" in capsys.readouterr().out
    assert release.main(["check", str(out), "--target", "cpu"]) == 0


@pytest.mark.triton
def test_exported_repository_serves_on_a_real_triton(model_repo, tmp_path):
    """The exported configs load in tritonserver with explicit model control; the text model answers a
    [batch, seq] request of equal rows, and its ensemble answers texts."""
    import numpy as np
    import tritonclient.http as httpclient

    from local_triton.server import TritonServer

    out = release.export(model_repo, tmp_path / "release", "cpu").destination
    with TritonServer(out, log_path=tmp_path / "triton.log") as server:
        client = httpclient.InferenceServerClient(server.http_url)
        for name in ("minilm", "image_classifier", "minilm_tokenizer", "minilm_text"):
            assert client.is_model_ready(name), name
        ids = np.array([[101, 7592, 2088, 102], [101, 2023, 102, 0]], dtype=np.int64)
        inputs = []
        for name, value in (("input_ids", ids), ("attention_mask", (ids > 0).astype(np.int64))):
            tensor = httpclient.InferInput(name, list(value.shape), "INT64")
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        embeddings = client.infer("minilm", inputs).as_numpy("embeddings")
        texts = httpclient.InferInput("text", [1, 1], "BYTES")
        texts.set_data_from_numpy(np.array([[b"hello world"]], dtype=np.object_))
        from_text = client.infer("minilm_text", [texts]).as_numpy("embeddings")
    assert embeddings.shape == (2, 384) and from_text.shape == (1, 384)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-4)
    assert np.abs(from_text[0] - embeddings[0]).max() < 1e-5  # the same tokens: [CLS] hello world [SEP]
