"""Make a copy of the model repository that NVIDIA's Triton image serves as intended, and check one.

    python -m deploy.release check DIR --target cpu|gpu
    python -m deploy.release export SRC DST --target cpu|gpu

The local server runs every ``onnxruntime_onnx`` model through this project's python-based backend,
which pads ragged token inputs itself. NVIDIA's image runs them through its native ONNX Runtime
backend instead, which passes an input marked ``allow_ragged_batch`` to the model as one flattened
1-D tensor (Triton's ragged batching documentation): our text models take ``[batch, seq]``, so such an
entry fails there. And an entry's ``instance_group`` kind decides CPU or GPU, whatever the node has.

``export`` copies the repository (each entry under its publish lock) to a new folder, clears
``allow_ragged_batch`` (the Bento pads the rows of each call it sends, and Triton batches calls of the
same shape), sets every instance group to the target's kind, checks the result, and only then moves
it into place. The source is not changed. Sync the exported folder to S3 or bake it into the image.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from core.errors import CheckFailed, InvalidArgument, NotFound, ToolkitError
from core.repository import CONFIG, Repository
from core.triton_config import read_config, write_config

log = logging.getLogger(__name__)

# The instance_group kind each target's nodes need.
KINDS = {"cpu": mc.ModelInstanceGroup.KIND_CPU, "gpu": mc.ModelInstanceGroup.KIND_GPU}
TARGETS = tuple(KINDS)
MODEL_FILES = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan"}


@dataclass
class ExportResult:
    source: Path
    destination: Path
    target: str
    models: list[str]
    changes: list[str] = field(default_factory=list)


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
            write_config(staging / name / CONFIG, config)
        check(staging, target)
        if destination.exists():
            destination.rmdir()  # empty, checked above
        os.replace(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported %s to %s for %s nodes", repo.root, destination, target)
    return ExportResult(repo.root, destination, target, names, changes)


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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if args.command == "check":
            check(args.repository, args.target)
            print(f"{args.repository}: ready for NVIDIA's Triton image on {args.target} nodes")
        else:
            result = export(args.source, args.destination, args.target)
            for change in result.changes:
                print(change)
            print(f"{result.destination}: {len(result.models)} model(s) ready for {result.target} nodes")
    except ToolkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
