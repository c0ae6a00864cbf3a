"""What the converters share at the end: the tokenizer carried into a derived version, the parity
step, and publishing the staged version with its manifest and config."""

from __future__ import annotations

import shutil
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from converters.parity import ParityReport
from converters.results import ConversionResult, StepResult, Timer
from core.repository import Repository, Staged


def carry_tokenizer(manifest: dict, source_dir: Path, target_dir: Path) -> None:
    """Copy the source version's tokenizer folder (text entries) into a version derived from it."""
    tokenizer = manifest.get("preprocessing", {}).get("tokenizer")
    if tokenizer:
        shutil.copytree(source_dir / tokenizer, target_dir / tokenizer)


def parity_step(report: ParityReport, duration_s: float) -> StepResult:
    return StepResult("parity", "ok" if report.passed else "failed", duration_s, report.to_manifest())


def publish(
    repo: Repository, staged: Staged, steps: list[StepResult], *, manifest: dict, config: mc.ModelConfig
) -> ConversionResult:
    with Timer() as timer:
        repo.commit(staged, config, manifest)
    steps.append(StepResult("publish", "ok", timer.elapsed, {"path": staged.path, "version": staged.version}))
    published = repo.manifest(staged.name, staged.version)
    return ConversionResult(staged.name, staged.version, staged.path, published, steps)
