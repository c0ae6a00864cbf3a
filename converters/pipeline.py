"""What the converters share at the end: the tokenizer carried into a derived version, the parity
step, and publishing the staged version with its manifest and config.

``publish`` is the one place every converter publishes through, so what every entry gets is decided
here, from the task registry: its ``model_warmup`` (the entry's real input shapes), and for a task
whose input kind is text, its companions (``core.companions``: ``NAME_tokenizer`` and the ensemble
``NAME_text``), written by the repository in the same commit. A new text task gets them as it is.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from converters.parity import ParityReport
from converters.results import ConversionResult, StepResult, Timer
from core.companions import length_buckets
from core.repository import Repository, Staged
from core.tasks import TASK_SPECS
from core.triton_config import WarmupSample, set_warmup

# The model file of every NAME_tokenizer version (Triton's python backend runs it).
TOKENIZER_MODEL = Path(__file__).resolve().parent / "assets" / "tokenizer_model.py"


def carry_tokenizer(manifest: dict, source_dir: Path, target_dir: Path) -> None:
    """Copy the source version's tokenizer folder (text entries) into a version derived from it."""
    tokenizer = manifest.get("preprocessing", {}).get("tokenizer")
    if tokenizer:
        shutil.copytree(source_dir / tokenizer, target_dir / tokenizer)


def parity_step(report: ParityReport, duration_s: float) -> StepResult:
    return StepResult("parity", "ok" if report.passed else "failed", duration_s, report.to_manifest())


def warmup_samples(manifest: dict, config: mc.ModelConfig) -> list[WarmupSample]:
    """The requests Triton warms the entry up with, at its real input shapes: text entries at batch 1
    for every length its tokenizer model pads to (``length_buckets`` of its max_length) and at the
    largest preferred batch size for the shortest; other entries at batch 1 and the largest preferred
    batch size, at their declared dims (an image's C,H,W)."""
    names = [tensor.name for tensor in config.input]
    preferred = list(config.dynamic_batching.preferred_batch_size)
    largest = max(preferred) if preferred else min(16, config.max_batch_size)
    batches = sorted({1, max(1, largest)}) if config.max_batch_size > 0 else [1]
    if TASK_SPECS[manifest["task"]].input_kind == "text":
        lengths = length_buckets(int(manifest["preprocessing"]["max_length"]))
        samples = [WarmupSample(1, {name: (length,) for name in names}) for length in lengths]
        return samples + [WarmupSample(b, {name: (lengths[0],) for name in names}) for b in batches[1:]]
    # The config's dims, a dynamic axis (-1) at the size parity ran it at (the signature's sample), else
    # 1; a [batch] tensor's dims are [1] (reshaped to [] for the model), as a client sends them.
    samples = {d["name"]: d.get("sample") for d in (manifest.get("signature") or {}).get("inputs", [])}

    def warm_dims(tensor: mc.ModelInput) -> tuple[int, ...]:
        sample = samples.get(tensor.name) or []
        if len(sample) != len(tensor.dims):
            sample = [1] * len(tensor.dims)
        return tuple(int(d) if d > 0 else max(1, int(s)) for d, s in zip(tensor.dims, sample, strict=True))

    shapes = {tensor.name: warm_dims(tensor) for tensor in config.input}
    return [WarmupSample(b, {name: shapes[name] for name in names}) for b in batches]


def publish(
    repo: Repository, staged: Staged, steps: list[StepResult], *, manifest: dict, config: mc.ModelConfig
) -> ConversionResult:
    config = set_warmup(config, warmup_samples(manifest, config))
    text = TASK_SPECS[manifest["task"]].input_kind == "text"
    with Timer() as timer:
        repo.commit(staged, config, manifest, tokenizer_model=TOKENIZER_MODEL.read_bytes() if text else None)
    outputs = {"path": staged.path, "version": staged.version}
    if text:
        outputs["companions"] = repo.companions(staged.name)
    steps.append(StepResult("publish", "ok", timer.elapsed, outputs))
    published = repo.manifest(staged.name, staged.version)
    return ConversionResult(staged.name, staged.version, staged.path, published, steps)
