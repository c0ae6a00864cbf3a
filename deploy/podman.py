"""podman as this project runs it: deploy/containers.conf, the docker image format, one error per
failed call naming the command; what the image builds ask of local images (labels, ids, sizes, the
inputs digest that makes a build idempotent)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from core.errors import CheckFailed, MissingDependency, Unavailable

ROOT = Path(__file__).resolve().parents[1]
CONTAINERS_CONF = ROOT / "deploy" / "containers.conf"
SETUP_HINT = "run `make images` (it installs podman, runc and debootstrap with apt)"
# The sha256 of what an image is built from: an image whose label matches is not built again.
INPUTS_LABEL = "io.modelpack.inputs-sha256"


def podman_env() -> dict[str, str]:
    """The environment podman (and bentoml containerize, which calls it) runs with: this project's
    containers.conf unless the caller chose another, and the docker image format, since OCI images
    drop HEALTHCHECK."""
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    env.setdefault("BUILDAH_FORMAT", "docker")
    return env


def podman_binary() -> str:
    found = shutil.which("podman")
    if found is None:
        raise MissingDependency(f"podman: not found on PATH; {SETUP_HINT}")
    return found


def podman(*args: str, timeout: float = 120, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run ``podman ARGS``; a failure raises CheckFailed with the command and podman's own words."""
    command = [podman_binary(), *args]
    kwargs.setdefault("capture_output", True)
    try:
        done = subprocess.run(command, text=True, timeout=timeout, env=podman_env(), **kwargs)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"podman {' '.join(args[:2])}: no answer within {timeout:.0f} s") from None
    if check and done.returncode != 0:
        said = (done.stderr or "").strip().splitlines()
        raise CheckFailed(f"podman {' '.join(args[:3])}: exit {done.returncode}: {said[-1] if said else ''}")
    return done


def image_labels(image: str) -> dict[str, str] | None:
    """The labels of a local image, or None when there is no such image."""
    done = podman("image", "inspect", "--format", "{{json .Labels}}", image, check=False)
    if done.returncode != 0:
        return None
    return json.loads(done.stdout or "null") or {}


def image_inspect(image: str) -> dict:
    return json.loads(podman("image", "inspect", image).stdout)[0]


def image_id(image: str) -> str:
    return podman("image", "inspect", "--format", "{{.Id}}", image).stdout.strip()


def image_size(image: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())


def up_to_date(image: str, inputs: str) -> bool:
    labels = image_labels(image)
    return labels is not None and labels.get(INPUTS_LABEL) == inputs


def current_id(image: str) -> str | None:
    done = podman("image", "inspect", "--format", "{{.Id}}", image, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def drop_replaced(image: str, previous: str | None) -> None:
    """Remove the image that ``image`` pointed at before a rebuild, now untagged (its layers that the
    new one shares stay). The build stage's images stay: they are the layer cache of the next build."""
    if previous is None or previous == current_id(image):
        return
    tags = podman("image", "inspect", "--format", "{{json .RepoTags}}", previous, check=False)
    if tags.returncode == 0 and json.loads(tags.stdout or "[]") in ([], None):
        podman("rmi", previous, check=False)


def digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def tree_digest(root: Path, exclude: tuple[str, ...] = ()) -> str:
    """sha256 over every file's relative path and bytes under ``root`` (sorted; links by target)."""
    parts: list[bytes | str] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel in exclude or "__pycache__" in path.parts:
            continue
        if path.is_symlink():
            parts += [rel, "->" + os.readlink(path)]
        elif path.is_file():
            parts += [rel, path.read_bytes()]
    return digest(*parts)


def tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return f"(no log at {path})"
    return " | ".join(text[-lines:]) + f" (log: {path})"
