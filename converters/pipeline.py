"""The last step every converter shares: write the manifest and config, publish the staged version."""

from __future__ import annotations

from tritonclient.grpc import model_config_pb2 as mc

from converters.parity import ParityReport
from converters.repository import Repository, Staged
from converters.results import ConversionResult, StepResult, Timer


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
