"""Make a release of the model repository: a copy that NVIDIA's Triton image serves as intended, named
by its content; check one.

    python -m deploy.release check DIR --target cpu|gpu
    python -m deploy.release export SRC DST --target cpu|gpu      # prints the release digest
    python -m deploy.release digest DIR                           # verifies SHA256SUMS, prints it
    python -m deploy.release pin DIR --releases s3://BUCKET/releases --env-file OVERLAY/release.env

The local server runs every ``onnxruntime_onnx`` model through this project's python-based backend,
which pads ragged token inputs itself. NVIDIA's image runs them through its native ONNX Runtime
backend instead, which passes an input marked ``allow_ragged_batch`` to the model as one flattened
1-D tensor (Triton's ragged batching documentation): our text models take ``[batch, seq]``, so such an
entry fails there. And an entry's ``instance_group`` kind decides CPU or GPU, whatever the node has.

``export`` copies the repository (each entry under its publish lock) to a new folder, clears
``allow_ragged_batch`` (the Bento pads the rows of each call it sends, and Triton batches calls of the
same shape), sets every instance group to the target's kind, gives every TensorRT accelerator (GPU)
an engine cache under ``ENGINE_CACHE`` named after the entry's model files (a changed model never
reuses a stale engine), checks the result, writes ``SHA256SUMS`` (every file, ``sha256sum`` format),
and only then moves it into place. The source is not changed.

A release is immutable and content-addressed: its digest is the sha256 of its ``SHA256SUMS``, and it is
uploaded once to ``<releases>/<digest>/`` and never changed. The Kubernetes ConfigMap ``model-release``
(and the ECS task definition) name the digest; each pod's init container downloads that prefix and
checks it against the digest before Triton or the Bento starts (docs/deploy.md). ``pin`` writes the
digest into an overlay's ``release.env``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from core.errors import CheckFailed, InvalidArgument, NotFound, ToolkitError
from core.repository import CONFIG, Repository, sha256_path
from core.triton_config import read_config, write_config

log = logging.getLogger(__name__)

# The instance_group kind each target's nodes need.
KINDS = {"cpu": mc.ModelInstanceGroup.KIND_CPU, "gpu": mc.ModelInstanceGroup.KIND_GPU}
TARGETS = tuple(KINDS)
MODEL_FILES = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan"}
# Where the GPU overlay mounts the TensorRT engine cache (deploy/k8s/overlays/gpu/triton-gpu.yaml).
ENGINE_CACHE = "/cache/tensorrt"
SUMS = "SHA256SUMS"
DIGEST = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class ExportResult:
    source: Path
    destination: Path
    target: str
    models: list[str]
    changes: list[str] = field(default_factory=list)
    digest: str = ""  # the release's name: sha256 of its SHA256SUMS


def _kind(target: str) -> int:
    """The instance_group kind for ``target``; InvalidArgument naming --target when it is not one."""
    if target not in KINDS:
        raise InvalidArgument(f"--target: {target!r} is not one of {', '.join(TARGETS)}", field="target")
    return KINDS[target]


def release_problems(root: str | os.PathLike, target: str) -> list[str]:
    """Every reason NVIDIA's Triton image on ``target`` nodes would not serve ``root`` as intended."""
    want = _kind(target)
    repo = Repository(root)
    if not repo.root.is_dir():
        raise NotFound(f"{repo.root}: no model repository there", field="repository")
    names = repo.models()
    if not names:
        return [f"{repo.root}: no model entries (folders with a config.pbtxt)"]
    problems = []
    for name in names:
        try:
            config = repo.config(name)
        except ToolkitError as err:
            problems.append(f"{name}: {err}")
            continue
        if config.platform not in MODEL_FILES:
            problems.append(
                f"{name}: platform {config.platform!r}; the image serves {', '.join(MODEL_FILES)}"
            )
            continue
        if config.platform == "tensorrt_plan" and target == "cpu":
            problems.append(f"{name}: a TensorRT plan needs a GPU; export it with --target gpu")
        for tensor in config.input:
            if tensor.allow_ragged_batch:
                problems.append(
                    f"{name}: input {tensor.name} has allow_ragged_batch: NVIDIA's {config.platform} backend "
                    f"hands it to the model flattened to 1-D, but the model takes [batch, "
                    f"{', '.join(map(str, tensor.dims))}]; export with `python -m deploy.release export`"
                )
        kinds = {mc.ModelInstanceGroup.Kind.Name(g.kind) for g in config.instance_group if g.kind != want}
        if kinds or not config.instance_group:
            problems.append(
                f"{name}: instance_group kind {', '.join(sorted(kinds)) or 'unset'} on {target} nodes; "
                f"export with --target {target} (sets {mc.ModelInstanceGroup.Kind.Name(want)})"
            )
        for accelerator in config.optimization.execution_accelerators.gpu_execution_accelerator:
            cache = dict(accelerator.parameters)
            if accelerator.name == "tensorrt" and (
                cache.get("trt_engine_cache_enable") != "1"
                or not cache.get("trt_engine_cache_path", "").startswith(ENGINE_CACHE + "/")
            ):
                problems.append(
                    f"{name}: the tensorrt accelerator has no engine cache under {ENGINE_CACHE}, so every "
                    "Triton start builds the engines again; export with --target gpu"
                )
        served = repo.served_versions(name)
        if not served:
            problems.append(f"{name}: its version_policy serves none of its versions {repo.versions(name)}")
        for version in served:
            folder = repo.version_dir(name, version)
            for needed in (MODEL_FILES[config.platform], "manifest.json"):
                if not (folder / needed).is_file():
                    problems.append(f"{name}/{version}: {needed} is missing")
    return problems


def check(root: str | os.PathLike, target: str) -> None:
    problems = release_problems(root, target)
    if problems:
        raise CheckFailed(
            f"{root}: not ready for NVIDIA's Triton image on {target} nodes:\n"
            + "\n".join(f"- {p}" for p in problems)
        )


def export(source: str | os.PathLike, destination: str | os.PathLike, target: str) -> ExportResult:
    """Copy ``source`` to the new folder ``destination`` with configs for NVIDIA's image on ``target``."""
    kind = _kind(target)
    repo = Repository(source)
    destination = Path(destination).absolute()
    names = repo.models()
    if not names:
        raise NotFound(f"{repo.root}: no model entries to export", field="source")
    if destination.exists() and any(destination.iterdir()):
        raise InvalidArgument(
            f"{destination}: already exists and is not empty; export into a new folder (or delete it)",
            field="destination",
        )
    if destination == repo.root or repo.root in destination.parents:
        raise InvalidArgument(f"{destination}: must be outside the source {repo.root}", field="destination")
    staging = destination.parent / f".{destination.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    changes: list[str] = []
    try:
        for name in names:
            with repo.lock(name):
                shutil.copytree(
                    repo.model_dir(name), staging / name, ignore=shutil.ignore_patterns(".*", "*.tmp")
                )
            config = read_config(staging / name / CONFIG)  # the copy, not a source that may move on
            for tensor in config.input:
                if tensor.allow_ragged_batch:
                    tensor.allow_ragged_batch = False
                    changes.append(f"{name}: input {tensor.name}: allow_ragged_batch cleared")
            if not config.instance_group:
                config.instance_group.add(kind=kind, count=1)
            for group in config.instance_group:
                if group.kind != kind:
                    changes.append(
                        f"{name}: instance_group {mc.ModelInstanceGroup.Kind.Name(group.kind)} -> "
                        f"{mc.ModelInstanceGroup.Kind.Name(kind)}"
                    )
                    group.kind = kind
            changes.extend(_engine_cache(staging, name, config))
            write_config(staging / name / CONFIG, config)
        check(staging, target)
        digest = write_sums(staging)
        if destination.exists():
            destination.rmdir()  # empty, checked above
        os.replace(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported %s to %s for %s nodes: release %s", repo.root, destination, target, digest)
    return ExportResult(repo.root, destination, target, names, changes, digest)


def _engine_cache(root: Path, name: str, config: mc.ModelConfig) -> list[str]:
    """Give each TensorRT accelerator of ``config`` an engine cache named after the entry's model files.

    ONNX Runtime does not notice that a model's weights changed under a cached engine (its cache key is
    the graph, not the weights), so the folder is new whenever a model file is."""
    changes = []
    files = sorted(p for p in (root / name).glob("*/model.*") if p.is_file())
    content = hashlib.sha256("".join(f"{p.parent.name}:{sha256_path(p)}\n" for p in files).encode())
    path = f"{ENGINE_CACHE}/{name}-{content.hexdigest()[:16]}"
    for accelerator in config.optimization.execution_accelerators.gpu_execution_accelerator:
        if accelerator.name == "tensorrt":
            accelerator.parameters["trt_engine_cache_enable"] = "1"
            accelerator.parameters["trt_engine_cache_path"] = path
            changes.append(f"{name}: TensorRT engines cached in {path}")
    return changes


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != SUMS)


def write_sums(root: str | os.PathLike) -> str:
    """Write ``root/SHA256SUMS`` (``sha256sum`` format, sorted paths) and return the release digest."""
    root = Path(root)
    lines = [f"{sha256_path(p)}  {p.relative_to(root).as_posix()}\n" for p in _files(root)]
    text = "".join(lines).encode()
    (root / SUMS).write_bytes(text)
    return hashlib.sha256(text).hexdigest()


def release_digest(root: str | os.PathLike) -> str:
    """The digest of the release in ``root``, after checking that ``SHA256SUMS`` lists exactly its files
    with their contents; CheckFailed naming every file that differs."""
    root = Path(root)
    sums = root / SUMS
    if not sums.is_file():
        raise NotFound(
            f"{root}: no {SUMS}; make releases with `python -m deploy.release export`", field="release"
        )
    text = sums.read_bytes()
    listed: dict[str, str] = {}
    for number, line in enumerate(text.decode().splitlines(), 1):
        digest, sep, path = line.partition("  ")
        if not sep or not DIGEST.match(digest):
            raise CheckFailed(f"{sums}:{number}: not '<sha256>  <path>': {line!r}")
        listed[path] = digest
    present = {p.relative_to(root).as_posix(): p for p in _files(root)}
    problems = [f"- {path}: listed but missing" for path in sorted(set(listed) - set(present))]
    problems += [f"- {path}: not listed" for path in sorted(set(present) - set(listed))]
    problems += [
        f"- {path}: content differs from {SUMS}"
        for path in sorted(set(listed) & set(present))
        if sha256_path(present[path]) != listed[path]
    ]
    if problems:
        raise CheckFailed(f"{root}: not the release its {SUMS} describes:\n" + "\n".join(problems))
    return hashlib.sha256(text).hexdigest()


def pin(root: str | os.PathLike, releases: str, env_file: str | os.PathLike) -> dict[str, str]:
    """Write the release of ``root`` into an overlay's ``release.env`` (MODEL_RELEASES_S3, MODEL_RELEASE),
    keeping its other lines; returns the values written."""
    digest = release_digest(root)
    if not re.match(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?$", releases) or releases.endswith("/"):
        raise InvalidArgument(
            f"--releases: {releases!r} is not an S3 prefix; write e.g. s3://modelpack-models/releases "
            "(no trailing slash: each release goes under <releases>/<digest>/)",
            field="releases",
        )
    values = {"MODEL_RELEASES_S3": releases, "MODEL_RELEASE": digest}
    path = Path(env_file)
    kept = []
    if path.is_file():
        kept = [
            line
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.partition("=")[0].strip() not in values
        ]
    path.write_text("\n".join([*kept, *(f"{k}={v}" for k, v in values.items())]) + "\n", encoding="utf-8")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.release", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check_parser = commands.add_parser("check", help="is DIR ready for NVIDIA's Triton image?")
    check_parser.add_argument("repository", type=Path)
    export_parser = commands.add_parser("export", help="copy SRC to the new folder DST, ready for the image")
    export_parser.add_argument("source", type=Path)
    export_parser.add_argument("destination", type=Path)
    for sub in (check_parser, export_parser):
        sub.add_argument("--target", choices=TARGETS, required=True, help="the nodes Triton runs on")
    digest_parser = commands.add_parser(
        "digest", help="check a release against its SHA256SUMS, print its digest"
    )
    digest_parser.add_argument("release", type=Path)
    pin_parser = commands.add_parser("pin", help="write a release's digest into an overlay's release.env")
    pin_parser.add_argument("release", type=Path)
    pin_parser.add_argument(
        "--releases", required=True, help="S3 prefix of the releases, e.g. s3://b/releases"
    )
    pin_parser.add_argument(
        "--env-file", type=Path, required=True, help="e.g. deploy/k8s/overlays/prod/release.env"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if args.command == "check":
            check(args.repository, args.target)
            print(f"{args.repository}: ready for NVIDIA's Triton image on {args.target} nodes")
        elif args.command == "export":
            result = export(args.source, args.destination, args.target)
            for change in result.changes:
                print(change)
            print(f"{result.destination}: {len(result.models)} model(s) ready for {result.target} nodes")
            print(f"release {result.digest}")
        elif args.command == "digest":
            print(release_digest(args.release))
        else:
            values = pin(args.release, args.releases, args.env_file)
            prefix = f"{values['MODEL_RELEASES_S3']}/{values['MODEL_RELEASE']}/"
            print(f"{args.env_file}: MODEL_RELEASE={values['MODEL_RELEASE']}")
            print(f"upload it once (never change a release): aws s3 cp --recursive {args.release}/ {prefix}")
    except ToolkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
