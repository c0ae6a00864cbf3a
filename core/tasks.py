"""The tasks, as data: one registry (``TASK_SPECS``) is the only place that knows them.

For each task it says which inputs the ONNX graph takes and which outputs it gives (tensor names,
Triton datatypes, dynamic axes), how the int8 variant is judged, what a request carries (text or an
image), how the output rows become results, and the service's routes. The exporters, the parity
check, the Triton config, the manifest, the service's settings, version routing and endpoints, and the
docs (checked by tests) all read it. Adding a task is adding an entry here plus its pre- and
post-processing functions in ``serving/tasks.py`` (and the endpoints' signatures in ``service.py``).

Data only: the bento ships this package, so nothing heavier than the standard library is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from core.errors import InvalidArgument


@dataclass(frozen=True)
class TensorSpec:
    """One input or output. ``shape`` includes the batch axis; -1 marks a dynamic axis."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    # Axis index -> symbolic name, for torch.onnx.export's dynamic_axes.
    dynamic_axes: dict[int, str] = field(default_factory=dict)
    # Token inputs: each request may carry a different length (Triton pads them in the backend).
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
# through the entry's own tokenizer, "image" is decoded and normalised as the manifest declares.
InputKind = Literal["text", "image"]
# What a row of the task's output is, and so how it becomes a result: "embeddings" are vectors, given
# as they are; "labels" are logits, one per label, given as the top-k labels with probabilities.
Postprocess = Literal["embeddings", "labels"]


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
    return TensorSpec(name, "INT64", (-1, -1), {0: "batch", 1: "sequence"}, ragged=True)


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
    "image-classification": TaskSpec(
        task="image-classification",
        inputs=(TensorSpec("input", "FP32", (-1, -1, -1, -1), {0: "batch"}),),
        outputs=(TensorSpec("logits", "FP32", (-1, -1), {0: "batch"}),),
        quantization_gate="top1",
        input_kind="image",
        postprocess="labels",
        routes=(Route("/predict", reply="predictions"), Route("/predict/batch", reply="results")),
    ),
}

# The tasks whose requests are texts (the Hugging Face exporter's, and the tokenizer's in validate).
TEXT_TASKS = tuple(name for name, spec in TASK_SPECS.items() if spec.input_kind == "text")

# Every route of the service -> the task it serves and the route (tests check no path is listed twice).
ROUTES: dict[str, tuple[TaskSpec, Route]] = {
    route.path: (spec, route) for spec in TASK_SPECS.values() for route in spec.routes
}


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
