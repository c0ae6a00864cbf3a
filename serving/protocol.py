"""Named tensors in JSON, checked against an entry's manifest: the Open Inference Protocol (KServe v2)
request and response of ``POST /v2/models/{name}[/versions/{version}]/infer``, and the plain
``{"name": nested list}`` form of ``POST /tensors``.

Every tensor is checked before Triton sees it: a name the entry does not take, a missing input, a
datatype other than the manifest's, a shape of the wrong rank or with a wrong fixed dim, data that does
not fill the shape or is not of the datatype (a float for INT64, a number for BOOL), inputs whose batch
sizes differ, more rows than ``limits.max_items``: each a 400 (413 for rows) naming the tensor.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from core.errors import InvalidArgument, PayloadTooLarge
from core.tasks import DATATYPES, TensorSpec

REQUEST_KEYS = {"id", "parameters", "inputs", "outputs"}
INPUT_KEYS = {"name", "shape", "datatype", "data", "parameters"}
OUTPUT_KEYS = {"name", "parameters"}
# The binary tensor extension (tensors after the JSON, sized by these parameters): not spoken here.
BINARY_PARAMETERS = ("binary_data", "binary_data_size", "binary_data_output")
# numpy kinds of the JSON values each datatype accepts: ints for INT*, numbers for FP*, true/false for BOOL.
_KINDS = {"FP32": "iuf", "FP16": "iuf", "INT64": "iu", "INT32": "iu", "BOOL": "b"}


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...]  # the outputs asked for: every output of the entry when none is listed


def _bad(message: str, field: str) -> InvalidArgument:
    return InvalidArgument(message, field=field)


def _check_keys(value: Any, allowed: set[str], where: str) -> dict:
    if not isinstance(value, dict):
        raise _bad(f"{where}: expected a JSON object, got {type(value).__name__}", where)
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise _bad(f"{where}: unknown keys {unknown}; allowed: {', '.join(sorted(allowed))}", where)
    parameters = value.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise _bad(f"{where}.parameters: expected a JSON object", f"{where}.parameters")
    binary = [key for key in BINARY_PARAMETERS if key in (parameters or {})]
    if binary:
        raise _bad(
            f"{where}.parameters: {binary[0]}: the binary tensor extension is not spoken here; send the "
            "tensor as JSON `data` (or call Triton's own endpoint for binary data)",
            f"{where}.parameters",
        )
    return value


def check_tensor(
    data: Any, shape: list[int] | None, spec: TensorSpec, where: str, model: str, max_rows: int
) -> np.ndarray:
    """JSON ``data`` (flat or nested, row-major) of ``shape`` (None: the nesting's) -> the array the
    entry takes for ``spec``; InvalidArgument naming ``where`` and the tensor otherwise."""
    label = f"{where} ({spec.name})"
    try:
        raw = np.asarray(data)
    except ValueError:
        raise _bad(
            f"{label}: the data is not a rectangular array (rows of different lengths)", where
        ) from None
    if raw.size and raw.dtype.kind not in _KINDS[spec.datatype]:
        wanted = {"iu": "integers", "iuf": "numbers", "b": "true/false values"}[_KINDS[spec.datatype]]
        got = {"f": "floats", "b": "true/false values", "U": "strings"}.get(raw.dtype.kind, "other values")
        raise _bad(f"{label}: {spec.datatype} data must be {wanted}; got {got}", where)
    if shape is None:
        shape = list(raw.shape)
    expected = [d for d in spec.shape]
    shown = (
        "["
        + ", ".join("batch" if i == 0 else ("-1" if d == -1 else str(d)) for i, d in enumerate(expected))
        + "]"
    )
    if len(shape) != len(expected) or any(e not in (-1, s) for e, s in zip(expected, shape, strict=True)):
        raise _bad(f"{label}: shape {shape}; {model} takes {shown} (-1: any size)", where)
    if shape[0] < 1 or any(s < 1 for s in shape):
        raise _bad(f"{label}: shape {shape} has an empty axis; send at least one row", where)
    if shape[0] > max_rows:
        raise PayloadTooLarge(
            f"{label}: {shape[0]} rows is over the limit of {max_rows} per request (limits.max_items); "
            "split them over several requests",
            field=where,
        )
    if raw.size != int(np.prod(shape)):
        raise _bad(
            f"{label}: {raw.size} values do not fill shape {shape} ({int(np.prod(shape))} values)", where
        )
    dtype = np.dtype(DATATYPES[spec.datatype])
    if dtype.kind == "i" and raw.size:
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise _bad(f"{label}: values out of the {spec.datatype} range", where)
    return np.ascontiguousarray(raw.astype(dtype, copy=False).reshape(shape))


def check_batch(arrays: dict[str, np.ndarray], where: str) -> None:
    rows = {name: array.shape[0] for name, array in arrays.items()}
    if len(set(rows.values())) > 1:
        raise _bad(
            f"{where}: the inputs have different batch sizes {rows}; send the same rows in each", where
        )


def parse_infer_request(
    body: bytes, model: str, inputs: list[TensorSpec], outputs: list[TensorSpec], max_rows: int
) -> InferRequest:
    """An Open Inference Protocol request body, checked against the entry's tensors."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise _bad(f"body: not valid JSON ({err}); send an inference request object", "body") from None
    data = _check_keys(data, REQUEST_KEYS, "body")
    request_id = data.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad("id: must be a string", "id")
    given = data.get("inputs")
    if not isinstance(given, list) or not given:
        raise _bad('inputs: send a non-empty list of {"name", "shape", "datatype", "data"} objects', "inputs")
    specs = {spec.name: spec for spec in inputs}
    arrays: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(given):
        where = f"inputs[{i}]"
        tensor = _check_keys(tensor, INPUT_KEYS, where)
        missing = [key for key in ("name", "shape", "datatype", "data") if key not in tensor]
        if missing:
            raise _bad(f"{where}: missing {', '.join(missing)}", where)
        name = tensor["name"]
        if name not in specs:
            raise _bad(
                f"{where}: {name!r} is not an input of {model} (its inputs: {', '.join(specs)})",
                f"{where}.name",
            )
        if name in arrays:
            raise _bad(f"{where}: input {name!r} is given twice", f"{where}.name")
        spec = specs[name]
        if tensor["datatype"] != spec.datatype:
            raise _bad(
                f"{where} ({name}): datatype {tensor['datatype']!r}; {model} takes {spec.datatype}",
                f"{where}.datatype",
            )
        shape = tensor["shape"]
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape
        ):
            raise _bad(f"{where} ({name}): shape must be a list of integers, got {shape!r}", f"{where}.shape")
        arrays[name] = check_tensor(tensor["data"], shape, spec, where, model, max_rows)
    absent = [name for name in specs if name not in arrays]
    if absent:
        raise _bad(f"inputs: {model} also needs {', '.join(repr(a) for a in absent)}", "inputs")
    check_batch(arrays, "inputs")
    names = [spec.name for spec in outputs]
    wanted = data.get("outputs")
    if wanted is None:
        return InferRequest(request_id, arrays, tuple(names))
    if not isinstance(wanted, list) or not wanted:
        raise _bad('outputs: send a non-empty list of {"name"} objects, or leave it out for all', "outputs")
    chosen = []
    for i, output in enumerate(wanted):
        output = _check_keys(output, OUTPUT_KEYS, f"outputs[{i}]")
        if output.get("name") not in names:
            raise _bad(
                f"outputs[{i}]: {output.get('name')!r} is not an output of {model} (its outputs: "
                f"{', '.join(names)})",
                f"outputs[{i}].name",
            )
        chosen.append(output["name"])
    return InferRequest(request_id, arrays, tuple(dict.fromkeys(chosen)))


def infer_response(
    model: str, version: int, request_id: str | None, outputs: dict[str, np.ndarray], specs: list[TensorSpec]
) -> dict:
    """The Open Inference Protocol response: each output flattened, row-major, with its shape."""
    datatypes = {spec.name: spec.datatype for spec in specs}
    body: dict = {"model_name": model, "model_version": str(version)}
    if request_id is not None:
        body["id"] = request_id
    body["outputs"] = [
        {
            "name": name,
            "shape": list(array.shape),
            "datatype": datatypes[name],
            "data": np.ascontiguousarray(array).reshape(-1),
        }
        for name, array in outputs.items()
    ]
    return body
