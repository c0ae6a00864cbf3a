"""The tasks, as data: one registry (``TASK_SPECS``) is the only place that knows them.

For each task it says which inputs the ONNX graph takes and which outputs it gives (tensor names,
Triton datatypes, dynamic axes), how the int8 variant is judged, what a request carries (text or an
image), how the output rows become results, and the service's routes. The exporters, the parity
check, the Triton config, the manifest, the service's settings, version routing and endpoints, and the
docs (checked by tests) all read it. Adding a task is adding an entry here plus its pre- and
post-processing functions in ``serving/tasks.py`` (and the endpoints' signatures in ``service.py``).

Two tasks carry no fixed tensors: ``tensor`` (any signature: named tensors in, named tensors out) takes
its inputs and outputs from the module it was exported from, and ``classification`` fixes only their
form ((batch, features) -> (batch, classes)). Every entry, whatever its task, is also served by the Open
Inference Protocol routes (``INFER_ROUTES``), from the tensors its manifest declares.

Data only: the bento ships this package, so nothing heavier than the standard library is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from core.errors import InvalidArgument

# The tensor datatypes an entry may declare (Triton's names), with the numpy dtype of each: the
# converters, the Triton config and the service's tensor checks all read this table.
DATATYPES: dict[str, str] = {
    "FP32": "float32",
    "FP16": "float16",
    "INT64": "int64",
    "INT32": "int32",
    "BOOL": "bool",
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output. ``shape`` includes the batch axis; -1 marks a dynamic axis."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    # Axis index -> symbolic name, for torch.onnx.export's dynamic_axes.
    dynamic_axes: dict[int, str] = field(default_factory=dict)
    # allow_ragged_batch: Triton's backends hand such an input to the model flattened to 1-D (all the
    # requests' values concatenated), so only a model that takes it as [-1] may set it. Token inputs do
    # not: a request's rows are padded to one length (by the Bento, or the entry's NAME_tokenizer model)
    # and Triton merges requests of equal shapes.
    ragged: bool = False

    def to_manifest(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_manifest(cls, data: dict, *, ragged: bool = False) -> TensorSpec:
        shape = tuple(int(d) for d in data["shape"])
        axes = {i: f"dim{i}" for i, d in enumerate(shape) if d == -1}
        return cls(
            name=data["name"], datatype=data["datatype"], shape=shape, dynamic_axes=axes, ragged=ragged
        )


# What a request of the task carries, and so which preprocessing makes its tensors: "text" goes
# through the entry's own tokenizer, "image" is decoded and normalised as the manifest declares,
# "features" is one row of numbers per item, "tensors" are named tensors checked against the manifest.
InputKind = Literal["text", "image", "features", "tensors"]
# What a row of the task's output is, and so how it becomes a result: "embeddings" are vectors, given
# as they are; "labels" are logits, one per label, given as the top-k labels with probabilities;
# "entities" are per-token logits, given as labelled spans of the text (B-/I- tags merged);
# "tensors" are every output, by name, as they are.
Postprocess = Literal["embeddings", "labels", "entities", "tensors"]


@dataclass(frozen=True)
class Route:
    """One POST endpoint of the service for a task (``service.py`` declares its request fields)."""

    path: str
    # How the results become the answer's fields: a name in serving.tasks.REPLIES.
    reply: str
    # The shape of its error bodies: "service" ({"error", "field", "request_id"}, every route of ours) or
    # "openai" ({"error": {"message", "type", "param", "code"}}, the OpenAI-compatible route, whose
    # clients read that shape); serving.http.ERROR_BODIES has both.
    errors: str = "service"


@dataclass(frozen=True)
class TaskSpec:
    task: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # How the int8 variant is judged against fp32: "cosine" (embeddings) or "top1" (classifiers).
    quantization_gate: str
    input_kind: InputKind
    postprocess: Postprocess
    # The service's endpoints for the task; the first is the one an error points a client to.
    routes: tuple[Route, ...]


def _token_input(name: str) -> TensorSpec:
    return TensorSpec(name, "INT64", (-1, -1), {0: "batch", 1: "sequence"})


TASK_SPECS: dict[str, TaskSpec] = {
    "feature-extraction": TaskSpec(
        task="feature-extraction",
        inputs=(_token_input("input_ids"), _token_input("attention_mask")),
        outputs=(TensorSpec("embeddings", "FP32", (-1, -1), {0: "batch"}),),
        quantization_gate="cosine",
        input_kind="text",
        postprocess="embeddings",
        routes=(
            Route("/embed", reply="embedding"),
            Route("/embed/batch", reply="embeddings"),
            Route("/similarity", reply="similarity"),
            # OpenAI's embeddings API (what the `openai` client, LangChain, LlamaIndex, TEI and Infinity
            # speak): its request and response shapes, its error shape.
            Route("/v1/embeddings", reply="openai_embeddings", errors="openai"),
        ),
    ),
    "text-classification": TaskSpec(
        task="text-classification",
        inputs=(_token_input("input_ids"), _token_input("attention_mask")),
        outputs=(TensorSpec("logits", "FP32", (-1, -1), {0: "batch"}),),
        quantization_gate="top1",
        input_kind="text",
        postprocess="labels",
        routes=(Route("/classify", reply="predictions"), Route("/classify/batch", reply="results")),
    ),
    "token-classification": TaskSpec(
        task="token-classification",
        inputs=(_token_input("input_ids"), _token_input("attention_mask")),
        outputs=(TensorSpec("logits", "FP32", (-1, -1, -1), {0: "batch", 1: "sequence"}),),
        quantization_gate="top1",
        input_kind="text",
        postprocess="entities",
        routes=(Route("/entities", reply="entities"), Route("/entities/batch", reply="entity_results")),
    ),
    # Lightning (C,H,W) -> logits modules and Hugging Face *ForImageClassification models alike: the
    # manifest's preprocessing block says how an image becomes the input (docs/repository.md).
    "image-classification": TaskSpec(
        task="image-classification",
        inputs=(TensorSpec("input", "FP32", (-1, -1, -1, -1), {0: "batch"}),),
        outputs=(TensorSpec("logits", "FP32", (-1, -1), {0: "batch"}),),
        quantization_gate="top1",
        input_kind="image",
        postprocess="labels",
        routes=(Route("/predict", reply="predictions"), Route("/predict/batch", reply="results")),
    ),
    # (batch, features) -> (batch, classes), with labels: a tabular classifier.
    "classification": TaskSpec(
        task="classification",
        inputs=(TensorSpec("input", "FP32", (-1, -1), {0: "batch"}),),
        outputs=(TensorSpec("logits", "FP32", (-1, -1), {0: "batch"}),),
        quantization_gate="top1",
        input_kind="features",
        postprocess="labels",
        routes=(
            Route("/classify/features", reply="predictions"),
            Route("/classify/features/batch", reply="results"),
        ),
    ),
    # Any other signature: the module's own inputs and outputs (names, datatypes, shapes), as given.
    "tensor": TaskSpec(
        task="tensor",
        inputs=(),
        outputs=(),
        quantization_gate="cosine",
        input_kind="tensors",
        postprocess="tensors",
        routes=(Route("/tensors", reply="tensors"),),
    ),
}

# The tasks whose requests are texts (the Hugging Face exporter's, and the tokenizer's in validate).
TEXT_TASKS = tuple(name for name, spec in TASK_SPECS.items() if spec.input_kind == "text")

# Every route of the service -> the task it serves and the route (tests check no path is listed twice).
ROUTES: dict[str, tuple[TaskSpec, Route]] = {
    route.path: (spec, route) for spec in TASK_SPECS.values() for route in spec.routes
}


# The Open Inference Protocol (KServe v2) routes: every configured entry, whatever its task, by the
# tensors its manifest declares. The service mounts them beside its task routes.
INFER_ROUTES = ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer")


def task_spec(task: str, *, allowed: tuple[str, ...] | None = None) -> TaskSpec:
    """The spec of ``task``; InvalidArgument naming the allowed values when it is not supported."""
    allowed = allowed or tuple(TASK_SPECS)
    if task not in allowed:
        raise InvalidArgument(
            f"--task: unsupported task {task!r}; supported here: {', '.join(allowed)}", field="task"
        )
    return TASK_SPECS[task]


def with_static_dims(spec: TensorSpec, dims: dict[int, int]) -> TensorSpec:
    """``spec`` with the given axes made static (e.g. hidden size, C/H/W, number of labels)."""
    shape = list(spec.shape)
    axes = dict(spec.dynamic_axes)
    for axis, size in dims.items():
        shape[axis] = int(size)
        axes.pop(axis, None)
    return TensorSpec(spec.name, spec.datatype, tuple(shape), axes, spec.ragged)
