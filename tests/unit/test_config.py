"""config.pbtxt through Triton's own protobuf: build, validate, write, parse back."""

from __future__ import annotations

import os
import stat

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from core.errors import InvalidArgument
from core.tasks import TASK_SPECS, with_static_dims
from core.triton_config import (
    build_config,
    read_config,
    set_accelerator,
    set_batching,
    to_text,
    write_config,
)


def _minilm_config(**kwargs) -> mc.ModelConfig:
    spec = TASK_SPECS["feature-extraction"]
    return build_config("minilm", spec.inputs, [with_static_dims(spec.outputs[0], {1: 384})], **kwargs)


def test_text_encoder_config_has_the_contract_fields():
    config = _minilm_config()
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 64
    # No allow_ragged_batch: NVIDIA's native backends would hand the model a flattened 1-D input.
    assert [(i.name, i.data_type, list(i.dims), i.allow_ragged_batch) for i in config.input] == [
        ("input_ids", mc.TYPE_INT64, [-1], False),
        ("attention_mask", mc.TYPE_INT64, [-1], False),
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("embeddings", mc.TYPE_FP32, [384])
    ]
    assert list(config.dynamic_batching.preferred_batch_size) == [16, 32]
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    assert [(g.kind, g.count) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 1)]
    assert config.version_policy.latest.num_versions == 1


def test_round_trip_through_the_file_is_identical(tmp_path):
    config = _minilm_config(
        max_batch_size=8,
        preferred_batch_sizes=[2, 8],
        max_queue_delay_us=500,
        instance_kind="gpu",
        instance_count=2,
        policy=[1, 3],
        parameters={"intra_op_thread_count": "2"},
        accelerator="tensorrt",
    )
    path = write_config(tmp_path / "config.pbtxt", config)
    back = read_config(path)
    assert back == config
    assert back.parameters["intra_op_thread_count"].string_value == "2"
    assert list(back.version_policy.specific.versions) == [1, 3]
    accelerator = back.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt" and dict(accelerator.parameters) == {"precision_mode": "FP16"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.pbtxt"]  # no temp file left


def test_written_config_is_readable_by_other_users(tmp_path):
    """A repository mounted read-only into the Triton (uid 1000) or Bento (uid 1034) container is read
    by another user than the one who wrote it: config.pbtxt must not keep mkstemp's 0600."""
    path = write_config(tmp_path / "config.pbtxt", _minilm_config())
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_set_accelerator_twice_keeps_one_entry():
    config = set_accelerator(set_accelerator(_minilm_config(), "tensorrt"), "tensorrt", "FP32")
    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert len(accelerators) == 1 and accelerators[0].parameters["precision_mode"] == "FP32"


def test_set_batching_changes_only_batching_and_instance_counts():
    before = _minilm_config(instance_count=1)
    config = mc.ModelConfig()
    config.CopyFrom(before)
    set_batching(config, preferred_batch_sizes=[4, 8], max_queue_delay_us=0, instance_count=3)
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    assert [g.count for g in config.instance_group] == [3]
    config.dynamic_batching.CopyFrom(before.dynamic_batching)
    config.instance_group[0].count = 1
    assert config == before


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"preferred_batch_sizes": [128]}, ["preferred_batch_size: 128 is larger than max_batch_size 64"]),
        ({"max_queue_delay_us": -1}, ["max_queue_delay_microseconds", "-1"]),
        ({"instance_count": 0}, ["instance_group.count", "got 0"]),
    ],
)
def test_set_batching_refuses_values_that_do_not_fit(kwargs, words):
    config = _minilm_config()
    before = to_text(config)
    settings = {"preferred_batch_sizes": [8], "max_queue_delay_us": 100, "instance_count": 1, **kwargs}
    with pytest.raises(InvalidArgument) as caught:
        set_batching(config, **settings)
    for word in words:
        assert word in str(caught.value)
    assert to_text(config) == before  # checked before anything is set


def test_default_preferred_sizes_are_capped_by_a_small_max_batch_size():
    assert list(_minilm_config(max_batch_size=16).dynamic_batching.preferred_batch_size) == [16]


@pytest.mark.parametrize(
    ("kwargs", "field", "words"),
    [
        ({"max_batch_size": 0}, "max_batch_size", "positive integer, got 0"),
        ({"preferred_batch_sizes": [128]}, "preferred_batch_size", "larger than max_batch_size 64"),
        ({"max_queue_delay_us": -1}, "max_queue_delay_microseconds", ">= 0, got -1"),
        ({"instance_kind": "tpu"}, "instance_group.kind", "'tpu'"),
        ({"instance_count": 0}, "instance_group.count", "got 0"),
        ({"policy": "newest"}, "version_policy", "'newest'"),
        ({"platform": "pytorch_libtorch"}, "platform", "'pytorch_libtorch'"),
        ({"accelerator": "openvino", "instance_kind": "gpu"}, "accelerator", "'openvino'"),
        ({"accelerator": "tensorrt"}, "accelerator", "needs GPU instances, but instance_group.kind is 'cpu'"),
    ],
)
def test_bad_values_name_the_field_and_the_value(kwargs, field, words):
    with pytest.raises(InvalidArgument) as caught:
        _minilm_config(**kwargs)
    assert caught.value.field == field
    assert words in str(caught.value)


def test_read_config_reports_the_path_of_a_broken_file(tmp_path):
    path = tmp_path / "config.pbtxt"
    path.write_text("name: 'x'\nmax_batch_size: [oops\n")
    with pytest.raises(InvalidArgument, match=str(path)):
        read_config(path)


def test_text_is_the_protobuf_text_format():
    text = to_text(_minilm_config())
    assert 'platform: "onnxruntime_onnx"' in text
    assert "allow_ragged_batch" not in text


def test_serving_options_put_an_accelerated_entry_on_gpu_instances():
    from core.triton_config import ServingOptions

    spec = TASK_SPECS["image-classification"]
    config = ServingOptions(accelerator="tensorrt").build("ic", spec.inputs, spec.outputs)
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert (
        ServingOptions().build("ic", spec.inputs, spec.outputs).instance_group[0].kind
        == mc.ModelInstanceGroup.KIND_CPU
    )
    with pytest.raises(InvalidArgument, match="pass --instance-kind gpu"):
        ServingOptions(accelerator="tensorrt", instance_kind="cpu").check()


def test_warmup_samples_are_written_with_the_inputs_types_and_checked_against_the_config(tmp_path):
    from core.triton_config import WarmupSample, set_warmup

    config = _minilm_config()
    set_warmup(config, [WarmupSample(1, {"input_ids": (16,), "attention_mask": (16,)})])
    set_warmup(config, [WarmupSample(32, {"input_ids": (256,), "attention_mask": (256,)})])  # replaces
    assert len(config.model_warmup) == 1
    warmup = config.model_warmup[0]
    assert warmup.batch_size == 32 and warmup.name == "batch 32: input_ids [256], attention_mask [256]"
    assert {k: (v.data_type, list(v.dims), v.zero_data) for k, v in warmup.inputs.items()} == {
        "input_ids": (mc.TYPE_INT64, [256], True),
        "attention_mask": (mc.TYPE_INT64, [256], True),
    }
    assert read_config(write_config(tmp_path / "config.pbtxt", config)) == config


@pytest.mark.parametrize(
    ("sample", "words"),
    [
        ({"batch_size": 65, "dims": {"input_ids": (16,), "attention_mask": (16,)}}, "not within 1..max"),
        ({"batch_size": 1, "dims": {"input_ids": (16,)}}, "differ from the config's inputs"),
        ({"batch_size": 1, "dims": {"input_ids": (16, 2), "attention_mask": (16,)}}, "do not fit"),
        ({"batch_size": 1, "dims": {"input_ids": (0,), "attention_mask": (16,)}}, "do not fit"),
    ],
)
def test_warmup_samples_that_do_not_fit_the_config_are_refused(sample, words):
    from core.triton_config import WarmupSample, set_warmup

    with pytest.raises(InvalidArgument, match="model_warmup") as caught:
        set_warmup(_minilm_config(), [WarmupSample(**sample)])
    assert words in str(caught.value)


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def test_a_new_config_gets_the_mode_every_other_file_gets(tmp_path):
    """atomic_write's temporary file is created 0600 (mkstemp); the config it becomes must not be."""
    write_config(tmp_path / "config.pbtxt", _minilm_config())
    (tmp_path / "other.txt").write_text("x")
    assert stat.S_IMODE((tmp_path / "config.pbtxt").stat().st_mode) == _default_mode()
    assert stat.S_IMODE((tmp_path / "other.txt").stat().st_mode) == _default_mode()


def test_replacing_a_config_keeps_its_mode(tmp_path):
    path = write_config(tmp_path / "config.pbtxt", _minilm_config())
    path.chmod(0o640)
    write_config(path, _minilm_config(max_batch_size=8))
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert read_config(path).max_batch_size == 8
