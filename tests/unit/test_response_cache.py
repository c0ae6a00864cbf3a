"""Caching without servers: the Bento cache's keys (what changes a version's digest, what an item's
digest covers), the rows sent to Triton on a partial hit, Triton's response cache flag in config.pbtxt
(written for deterministic graphs, refused for random ones: real ONNX graphs, found by the real
parser), and the local server's cache flags."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import pytest

from core.errors import InvalidArgument
from core.tasks import TASK_SPECS
from core.triton_config import ServingOptions, parse_text, set_response_cache, to_text
from serving.cache import item_digests, redacted, row_shape_of, take_rows, version_digest
from serving.models import VersionEntry
from serving.preprocess import ImagePipeline, TextPipeline
from serving.tasks import Features, Images, Tensors, Texts


@pytest.fixture(scope="module")
def tokenizer_dir(minilm_path) -> Path:
    return minilm_path


def _text_version(tokenizer_dir: Path, max_length: int = 128, **manifest) -> VersionEntry:
    manifest = {
        "task": "feature-extraction",
        "outputs": [{"name": "embeddings", "datatype": "FP32", "shape": [-1, 384]}],
        "created_at": "2026-12-01T00:00:00Z",
        **manifest,
    }
    entry = VersionEntry(1, manifest, ("input_ids", "attention_mask"), "embeddings", ())
    entry.text = TextPipeline(tokenizer_dir, max_length)
    return entry


def test_version_digest_changes_with_what_makes_the_tensors(tokenizer_dir):
    base = _text_version(tokenizer_dir)
    assert version_digest(base) == version_digest(_text_version(tokenizer_dir))  # stable
    others = [
        _text_version(tokenizer_dir, max_length=64),  # another truncation
        _text_version(tokenizer_dir, created_at="2026-12-02T00:00:00Z"),  # the version published again
        _text_version(tokenizer_dir, precision="int8"),  # another manifest
    ]
    assert len({version_digest(base), *(version_digest(o) for o in others)}) == 4
    image = VersionEntry(1, {"outputs": [{"shape": [-1, 10]}]}, ("input",), "logits", ())
    image.image = ImagePipeline(3, 32, 32, (0.5,) * 3, (0.25,) * 3, 1 / 255, 1 << 20)
    bigger = copy.copy(image)
    bigger.image = ImagePipeline(3, 64, 64, (0.5,) * 3, (0.25,) * 3, 1 / 255, 1 << 20)
    assert version_digest(image) != version_digest(bigger)


def test_a_version_without_a_fixed_row_shape_is_not_cached(tokenizer_dir):
    dynamic = _text_version(tokenizer_dir, outputs=[{"name": "embeddings", "shape": [-1, -1]}])
    assert row_shape_of(dynamic) is None and version_digest(dynamic) is None
    assert row_shape_of(_text_version(tokenizer_dir)) == (384,)


def test_texts_through_name_text_are_another_digest(tokenizer_dir):
    """With ``tokenize: triton`` the newest version's texts go to the ensemble NAME_text and are
    tokenized in Triton: its rows are kept apart from those of the token tensors sent to NAME."""
    import dataclasses

    direct = _text_version(tokenizer_dir)
    direct.triton_model, direct.triton_version = "minilm", 1
    via_text = dataclasses.replace(direct, triton_model="minilm_text", triton_version=1, via_text_model=True)
    assert version_digest(direct) != version_digest(via_text) is not None


def test_keys_follow_the_version_entry_the_request_was_routed_to(tokenizer_dir):
    """``ModelEntry.choose`` gives a fresh entry per request for NAME_text, and the live watcher a fresh
    one when a version is published again: the keys follow each, the digest is computed once per
    manifest and the table stays one row per (model, version, path)."""
    import dataclasses

    from serving.cache import ResponseCache
    from serving.observability import metrics
    from serving.settings import CacheSettings

    cache = ResponseCache(CacheSettings(enabled=True), metrics())
    texts = Texts.of(text="a")
    direct = _text_version(tokenizer_dir)
    key = cache.keys("minilm", direct, texts)[0]
    assert key.startswith("modelpack:r1:minilm:1:") and key == cache.keys("minilm", direct, texts)[0]
    routed = [dataclasses.replace(direct, triton_model="minilm_text", via_text_model=True) for _ in range(3)]
    via_keys = {cache.keys("minilm", v, texts)[0] for v in routed}
    assert len(via_keys) == 1 and key not in via_keys
    again = _text_version(tokenizer_dir, created_at="2026-12-02T00:00:00Z")  # published again
    assert cache.keys("minilm", again, texts)[0] not in {key, *via_keys}
    assert len(cache._digests) == 2
    assert cache.keys("minilm", direct, Tensors({"x": [[1.0]]})) is None


def test_outputs_other_than_one_fp32_row_are_not_cached(tokenizer_dir):
    fp16 = _text_version(
        tokenizer_dir, outputs=[{"name": "embeddings", "datatype": "FP16", "shape": [-1, 8]}]
    )
    renamed = _text_version(tokenizer_dir, outputs=[{"name": "other", "datatype": "FP32", "shape": [-1, 8]}])
    tokens = _text_version(
        tokenizer_dir, outputs=[{"name": "embeddings", "datatype": "FP32", "shape": [-1, -1, 9]}]
    )
    assert [row_shape_of(v) for v in (fp16, renamed, tokens)] == [None, None, None]


def test_feature_rows_are_items_and_named_tensors_are_not():
    rows = item_digests(Features.of([[1.0, 2.0], [1.0, 2.5], [1.0, 2.0]]))
    assert len(rows) == 3 and rows[0] == rows[2] != rows[1]
    assert item_digests(Features.one([1.0, 2.0])) == rows[:1]
    assert rows[0] not in item_digests(Images.one(None, [1.0, 2.0]))  # the kind is part of the item
    assert item_digests(Tensors({"x": [[1.0]]})) is None


def test_item_digests_follow_the_items_in_tensor_order():
    texts = Texts.of(query="a", candidates=["b", "a"])
    digests = item_digests(texts)
    assert len(digests) == 3 and digests[0] == digests[2] != digests[1]
    assert item_digests(Texts.of(text="a")) == digests[:1]  # the field name is not part of the key
    png = "iVBORw0KGgo="
    assert item_digests(Images.one(png, None)) == item_digests(
        Images.one(f"data:image/png;base64,{png}", None)
    )
    array = [[[1, 2, 3]]]
    assert item_digests(Images.one(None, array)) != item_digests(Images.one(None, [[[1, 2, 4]]]))
    assert item_digests(Images.one(None, array)) != item_digests(Texts.of(text=str(array)))


def test_take_rows_cuts_right_padding_to_the_longest_kept_row():
    ids = np.array([[1, 2, 3, 4, 5], [1, 2, 0, 0, 0], [1, 2, 3, 0, 0]])
    mask = (ids > 0).astype(np.int64)
    rows = take_rows({"input_ids": ids, "attention_mask": mask}, [1, 2])
    assert rows["input_ids"].tolist() == [[1, 2, 0], [1, 2, 3]]
    assert rows["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    left = np.array([[0, 0, 1], [0, 1, 1]])  # left padding: nothing is cut
    assert take_rows({"input_ids": left, "attention_mask": left}, [0])["input_ids"].tolist() == [[0, 0, 1]]
    images = np.zeros((3, 3, 4, 4), dtype=np.float32)
    assert take_rows({"input": images}, [2])["input"].shape == (1, 3, 4, 4)


def test_redis_url_password_stays_out_of_logs():
    assert redacted("redis://:s3cret@cache:6379/0") == "redis://:***@cache:6379/0"
    assert redacted("redis://cache:6379/0") == "redis://cache:6379/0"


# ---- Triton's response cache in config.pbtxt -------------------------------------------------------


def _config(options: ServingOptions, random_ops=()):
    spec = TASK_SPECS["feature-extraction"]
    return options.build("m", spec.inputs, spec.outputs, random_ops=random_ops)


def test_response_cache_is_on_for_deterministic_graphs_and_survives_the_text_format():
    config = _config(ServingOptions())
    assert config.response_cache.enable
    assert "response_cache {\n  enable: true\n}" in to_text(config)
    assert parse_text(to_text(config)) == config
    assert not _config(ServingOptions(), random_ops=["RandomNormalLike"]).HasField("response_cache")
    assert not _config(ServingOptions(response_cache=False)).HasField("response_cache")


def test_response_cache_on_is_refused_for_a_random_graph():
    with pytest.raises(
        InvalidArgument, match=r"random operators \(Bernoulli, RandomUniform\).*--response-cache off"
    ):
        _config(
            ServingOptions(response_cache=True), random_ops=["RandomUniform", "Bernoulli", "RandomUniform"]
        )
    config = _config(ServingOptions())
    set_response_cache(config, False)
    assert not config.HasField("response_cache")


def _onnx_file(path: Path, op: str, *, in_subgraph: bool = False, dropout_training: bool = False) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    if dropout_training:
        training = helper.make_tensor("training", TensorProto.BOOL, [], [True])
        nodes = [helper.make_node("Dropout", ["x", "", "training"], ["y"])]
        graph = helper.make_graph(nodes, "g", [x], [y], initializer=[training])
    elif in_subgraph:
        branch = helper.make_graph(
            [helper.make_node(op, ["x"], ["r"])],
            "branch",
            [],
            [helper.make_tensor_value_info("r", 1, [1, 4])],
        )
        identity = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["r2"])],
            "id",
            [],
            [helper.make_tensor_value_info("r2", 1, [1, 4])],
        )
        cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
        nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=identity)]
        graph = helper.make_graph(nodes, "g", [x], [y], initializer=[cond])
    else:
        graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_random_operators_are_found_in_the_graph_and_its_subgraphs(tmp_path):
    from converters.determinism import random_ops

    assert random_ops(_onnx_file(tmp_path / "relu.onnx", "Relu")) == []
    assert random_ops(_onnx_file(tmp_path / "noise.onnx", "RandomNormalLike")) == ["RandomNormalLike"]
    nested = _onnx_file(tmp_path / "nested.onnx", "RandomUniformLike", in_subgraph=True)
    assert random_ops(nested) == ["RandomUniformLike"]
    dropout = _onnx_file(tmp_path / "dropout.onnx", "Dropout", dropout_training=True)
    assert random_ops(dropout) == ["Dropout(training_mode)"]


def test_converter_and_configure_flags(tmp_path):
    from converters.commands.convert import serving_options
    from converters.commands.manage import register as register_manage
    from local_triton.cli import parse_size

    def options(value: str) -> ServingOptions:
        args = argparse.Namespace(
            max_batch_size=64,
            preferred_batch_size=None,
            max_queue_delay_us=2000,
            instance_kind=None,
            instance_count=1,
            intra_op_threads=None,
            accelerator=None,
            response_cache=value,
        )
        return serving_options(args)

    assert [options(v).response_cache for v in ("auto", "on", "off")] == [None, True, False]
    parser = argparse.ArgumentParser()
    register_manage(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["configure", "m", "--response-cache", "off"]).response_cache == "off"
    assert [parse_size(s) for s in ("64M", "64MiB", "512K", "1G", "1048576", "0")] == [
        64 << 20,
        64 << 20,
        512 << 10,
        1 << 30,
        1 << 20,
        0,
    ]
    for bad in ("-1", "lots", "12X"):
        with pytest.raises(argparse.ArgumentTypeError, match="is not a size"):
            parse_size(bad)


def test_local_server_passes_the_cache_flags_only_with_a_size(tmp_path):
    from local_triton.server import TritonServer

    plain = TritonServer(tmp_path)
    assert not any(a.startswith("--cache") for a in plain.command())
    cached = TritonServer(tmp_path, cache_size=1 << 20)
    args = cached.command()
    assert (
        f"--cache-directory={cached.install.caches}" in args and "--cache-config=local,size=1048576" in args
    )
    with pytest.raises(InvalidArgument, match="--cache-size: -5 is not a size"):
        TritonServer(tmp_path, cache_size=-5)
