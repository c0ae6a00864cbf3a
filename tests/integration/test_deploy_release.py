"""deploy.release on a repository built by the real converters (the session's ``model_repo``): the
repository the converters write passes the audit of NVIDIA's image as it is; the check names what
the image would refuse (each problem with its rule); the export only copies and sets the target's
instance kind (and, on GPU nodes, the TensorRT engine cache), leaves the source alone, refuses a
repository that does not pass, and the exported repository loads and answers, text included, in a
real tritonserver. A release is named by its content (SHA256SUMS), checked against it and pinned into
an overlay; the promotion path of docs/deploy.md starts the service's own start-up code at every
step."""

from __future__ import annotations

import hashlib
import re
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
def test_exported_repository_serves_on_a_real_triton(model_repo, minilm_path, tmp_path):
    """The exported configs load in tritonserver with explicit model control; the text model answers a
    [batch, seq] request of equal rows with the embeddings sentence-transformers gives for the same
    sentences, and its ensemble answers texts."""
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
        for name in ("minilm", "image_classifier", "minilm_tokenizer", "minilm_text"):
            assert client.is_model_ready(name), name
        ids = np.array([[101, 7592, 2088, 102], [101, 2023, 102, 0]], dtype=np.int64)
        np.testing.assert_array_equal(encoded["input_ids"], ids)  # the two sentences, padded
        inputs = []
        for name, value in (("input_ids", ids), ("attention_mask", (ids > 0).astype(np.int64))):
            tensor = httpclient.InferInput(name, list(value.shape), "INT64")
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        embeddings = client.infer("minilm", inputs).as_numpy("embeddings")
        text_input = httpclient.InferInput("text", [1, 1], "BYTES")
        text_input.set_data_from_numpy(np.array([[b"hello world"]], dtype=np.object_))
        from_text = client.infer("minilm_text", [text_input]).as_numpy("embeddings")
    assert embeddings.shape == (2, 384) and from_text.shape == (1, 384)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-4)
    assert np.abs(from_text[0] - embeddings[0]).max() < 1e-5  # the same tokens: [CLS] hello world [SEP]
    np.testing.assert_allclose(embeddings, expected, atol=1e-4)


# ---- releases: content-addressed, checked, pinned --------------------------------------------------


def test_export_names_the_release_by_its_content(model_repo, tmp_path):
    first = release.export(model_repo, tmp_path / "a", "cpu")
    again = release.export(model_repo, tmp_path / "b", "cpu")
    assert first.digest == again.digest == release.release_digest(first.destination)
    sums = (first.destination / "SHA256SUMS").read_text().splitlines()
    assert "minilm/config.pbtxt" in {line.split("  ", 1)[1] for line in sums}
    assert all(re.fullmatch(r"[0-9a-f]{64}  \S+", line) for line in sums)
    # A release exported for other nodes is another release.
    assert release.export(model_repo, tmp_path / "gpu", "gpu").digest != first.digest


def test_release_digest_names_every_file_that_differs(model_repo, tmp_path):
    out = release.export(model_repo, tmp_path / "release", "cpu").destination
    (out / "minilm" / "1" / "manifest.json").write_text("{}")
    (out / "extra.txt").write_text("x")
    (out / "image_classifier" / "config.pbtxt").unlink()
    with pytest.raises(CheckFailed) as caught:
        release.release_digest(out)
    message = str(caught.value)
    for line in (
        "- image_classifier/config.pbtxt: listed but missing",
        "- extra.txt: not listed",
        "- minilm/1/manifest.json: content differs from SHA256SUMS",
    ):
        assert line in message


def test_pin_writes_the_release_into_an_overlay(model_repo, tmp_path, capsys):
    out = release.export(model_repo, tmp_path / "release", "cpu")
    env = tmp_path / "release.env"
    env.write_text("# mine\nAWS_REGION=eu-west-1\nMODEL_RELEASE=old\n")
    argv = ["pin", str(out.destination), "--releases", "s3://my-bucket/releases", "--env-file", str(env)]
    assert release.main(argv) == 0
    assert env.read_text().splitlines() == [
        "# mine",
        "AWS_REGION=eu-west-1",
        "MODEL_RELEASES_S3=s3://my-bucket/releases",
        f"MODEL_RELEASE={out.digest}",
    ]
    printed = capsys.readouterr().out
    assert f"aws s3 cp --recursive {out.destination}/ s3://my-bucket/releases/{out.digest}/" in printed
    with pytest.raises(InvalidArgument, match="--releases: 's3://my-bucket/releases/' is not an S3 prefix"):
        release.pin(out.destination, "s3://my-bucket/releases/", env)


def test_gpu_export_caches_tensorrt_engines_per_model_content(writable_model_repo, tmp_path):
    from core.repository import Repository
    from core.triton_config import set_accelerator

    repo = Repository(writable_model_repo)
    repo.update_config("minilm", lambda config: set_accelerator(config, "tensorrt"))
    problems = release.release_problems(writable_model_repo, "gpu")
    assert any(
        p.startswith("instances: minilm: the tensorrt accelerator has no engine cache") for p in problems
    )

    def cache_path(out: Path) -> dict[str, str]:
        config = read_config(out / "minilm" / "config.pbtxt")
        return dict(config.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters)

    first = release.export(writable_model_repo, tmp_path / "a", "gpu")
    parameters = cache_path(first.destination)
    assert parameters["trt_engine_cache_enable"] == "1"
    assert re.fullmatch(
        re.escape(release.ENGINE_CACHE) + r"/minilm-[0-9a-f]{16}", parameters["trt_engine_cache_path"]
    )
    assert release.release_problems(first.destination, "gpu") == []
    # New weights, new engine folder: ONNX Runtime would otherwise load the stale engine.
    import onnx
    from onnx import numpy_helper

    model = writable_model_repo / "minilm" / "1" / "model.onnx"
    graph = onnx.load(str(model))
    weights = graph.graph.initializer[0]
    weights.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weights) * 1.001, weights.name))
    onnx.save(graph, str(model))
    second = release.export(writable_model_repo, tmp_path / "b", "gpu")
    assert cache_path(second.destination)["trt_engine_cache_path"] != parameters["trt_engine_cache_path"]


# ---- the promotion path of docs/deploy.md, through the service's start-up code --------------------


def _canary_settings(tmp_path: Path, repository: Path, split: dict[int, int] | None):
    """The canary overlay's service.yaml (deploy/k8s/overlays/canary) with minilm's split set to
    ``split`` (None: no split), read by the service's own reader, repository pointed at ``repository``."""
    import yaml

    from serving.settings import read_settings

    source = Path(release.__file__).resolve().parent / "k8s" / "overlays" / "canary" / "canary-service.yaml"
    data = yaml.safe_load(source.read_text())
    minilm = next(m for m in data["models"] if m["name"] == "minilm")
    if split is None:
        minilm.pop("versions")
    else:
        minilm["versions"] = split
    path = tmp_path / "service.yaml"
    path.write_text(yaml.safe_dump(data))
    return read_settings(path, environ={"MODELPACK_REPOSITORY": str(repository)})


def _bento_view(out: Path, folder: Path) -> Path:
    """What the Bento's init container leaves: the release without the model files only Triton loads."""
    shutil.copytree(out, folder, ignore=shutil.ignore_patterns("*.onnx", "*.plan"))
    return folder


def test_promotion_path_starts_the_service_at_every_step(writable_model_repo, tmp_path):
    """Release R2 (versions 1 and 2) with the split held on 1, the canary split, promotion, then release
    R3 that serves version 2 alone while the split still names version 1 with weight 0, then the split
    dropped; and the rollback. At each step the Bento's start-up (serving.models.load_models) loads
    the release that step leaves, and routes as the step says."""
    import json

    from core.repository import Repository
    from serving.models import load_models

    repo = Repository(writable_model_repo)
    entry = writable_model_repo / "minilm"
    shutil.copytree(entry / "1", entry / "2")
    manifest = json.loads((entry / "2" / "manifest.json").read_text())
    (entry / "2" / "manifest.json").write_text(json.dumps({**manifest, "version": 2}))
    repo.set_version_policy("minilm", [1, 2])
    r2 = release.export(writable_model_repo, tmp_path / "r2", "cpu")
    repo.set_version_policy("minilm", [2])
    r3 = release.export(writable_model_repo, tmp_path / "r3", "cpu")
    assert r2.digest != r3.digest

    steps = [
        ("R2, split held on version 1", r2, {1: 100, 2: 0}, {1: 100.0}),
        ("R2, canary", r2, {1: 90, 2: 10}, {1: 90.0, 2: 10.0}),
        ("R2, promoted", r2, {1: 0, 2: 100}, {2: 100.0}),
        ("R3 without version 1, split unchanged", r3, {1: 0, 2: 100}, {2: 100.0}),
        ("R3, split dropped", r3, None, {2: 1.0}),
        ("rollback: R2, split back on version 1", r2, {1: 100, 2: 0}, {1: 100.0}),
    ]
    for index, (step, out, split, routed) in enumerate(steps):
        folder = tmp_path / f"step-{index}"
        folder.mkdir()
        view = _bento_view(out.destination, folder / "models")
        models = load_models(_canary_settings(folder, view, split))
        assert models["minilm"].split == routed, step
        served = {1, 2} if out is r2 else {2}
        assert set(models["minilm"].versions) == served, step  # pinnable: every served version


def test_the_split_still_names_what_must_be_served(writable_model_repo, tmp_path):
    """A version with weight > 0 that the release does not serve stops the service, naming it."""
    from core.errors import NotFound
    from serving.models import load_models

    out = release.export(writable_model_repo, tmp_path / "r1", "cpu")
    view = _bento_view(out.destination, tmp_path / "models")
    with pytest.raises(NotFound, match=r"versions \[2\] of the split are not served \(served: \[1\]\)"):
        load_models(_canary_settings(tmp_path, view, {1: 50, 2: 50}))
    assert load_models(_canary_settings(tmp_path, view, {1: 100, 2: 0}))["minilm"].split == {1: 100.0}
