"""The parts of "any model in" that need no server: the Open Inference Protocol parser, entity grouping,
the center crop against Hugging Face's, the --input flag, and configs for [batch]-only and BOOL
tensors parsed back through Triton's protobuf."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.errors import InvalidArgument, PayloadTooLarge
from core.tasks import INFER_ROUTES, TASK_SPECS, TensorSpec
from core.triton_config import build_config, parse_text, to_text
from serving.preprocess import center_crop
from serving.protocol import infer_response, parse_infer_request
from serving.tasks import token_entities

INPUTS = [
    TensorSpec("ids", "INT64", (-1, -1)),
    TensorSpec("mask", "BOOL", (-1, -1)),
    TensorSpec("x", "FP16", (-1, 2)),
]
OUTPUTS = [TensorSpec("y", "FP32", (-1, 3)), TensorSpec("n", "INT32", (-1,))]


def request(inputs, **extra) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


GOOD = [
    {"name": "ids", "shape": [2, 3], "datatype": "INT64", "data": [1, 2, 3, 4, 5, 6]},
    {"name": "mask", "shape": [2, 3], "datatype": "BOOL", "data": [[True, False, True], [True, True, True]]},
    {"name": "x", "shape": [2, 2], "datatype": "FP16", "data": [0.5, 1, -2, 3.25]},
]


def test_open_inference_protocol_request_flat_or_nested():
    parsed = parse_infer_request(request(GOOD, id="r1"), "m", INPUTS, OUTPUTS, max_rows=64)
    assert parsed.id == "r1" and parsed.outputs == ("y", "n")
    assert parsed.inputs["ids"].dtype == np.int64 and parsed.inputs["ids"].tolist() == [[1, 2, 3], [4, 5, 6]]
    assert parsed.inputs["mask"].dtype == np.bool_ and parsed.inputs["mask"][0].tolist() == [
        True,
        False,
        True,
    ]
    assert parsed.inputs["x"].dtype == np.float16 and parsed.inputs["x"][1, 1] == np.float16(3.25)
    picked = parse_infer_request(
        request(GOOD, outputs=[{"name": "n"}, {"name": "n"}]), "m", INPUTS, OUTPUTS, 64
    )
    assert picked.outputs == ("n",)


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"name": "idz"}, "inputs[0].name", ["'idz' is not an input of m", "ids, mask, x"]),
        ({"datatype": "INT32"}, "inputs[0].datatype", ["(ids)", "'INT32'", "INT64"]),
        ({"shape": [2, 3, 1]}, "inputs[0]", ["(ids)", "shape [2, 3, 1]", "[batch, -1]"]),
        ({"shape": [0, 3]}, "inputs[0]", ["empty axis"]),
        ({"shape": "2x3"}, "inputs[0].shape", ["list of integers"]),
        ({"data": [1, 2, 3]}, "inputs[0]", ["3 values do not fill shape [2, 3]"]),
        ({"data": [1, 2, 3, 4, 5, 2**63]}, "inputs[0]", ["INT64 data must be integers"]),
        ({"data": [[1, 2, 3], [4, 5]]}, "inputs[0]", ["not a rectangular array"]),
        ({"data": [True] * 6}, "inputs[0]", ["INT64 data must be integers", "true/false"]),
        ({"color": "red"}, "inputs[0]", ["unknown keys ['color']"]),
    ],
)
def test_open_inference_protocol_refusals(change, field, words):
    inputs = [{**GOOD[0], **change}, *GOOD[1:]]
    with pytest.raises(InvalidArgument) as caught:
        parse_infer_request(request(inputs), "m", INPUTS, OUTPUTS, max_rows=64)
    assert caught.value.field == field, str(caught.value)
    for word in words:
        assert word in str(caught.value)


def test_open_inference_protocol_row_limit_and_response():
    with pytest.raises(PayloadTooLarge, match="limits.max_items"):
        parse_infer_request(request(GOOD), "m", INPUTS, OUTPUTS, max_rows=1)
    body = infer_response("m", 3, None, {"n": np.array([1, 2], dtype=np.int32)}, OUTPUTS)
    assert body["model_version"] == "3" and "id" not in body
    assert body["outputs"][0]["datatype"] == "INT32" and body["outputs"][0]["shape"] == [2]


def test_every_task_has_a_route_and_the_protocol_routes_take_any():
    assert INFER_ROUTES == ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer")
    assert {spec.input_kind for spec in TASK_SPECS.values()} == {"text", "image", "features", "tensors"}
    assert TASK_SPECS["token-classification"].input_kind == "text"


class _Encoding:
    """What token_entities reads of a tokenizers Encoding."""

    def __init__(self, offsets, special):
        self.offsets, self.special_tokens_mask, self.ids = offsets, special, list(range(len(offsets)))


def test_entities_merge_b_i_tags_like_the_simple_aggregation():
    labels = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
    text = "Ada Lovelace in London Paris"
    #          [CLS]    Ada      Love     lace      in       London    Paris     [SEP]
    offsets = [(0, 0), (0, 3), (4, 8), (8, 12), (13, 15), (16, 22), (23, 28), (0, 0)]
    tags = [0, 1, 2, 2, 0, 3, 3, 0]  # B-LOC twice: two entities, not one
    logits = np.full((8, 5), -4.0, dtype=np.float32)
    logits[np.arange(8), tags] = 4.0
    logits[2, 2] = 1.0  # a less certain token lowers its group's mean score
    found = token_entities(text, _Encoding(offsets, [1, 0, 0, 0, 0, 0, 0, 1]), logits, labels)
    assert [(e["label"], e["text"], e["start"], e["end"]) for e in found] == [
        ("PER", "Ada Lovelace", 0, 12),
        ("LOC", "London", 16, 22),
        ("LOC", "Paris", 23, 28),
    ]
    scores = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert found[0]["score"] == pytest.approx(np.mean([scores[1, 1], scores[2, 2], scores[3, 2]]), rel=1e-6)


def test_center_crop_equals_hugging_faces():
    from transformers.image_transforms import center_crop as hf_center_crop
    from transformers.image_utils import ChannelDimension

    rng = np.random.default_rng(0)
    for (height, width), (crop_h, crop_w) in [
        ((40, 50), (32, 32)),
        ((31, 57), (31, 31)),
        ((20, 24), (32, 30)),
    ]:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        expected = hf_center_crop(image, (crop_h, crop_w), input_data_format=ChannelDimension.LAST)
        np.testing.assert_array_equal(center_crop(image, crop_h, crop_w), expected)


def test_input_flag_forms():
    from converters.signatures import parse_input_flag

    flag = parse_input_flag("input_ids:int64:-1:0..30521")
    assert (flag.name, flag.datatype, flag.dims, flag.low, flag.high) == (
        "input_ids",
        "INT64",
        (-1,),
        0,
        30521,
    )
    assert parse_input_flag("image:FP16:3,32,32").dims == (3, 32, 32)
    assert parse_input_flag("flag:bool:").dims == ()
    with pytest.raises(InvalidArgument, match="not a comma-separated list"):
        parse_input_flag("x:float32:3,0")


def test_batch_only_and_bool_tensors_in_the_config():
    config = build_config(
        "m",
        [TensorSpec("flag", "BOOL", (-1,)), TensorSpec("x", "FP32", (-1, 4))],
        [TensorSpec("n", "INT32", (-1,))],
    )
    assert parse_text(to_text(config)) == config
    flag, n = config.input[0], config.output[0]
    assert list(flag.dims) == [1] and flag.HasField("reshape") and list(flag.reshape.shape) == []
    assert list(n.dims) == [1] and n.HasField("reshape")
    assert not config.input[1].HasField("reshape") and list(config.input[1].dims) == [4]
