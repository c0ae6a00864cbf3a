"""checkov and hadolint over the real deployment files, run once per session, plus deliberately bad
files in the same checkov run to show that the check fails where it should."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy import checks

BAD_MANIFEST = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: careless
  namespace: modelpack
spec:
  selector:
    matchLabels: {app: careless}
  template:
    metadata:
      labels: {app: careless}
    spec:
      containers:
        - name: app
          image: example/app:latest
          securityContext:
            privileged: true
"""

BAD_DOCKERFILE = """\
# checkov:skip=CKV_DOCKER_3
FROM ubuntu:latest
RUN apt-get update && apt-get install -y curl
EXPOSE 22
"""


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    manifest = folder / "careless.yaml"
    manifest.write_text(BAD_MANIFEST, encoding="utf-8")
    dockerfile = folder / "careless.Dockerfile"
    dockerfile.write_text(BAD_DOCKERFILE, encoding="utf-8")
    return {"manifest": manifest, "dockerfile": dockerfile}


@pytest.fixture(scope="module")
def checkov_run(tmp_path_factory, bad_files) -> tuple[checks.CheckResult, list[Path]]:
    """One checkov run (it is slow to start) over every overlay, every Dockerfile and the bad files."""
    rendered = checks.render_all(tmp_path_factory.mktemp("rendered"))
    ours = [*rendered.values(), *checks.dockerfiles()]
    return checks.run_checkov([*ours, *bad_files.values()]), ours


def test_there_is_a_dockerfile_to_check():
    assert [p.name for p in checks.dockerfiles()] == [
        "bento.Dockerfile",
        "triton-cpu.Dockerfile",
        "triton.Dockerfile",
    ]


def test_checkov_passes_on_our_files(checkov_run):
    result, ours = checkov_run
    ours_names = {p.name for p in ours}
    ours_problems = [p for p in result.problems if any(name in p for name in ours_names)]
    assert ours_problems == []
    summary = result.details["summary"]
    assert summary["kubernetes"]["resource_count"] >= 3 * 14
    assert summary["dockerfile"]["resource_count"] >= 1


def test_checkov_fails_the_bad_files(checkov_run):
    result, _ = checkov_run
    assert not result.passed
    problems = "\n".join(result.problems)
    for check_id in ("CKV_K8S_16", "CKV_K8S_8", "CKV_K8S_14"):  # privileged, no liveness probe, latest tag
        assert f"{check_id} " in problems and "careless.yaml" in problems
    assert "CKV_DOCKER_7" in problems  # base image on the latest tag
    assert "CKV_DOCKER_3 skipped without a reason" in problems


def test_every_skip_in_our_manifests_has_a_reason():
    for path in (checks.DEPLOY / "k8s").rglob("*.yaml"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if "checkov.io/skip" in line:
                check, _, reason = line.split(":", 1)[1].strip().partition("=")
                assert check.startswith("CKV_") and len(reason.split()) >= 8, (path, line)


@pytest.mark.parametrize("dockerfile", checks.dockerfiles(), ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    result = checks.run_hadolint(dockerfile)
    assert result.passed, result.line()


def test_hadolint_fails_the_bad_dockerfile(bad_files):
    result = checks.run_hadolint(bad_files["dockerfile"])
    assert not result.passed
    codes = " ".join(result.problems)
    assert "DL3007" in codes  # FROM ...:latest
    assert "DL3008" in codes  # apt-get install without versions


def test_triton_image_is_pinned_non_root_and_health_checked():
    text = (checks.DEPLOY / "docker" / "triton.Dockerfile").read_text(encoding="utf-8")
    assert "FROM nvcr.io/nvidia/tritonserver:24.10-py3" in text
    assert "\nUSER 1000:1000\n" in text
    assert "HEALTHCHECK" in text and "/v2/health/ready" in text
    # One path for models: the release downloaded where the image runs; nothing is baked in.
    ignore = (checks.DEPLOY / "docker" / "triton.Dockerfile.dockerignore").read_text(encoding="utf-8")
    assert [line for line in ignore.splitlines() if not line.startswith("#")] == ["*"]
    assert not [line for line in text.splitlines() if line.startswith(("COPY", "ADD"))]


def test_cpu_triton_image_runs_the_local_set_up_non_root_and_health_checked():
    """The CPU image installs Triton with local_triton/setup.sh itself (no copy of its steps) and starts
    it through local_triton.entrypoint (Installation.environment), as uid 1000 like NVIDIA's image."""
    text = (checks.DEPLOY / "docker" / "triton-cpu.Dockerfile").read_text(encoding="utf-8")
    assert "RUN bash local_triton/setup.sh --server-only python3" in text
    assert 'ENTRYPOINT ["python3", "-m", "local_triton.entrypoint"]' in text
    assert "\nUSER 1000:1000\n" in text and "useradd --uid 1000" in text
    assert "HEALTHCHECK" in text and "/v2/health/ready" in text
    assert "ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm" in text


def test_bento_image_step_adds_a_ready_health_check_as_the_bento_user():
    text = (checks.DEPLOY / "docker" / "bento.Dockerfile").read_text(encoding="utf-8")
    assert "FROM ${BENTO_IMAGE}" in text and "\nUSER 1034:1034\n" in text
    assert "HEALTHCHECK" in text and "127.0.0.1:3000/readyz" in text
