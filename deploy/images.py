"""The container images, built and run with podman: the Bento image and the CPU Triton image.

    python -m deploy.images build [--base auto|standard|local] [--ca-bundle auto|PATH|none] [--mirror URL]
    python -m deploy.images test [--repository DIR] [--timeout S]
    python -m deploy.images sizes

``build`` (``make images``) builds, each only when its inputs changed (the sha256 of the inputs is a
label of the image, so a second run with nothing changed builds nothing):

- the **CPU Triton image** (``deploy/docker/triton-cpu.Dockerfile``): ``local_triton/setup.sh`` run
  inside the build on the pinned nvidia-pytriton wheel, so the image holds the very tritonserver,
  python-based onnxruntime backend and numpy<2 venv of the local set-up;
- the **Bento image**: ``bentoml containerize --backend podman`` of the bento ``make bento`` built
  (BentoML's own Dockerfile template), then ``deploy/docker/bento.Dockerfile`` on top: a HEALTHCHECK
  and BentoML's store folders, so that it runs on a read-only root filesystem.

Both start from a base that can be pulled (``python:3.11-slim-bookworm`` for Triton, BentoML's
``python:3.11-slim`` for the Bento) or, where no registry is reachable, from a Debian bookworm base
built here with debootstrap (``localhost/modelpack-base:bookworm``). The Bento then goes through
BentoML's supported option for that, ``docker.base_image``: a copy of ``bentofile.yaml`` with that one
key set builds a second bento in a store of its own (``.containers/bentoml``), so ``modelpack:latest`` in
``bentos/`` stays the bento of ``make bento``. ``--base auto`` (the default) takes the standard bases
when they are present or can be pulled, else the local one.

``--ca-bundle`` (default ``auto``: ``$SSL_CERT_FILE``, else ``/etc/ssl/certs/ca-certificates.crt`` when
there is one) is mounted read-only over the image's bundle during every build step, so pip, uv and apt
reach the package registries through a TLS-inspecting proxy; nothing of it stays in the images.

``test`` (``make container-test``) runs both images in one pod and checks them end to end:
``deploy/container_test.py``.

podman runs with ``deploy/containers.conf`` (``CONTAINERS_CONF``): runc and explicit ulimits, which
this kind of machine needs. Builds write their log to ``runs/images/<image>.log``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from core.errors import CheckFailed, InvalidArgument, MissingDependency, NotFound, ToolkitError, Unavailable
from deploy.podman import (
    INPUTS_LABEL,
    ROOT,
    SETUP_HINT,
    current_id,
    digest,
    drop_replaced,
    image_id,
    image_labels,
    image_size,
    podman,
    podman_env,
    tail,
    tree_digest,
    up_to_date,
)

log = logging.getLogger(__name__)

DEPLOY = ROOT / "deploy"
TRITON_DOCKERFILE = DEPLOY / "docker" / "triton-cpu.Dockerfile"
BENTO_DOCKERFILE = DEPLOY / "docker" / "bento.Dockerfile"
SETUP_SCRIPT = ROOT / "local_triton" / "setup.sh"
WORK = ROOT / ".containers"  # the derived bento store; temporary build contexts live in /tmp
LOGS = ROOT / "runs" / "images"

# The tritonserver the pinned nvidia-pytriton 0.7.0 wheel (local_triton/setup.sh) ships.
TRITON_VERSION = "2.51.0"
TRITON_CPU_STANDARD_BASE = "docker.io/library/python:3.11-slim-bookworm"
LOCAL_BASE = "localhost/modelpack-base:bookworm"
DEBIAN_SUITE = "bookworm"
# python3.11 with venv and pip, the CA store, and the shared libpython the python backend stub links.
DEBIAN_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates", "libpython3.11")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEBIAN_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CA_BUNDLE_IN_IMAGE = str(DEBIAN_CA_BUNDLE)
# What the local base image says about itself: a Python image like python:3.11-slim, whose Python
# pip may install into (the image is the environment, so Debian's EXTERNALLY-MANAGED marker is
# removed), and whose TLS clients (pip, uv, requests) use the Debian CA store.
LOCAL_BASE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    f"ENV SSL_CERT_FILE={CA_BUNDLE_IN_IMAGE}",
    'CMD ["python3"]',
)
# Bumped when what the base recipe does changes without its inputs changing.
LOCAL_BASE_RECIPE = "1"

BENTO_NAME = "modelpack"


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]


def image_names(version: str | None = None) -> dict[str, str]:
    """The images this module builds, by role."""
    version = version or project_version()
    return {
        "triton-cpu": f"localhost/modelpack-triton-cpu:{version}",
        "bento": f"localhost/modelpack-bento:{version}",
    }


# ---- inputs, labels ---------------------------------------------------------------------------------


# The files of this checkout each image is made of (bentofile.yaml's include and pins, the Dockerfiles,
# the CPU image's build context): an image built at a revision where these were what they are now holds
# this checkout's code.
IMAGE_SOURCES = {
    "triton-cpu": (
        "local_triton",
        "core/__init__.py",
        "core/errors.py",
        "deploy/docker/triton-cpu.Dockerfile",
    ),
    "bento": (
        "service.py",
        "service.yaml",
        "core",
        "serving",
        "bentofile.yaml",
        "requirements-service.txt",
        "deploy/docker/bento.Dockerfile",
    ),
}


def stale_reason(role: str, image: str) -> str | None:
    """Why ``image`` may not hold this checkout's code, or None when it does: the revision it was built
    from (its ``org.opencontainers.image.revision`` label) and this checkout differ in ``IMAGE_SOURCES``
    (uncommitted changes included), or that revision is unknown here."""
    labels = image_labels(image)
    if labels is None:
        return f"{image} is not built"
    return changed_since(role, labels.get("org.opencontainers.image.revision", ""), image)


def changed_since(role: str, revision: str, image: str) -> str | None:
    """What of ``role``'s ``IMAGE_SOURCES`` differs between ``revision`` and this checkout (see
    ``stale_reason``), said of ``image``; None when nothing does."""
    if not revision or revision.endswith("-dirty"):
        return f"{image} was built from {'uncommitted changes' if revision else 'no known revision'}"
    paths = IMAGE_SOURCES[role]
    try:
        done = subprocess.run(
            ["git", "-C", str(ROOT), "diff", "--name-only", revision, "--", *paths],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{image}: git could not compare its revision {revision[:12]} with this checkout ({err})"
    if done.returncode != 0:
        return f"{image} was built at {revision[:12]}, a revision this checkout does not have"
    changed = done.stdout.split()
    if changed:
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        return f"{image} was built at {revision[:12]}; {shown} changed since"
    return None


def git_revision() -> str | None:
    """HEAD of the checkout (``-dirty`` with uncommitted changes to tracked files), or None."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def common_labels(inputs: str, base: str) -> dict[str, str]:
    labels = {
        "org.opencontainers.image.version": project_version(),
        "org.opencontainers.image.created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "org.opencontainers.image.base.name": base,
        INPUTS_LABEL: inputs,
    }
    revision = git_revision()
    if revision:
        labels["org.opencontainers.image.revision"] = revision
    return labels


@dataclass
class ImageResult:
    """One image of ``build``: whether it was built or already up to date, how long, how big."""

    role: str
    image: str
    built: bool
    seconds: float
    size_bytes: int
    base: str

    def line(self) -> str:
        what = f"built in {self.seconds:.0f} s" if self.built else "up to date"
        return f"{self.role}: {self.image} {what}, {self.size_bytes / 1e6:.0f} MB, base {self.base}"


# ---- the local Debian base --------------------------------------------------------------------------


def apt_mirror(
    sources: tuple[Path, ...] = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d")),
) -> str:
    """The Debian mirror apt uses here (the first ``deb``/``URIs:`` entry whose path ends in
    ``/debian``), else deb.debian.org."""
    files: list[Path] = []
    for source in sources:
        if source.is_dir():
            files += sorted(p for p in source.iterdir() if p.suffix in (".list", ".sources"))
        elif source.is_file():
            files.append(source)
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split("#", 1)[0].split()
            urls = words[1:] if words[:1] == ["URIs:"] else [w for w in words[1:] if "://" in w][:1]
            if words[:1] in (["deb"], ["URIs:"]):
                for url in urls:
                    if url.rstrip("/").endswith("/debian"):
                        return url.rstrip("/")
    return DEFAULT_MIRROR


def build_local_base(mirror: str | None = None, log_dir: Path = LOGS) -> ImageResult:
    """``debootstrap --variant=minbase`` of Debian bookworm with Python 3.11, imported as LOCAL_BASE."""
    inputs = digest(LOCAL_BASE_RECIPE, DEBIAN_SUITE, *DEBIAN_PACKAGES, *LOCAL_BASE_CHANGES)
    if up_to_date(LOCAL_BASE, inputs):
        return ImageResult("base", LOCAL_BASE, False, 0.0, image_size(LOCAL_BASE), f"debian {DEBIAN_SUITE}")
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise MissingDependency(f"debootstrap: not found on PATH; {SETUP_HINT}")
    if os.geteuid() != 0:
        raise MissingDependency(
            "the local base image needs root (debootstrap, rootful podman): run as root, or use "
            "--base standard where python:3.11-slim can be pulled"
        )
    mirror = mirror or apt_mirror()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "base.log"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="modelpack-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        command = [
            debootstrap,
            "--variant=minbase",
            f"--include={','.join(DEBIAN_PACKAGES)}",
            DEBIAN_SUITE,
            str(rootfs),
            mirror,
        ]
        log.info("building %s: %s (log: %s)", LOCAL_BASE, " ".join(command), log_path)
        with open(log_path, "w", encoding="utf-8") as out:
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=1800)
        if done.returncode != 0:
            raise CheckFailed(
                f"debootstrap {DEBIAN_SUITE} from {mirror}: exit {done.returncode}: {tail(log_path)}"
            )
        for marker in rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / leftover).glob("*"):
                if path.is_file():
                    path.unlink()
        labels = {
            "org.opencontainers.image.title": "modelpack-base",
            "org.opencontainers.image.description": f"Debian {DEBIAN_SUITE} minbase, Python 3.11",
            "org.opencontainers.image.created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            INPUTS_LABEL: inputs,
        }
        changes = [*LOCAL_BASE_CHANGES, *(f"LABEL {k}={json.dumps(v)}" for k, v in labels.items())]
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            argv = ["import"]
            for change in changes:
                argv += ["--change", change]
            podman(*argv, "-", LOCAL_BASE, stdin=tar.stdout, timeout=900)
        finally:
            tar.stdout.close()
            tar.wait(timeout=60)
        if tar.returncode != 0:
            raise CheckFailed(f"tar of the debootstrap tree {rootfs}: exit {tar.returncode}")
    return ImageResult(
        "base",
        LOCAL_BASE,
        True,
        time.perf_counter() - start,
        image_size(LOCAL_BASE),
        f"debian {DEBIAN_SUITE}",
    )


# ---- choosing the bases -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Bases:
    """The base of each image, and which kind they are."""

    kind: str  # "standard" | "local"
    triton: str
    bento: str | None  # None: BentoML's own template base (the bentofile's distro and Python)
    reason: str = ""
    base_result: ImageResult | None = None  # the local base's build, when it is used


def pullable(image: str) -> tuple[bool, str]:
    """Whether ``image`` is here or can be pulled now, and podman's reason when not."""
    if podman("image", "exists", image, check=False).returncode == 0:
        return True, "present"
    done = podman("pull", "--quiet", image, check=False, timeout=900)
    if done.returncode == 0:
        return True, "pulled"
    said = (done.stderr or "").strip().splitlines()
    return False, said[-1] if said else f"exit {done.returncode}"


def choose_bases(choice: str, bento_from: str, mirror: str | None) -> Bases:
    """``standard``: the pulled images (an error names --base local when they cannot be pulled);
    ``local``: the debootstrap base for both; ``auto``: standard when both can be had, else local."""
    if choice not in ("auto", "standard", "local"):
        raise InvalidArgument(f"--base: {choice!r} is not one of auto, standard, local", field="base")
    if choice in ("auto", "standard"):
        missing = []
        for image in (TRITON_CPU_STANDARD_BASE, bento_from):
            ok, why = pullable(image)
            if not ok:
                missing.append(f"{image}: {why}")
        if not missing:
            return Bases("standard", TRITON_CPU_STANDARD_BASE, None, "pulled")
        if choice == "standard":
            raise Unavailable(
                "--base standard: cannot pull "
                + "; ".join(missing)
                + " (use --base local: a Debian base built here)"
            )
        reason = "cannot pull " + "; ".join(missing)
        log.info("standard bases unavailable (%s): the local Debian base it is", reason)
    else:
        reason = "--base local"
    return Bases("local", LOCAL_BASE, LOCAL_BASE, reason, build_local_base(mirror))


# ---- the CPU Triton image ---------------------------------------------------------------------------


def pinned_wheel() -> tuple[str, str]:
    """(file name, sha256) of the nvidia-pytriton wheel that local_triton/setup.sh pins."""
    text = SETUP_SCRIPT.read_text(encoding="utf-8")
    name = re.search(r'^PYTRITON_WHEEL="([^"]+)"', text, re.MULTILINE)
    sha = re.search(r'^PYTRITON_SHA256="([0-9a-f]{64})"', text, re.MULTILINE)
    if not (name and sha):
        raise CheckFailed(f"{SETUP_SCRIPT}: no PYTRITON_WHEEL/PYTRITON_SHA256 lines to take the wheel from")
    return name.group(1), sha.group(1)


def triton_context_files() -> dict[str, Path]:
    """The CPU Triton image's build context, path in the context -> file here: local_triton/ (setup.sh,
    the backends, the entry point), the two core modules the entry point imports, and the pinned wheel
    where setup.sh looks for it."""
    wheel, _ = pinned_wheel()
    source = ROOT / ".cache" / "wheels" / wheel
    if not source.is_file():
        raise MissingDependency(f"{source}: the pinned Triton wheel is not downloaded; run `make setup`")
    files = {
        path.relative_to(ROOT).as_posix(): path
        for path in sorted((ROOT / "local_triton").rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    for name in ("__init__.py", "errors.py"):
        files[f"core/{name}"] = ROOT / "core" / name
    files[f".cache/wheels/{wheel}"] = source
    return files


def triton_inputs(files: dict[str, Path], base: str) -> str:
    """sha256 of what the CPU Triton image is built from; the wheel counts by its pinned sha256, which
    setup.sh checks in the build."""
    wheel, sha256 = pinned_wheel()
    parts: list[bytes | str] = [TRITON_DOCKERFILE.read_bytes(), image_id(base)]
    for rel, path in files.items():
        parts += [rel, sha256 if path.name == wheel else path.read_bytes()]
    return digest(*parts)


def stage_triton_context(dest: Path, files: dict[str, Path] | None = None) -> None:
    """Copy the build context into the empty folder ``dest``."""
    for rel, path in (files or triton_context_files()).items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest / rel)


def host_ca_bundle(environ: dict[str, str] | None = None) -> Path | None:
    """The bundle ``--ca-bundle auto`` mounts: $SSL_CERT_FILE when it names a file, else Debian's
    system bundle when there is one, else none."""
    environ = os.environ if environ is None else environ
    for candidate in (environ.get("SSL_CERT_FILE"), str(DEBIAN_CA_BUNDLE)):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def ca_volume(ca_bundle: Path | None) -> list[str]:
    if ca_bundle is None:
        return []
    if not ca_bundle.is_file():
        raise NotFound(
            f"--ca-bundle: {ca_bundle} is not a file; give the PEM bundle your TLS proxy is trusted with, "
            "or `none`",
            field="ca-bundle",
        )
    return [f"{ca_bundle}:{CA_BUNDLE_IN_IMAGE}:ro"]


def build_triton_cpu(base: str, ca_bundle: Path | None, image: str, log_dir: Path = LOGS) -> ImageResult:
    files = triton_context_files()
    inputs = triton_inputs(files, base)
    if up_to_date(image, inputs):
        return ImageResult("triton-cpu", image, False, 0.0, image_size(image), base)
    labels = {
        **common_labels(inputs, base),
        "io.modelpack.triton.version": TRITON_VERSION,
        "io.modelpack.triton.wheel": pinned_wheel()[0],
    }
    argv = ["build", "--format", "docker", "-f", str(TRITON_DOCKERFILE), "--build-arg", f"BASE_IMAGE={base}"]
    for volume in ca_volume(ca_bundle):
        argv += ["--volume", volume]
    for key, value in labels.items():
        argv += ["--label", f"{key}={value}"]
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "triton-cpu.log"
    log.info("building %s on %s (log: %s)", image, base, log_path)
    start = time.perf_counter()
    previous = current_id(image)
    with tempfile.TemporaryDirectory(prefix="modelpack-triton-context-") as context:
        stage_triton_context(Path(context), files)
        with open(log_path, "w", encoding="utf-8") as out:
            done = podman(
                *argv,
                "--tag",
                image,
                context,
                check=False,
                capture_output=False,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=3600,
            )
    if done.returncode != 0:
        raise CheckFailed(f"podman build {image}: exit {done.returncode}: {tail(log_path)}")
    drop_replaced(image, previous)
    return ImageResult("triton-cpu", image, True, time.perf_counter() - start, image_size(image), base)


# ---- the Bento image --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BentoRef:
    """A bento in a store: its tag, its folder, the store (BENTOML_HOME)."""

    tag: str
    path: Path
    home: Path

    @property
    def version(self) -> str:
        return self.tag.split(":", 1)[1]

    def info(self) -> dict:
        import yaml

        return yaml.safe_load((self.path / "bento.yaml").read_text(encoding="utf-8"))

    def dockerfile_from(self) -> str:
        """The base image of the Dockerfile BentoML generated for this bento (its first FROM)."""
        text = (self.path / "env" / "docker" / "Dockerfile").read_text(encoding="utf-8")
        found = re.search(r"^FROM\s+(\S+)", text, re.MULTILINE)
        if not found:
            raise CheckFailed(f"{self.path}/env/docker/Dockerfile: no FROM line")
        name = found.group(1)
        return name if "/" in name.split(":")[0] else f"docker.io/library/{name}"

    def content_digest(self) -> str:
        """The bento's files, not its creation time: bento.yaml counts for its docker options only."""
        return digest(
            tree_digest(self.path, exclude=("bento.yaml",)),
            json.dumps(self.info().get("docker"), sort_keys=True),
        )


def bento_env(home: Path) -> dict[str, str]:
    return {
        **podman_env(),
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "True",
        # The classic build path: the image-based one wants uv even with lock_packages: false.
        "BENTOML_ENABLE_FEATURES": "no_image",
    }


def built_bento(home: Path = ROOT / "bentos") -> BentoRef:
    """The bento `make bento` built (its tag is in bentos/.built)."""
    stamp = home / ".built"
    if not stamp.is_file():
        raise NotFound(f"{stamp}: no bento built; run `make bento`", field="bento")
    tag = stamp.read_text(encoding="utf-8").strip()
    name, _, version = tag.partition(":")
    path = home / "bentos" / name / version
    if not path.is_dir():
        raise NotFound(f"bento {tag}: {path} is missing; run `make bento` again", field="bento")
    return BentoRef(tag, path, home)


def bento_on_base(source: BentoRef, base: str, log_path: Path) -> BentoRef:
    """The same bento with ``docker.base_image: base`` (BentoML's supported way to choose the base),
    built from bentofile.yaml with that key set, in a store of its own, version ``<source>-local``."""
    import yaml

    home = WORK / "bentoml"
    version = f"{source.version}-local"
    path = home / "bentos" / BENTO_NAME / version
    if path.is_dir():
        return BentoRef(f"{BENTO_NAME}:{version}", path, home)
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text(encoding="utf-8"))
    docker = bentofile.get("docker") or {}
    # base_image replaces distro (BentoML ignores it then); the template extension stays.
    docker.pop("distro", None)
    bentofile["docker"] = {**docker, "base_image": base}
    home.mkdir(parents=True, exist_ok=True)
    derived = home / "bentofile.yaml"
    derived.write_text(yaml.safe_dump(bentofile, sort_keys=False), encoding="utf-8")
    command = [
        str(Path(sys.executable).parent / "bentoml"),
        "build",
        "-f",
        str(derived),
        "--version",
        version,
    ]
    with open(log_path, "a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        done = subprocess.run(
            [*command, "--output", "tag"],
            cwd=ROOT,
            env=bento_env(home),
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
    if done.returncode != 0 or not path.is_dir():
        raise CheckFailed(f"bentoml build on base {base}: exit {done.returncode}: {tail(log_path)}")
    return BentoRef(f"{BENTO_NAME}:{version}", path, home)


def build_bento(bases: Bases, ca_bundle: Path | None, image: str, log_dir: Path = LOGS) -> ImageResult:
    """``bentoml containerize --backend podman`` of the bento (as ``<image>-bentoml``), then
    deploy/docker/bento.Dockerfile on top of it: the HEALTHCHECK and the labels, no file changes."""
    source = built_bento()
    base = bases.bento or source.dockerfile_from()
    inputs = digest(source.content_digest(), BENTO_DOCKERFILE.read_bytes(), base, image_id(base))
    if up_to_date(image, inputs):
        return ImageResult("bento", image, False, 0.0, image_size(image), base)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "bento.log"
    log_path.write_text("", encoding="utf-8")
    start = time.perf_counter()
    previous = current_id(image)
    bento = source if bases.bento is None else bento_on_base(source, bases.bento, log_path)
    containerized = f"{image}-bentoml"
    command = [
        str(Path(sys.executable).parent / "bentoml"),
        "containerize",
        "--backend",
        "podman",
        "--image-tag",
        containerized,
        "--opt",
        "format=docker",
    ]
    for volume in ca_volume(ca_bundle):
        command += ["--opt", f"volume={volume}"]
    command.append(bento.tag)
    log.info("bentoml containerize --backend podman %s on %s (log: %s)", bento.tag, base, log_path)
    with open(log_path, "a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        done = subprocess.run(
            command, cwd=ROOT, env=bento_env(bento.home), stdout=out, stderr=subprocess.STDOUT, timeout=3600
        )
    # bentoml containerize logs a failed build and may exit 0 all the same: check the image.
    if done.returncode != 0 or image_labels(containerized) is None:
        raise CheckFailed(
            f"bentoml containerize {bento.tag}: exit {done.returncode}, no image {containerized}: "
            + tail(log_path)
        )
    info = bento.info()
    labels = {
        **common_labels(inputs, base),
        "org.opencontainers.image.title": "modelpack-bento",
        "org.opencontainers.image.description": info.get("description") or "modelpack BentoML service",
        "io.modelpack.bentoml.version": info["bentoml_version"],
        "io.modelpack.bento.tag": source.tag,
    }
    argv = [
        "build",
        "--format",
        "docker",
        "-f",
        str(BENTO_DOCKERFILE),
        "--build-arg",
        f"BENTO_IMAGE={containerized}",
    ]
    for key, value in labels.items():
        argv += ["--label", f"{key}={value}"]
    with tempfile.TemporaryDirectory(prefix="modelpack-bento-context-") as context:
        with open(log_path, "a", encoding="utf-8") as out:
            out.write(f"$ podman {' '.join(argv)} --tag {image} {context}\n")
            out.flush()
            done = podman(
                *argv,
                "--tag",
                image,
                context,
                check=False,
                capture_output=False,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=600,
            )
    if done.returncode != 0:
        raise CheckFailed(
            f"podman build {image} from {containerized}: exit {done.returncode}: {tail(log_path)}"
        )
    # The intermediate tag only: its layers are the final image's.
    podman("untag", containerized, containerized)
    drop_replaced(image, previous)
    return ImageResult("bento", image, True, time.perf_counter() - start, image_size(image), base)


def build(
    choice: str = "auto", ca_bundle: Path | None = None, mirror: str | None = None
) -> Iterator[ImageResult]:
    """Both images (and the local base when it is used), each only when its inputs changed; each
    result as soon as its image is done."""
    names = image_names()
    bases = choose_bases(choice, built_bento().dockerfile_from(), mirror)
    if bases.base_result is not None:
        yield bases.base_result
    yield build_triton_cpu(bases.triton, ca_bundle, names["triton-cpu"])
    yield build_bento(bases, ca_bundle, names["bento"])


def sizes() -> list[tuple[str, int | None]]:
    """(image, bytes or None when it is not built) for both images."""
    return [
        (name, image_size(name) if image_labels(name) is not None else None)
        for name in image_names().values()
    ]


# ---- command line -----------------------------------------------------------------------------------


def _ca_bundle(value: str) -> Path | None:
    if value.lower() == "auto":
        return host_ca_bundle()
    return None if value.lower() == "none" else Path(value)


def _raise_on_sigterm(signum, frame) -> None:  # noqa: ARG001
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.images", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser(
        "build", help="build the CPU Triton and the Bento image (when changed)"
    )
    build_parser.add_argument(
        "--base",
        default="auto",
        help="auto (default), standard (pulled python:3.11-slim*) or local (debootstrap)",
    )
    build_parser.add_argument(
        "--ca-bundle",
        type=_ca_bundle,
        default="auto",
        help="PEM bundle mounted over the images' CA bundle while they build: PATH, none, or auto "
        f"(default: $SSL_CERT_FILE, else {DEBIAN_CA_BUNDLE} when present)",
    )
    build_parser.add_argument(
        "--mirror", default=None, help="Debian mirror for the local base (default: apt's)"
    )
    test_parser = commands.add_parser("test", help="run both images in one pod and check them end to end")
    test_parser.add_argument(
        "--repository", type=Path, default=None, help="a repository with minilm (default: convert it afresh)"
    )
    test_parser.add_argument("--timeout", type=float, default=300, help="deadline of each wait, seconds")
    commands.add_parser("sizes", help="the size of each built image")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        if args.command == "build":
            for result in build(args.base, args.ca_bundle, args.mirror):
                print(result.line())
            return 0
        if args.command == "sizes":
            for image, size in sizes():
                print(f"{image}: {'not built' if size is None else f'{size / 1e6:.0f} MB'}")
            return 0
        from deploy.container_test import container_test

        result = container_test(args.repository, args.timeout)
        print(result.line())
        return 0 if result.passed else 1
    except ToolkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as err:
        print(f"error: interrupted ({err or 'Ctrl-C'}); everything started was removed", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
