"""ONNX Runtime as a Triton backend, written for Triton's python backend.

Triton runs this file (through the python backend and its stub) for every model whose config says
``platform: "onnxruntime_onnx"`` or ``backend: "onnxruntime"``, when the backend directory holds
``onnxruntime/model.py`` and no native ``libtriton_onnxruntime.so``. So the very repository that NVIDIA's
Triton image serves with its native ONNX Runtime backend also loads on a CPU-only machine without
Docker. What it honours from ``config.pbtxt``:

- ``input`` / ``output``: names and data types, checked against the ONNX graph when the model loads;
  only the outputs a request asks for are returned.
- ``max_batch_size``: > 0 means the first axis is the batch axis and Triton's dynamic batcher may hand
  several requests to one ``execute`` call; they run as one ONNX Runtime call. Triton's core batcher
  merges only requests whose (non-ragged) inputs have equal shapes, as the native backend relies on;
  requests of different shapes that still reach one call run as separate ONNX Runtime calls, never
  padded.
- ``allow_ragged_batch`` on an input, as NVIDIA's native backend does it: the model must take that
  input as ``[-1]`` (checked when the model loads, with the native backend's message), and gets the
  requests' values flattened and concatenated into one 1-D tensor; ``batch_input`` entries of the
  element-count kinds (``BATCH_ELEMENT_COUNT``, ``BATCH_ACCUMULATED_ELEMENT_COUNT``,
  ``BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO``, ``BATCH_MAX_ELEMENT_COUNT_AS_SHAPE``) tell the model
  where each request's values are. Outputs are cut back along the batch axis by each request's batch
  size. So a config whose ragged inputs the native backend would refuse (a ``[batch, seq]`` model)
  fails to load here too.
- The load-time checks of the native backend (``ValidateInputs``/``ValidateOutputs``): the config's
  inputs (plus its batch inputs) are exactly the graph's inputs, data types match, and each
  non-ragged input's and output's dims match the graph's (a batching model's first axis must be
  dynamic; an output's dims must equal the graph's exactly, dynamic axes being ``-1``).
- ``parameters`` and ``optimization.graph.level``, as NVIDIA's native onnxruntime backend reads them:
  ``intra_op_thread_count``, ``inter_op_thread_count``, ``execution_mode``, ``enable_mem_arena``,
  ``enable_mem_pattern``; and any ``session.*`` key as an ONNX Runtime session config entry
  (``session.intra_op.allow_spinning`` defaults to "0": idle pool threads would take CPU from Triton).
  Thread counts the config leaves unset come from the server's ``--backend-config=onnxruntime,...``
  (as for the native backend), else the intra-op pool follows the container's CPU limit
  (``backend_thread_defaults``).
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


# Where the entry point (local_triton/entrypoint.py) puts the server's
# ``--backend-config=onnxruntime,intra_op_thread_count=N`` (and inter_op): Triton hands backend configs
# to native backends only, so the python backend running this file never sees them otherwise.
BACKEND_CONFIG_ENV = {
    "intra_op_thread_count": "MODELPACK_ORT_INTRA_OP_THREADS",
    "inter_op_thread_count": "MODELPACK_ORT_INTER_OP_THREADS",
}


def cpu_limit(cgroup: str = "/sys/fs/cgroup") -> int | None:
    """The CPUs this process may use under its cgroup's CPU quota (rounded up), or None without a
    quota: cgroup v2 ``cpu.max`` ("200000 100000"), else v1 ``cpu/cpu.cfs_quota_us`` / ``cfs_period_us``."""
    try:
        with open(os.path.join(cgroup, "cpu.max"), encoding="ascii") as handle:
            quota, _, period = handle.read().strip().partition(" ")
    except OSError:
        try:
            with open(os.path.join(cgroup, "cpu", "cpu.cfs_quota_us"), encoding="ascii") as handle:
                quota = handle.read().strip()
            with open(os.path.join(cgroup, "cpu", "cpu.cfs_period_us"), encoding="ascii") as handle:
                period = handle.read().strip()
        except OSError:
            return None
    if quota in ("max", "-1") or not quota.lstrip("-").isdigit() or not period.isdigit() or int(period) <= 0:
        return None
    return max(1, -(-int(quota) // int(period)))


def backend_thread_defaults(environ, cgroup: str = "/sys/fs/cgroup") -> dict[str, int]:
    """The thread counts of a model whose config does not set them, as NVIDIA's native backend takes
    them: the server's ``--backend-config=onnxruntime,...`` values (through ``BACKEND_CONFIG_ENV``);
    else, for the intra-op pool, the CPUs of the container's CPU limit when that is below the cores
    this process may run on (ONNX Runtime's own default counts the machine's cores, so a container
    limited to 2 CPUs on a 64-core node would start 64 threads); else 0, ONNX Runtime's default."""
    defaults = {}
    for key, variable in BACKEND_CONFIG_ENV.items():
        raw = str(environ.get(variable, "")).strip()
        defaults[key] = int(raw) if raw.isdigit() else 0
    if defaults["intra_op_thread_count"] == 0:
        limit = cpu_limit(cgroup)
        if limit is not None and limit < len(os.sched_getaffinity(0)):
            defaults["intra_op_thread_count"] = limit
    return defaults


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
    defaults = backend_thread_defaults(os.environ)
    for key in _INT_PARAMETERS:
        raw = parameters.get(key, "0")
        if not raw.strip().isdigit():
            raise _parameter_error(model, key, raw, "a whole number >= 0 (0 = ONNX Runtime default)", "2")
        settings[key] = int(raw) or defaults[key]
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


def _graph_dims(shape: list) -> list[int]:
    """ONNX Runtime's view of a tensor's axes as the native backend sees them: -1 where dynamic."""
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


def _shape_text(dims: list[int]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


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
        self.optional = bool(entry.get("optional", False))
        self.graph_dims = _graph_dims(list(onnx_shape))
        # Symbolic names of the ONNX axes ("sequence", ...) beyond the batch axis; None where fixed.
        axes = list(onnx_shape)[1:] if batched else list(onnx_shape)
        self.symbols = [a if isinstance(a, str) else None for a in axes]


# batch_input kinds this backend computes (the element-count kinds); the item-shape kinds are refused
# when the model loads, with a message saying so.
_BATCH_INPUT_KINDS = (
    "BATCH_ELEMENT_COUNT",
    "BATCH_ACCUMULATED_ELEMENT_COUNT",
    "BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO",
    "BATCH_MAX_ELEMENT_COUNT_AS_SHAPE",
)


class _BatchInput:
    """One ``batch_input`` of the config: a tensor Triton makes from the batch, not sent by clients."""

    def __init__(self, entry: dict) -> None:
        self.kind = entry.get("kind", "BATCH_ELEMENT_COUNT")
        self.targets = list(entry.get("target_name", []))
        self.config_type = entry.get("data_type", "TYPE_INVALID")
        self.dtype = _NUMPY.get(self.config_type)
        self.sources = list(entry.get("source_input", []))

    def values(self, counts: list[int]) -> np.ndarray:
        """The tensor for a batch whose requests hold ``counts`` elements of the source input each."""
        if self.kind == "BATCH_ELEMENT_COUNT":
            return np.asarray(counts, dtype=self.dtype)
        if self.kind == "BATCH_ACCUMULATED_ELEMENT_COUNT":
            return np.cumsum(counts).astype(self.dtype)
        if self.kind == "BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO":
            return np.concatenate([[0], np.cumsum(counts)]).astype(self.dtype)
        return np.zeros((max(counts),), dtype=self.dtype)  # BATCH_MAX_ELEMENT_COUNT_AS_SHAPE


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
        self.batch_inputs = [_BatchInput(entry) for entry in config.get("batch_input", [])]
        self.inputs = self._bind(config.get("input", []), graph_inputs, "input")
        self.outputs = self._bind(config.get("output", []), graph_outputs, "output")
        self._check_inputs(graph_inputs)
        self._check_outputs()
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

    def _compare_dims(self, tensor: _Tensor, exact: bool) -> None:
        """The native backend's CompareDimsSupported: with batching the graph's first axis must be
        dynamic and the rest must match the config's dims (inputs: a dynamic graph axis takes any
        dims; outputs: equal, dynamic being -1)."""
        graph = tensor.graph_dims
        if not graph:
            return  # a scalar in the graph: the config's dims are used as they are
        if self.batched and graph[0] != -1:
            raise pb_utils.TritonModelException(
                f"{self.name}: tensor {tensor.name!r}: for the model to support batching the shape "
                "should have at least 1 dimension and the first dimension must be -1; but shape "
                f"expected by the model is {_shape_text(graph)} (set max_batch_size: 0, or export "
                "the model with a dynamic batch axis)"
            )
        full = ([-1] if self.batched else []) + tensor.dims
        same = len(graph) == len(full) and all(
            g == f for g, f in zip(graph, full, strict=True) if exact or g != -1
        )
        if not same:
            raise pb_utils.TritonModelException(
                f"{self.name}: tensor {tensor.name!r}: the model expects {len(graph)} dimensions (shape "
                f"{_shape_text(graph)}) but the model configuration specifies {len(full)} dimensions "
                f"(shape {_shape_text(full)}{', the batch axis first' if self.batched else ''}); "
                f"make dims in config.pbtxt match the graph"
            )

    def _check_inputs(self, graph_inputs: dict) -> None:
        required = [t for t in self.inputs if not t.optional]
        expected = len(required) + len(self.batch_inputs)
        if len(graph_inputs) != expected:
            raise pb_utils.TritonModelException(
                f"{self.name}: configuration expects {expected} inputs, model provides "
                f"{len(graph_inputs)} ({sorted(graph_inputs)}); declare every graph input in `input` "
                "(or `batch_input`) of config.pbtxt"
            )
        for tensor in self.inputs:
            if tensor.optional and self.batched:
                raise pb_utils.TritonModelException(
                    f"{self.name}: optional input {tensor.name!r} is not supported for models that "
                    "support batching (max_batch_size > 0)"
                )
            if tensor.ragged:
                if tensor.graph_dims != [-1]:
                    raise pb_utils.TritonModelException(
                        f"{self.name}: configuration expects model provides input with shape [-1] for "
                        f"ragged input {tensor.name!r}, model provides {_shape_text(tensor.graph_dims)}: "
                        "a ragged input reaches the model flattened to 1-D (Triton's ragged batching); "
                        "remove allow_ragged_batch, or export the model to take it as [-1] with a "
                        "batch_input that says where each request's values are"
                    )
            else:
                self._compare_dims(tensor, exact=False)
        names = {t.name for t in self.inputs}
        for batch_input in self.batch_inputs:
            if batch_input.kind not in _BATCH_INPUT_KINDS:
                raise pb_utils.TritonModelException(
                    f"{self.name}: batch_input kind {batch_input.kind} is not computed by this local "
                    f"backend (it computes {', '.join(_BATCH_INPUT_KINDS)}); NVIDIA's native backend "
                    "does, so test this model on its image"
                )
            missing = [t for t in batch_input.targets if t not in graph_inputs]
            unknown = [s for s in batch_input.sources if s not in names]
            if missing or unknown or batch_input.dtype is None or len(batch_input.sources) != 1:
                raise pb_utils.TritonModelException(
                    f"{self.name}: batch_input {batch_input.kind}: target_name {batch_input.targets} must "
                    f"be graph inputs (missing: {missing}), source_input {batch_input.sources} one "
                    f"config input (unknown: {unknown}), data_type a numeric type "
                    f"(got {batch_input.config_type})"
                )
            for target in batch_input.targets:
                want = _FROM_ORT.get(graph_inputs[target].type)
                if want != batch_input.config_type:
                    raise pb_utils.TritonModelException(
                        f"{self.name}: batch_input target {target!r} has data_type "
                        f"{batch_input.config_type} but the ONNX graph has {graph_inputs[target].type}"
                    )

    def _check_outputs(self) -> None:
        for tensor in self.outputs:
            self._compare_dims(tensor, exact=True)

    # ---- inference --------------------------------------------------------------------------------

    def execute(self, requests: list) -> list:
        arrays: list[dict | None] = []
        batches: list[int] = []
        errors: list[str | None] = []
        for request in requests:
            try:
                feeds, batch = self._read(request)
                errors.append(None)
            except ValueError as err:
                feeds, batch = None, 0
                errors.append(str(err))
            arrays.append(feeds)
            batches.append(batch)

        results: list = [None] * len(requests)
        valid = [i for i, a in enumerate(arrays) if a is not None]
        for group in self._groups(valid, arrays):
            self._run_group(group, arrays, batches, results, errors)

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

    def _read(self, request) -> tuple[dict, int]:
        """The request's inputs as numpy arrays, after the checks Triton's core does not make; and its
        batch size (the first axis of its first input, as the native backend takes it)."""
        arrays = {}
        sizes: dict[str, tuple[int, str]] = {}  # symbolic axis -> (size, the input that set it)
        batch = None
        for tensor in self.inputs:
            got = pb_utils.get_input_tensor_by_name(request, tensor.name)
            if got is None:
                if tensor.optional:
                    continue
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
                elif array.shape[0] != batch and not tensor.ragged:
                    raise ValueError(
                        f"{self.name}: input {tensor.name!r} has batch size {array.shape[0]} "
                        "but the other inputs "
                        f"have {batch}; send the same number of rows in every input"
                    )
            if not tensor.ragged:
                axes = array.shape[1:] if self.batched else array.shape
                for symbol, size in zip(tensor.symbols, axes, strict=False):
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
        return arrays, (batch if self.batched else 1)

    def _groups(self, valid: list[int], arrays: list) -> list[list[int]]:
        """Requests that can run as one ONNX Runtime call: equal shapes on every non-ragged input
        (Triton's core batcher hands this backend only such requests together; the check keeps a
        batch of other shapes from ever being padded or mixed)."""
        if not self.batched:
            return [[i] for i in valid]
        groups: dict[tuple, list[int]] = {}
        for i in valid:
            key = tuple(
                arrays[i][t.name].shape[1:] if t.name in arrays[i] else None
                for t in self.inputs
                if not t.ragged
            )
            groups.setdefault(key, []).append(i)
        if len(groups) > 1:  # NVIDIA's backend would have run them as one tensor of the first's shape
            pb_utils.Logger.log_warn(
                f"{self.name}: one execution held requests of {len(groups)} different shapes; they run "
                "as separate ONNX Runtime calls"
            )
        return list(groups.values())

    def _run_group(self, group: list[int], arrays: list, batches: list, results: list, errors: list) -> None:
        try:
            feeds = self._merge([arrays[i] for i in group])
            outputs = self.session.run(self.output_names, feeds)
            rows = sum(batches[i] for i in group)
            for name, value in zip(self.output_names, outputs, strict=True):
                if self.batched and (value.ndim == 0 or value.shape[0] != rows):
                    raise ValueError(
                        f"output {name!r} has shape {list(value.shape)}, not {rows} rows (one per row of "
                        "the batch): outputs of a batching model start with the batch axis"
                    )
        except Exception as err:  # an ORT runtime error fails these requests, never the model
            if len(group) > 1:  # find the request that caused it: run each alone
                for i in group:
                    self._run_group([i], arrays, batches, results, errors)
                return
            errors[group[0]] = f"{self.name}: ONNX Runtime failed on this request: {err}"
            return
        if len(group) == 1:
            results[group[0]] = dict(zip(self.output_names, outputs, strict=True))
            return
        start = 0
        for i in group:
            rows = slice(start, start + batches[i])
            start = rows.stop
            results[i] = {
                name: np.ascontiguousarray(value[rows])
                for name, value in zip(self.output_names, outputs, strict=True)
            }

    def _merge(self, group: list[dict]) -> dict:
        """One ONNX Runtime feed for the group, as the native backend builds it: non-ragged inputs
        concatenated along the batch axis (their shapes are equal), ragged inputs flattened and
        concatenated into one 1-D tensor, and the batch inputs computed from the ragged sources."""
        feeds = {}
        for tensor in self.inputs:
            parts = [arrays[tensor.name] for arrays in group if tensor.name in arrays]
            if not parts:
                continue
            if tensor.ragged:
                feeds[tensor.name] = np.concatenate([p.reshape(-1) for p in parts])
            elif len(parts) == 1:
                feeds[tensor.name] = parts[0]
            else:
                feeds[tensor.name] = np.concatenate(parts, axis=0)
        for batch_input in self.batch_inputs:
            counts = [int(arrays[batch_input.sources[0]].size) for arrays in group]
            values = batch_input.values(counts)
            for target in batch_input.targets:
                feeds[target] = values
        return feeds

    def finalize(self) -> None:
        self.session = None
