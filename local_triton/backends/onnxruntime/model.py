"""ONNX Runtime as a Triton backend, written for Triton's python backend.

Triton runs this file (through the python backend and its stub) for every model whose config says
``platform: "onnxruntime_onnx"`` or ``backend: "onnxruntime"``, when the backend directory holds
``onnxruntime/model.py`` and no native ``libtriton_onnxruntime.so``. So the very repository that NVIDIA's
Triton image serves with its native ONNX Runtime backend also loads on a CPU-only machine without
Docker. What it honours from ``config.pbtxt``:

- ``input`` / ``output``: names and data types, checked against the ONNX graph when the model loads;
  only the outputs a request asks for are returned.
- ``max_batch_size``: > 0 means the first axis is the batch axis and Triton's dynamic batcher may hand
  several requests to one ``execute`` call; they run as one ONNX Runtime call.
- ``allow_ragged_batch`` on an input: requests whose sizes differ on that input's variable axes are
  batched together; each input is padded with zeros to the longest request (token ids and attention
  masks: padding is masked out), and outputs that share a padded axis are sliced back per request.
- ``parameters`` and ``optimization.graph.level``, as NVIDIA's native onnxruntime backend reads them:
  ``intra_op_thread_count``, ``inter_op_thread_count``, ``execution_mode``, ``enable_mem_arena``,
  ``enable_mem_pattern``; and any ``session.*`` key as an ONNX Runtime session config entry
  (``session.intra_op.allow_spinning`` defaults to "0": idle pool threads would take CPU from Triton).
- ``default_model_filename`` (default ``model.onnx``) inside the version folder being loaded.

A request that does not fit (an inconsistent shape, a type the model cannot take) fails alone with a
``TritonError`` naming the input and the fix; the model stays loaded and the other requests of the
batch are answered. This file runs in ``.venv-triton`` (numpy<2, onnxruntime), not in the project
venv: keep it self-contained.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import triton_python_backend_utils as pb_utils

# Triton config type -> numpy dtype, and ONNX Runtime's type strings -> Triton config type.
_NUMPY = {
    "TYPE_BOOL": np.bool_,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
}
_FROM_ORT = {
    "tensor(bool)": "TYPE_BOOL",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32",
    "tensor(uint64)": "TYPE_UINT64",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16",
    "tensor(float)": "TYPE_FP32",
    "tensor(double)": "TYPE_FP64",
}
# Options of NVIDIA's native onnxruntime backend that this backend honours too (config `parameters`).
_INT_PARAMETERS = ("intra_op_thread_count", "inter_op_thread_count")
_FLAG_PARAMETERS = {"enable_mem_arena": "enable_cpu_mem_arena", "enable_mem_pattern": "enable_mem_pattern"}
SPINNING = "session.intra_op.allow_spinning"
# optimization { graph { level } } as the native backend reads it: -1 basic, 1 extended, 2 none, 0 all.
_GRAPH_LEVELS = {-1: "ORT_ENABLE_BASIC", 0: "ORT_ENABLE_ALL", 1: "ORT_ENABLE_EXTENDED", 2: "ORT_DISABLE_ALL"}


def _check_numpy() -> None:
    """The stub of Triton 2.51 is built against an old pybind11 that misreads numpy 2 arrays."""
    major = int(np.__version__.split(".")[0])
    if major >= 2:
        raise pb_utils.TritonModelException(
            f"numpy {np.__version__} in {sys.prefix}: Triton's python backend stub needs numpy<2 "
            "(with numpy 2 it reads tensors wrongly). Recreate the venv with `make setup` "
            "(local_triton/backends/requirements.txt pins numpy 1.26.4)."
        )


def _parameter_error(model: str, key: str, raw: str, allowed: str, example: str) -> Exception:
    return pb_utils.TritonModelException(
        f"{model}: config parameter {key} = {raw!r} is not {allowed}; write e.g. "
        f'parameters {{ key: "{key}" value {{ string_value: "{example}" }} }}'
    )


def _session_options(model: str, config: dict, ort) -> tuple[object, dict]:
    """ONNX Runtime session options from the config, and what was set (for the load log line).

    ``intra_op_thread_count``/``inter_op_thread_count`` (0 = ONNX Runtime's default), ``execution_mode``
    (0 sequential, 1 parallel), ``enable_mem_arena``/``enable_mem_pattern`` (0/1), the graph
    optimisation ``level``, and any ``session.*`` key as an ONNX Runtime session config entry.
    ``session.intra_op.allow_spinning`` defaults to "0" here (ONNX Runtime's own default is "1").
    """
    parameters = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
    options = ort.SessionOptions()
    settings: dict[str, object] = {}
    for key in _INT_PARAMETERS:
        raw = parameters.get(key, "0")
        if not raw.strip().isdigit():
            raise _parameter_error(model, key, raw, "a whole number >= 0 (0 = ONNX Runtime default)", "2")
        settings[key] = int(raw)
    options.intra_op_num_threads = settings["intra_op_thread_count"]
    options.inter_op_num_threads = settings["inter_op_thread_count"]
    if "execution_mode" in parameters:
        raw = parameters["execution_mode"]
        if raw not in ("0", "1"):
            raise _parameter_error(model, "execution_mode", raw, "0 (sequential) or 1 (parallel)", "0")
        options.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL if raw == "1" else ort.ExecutionMode.ORT_SEQUENTIAL
        )
        settings["execution_mode"] = int(raw)
    for key, attribute in _FLAG_PARAMETERS.items():
        if key in parameters:
            raw = parameters[key]
            if raw not in ("0", "1"):
                raise _parameter_error(model, key, raw, "0 or 1", "1")
            setattr(options, attribute, raw == "1")
            settings[key] = int(raw)
    level = int(config.get("optimization", {}).get("graph", {}).get("level", 0))
    if level not in _GRAPH_LEVELS:
        raise pb_utils.TritonModelException(
            f"{model}: optimization.graph.level = {level} is not one of -1 (basic), 1 (extended), "
            "2 (disabled) or 0 (all, the default)"
        )
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _GRAPH_LEVELS[level])
    settings["graph_level"] = _GRAPH_LEVELS[level]
    # On CPU the pool's threads share the cores with Triton's own request path (gRPC/HTTP threads, the
    # batcher, the stub's IPC): spinning idle pool threads take CPU from it and, measured here under
    # load, halve Triton's throughput. So this backend does not spin unless the config says so.
    session_entries = {SPINNING: "0", **{k: v for k, v in parameters.items() if k.startswith("session.")}}
    for key, raw in sorted(session_entries.items()):
        try:
            options.add_session_config_entry(key, raw)
        except Exception as err:  # ORT rejects some keys/values with its own error type
            raise pb_utils.TritonModelException(f"{model}: config parameter {key} = {raw!r}: {err}") from err
        settings[key] = raw
    return options, settings


class _Tensor:
    """One input or output of the config, with the ONNX graph's view of its axes."""

    def __init__(self, entry: dict, onnx_shape: list, batched: bool) -> None:
        self.name = entry["name"]
        self.config_type = entry["data_type"]
        self.dtype = _NUMPY.get(self.config_type)
        self.dims = [int(d) for d in entry.get("dims", [])]
        if entry.get("reshape") is not None:  # the model's own shape (Triton reshapes requests to it)
            self.dims = [int(d) for d in entry["reshape"].get("shape", [])]
        self.ragged = bool(entry.get("allow_ragged_batch", False))
        # Symbolic names of the ONNX axes ("sequence", ...) beyond the batch axis; None where fixed.
        axes = list(onnx_shape)[1:] if batched else list(onnx_shape)
        self.symbols = [a if isinstance(a, str) else None for a in axes]


class TritonPythonModel:
    """Triton's python-backend entry point: ``initialize``, ``execute``, ``finalize``."""

    def initialize(self, args: dict) -> None:
        _check_numpy()
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        self.name = args["model_name"]
        version = args["model_version"]
        filename = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], version, filename)
        if not os.path.isfile(path):
            raise pb_utils.TritonModelException(
                f"{self.name} version {version}: {path} does not exist; put the ONNX file there or set "
                f"default_model_filename in config.pbtxt to the file's name (it is {filename!r})"
            )
        self.max_batch_size = int(config.get("max_batch_size", 0))
        self.batched = self.max_batch_size > 0

        options, settings = _session_options(self.name, config, ort)
        started = time.perf_counter()
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # ORT raises its own exception types; report them as a load failure
            raise pb_utils.TritonModelException(
                f"{self.name}: ONNX Runtime cannot load {path}: {err}"
            ) from err

        graph_inputs = {i.name: i for i in self.session.get_inputs()}
        graph_outputs = {o.name: o for o in self.session.get_outputs()}
        self.inputs = self._bind(config.get("input", []), graph_inputs, "input")
        self.outputs = self._bind(config.get("output", []), graph_outputs, "output")
        missing = sorted(set(graph_inputs) - {t.name for t in self.inputs})
        if missing:
            raise pb_utils.TritonModelException(
                f"{self.name}: the ONNX graph needs inputs {missing} that config.pbtxt does not declare; "
                "add them to `input` in config.pbtxt"
            )
        self.output_names = [t.name for t in self.outputs]
        pb_utils.Logger.log_info(
            f"{self.name} v{version}: {path} loaded in {time.perf_counter() - started:.2f}s "
            f"(max_batch_size {self.max_batch_size}, onnxruntime {ort.__version__}, settings {settings})"
        )

    def _bind(self, entries: list, graph: dict, kind: str) -> list[_Tensor]:
        """Match config inputs/outputs to the ONNX graph by name and type, or refuse to load."""
        if not entries:
            raise pb_utils.TritonModelException(
                f"{self.name}: config.pbtxt declares no {kind}s; "
                f"list each {kind} with name, data_type and dims "
                f"(the graph has {sorted(graph)})"
            )
        tensors = []
        for entry in entries:
            name = entry["name"]
            if name not in graph:
                raise pb_utils.TritonModelException(
                    f"{self.name}: config {kind} {name!r} is not in the ONNX graph, "
                    f"whose {kind}s are {sorted(graph)}"
                )
            want = _FROM_ORT.get(graph[name].type)
            if want != entry["data_type"]:
                raise pb_utils.TritonModelException(
                    f"{self.name}: config {kind} {name!r} has data_type {entry['data_type']} "
                    "but the ONNX graph "
                    f"has {graph[name].type}; set data_type: {want or 'a supported type'} in config.pbtxt"
                )
            tensors.append(_Tensor(entry, graph[name].shape, self.batched))
        return tensors

    # ---- inference --------------------------------------------------------------------------------

    def execute(self, requests: list) -> list:
        arrays: list[dict | None] = []
        sizes: list[dict | None] = []
        errors: list[str | None] = []
        for request in requests:
            try:
                feeds, request_sizes = self._read(request)
                errors.append(None)
            except ValueError as err:
                feeds = request_sizes = None
                errors.append(str(err))
            arrays.append(feeds)
            sizes.append(request_sizes)

        results: list = [None] * len(requests)
        valid = [i for i, a in enumerate(arrays) if a is not None]
        for group in self._groups(valid, arrays):
            self._run_group(group, arrays, sizes, results, errors)

        responses = []
        for i, request in enumerate(requests):
            if errors[i] is not None:
                responses.append(
                    pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(errors[i]))
                )
                continue
            wanted = request.requested_output_names() or self.output_names
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(name, results[i][name]) for name in wanted if name in results[i]
                    ]
                )
            )
        return responses

    def _read(self, request) -> tuple[dict, dict]:
        """The request's inputs as numpy arrays, after the checks Triton's core does not make; and its
        sizes (batch rows, and each symbolic axis), to cut merged outputs back to this request."""
        arrays = {}
        sizes: dict[str, tuple[int, str]] = {}  # symbolic axis -> (size, the input that set it)
        batch = None
        for tensor in self.inputs:
            got = pb_utils.get_input_tensor_by_name(request, tensor.name)
            if got is None:
                raise ValueError(
                    f"{self.name}: input {tensor.name!r} is missing; send every input of the model"
                )
            array = got.as_numpy()
            if array.dtype != tensor.dtype:
                raise ValueError(
                    f"{self.name}: input {tensor.name!r} has type {array.dtype}, "
                    f"expected {tensor.config_type}"
                )
            expected_rank = len(tensor.dims) + (1 if self.batched else 0)
            if array.ndim != expected_rank:
                raise ValueError(
                    f"{self.name}: input {tensor.name!r} has shape {list(array.shape)}, "
                    f"expected rank {expected_rank}"
                    f" ({'[batch] + ' if self.batched else ''}{tensor.dims})"
                )
            if self.batched:
                if batch is None:
                    batch = array.shape[0]
                elif array.shape[0] != batch:
                    raise ValueError(
                        f"{self.name}: input {tensor.name!r} has batch size {array.shape[0]} "
                        "but the other inputs "
                        f"have {batch}; send the same number of rows in every input"
                    )
            axes = array.shape[1:] if self.batched else array.shape
            for symbol, size in zip(tensor.symbols, axes, strict=True):
                if symbol is None:
                    continue
                seen = sizes.setdefault(symbol, (size, tensor.name))
                if seen[0] != size:
                    raise ValueError(
                        f"{self.name}: input {tensor.name!r} has {size} on axis {symbol!r} "
                        f"but input {seen[1]!r} has {seen[0]}; those axes must be equal "
                        "(e.g. input_ids and attention_mask of one tokenizer call)"
                    )
            arrays[tensor.name] = array
        own = {symbol: size for symbol, (size, _) in sizes.items()}
        return arrays, {"batch": batch if self.batched else 1, **own}

    def _groups(self, valid: list[int], arrays: list) -> list[list[int]]:
        """Requests that can run as one ONNX Runtime call: same shape on every non-ragged input."""
        if not self.batched:
            return [[i] for i in valid]
        groups: dict[tuple, list[int]] = {}
        for i in valid:
            key = tuple(arrays[i][t.name].shape[1:] for t in self.inputs if not t.ragged)
            groups.setdefault(key, []).append(i)
        return list(groups.values())

    def _run_group(self, group: list[int], arrays: list, sizes: list, results: list, errors: list) -> None:
        try:
            feeds = self._merge([arrays[i] for i in group])
            outputs = self.session.run(self.output_names, feeds)
        except Exception as err:  # an ORT runtime error fails these requests, never the model
            if len(group) > 1:  # find the request that caused it: run each alone
                for i in group:
                    self._run_group([i], arrays, sizes, results, errors)
                return
            errors[group[0]] = f"{self.name}: ONNX Runtime failed on this request: {err}"
            return
        if len(group) == 1:
            results[group[0]] = dict(zip(self.output_names, outputs, strict=True))
            return
        start = 0
        for i in group:
            rows = slice(start, start + sizes[i]["batch"])
            start = rows.stop
            results[i] = {
                tensor.name: self._slice(tensor, value[rows], sizes[i])
                for tensor, value in zip(self.outputs, outputs, strict=True)
            }

    def _merge(self, group: list[dict]) -> dict:
        """Concatenate the requests' inputs along the batch axis, padding ragged axes with zeros."""
        if len(group) == 1:
            return group[0]
        feeds = {}
        for tensor in self.inputs:
            parts = [arrays[tensor.name] for arrays in group]
            widest = tuple(max(p.shape[axis] for p in parts) for axis in range(1, parts[0].ndim))
            if all(p.shape[1:] == widest for p in parts):
                feeds[tensor.name] = np.concatenate(parts, axis=0)
                continue
            merged = np.zeros((sum(p.shape[0] for p in parts),) + widest, dtype=parts[0].dtype)
            row = 0
            for p in parts:
                merged[(slice(row, row + p.shape[0]),) + tuple(slice(0, n) for n in p.shape[1:])] = p
                row += p.shape[0]
            feeds[tensor.name] = merged
        return feeds

    @staticmethod
    def _slice(tensor: _Tensor, value: np.ndarray, sizes: dict) -> np.ndarray:
        """Cut an output back to one request's own sizes on axes it shares with a padded input."""
        index = [slice(None)]
        for axis, symbol in enumerate(tensor.symbols, start=1):
            if axis >= value.ndim:
                break
            index.append(slice(0, sizes[symbol]) if symbol in sizes else slice(None))
        return np.ascontiguousarray(value[tuple(index)])

    def finalize(self) -> None:
        self.session = None
