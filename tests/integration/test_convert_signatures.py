"""Lightning modules of any signature: each input form (a tensor, a tuple, a dict; INT64, INT32, FP16,
BOOL inputs; an extra dynamic axis), each output form (a tensor, a tuple, a dict), the task the
signature fits, and the refusals, each one line naming the flag."""

from __future__ import annotations

import json

import numpy as np
import pytest

from converters.cli import main
from converters.runtime import ort_session, run
from core.triton_config import read_config

SIGNATURE_MODULES = "tests.signature_modules"


def manifest_of(repo, name: str, version: int = 1) -> dict:
    return json.loads((repo / name / str(version) / "manifest.json").read_text())


def module(ckpt, name: str):
    """The LightningModule ``name`` loaded from its checkpoint, as PyTorch runs it."""
    import tests.signature_modules as modules

    return (
        getattr(modules, name).load_from_checkpoint(str(ckpt), map_location="cpu", weights_only=True).eval()
    )


def torch_run(net, *args, **kwargs):
    import torch

    with torch.no_grad():
        return net(
            *[torch.from_numpy(a) for a in args], **{k: torch.from_numpy(v) for k, v in kwargs.items()}
        )


def test_a_tensor_example_with_labels_is_a_classification_entry(any_model_repo, signature_ckpts):
    manifest = manifest_of(any_model_repo, "tabular")
    assert manifest["task"] == "classification"
    assert manifest["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 12]}]
    assert manifest["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}]
    assert manifest["labels"] == ["low", "mid", "high"] and manifest["preprocessing"] == {"features": 12}
    assert [o["name"] for o in manifest["parity"]["outputs"]] == ["logits[batch=1]", "logits[batch=4]"]
    x = np.random.default_rng(3).standard_normal((7, 12)).astype(np.float32)
    got = run(ort_session(any_model_repo / "tabular" / "1" / "model.onnx"), {"input": x})["logits"]
    np.testing.assert_allclose(
        got,
        torch_run(module(signature_ckpts["TabularClassifier"], "TabularClassifier"), x).numpy(),
        atol=1e-5,
    )


def test_a_tuple_example_with_an_int64_input_and_a_dynamic_axis(any_model_repo, signature_ckpts):
    """Positional inputs named after forward's parameters; --input ids:int64:-1 makes the sequence axis
    dynamic (parity at two sizes of it); a tuple of outputs named by --output-names."""
    manifest = manifest_of(any_model_repo, "tuplenet")
    assert manifest["task"] == "tensor"
    assert manifest["inputs"] == [
        {"name": "dense", "datatype": "FP32", "shape": [-1, 6]},
        {"name": "ids", "datatype": "INT64", "shape": [-1, -1]},
    ]
    assert manifest["outputs"] == [
        {"name": "score", "datatype": "FP32", "shape": [-1, 2]},
        {"name": "states", "datatype": "FP32", "shape": [-1, -1, 4]},
    ]
    signature = manifest["signature"]
    ids = next(d for d in signature["inputs"] if d["name"] == "ids")
    assert (ids["low"], ids["high"], ids["dims"], ids["sample"]) == (0, 49, [-1], [9])  # the example's range
    names = [o["name"] for o in manifest["parity"]["outputs"]]
    assert names == [
        "score[batch=1]",
        "states[batch=1]",
        "score[batch=4, dynamic axes x2]",
        "states[batch=4, dynamic axes x2]",
    ]
    assert "sample dims" in manifest["parity"]["cases"][0] and manifest["parity"]["passed"]
    # A third sequence length and batch, neither of which parity used, still equals PyTorch.
    rng = np.random.default_rng(5)
    dense = rng.standard_normal((3, 6)).astype(np.float32)
    token_ids = rng.integers(0, 50, size=(3, 23)).astype(np.int64)
    got = run(
        ort_session(any_model_repo / "tuplenet" / "1" / "model.onnx"), {"dense": dense, "ids": token_ids}
    )
    score, states = torch_run(module(signature_ckpts["TupleNet"], "TupleNet"), dense, token_ids)
    assert got["states"].shape == (3, 23, 4)
    np.testing.assert_allclose(got["score"], score.numpy(), atol=1e-5)
    np.testing.assert_allclose(got["states"], states.numpy(), atol=1e-5)


def test_a_dict_example_with_fp16_int32_bool_inputs_and_dict_outputs(any_model_repo, signature_ckpts):
    manifest = manifest_of(any_model_repo, "dictnet")
    assert manifest["task"] == "tensor"
    assert manifest["inputs"] == [
        {"name": "features", "datatype": "FP16", "shape": [-1, 5]},
        {"name": "ids", "datatype": "INT32", "shape": [-1, 7]},
        {"name": "mask", "datatype": "BOOL", "shape": [-1, 7]},
    ]
    assert manifest["outputs"] == [
        {"name": "logits", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "count", "datatype": "INT32", "shape": [-1]},
        {"name": "kept", "datatype": "BOOL", "shape": [-1, 7]},
        {"name": "half", "datatype": "FP16", "shape": [-1, 3]},
    ]
    assert {d["name"]: d["param"] for d in manifest["signature"]["inputs"]} == {
        "features": "features",
        "ids": "ids",
        "mask": "mask",
    }  # keyword arguments, whatever forward's order
    config = read_config(any_model_repo / "dictnet" / "config.pbtxt")
    from tritonclient.grpc import model_config_pb2 as mc

    types = {t.name: mc.DataType.Name(t.data_type) for t in (*config.input, *config.output)}
    assert types == {
        "features": "TYPE_FP16",
        "ids": "TYPE_INT32",
        "mask": "TYPE_BOOL",
        "logits": "TYPE_FP32",
        "count": "TYPE_INT32",
        "kept": "TYPE_BOOL",
        "half": "TYPE_FP16",
    }
    count = next(o for o in config.output if o.name == "count")  # [batch] alone: dims [1], reshaped to []
    assert list(count.dims) == [1] and count.HasField("reshape") and list(count.reshape.shape) == []
    rng = np.random.default_rng(9)
    feeds = {
        "features": rng.standard_normal((5, 5)).astype(np.float16),
        "ids": rng.integers(0, 20, size=(5, 7)).astype(np.int32),
        "mask": rng.integers(0, 2, size=(5, 7)).astype(bool),
    }
    got = run(ort_session(any_model_repo / "dictnet" / "1" / "model.onnx"), feeds)
    expected = torch_run(module(signature_ckpts["DictNet"], "DictNet"), **feeds)
    for name in ("count", "kept"):
        np.testing.assert_array_equal(got[name], expected[name].numpy())
    np.testing.assert_allclose(got["logits"], expected["logits"].numpy(), atol=1e-3)
    assert got["half"].dtype == np.float16 and got["kept"].dtype == np.bool_


def test_validate_reruns_the_recorded_signature(any_model_repo):
    from converters.validate import validate

    # The modules are this test suite's own (tests/signature_modules.py): trusted.
    for name in ("tabular", "tuplenet", "dictnet"):
        result = validate(name, repository=any_model_repo, trust_module=True)
        assert result.status == "ok" and result.outputs["passed"], name


def cli(*argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_inputs_declared_by_flags_only(signature_ckpts, tmp_path, capsys):
    """A module without example_input_array: --input declares every parameter of forward."""
    code, out, err = cli(
        "lightning",
        signature_ckpts["Undeclared"],
        "--module",
        f"{SIGNATURE_MODULES}:Undeclared",
        "--name",
        "undeclared",
        "--input",
        "x:float32:4",
        "--input",
        "scale:float32::0.5..2",
        "--repository",
        tmp_path / "repo",
        capsys=capsys,
    )
    assert code == 0, err
    manifest = manifest_of(tmp_path / "repo", "undeclared")
    assert manifest["task"] == "tensor"
    assert manifest["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "scale", "datatype": "FP32", "shape": [-1]},
    ]
    assert manifest["outputs"] == [{"name": "output_0", "datatype": "FP32", "shape": [-1, 2]}]
    scale = manifest["signature"]["inputs"][1]
    assert (scale["low"], scale["high"]) == (0.5, 2.0)


def test_an_input_forward_does_not_use_is_left_out_of_the_entry(signature_ckpts, tmp_path):
    """The exporter drops it from the graph, so the config and the manifest's inputs leave it out
    (Triton would refuse a config input the graph lacks); the signature keeps it for validate, which
    calls forward with it again."""
    from converters.lightning2onnx import convert_lightning
    from converters.validate import validate

    repo = tmp_path / "repo"
    result = convert_lightning(
        signature_ckpts["Unused"], f"{SIGNATURE_MODULES}:Unused", "unused", repository=repo
    )
    assert result.manifest["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
    assert [(d["name"], d["used"]) for d in result.manifest["signature"]["inputs"]] == [
        ("x", True),
        ("unused", False),
    ]
    assert [i.name for i in read_config(repo / "unused" / "config.pbtxt").input] == ["x"]
    assert validate("unused", repository=repo, trust_module=True).outputs["passed"]


def test_a_task_asked_for_is_used_when_the_signature_fits(signature_ckpts, tmp_path, capsys):
    code, out, err = cli(
        "lightning",
        signature_ckpts["TabularClassifier"],
        "--module",
        f"{SIGNATURE_MODULES}:TabularClassifier",
        "--name",
        "tab_tensor",
        "--task",
        "tensor",
        "--output-names",
        "scores",
        "--repository",
        tmp_path / "repo",
        capsys=capsys,
    )
    assert code == 0, err
    manifest = manifest_of(tmp_path / "repo", "tab_tensor")
    assert manifest["task"] == "tensor" and "labels" not in manifest
    assert manifest["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 12]}]  # forward's name
    assert manifest["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": [-1, 3]}]


REFUSALS = [
    # (module, extra argv, words in the one error line)
    (
        "TabularClassifier",
        ["--task", "image-classification"],
        ["--task image-classification", "takes [x FP32 [12]", "C,H,W"],
    ),
    ("TupleNet", ["--task", "classification"], ["--task classification", "one FP32 [batch, features] input"]),
    ("TabularClassifier", ["--task", "token-classification"], ["--task", "'token-classification'", "tensor"]),
    ("TabularClassifier", ["--labels", "a,b"], ["--labels: 2 names for 3 classes"]),
    ("TupleNet", ["--labels", "a,b"], ["--labels", "tensor entry has no labels"]),
    ("TabularClassifier", ["--labels", "a,,b"], ["--labels", "distinct, non-empty"]),
    ("TupleNet", ["--input", "ids:int32:-1"], ["--input ids", "dtype INT32 differs", "INT64"]),
    ("TupleNet", ["--input", "ids:int64:5"], ["--input ids", "dims [5] do not fit", "[9]"]),
    ("TupleNet", ["--input", "tokens:int64:-1"], ["--input tokens", "no input 'tokens'", "dense, ids"]),
    ("TupleNet", ["--input", "ids:int64"], ["--input", "NAME:DTYPE:DIMS"]),
    ("TupleNet", ["--input", "ids:float64:-1"], ["--input", "'float64'", "float32"]),
    ("TupleNet", ["--input", "ids:int64:-1:9..1"], ["--input", "LOW <= HIGH"]),
    ("TupleNet", ["--input-shape", "6"], ["--input-shape", "2 inputs", "--input NAME:DTYPE:DIMS"]),
    ("TupleNet", ["--output-names", "a"], ["--output-names: 1 names for 2 outputs"]),
    ("TabularClassifier", ["--output-names", "scores"], ["--output-names", "'logits'", "--task tensor"]),
    (
        "TabularClassifier",
        ["--input-shape", "12,1"],
        ["--input-shape", "has 2 dims", "has 1 after the batch axis"],
    ),
    ("Undeclared", [], ["no example_input_array", "--input NAME:DTYPE:DIMS"]),
    ("Undeclared", ["--input", "x:float32:4"], ["--input", "also needs scale"]),
    ("Undeclared", ["--input", "x:float32:4", "--input", "y:float32:4"], ["--input y", "no parameter 'y'"]),
    (
        "Undeclared",
        ["--input", "x:float32:5", "--input", "scale:float32:1"],
        ["--input", "rejects inputs", "x FP32 [5]"],
    ),
]


@pytest.mark.parametrize(
    ("name", "argv", "words"), REFUSALS, ids=[f"{n} {' '.join(a)}" for n, a, _ in REFUSALS]
)
def test_refusals_are_one_line_exit_2(name, argv, words, signature_ckpts, tmp_path, capsys):
    repo = tmp_path / "repo"
    code, out, err = cli(
        "lightning",
        signature_ckpts[name],
        "--module",
        f"{SIGNATURE_MODULES}:{name}",
        "--name",
        "m",
        *argv,
        "--repository",
        repo,
        capsys=capsys,
    )
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], lines[0]
    assert out == "" and not (repo / "m").exists()
