"""ONNX Runtime sessions, in-process (for parity, the int8 gate and in-process speed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.errors import CheckFailed


def ort_session(path: Path, *, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own untyped errors
        raise CheckFailed(f"{path}: ONNX Runtime cannot load the exported model: {err}") from err


def run(session, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    names = outputs or [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    values = session.run(names, {k: v for k, v in feeds.items() if k in wanted})
    return dict(zip(names, values, strict=True))
