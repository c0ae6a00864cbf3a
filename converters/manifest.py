"""``manifest.json`` of a version: where it came from, how it was made, what it takes and gives,
and how well it matched its source. The repository adds ``name``, ``version``, ``size_bytes`` and
``created_at`` when it publishes."""

from __future__ import annotations

from pathlib import Path

from core.repository import sha256_path
from core.tasks import TensorSpec


def runtime_versions(opset: int | None) -> dict:
    import onnx
    import onnxruntime
    import torch

    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "opset": opset,
    }


def build_manifest(
    *,
    task: str,
    source: Path,
    exporter: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    parity: dict,
    preprocessing: dict,
    opset: int | None,
    labels: list[str] | None = None,
    precision: str = "fp32",
    extra: dict | None = None,
) -> dict:
    manifest = {
        "task": task,
        "source": {"path": str(Path(source).absolute()), "sha256": sha256_path(Path(source))},
        "exporter": exporter,
        "versions": runtime_versions(opset),
        "inputs": [spec.to_manifest() for spec in inputs],
        "outputs": [spec.to_manifest() for spec in outputs],
        "parity": parity,
        "preprocessing": preprocessing,
        "precision": precision,
    }
    if labels is not None:
        manifest["labels"] = list(labels)
    manifest.update(extra or {})
    return manifest
