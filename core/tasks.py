"""Export specs per task, as data: tensor names, Triton datatypes, dynamic axes.

One registry (``TASK_SPECS``) says, for each task the converters support, which inputs the ONNX
graph takes and which outputs it gives. The exporters, the parity check, the Triton config and the
manifest all read it, so the tensor names of the contract live in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class TaskSpec:
    task: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # How the int8 variant is judged against fp32: "cosine" (embeddings) or "top1" (classifiers).
    quantization_gate: str


def _token_input(name: str) -> TensorSpec:
    return TensorSpec(name, "INT64", (-1, -1), {0: "batch", 1: "sequence"}, ragged=True)


TASK_SPECS: dict[str, TaskSpec] = {
    "feature-extraction": TaskSpec(
        task="feature-extraction",
        inputs=(_token_input("input_ids"), _token_input("attention_mask")),
        outputs=(TensorSpec("embeddings", "FP32", (-1, -1), {0: "batch"}),),
        quantization_gate="cosine",
    ),
    "text-classification": TaskSpec(
        task="text-classification",
        inputs=(_token_input("input_ids"), _token_input("attention_mask")),
        outputs=(TensorSpec("logits", "FP32", (-1, -1), {0: "batch"}),),
        quantization_gate="top1",
    ),
    "image-classification": TaskSpec(
        task="image-classification",
        inputs=(TensorSpec("input", "FP32", (-1, -1, -1, -1), {0: "batch"}),),
        outputs=(TensorSpec("logits", "FP32", (-1, -1), {0: "batch"}),),
        quantization_gate="top1",
    ),
}

TEXT_TASKS = ("feature-extraction", "text-classification")


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
