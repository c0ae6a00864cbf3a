"""The two images for real, with podman: what the images declare (non-root user, HEALTHCHECK, version
labels), both of them serving the session repository in one pod (deploy.container_test, what
`make container-test` runs), and an interrupted test leaving nothing behind.

Skipped, with the reason, where podman is not installed or the images are not built from this
checkout's code (``images.stale_reason``): `make test` does not need podman; `make container-test`
installs it, builds the images and runs this path."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from importlib import metadata

import pytest

from deploy import container_test, images, podman

pytestmark = [
    pytest.mark.containers,
    pytest.mark.skipif(
        shutil.which("podman") is None,
        reason="podman is not installed: `make container-test` installs it (apt) and runs this path",
    ),
]


@pytest.fixture(scope="module")
def built() -> dict[str, str]:
    names = images.image_names()
    # Images older than the code they hold would test that older code: `make images` rebuilds them.
    reasons = [reason for role, name in names.items() if (reason := images.stale_reason(role, name))]
    if reasons:
        pytest.skip("; ".join(reasons) + ": run `make images` (not part of `make test`)")
    return names


def _pods_of(pid: int) -> list[str]:
    done = podman.podman(
        "pod", "ps", "--filter", f"label={container_test.POD_LABEL}={pid}", "--format", "{{.Name}}"
    )
    return done.stdout.split()


def test_images_run_as_non_root_with_a_health_check_and_version_labels(built):
    version = images.project_version()
    expected = {
        "triton-cpu": (
            "1000:1000",
            "/v2/health/ready",
            {"io.modelpack.triton.version": images.TRITON_VERSION},
        ),
        "bento": ("1034:1034", "/readyz", {"io.modelpack.bentoml.version": metadata.version("bentoml")}),
    }
    for role, image in built.items():
        inspected = podman.image_inspect(image)  # podman keeps HEALTHCHECK beside Config, not in it
        user, health_path, own_labels = expected[role]
        assert inspected["Config"]["User"] == user, (image, inspected["Config"]["User"])
        test = inspected["Healthcheck"]["Test"]
        assert test[0] == "CMD" and health_path in " ".join(test), (image, test)
        labels = inspected["Labels"]
        assert labels["org.opencontainers.image.version"] == version
        assert own_labels.items() <= labels.items(), (image, labels)
        assert len(labels[podman.INPUTS_LABEL]) == 64
        assert labels["org.opencontainers.image.base.name"]
    # The Bento image's user bentoml is uid 1034: the manifests' runAsUser.
    uid = subprocess.run(
        [podman.podman_binary(), "run", "--rm", "--entrypoint", "id", built["bento"], "-u"],
        capture_output=True,
        text=True,
        timeout=120,
        env=podman.podman_env(),
    )
    assert uid.stdout.strip() == "1034", uid.stderr


def test_both_images_serve_the_repository_in_one_pod(built, model_repo):
    result = container_test.container_test(repository=model_repo, deadline_s=300)
    assert result.passed, result.line()
    assert (
        result.cosine_bento >= container_test.MIN_COSINE and result.cosine_triton >= container_test.MIN_COSINE
    )
    assert result.healthy == {"triton": True, "bento": True}
    assert sorted(result.models) == ["image_classifier", "minilm", "minilm_text", "minilm_tokenizer"]
    assert result.triton_ready_s > 0 and result.bento_ready_s > 0
    assert _pods_of(os.getpid()) == []


def test_an_interrupted_test_removes_its_pod(built, model_repo):
    """SIGTERM while the containers start: the pod and its containers are gone afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy.images", "test", "--repository", str(model_repo)],
        cwd=podman.ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=podman.podman_env(),
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None and not _pods_of(proc.pid):
            time.sleep(0.2)
        assert _pods_of(proc.pid), f"no pod appeared (exit {proc.poll()})"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "removed" in err
    assert _pods_of(proc.pid) == []
    left = podman.podman("ps", "--all", "--format", "json").stdout
    assert not [c for c in json.loads(left or "[]") if f"-{proc.pid}-" in " ".join(c.get("Names", []))]
