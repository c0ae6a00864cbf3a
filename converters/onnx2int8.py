"""fp32 ONNX entry -> int8 variant (ONNX Runtime dynamic quantisation), published as a new version.

The int8 model has its own gate against the fp32 version it came from, on the entry's fixed inputs
(``converters.inputs``): cosine similarity of every embedding >= ``min_cosine`` (feature extraction),
or top-1 agreement >= ``min_top1`` (classifiers). Its manifest records the gate, the size against
fp32 and the in-process throughput of both at batch 1 and 32, measured in the same run.

Weights are int8 per output channel. When the fully quantised model misses the gate, the nodes whose
input activations are the most outlier-heavy (see ``activation_outliers``) stay fp32, 4 more on each try
(up to ``max_fp32_nodes``); the manifest lists them. On all-MiniLM-L6-v2 the fully quantised model
reaches cosine ~0.97 and 8 FFN MatMuls kept in fp32 bring it to ~0.993.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from converters.inputs import TYPICAL, EntryInputs
from converters.model_card import carry_model_card
from converters.pipeline import carry_tokenizer, publish
from converters.results import ConversionResult, StepResult, Timer
from converters.runtime import ort_session, run
from converters.speed import throughput
from core.errors import CheckFailed, InvalidArgument
from core.repository import Repository, parse_ref
from core.tasks import TASK_SPECS
from core.triton_config import version_policy

log = logging.getLogger(__name__)

DEFAULT_MIN_COSINE = 0.99
DEFAULT_MIN_TOP1 = 0.9
GATE_BATCH = 32
SPEED_BATCHES = (1, 32)
METHOD = "onnxruntime.quantization.quantize_dynamic"
QUANTIZABLE_OPS = ("MatMul", "Gemm", "Conv")
# How many of the most outlier-heavy nodes stay fp32 on each try, until the gate passes.
FALLBACK_SCHEDULE = (0, 4, 8, 12, 16)
# Fields the repository writes itself, or that describe fp32 only.
_NOT_INHERITED = ("name", "version", "size_bytes", "created_at", "parity", "quantization", "precision")


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.sum(a * b, axis=1)


def gate(task: str, fp32: np.ndarray, int8: np.ndarray, *, min_cosine: float, min_top1: float) -> dict:
    """The int8 gate: cosine for embeddings, top-1 agreement for classifiers."""
    kind = TASK_SPECS[task].quantization_gate
    # Each sample's output as one row (token outputs: a row of tokens x labels), in float64.
    fp32 = np.asarray(fp32, dtype=np.float64).reshape(len(fp32), -1) if kind == "cosine" else fp32
    int8 = np.asarray(int8, dtype=np.float64).reshape(len(int8), -1) if kind == "cosine" else int8
    result = {
        "kind": kind,
        "samples": int(fp32.shape[0]),
        "max_abs_err": float(np.max(np.abs(fp32.astype(np.float64) - int8.astype(np.float64)))),
    }
    if kind == "cosine":
        cosine = cosine_rows(fp32, int8)
        result.update(
            min_cosine=float(cosine.min()), threshold=min_cosine, passed=bool(cosine.min() >= min_cosine)
        )
    else:
        # The top label of each item (per token for token outputs: the label axis is the last one).
        agreement = float(np.mean(np.argmax(fp32, axis=-1) == np.argmax(int8, axis=-1)))
        result.update(top1_agreement=agreement, threshold=min_top1, passed=bool(agreement >= min_top1))
    return result


def gate_figure(result: dict) -> float:
    """The measured figure of a gate result: its lowest cosine, or its top-1 agreement."""
    return result.get("min_cosine", result.get("top1_agreement"))


def measure_speed(fp32_session, int8_session, inputs: EntryInputs, seconds: float) -> dict:
    """In-process items/s of fp32 and int8 at batch 1 and 32, and their ratio (int8 / fp32)."""
    speed = {}
    for batch in SPEED_BATCHES:
        feeds = inputs.feeds(batch, start=TYPICAL)
        fp32 = throughput(fp32_session, feeds, seconds=seconds)
        int8 = throughput(int8_session, feeds, seconds=seconds)
        speed[f"batch_{batch}"] = {
            "fp32_per_s": round(fp32, 2),
            "int8_per_s": round(int8, 2),
            "ratio": int8 / fp32,
        }
    return speed


def activation_outliers(model_path: Path, feeds: dict[str, np.ndarray]) -> list[tuple[str, float]]:
    """Nodes with constant weights (MatMul, Gemm, Conv), most outlier-heavy input first.

    Dynamic quantisation scales each activation tensor by its max; an input whose max is far above its
    typical magnitude (the FFN down-projection after GELU in a transformer) loses most precision. The
    score is max|x| / mean|x| over real (unpadded) positions of the gate inputs, from one fp32 run.
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    constants = {init.name for init in model.graph.initializer}
    nodes = [
        (node.name, node.input[0])
        for node in model.graph.node
        if node.op_type in QUANTIZABLE_OPS and len(node.input) > 1 and node.input[1] in constants
    ]
    exposed = {output.name for output in model.graph.output}
    for _, tensor in nodes:
        if tensor not in exposed:
            model.graph.output.append(
                onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None)
            )
            exposed.add(tensor)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    tensors = list(dict.fromkeys(tensor for _, tensor in nodes))
    values = dict(zip(tensors, session.run(tensors, feeds), strict=True))
    mask = feeds["attention_mask"].astype(bool) if "attention_mask" in feeds else None
    scores = []
    for node, tensor in nodes:
        x = values[tensor]
        if mask is not None and x.shape[:2] == mask.shape:
            x = x[mask]
        magnitude = np.abs(x)
        scores.append((node, float(magnitude.max() / max(float(magnitude.mean()), 1e-12))))
    return sorted(scores, key=lambda item: item[1], reverse=True)


def _quantizer_chatter(record: logging.LogRecord) -> bool:
    """False for what onnxruntime.quantization logs on the root logger on every call: a line per tensor
    (INFO) and the advice to pre-process the model (quantisation here runs on the exported graph as is)."""
    if "onnxruntime" not in record.pathname:
        return True
    return record.levelno >= logging.WARNING and "pre-processing" not in record.getMessage()


def quantize_file(source: Path, target: Path, exclude: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    root.addFilter(_quantizer_chatter)
    try:
        quantize_dynamic(
            str(source), str(target), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=exclude
        )
    except Exception as err:  # onnxruntime.quantization raises plain exceptions
        raise CheckFailed(f"{source}: dynamic quantisation failed: {err}") from err
    finally:
        root.removeFilter(_quantizer_chatter)


def quantize_until_gate(
    source: Path,
    target: Path,
    task: str,
    feeds: dict[str, np.ndarray],
    *,
    reference: np.ndarray,
    output: str,
    min_cosine: float,
    min_top1: float,
    max_fp32_nodes: int,
    steps: list[StepResult],
    what: str,
):
    """Quantise ``source`` into ``target``, keeping more outlier-heavy nodes fp32 on each try until the
    gate passes. Returns (gate figures, int8 session); CheckFailed listing every try otherwise."""
    ranked: list[str] = []  # computed only if the fully quantised model misses the gate
    attempts = []
    for keep in FALLBACK_SCHEDULE:
        if keep > max_fp32_nodes:
            break
        if keep and not ranked:
            ranked = [node for node, _ in activation_outliers(source, feeds)]
        if keep > len(ranked) // 2:  # at least half of the nodes stay int8
            break
        with Timer() as timer:
            quantize_file(source, target, ranked[:keep])
            session = ort_session(target)
            result = gate(
                task, reference, run(session, feeds)[output], min_cosine=min_cosine, min_top1=min_top1
            )
            result["fp32_nodes"] = ranked[:keep]
        attempts.append(result)
        steps.append(
            StepResult("quantize+gate", "ok" if result["passed"] else "failed", timer.elapsed, result)
        )
        if result["passed"]:
            return result, session
    lines = "\n".join(
        f"- {output} with {len(r['fp32_nodes'])} nodes kept fp32: {r['kind']} "
        f"{gate_figure(r):.4f} < {r['threshold']}"
        for r in attempts
    )
    raise CheckFailed(
        f"int8 gate of {what} failed on {attempts[-1]['samples']} samples; nothing published:\n{lines}"
    )


def quantize(
    ref: str,
    *,
    repository: str | Path | None = None,
    min_cosine: float = DEFAULT_MIN_COSINE,
    min_top1: float = DEFAULT_MIN_TOP1,
    speed_seconds: float = 1.0,
    max_fp32_nodes: int = FALLBACK_SCHEDULE[-1],
    hook=None,
) -> ConversionResult:
    """Quantise ``NAME`` (its latest fp32 version) or ``NAME:VERSION`` and publish the next version."""
    for flag, value in (("--min-cosine", min_cosine), ("--min-top1", min_top1)):
        if not 0.0 <= value <= 1.0:
            raise InvalidArgument(f"{flag}: must be between 0 and 1, got {value!r}", field=flag[2:])
    if isinstance(max_fp32_nodes, bool) or not isinstance(max_fp32_nodes, int) or max_fp32_nodes < 0:
        raise InvalidArgument(
            f"--max-fp32-nodes: must be an integer >= 0, got {max_fp32_nodes!r}", field="max_fp32_nodes"
        )
    if speed_seconds <= 0:
        raise InvalidArgument(f"--speed-seconds: must be > 0, got {speed_seconds!r}", field="speed_seconds")
    name, version = parse_ref(ref)
    repo = Repository(repository, hook=hook)
    version = repo.latest_fp32(name) if version is None else repo.require(name, version)
    source_manifest = repo.manifest(name, version)
    if source_manifest.get("precision") != "fp32":
        raise InvalidArgument(
            f"{name}:{version} is {source_manifest.get('precision')}, not fp32; quantise an fp32 version",
            field="version",
        )
    source_dir = repo.version_dir(name, version)
    if not (source_dir / "model.onnx").is_file():
        raise InvalidArgument(f"{name}:{version} has no model.onnx to quantise", field="name")
    steps: list[StepResult] = []

    with repo.stage(name) as staged:
        target = staged.dir / "model.onnx"
        carry_tokenizer(source_manifest, source_dir, staged.dir)
        carry_model_card(source_manifest, source_dir, staged.dir)
        inputs = EntryInputs(source_manifest, source_dir)
        feeds = inputs.feeds(GATE_BATCH)
        output = source_manifest["outputs"][0]["name"]
        fp32_session = ort_session(source_dir / "model.onnx")
        result, int8_session = quantize_until_gate(
            source_dir / "model.onnx",
            target,
            source_manifest["task"],
            feeds,
            reference=run(fp32_session, feeds)[output],
            output=output,
            min_cosine=min_cosine,
            min_top1=min_top1,
            max_fp32_nodes=max_fp32_nodes,
            steps=steps,
            what=f"{name}:{version}",
        )
        gate_figures = {k: v for k, v in result.items() if k != "fp32_nodes"}

        with Timer() as timer:
            speed = measure_speed(fp32_session, int8_session, inputs, speed_seconds)
        steps.append(StepResult("speed", "ok", timer.elapsed, speed))
        fp32_size = (source_dir / "model.onnx").stat().st_size
        int8_size = target.stat().st_size
        manifest = {k: v for k, v in source_manifest.items() if k not in _NOT_INHERITED}
        manifest.update(
            exporter=METHOD,
            precision="int8",
            parity={
                "reference": f"{name}:{version} (fp32)",
                "max_abs_err": result["max_abs_err"],
                "passed": True,
                "gate": gate_figures,
            },
            quantization={
                "method": METHOD,
                "weight_type": "QInt8",
                "per_channel": True,
                "fp32_nodes": result["fp32_nodes"],
                "source_version": version,
                "gate": gate_figures,
                "model_bytes": {"fp32": fp32_size, "int8": int8_size, "ratio": int8_size / fp32_size},
                "throughput": speed,
            },
        )
        log.info(
            "int8 %s: %.1f%% of fp32 size, speed ratio b1 %.2f b32 %.2f",
            name,
            100 * int8_size / fp32_size,
            speed["batch_1"]["ratio"],
            speed["batch_32"]["ratio"],
        )
        if all(row["ratio"] < 1.0 for row in speed.values()):
            log.warning(
                "int8 %s is slower than fp32 in-process at batch %s (small models gain nothing from int8 "
                "kernels); `rollback %s` serves fp32 again",
                name,
                " and ".join(str(b) for b in SPEED_BATCHES),
                name,
            )
        config = repo.config(name)
        config.version_policy.CopyFrom(version_policy("latest"))
        return publish(repo, staged, steps, manifest=manifest, config=config)
