"""The config audit: every config the converters write, for every task of the registry and the text
entries' companions, against the rules NVIDIA's native backends apply when they load a model
(``deploy.release.RULES``, listed in docs/repository.md). Each rule is broken once on purpose and must
be named; the local server refuses what the native backend refuses (ragged token inputs), and serves
a ragged input the native way (flattened, with a batch input saying where each request's values are)."""

from __future__ import annotations

import concurrent.futures
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from core.repository import Repository
from core.tasks import TASK_SPECS
from core.triton_config import read_config, write_config
from deploy import release

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_text_model(minilm_path, tmp_path_factory) -> Path:
    """A small random DistilBERT (2 layers, 64 wide) with MiniLM's tokenizer saved beside it."""
    import torch
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    folder = tmp_path_factory.mktemp("tiny") / "distilbert"
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path))
    config = DistilBertConfig(
        vocab_size=tokenizer.vocab_size,
        dim=64,
        n_layers=2,
        n_heads=2,
        hidden_dim=128,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    DistilBertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def audited_repo(tiny_text_model, lightning_ckpt, tmp_path_factory) -> Path:
    """One entry per task of the registry, each written by the real converters."""
    from converters.hf2onnx import convert_hf
    from converters.lightning2onnx import convert_lightning

    repo = tmp_path_factory.mktemp("audit") / "repository"
    for task, spec in TASK_SPECS.items():
        name = task.replace("-", "_")
        if spec.input_kind == "text":
            convert_hf(tiny_text_model, name, task=task, repository=repo)
        else:
            convert_lightning(
                lightning_ckpt, "converters.examples.image_classifier:ImageClassifier", name, repository=repo
            )
    return repo


def test_every_tasks_config_and_the_companions_pass_the_native_rules(audited_repo):
    repo = Repository(audited_repo)
    expected = set()
    for task, spec in TASK_SPECS.items():
        name = task.replace("-", "_")
        expected.add(name)
        if spec.input_kind == "text":
            expected |= {f"{name}_tokenizer", f"{name}_text"}
    assert set(repo.models()) == expected
    assert release.release_problems(audited_repo, "cpu") == []


@pytest.mark.triton
def test_every_model_of_the_audited_repository_loads_and_is_ready(audited_repo, tmp_path):
    from local_triton.server import TritonServer

    repo = Repository(audited_repo)
    with TritonServer(audited_repo, log_path=tmp_path / "triton.log", die_with_parent=True) as server:
        with server.client() as client:
            states = {m["name"]: m.get("state") for m in client.get_model_repository_index()}
    assert states == {name: "READY" for name in repo.models()}


def test_the_rules_are_the_ones_docs_list():
    """docs/repository.md holds one table row per rule, named as the audit names it."""
    text = (ROOT / "docs" / "repository.md").read_text(encoding="utf-8")
    section = text.split("## What NVIDIA's Triton image accepts", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([a-z-]+)` \|", section, flags=re.MULTILINE)
    assert listed == list(release.RULES)


def _edit(root: Path, name: str, change) -> None:
    """Change a config on disk as a hand would (not through the repository, which keeps rules)."""
    config = read_config(root / name / "config.pbtxt")
    change(config)
    write_config(root / name / "config.pbtxt", config)


def _ragged(config: mc.ModelConfig) -> None:
    for tensor in config.input:
        tensor.allow_ragged_batch = True


def _ensemble_step(config: mc.ModelConfig) -> None:
    config.ensemble_scheduling.step[1].model_name = "nope"


def _ensemble_warmup(config: mc.ModelConfig) -> None:
    warmup = config.model_warmup.add(name="x", batch_size=1)
    warmup.inputs["text"].data_type = mc.TYPE_STRING
    warmup.inputs["text"].dims.append(1)
    warmup.inputs["text"].zero_data = True


# rule -> (model to break, how, words of the problem)
BREAKS = {
    "kind": (
        "image_classification",
        lambda c: setattr(c, "platform", "pytorch_libtorch"),
        "pytorch_libtorch",
    ),
    "graph-inputs": ("feature_extraction", lambda c: c.input.pop(), "declares 1 inputs"),
    "ragged": ("feature_extraction", _ragged, "has allow_ragged_batch but the graph takes it as [-1, -1]"),
    "dims": ("image_classification", lambda c: c.input[0].dims.__setitem__(1, 16), "[-1, 3, 16, 32]"),
    "graph-outputs": ("image_classification", lambda c: setattr(c.output[0], "name", "scores"), "scores"),
    "batching": (
        "feature_extraction",
        lambda c: c.dynamic_batching.preferred_batch_size.append(128),
        "[128] above max_batch_size",
    ),
    "warmup": ("feature_extraction_text", _ensemble_warmup, "an ensemble takes no model_warmup"),
    "ensemble": ("feature_extraction_text", _ensemble_step, "step model nope is not in the repository"),
    "files": ("image_classification", lambda c: c.version_policy.specific.versions.append(9), "serves none"),
    "companions": (
        "feature_extraction_tokenizer",
        lambda c: c.version_policy.all.SetInParent(),
        "do not mirror feature_extraction's",
    ),
    "instances": (
        "image_classification",
        lambda c: setattr(c.instance_group[0], "kind", mc.ModelInstanceGroup.KIND_GPU),
        "KIND_GPU on cpu",
    ),
}


def test_every_rule_has_a_break():
    assert set(BREAKS) == set(release.RULES)


@pytest.mark.parametrize("rule", list(BREAKS))
def test_a_broken_rule_is_named(audited_repo, tmp_path, rule):
    root = tmp_path / "repository"
    shutil.copytree(audited_repo, root)
    model, change, words = BREAKS[rule]
    _edit(root, model, change)
    problems = release.release_problems(root, "cpu")
    mine = [p for p in problems if p.startswith(f"{rule}: ")]
    assert mine, problems
    assert any(words in p for p in mine), mine


@pytest.mark.triton
def test_the_local_server_refuses_ragged_token_inputs_as_the_native_backend_does(model_repo, tmp_path):
    """The config the converters used to write (token inputs with allow_ragged_batch): NVIDIA's native
    backend refuses it, and so does the local one, with the native backend's words."""
    from core.errors import Unavailable
    from local_triton.server import TritonServer

    root = tmp_path / "repository"
    shutil.copytree(model_repo / "minilm", root / "minilm")
    _edit(root, "minilm", _ragged)
    with pytest.raises(Unavailable, match=r"model 'minilm' version 1 failed to load: .*ragged input"):
        TritonServer(root, log_path=tmp_path / "triton.log", models=["minilm"], die_with_parent=True).start(
            timeout=120
        )


def _ragged_model(folder: Path) -> None:
    """x: FP32 [-1] (a ragged input, flattened), idx: FP32 [-1] (its batch input, the accumulated
    element count per request); output ends = idx as [n, 1], one row per request."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node(
                "Constant", [], ["axes"], value=helper.make_tensor("a", TensorProto.INT64, [1], [1])
            ),
            helper.make_node("Unsqueeze", ["idx", "axes"], ["ends"]),
        ],
        "ragged",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["total"]),
            helper.make_tensor_value_info("idx", TensorProto.FLOAT, ["requests"]),
        ],
        [helper.make_tensor_value_info("ends", TensorProto.FLOAT, ["requests", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (folder / "1").mkdir(parents=True)
    onnx.save(model, str(folder / "1" / "model.onnx"))
    config = mc.ModelConfig(name="ragged", platform="onnxruntime_onnx", max_batch_size=8)
    config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[-1], allow_ragged_batch=True)
    config.batch_input.add(
        kind=mc.BatchInput.BATCH_ACCUMULATED_ELEMENT_COUNT,
        target_name=["idx"],
        data_type=mc.TYPE_FP32,
        source_input=["x"],
    )
    config.output.add(name="ends", data_type=mc.TYPE_FP32, dims=[1])
    config.dynamic_batching.max_queue_delay_microseconds = 2_000_000
    config.dynamic_batching.preferred_batch_size.append(3)
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    write_config(folder / "config.pbtxt", config)
    (folder / "1" / "manifest.json").write_text("{}")


@pytest.mark.triton
def test_a_ragged_input_reaches_the_model_flattened_with_its_batch_input(tmp_path):
    """Three requests of 2, 3 and 5 values, batched into one execution: the model gets one 1-D tensor of
    the 10 values and the accumulated counts, as NVIDIA's backend hands them; each request gets its
    own row back. The audit passes this config."""
    import tritonclient.grpc as grpcclient

    from local_triton.server import TritonServer
    from tests.integration.test_triton_inference import settled_counts

    root = tmp_path / "repository"
    _ragged_model(root / "ragged")
    assert [p for p in release.release_problems(root, "cpu") if not p.startswith("companions")] == []
    with TritonServer(root, log_path=tmp_path / "triton.log", die_with_parent=True) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)

        def send(length: int) -> float:
            tensor = grpcclient.InferInput("x", [1, length], "FP32")
            tensor.set_data_from_numpy(np.ones((1, length), dtype=np.float32))
            return float(client.infer("ragged", [tensor]).as_numpy("ends")[0, 0])

        with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
            ends = dict(zip((2, 3, 5), pool.map(send, (2, 3, 5)), strict=True))
        inferences, executions = settled_counts(client, "ragged", 3)
        client.close()
    assert (inferences, executions) == (3, 1)
    order = sorted(ends, key=ends.get)  # the order the batcher concatenated them in
    assert [ends[length] for length in order] == list(np.cumsum(order).astype(float))
    assert max(ends.values()) == 10.0
