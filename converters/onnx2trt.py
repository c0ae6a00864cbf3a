"""ONNX entry -> TensorRT plan, published as a ``tensorrt_plan`` entry (``<name>_trt`` by default).

Optimisation profiles (min/opt/max) come from the entry's dynamic axes: the batch axis runs from 1 to
the config's ``max_batch_size`` (opt: the largest preferred batch size), a sequence axis from 1 to the
manifest's ``max_length`` (opt: 128 or less). TensorRT and an NVIDIA GPU are needed; anywhere else the
command fails with ``MissingDependency`` (exit 2) naming what is missing, before touching the
repository. ``tensorrt`` and CUDA are imported only here, inside the functions.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from converters.inputs import EntryInputs
from converters.model_card import carry_model_card
from converters.parity import ParityReport
from converters.pipeline import carry_tokenizer, parity_step, publish
from converters.results import ConversionResult, StepResult, Timer
from converters.runtime import ort_session, run
from core.errors import CheckFailed, InvalidArgument, MissingDependency
from core.repository import Repository, parse_ref, validate_name
from core.tasks import TensorSpec
from core.triton_config import build_config

log = logging.getLogger(__name__)

OPT_SEQUENCE = 128
FP16_ATOL = 1e-2
FP32_ATOL = 1e-3
PARITY_BATCHES = (1, 8)


def missing_requirements() -> list[str]:
    """What this machine lacks for building a TensorRT plan (empty when it has everything)."""
    missing = []
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        missing.append("the TensorRT Python package (`pip install tensorrt`, import tensorrt failed)")
    try:
        import torch

        has_gpu = torch.cuda.is_available() and torch.cuda.device_count() > 0
    except ImportError:
        has_gpu = False
    if not has_gpu:
        missing.append("an NVIDIA GPU with CUDA (torch.cuda.is_available() is False)")
    return missing


def optimisation_profiles(manifest: dict, max_batch_size: int, preferred: list[int]) -> dict[str, tuple]:
    """Input name -> (min, opt, max) shapes, from the manifest's dynamic axes (-1)."""
    max_length = int(manifest.get("preprocessing", {}).get("max_length", 0) or 0)
    opt_batch = max(preferred) if preferred else max_batch_size
    profiles = {}
    for tensor in manifest["inputs"]:
        bounds = []  # (min, opt, max) per axis
        for axis, dim in enumerate(tensor["shape"]):
            if dim != -1:
                bounds.append((dim, dim, dim))
            elif axis == 0:
                bounds.append((1, min(opt_batch, max_batch_size), max_batch_size))
            elif max_length > 0:
                bounds.append((1, min(OPT_SEQUENCE, max_length), max_length))
            else:
                raise InvalidArgument(
                    f"{tensor['name']}: axis {axis} is dynamic; the manifest has no max_length to bound it",
                    field="inputs",
                )
        profiles[tensor["name"]] = tuple(zip(*bounds, strict=True))
    return profiles


def build_engine(onnx_path: Path, profiles: dict[str, tuple], *, fp16: bool) -> bytes:
    """Parse the ONNX file and build a serialised engine with one optimisation profile."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CheckFailed(f"{onnx_path}: TensorRT cannot parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profiles.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise CheckFailed(f"{onnx_path}: TensorRT failed to build an engine (see its log above)")
    return bytes(plan)


def run_engine(plan: bytes, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    """Run a serialised engine once on the GPU (buffers held by torch CUDA tensors)."""
    import tensorrt as trt
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan)
    context = engine.create_execution_context()
    buffers = {}
    for name, array in feeds.items():
        buffers[name] = torch.from_numpy(np.ascontiguousarray(array)).cuda()
        context.set_input_shape(name, tuple(array.shape))
        context.set_tensor_address(name, buffers[name].data_ptr())
    for name in outputs:
        shape = tuple(context.get_tensor_shape(name))
        buffers[name] = torch.empty(shape, dtype=torch.float32, device="cuda")
        context.set_tensor_address(name, buffers[name].data_ptr())
    stream = torch.cuda.current_stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise CheckFailed("TensorRT execution failed")
    stream.synchronize()
    return {name: buffers[name].cpu().numpy() for name in outputs}


def convert_trt(
    ref: str,
    *,
    repository: str | Path | None = None,
    fp16: bool = False,
    output_name: str | None = None,
    hook=None,
) -> ConversionResult:
    name, version = parse_ref(ref)
    target_name = validate_name(output_name or f"{name}_trt")
    repo = Repository(repository, hook=hook)
    version = repo.latest_fp32(name) if version is None else repo.require(name, version)
    manifest = repo.manifest(name, version)
    source_dir = repo.version_dir(name, version)
    config = repo.config(name)
    if config.platform != "onnxruntime_onnx" or not (source_dir / "model.onnx").is_file():
        raise InvalidArgument(f"{name}:{version} is not an ONNX entry ({config.platform})", field="name")
    if manifest.get("precision") != "fp32":
        raise InvalidArgument(
            f"{name}:{version} is {manifest.get('precision')}; TensorRT builds from an fp32 ONNX version "
            "(pass NAME:VERSION of one)",
            field="version",
        )
    preferred = list(config.dynamic_batching.preferred_batch_size)
    profiles = optimisation_profiles(manifest, config.max_batch_size, preferred)
    missing = missing_requirements()
    if missing:
        raise MissingDependency(
            f"tensorrt: cannot build a TensorRT plan of {name}:{version} on this machine: missing "
            + " and ".join(missing)
            + "; run it where both are present. The repository is unchanged."
        )

    steps: list[StepResult] = []
    with Timer() as timer:
        plan = build_engine(source_dir / "model.onnx", profiles, fp16=fp16)
    steps.append(StepResult("build", "ok", timer.elapsed, {"profiles": profiles, "fp16": fp16}))
    outputs = [spec["name"] for spec in manifest["outputs"]]
    atol = FP16_ATOL if fp16 else FP32_ATOL
    with repo.stage(target_name) as staged:
        (staged.dir / "model.plan").write_bytes(plan)
        carry_tokenizer(manifest, source_dir, staged.dir)
        carry_model_card(manifest, source_dir, staged.dir)
        with Timer() as timer:
            inputs = EntryInputs(manifest, source_dir)
            session = ort_session(source_dir / "model.onnx")
            report = ParityReport(atol=atol, rtol=0.0)
            for batch in PARITY_BATCHES:
                feeds = inputs.feeds(batch)
                expected = run(session, feeds, outputs)
                got = run_engine(plan, feeds, outputs)
                for output in outputs:
                    report.add(f"{output}[batch={batch}]", got[output], expected[output])
            report.cases = [
                f"the entry's fixed inputs, batch {' and '.join(map(str, PARITY_BATCHES))}, vs ONNX Runtime"
            ]
        steps.append(parity_step(report, timer.elapsed))
        report.raise_if_failed(f"{target_name} (TensorRT) against {name}:{version} (ONNX Runtime)")

        import tensorrt as trt

        new_manifest = {
            k: v for k, v in manifest.items() if k not in ("name", "version", "size_bytes", "created_at")
        }
        new_manifest.update(
            exporter=f"tensorrt {trt.__version__}",
            precision="fp16" if fp16 else "fp32",
            parity=report.to_manifest() | {"reference": f"{name}:{version} (ONNX Runtime)"},
            tensorrt={"profiles": {k: [list(s) for s in v] for k, v in profiles.items()}, "fp16": fp16},
        )
        new_manifest["versions"] = dict(manifest["versions"], tensorrt=trt.__version__)
        specs = [TensorSpec.from_manifest(t) for t in manifest["inputs"]]
        new_config = build_config(
            target_name,
            specs,
            [TensorSpec.from_manifest(t) for t in manifest["outputs"]],
            platform="tensorrt_plan",
            max_batch_size=config.max_batch_size,
            preferred_batch_sizes=preferred,
            max_queue_delay_us=config.dynamic_batching.max_queue_delay_microseconds,
            instance_kind="gpu",
            response_cache=config.response_cache.enable,  # as the ONNX entry it is built from
        )
        return publish(repo, staged, steps, manifest=new_manifest, config=new_config)
