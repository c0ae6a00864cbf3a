"""torch.nn.Module -> ONNX file, with the tensor names and dynamic axes of an export spec."""

from __future__ import annotations

import logging
from pathlib import Path

from converters.results import StepResult, Timer
from core.errors import CheckFailed
from core.tasks import TensorSpec

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
EXPORTER = "torch.onnx.export(dynamo=False)"


def export(
    module,
    example_args: tuple,
    path: Path,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    *,
    opset: int = DEFAULT_OPSET,
) -> StepResult:
    """Export ``module`` (in eval mode) to ``path`` with the TorchScript exporter, then check the file
    with ``onnx.checker``."""
    import warnings

    import onnx
    import torch

    dynamic_axes = {spec.name: dict(spec.dynamic_axes) for spec in (*inputs, *outputs) if spec.dynamic_axes}
    module.eval()
    with Timer() as timer, torch.no_grad(), warnings.catch_warnings():
        # The tracer's notes on Python booleans in HF code; the parity check is what tells if they matter.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*aten::index operator.*")
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx.*")
        try:
            torch.onnx.export(
                module,
                example_args,
                str(path),
                input_names=[spec.name for spec in inputs],
                output_names=[spec.name for spec in outputs],
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        except Exception as err:  # the exporter raises many kinds
            raise CheckFailed(f"ONNX export of {type(module).__name__} failed: {err}") from err
        try:
            onnx.checker.check_model(str(path))
        except onnx.checker.ValidationError as err:
            raise CheckFailed(f"{path}: the exported ONNX model is invalid: {err}") from err
    log.info("exported %s to %s in %.1f s", type(module).__name__, path, timer.elapsed)
    return StepResult("export", "ok", timer.elapsed, {"model": path, "opset": opset})
