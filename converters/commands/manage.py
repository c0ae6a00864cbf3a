"""`list`, `validate`, `rollback`, `configure`, `companions`: look after the entries already in a
repository.

`configure --tuning` is where a benchmark's tuning result (``core.tuning``) reaches a config: the
benchmarks measure, the converters write."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.cli import add_json_flag, progress
from core.errors import InvalidArgument, NotFound
from core.repository import add_repository_flag
from core.triton_config import ACCELERATOR_PRECISIONS, ACCELERATORS

_ROW = "{name:<20} {version:>3} {served:<6} {task:<20} {precision:<5} {size:>9} {err:>11} {parity}"


def _fmt_size(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"


def rows(repository) -> list[dict]:
    """One row per version, entries by name; a text entry's companions (``NAME_tokenizer``,
    ``NAME_text``) right after it, with ``companion_of`` naming it and ``role`` saying which."""
    from core.repository import Repository, tree_size

    repo = Repository(repository)
    names = repo.models()
    owners = {name: repo.companion_of(name) for name in names}
    ordered = []
    for name in names:
        if owners[name] is not None and owners[name] in names:
            continue  # listed under its entry
        ordered.append(name)
        ordered += [other for other in repo.companions(name) if other in names]
    table = []
    for name in ordered:
        served = set(repo.served_versions(name))
        platform = repo.config(name).platform
        for version in repo.versions(name):
            try:
                manifest = repo.manifest(name, version)
            except NotFound:  # a version not written by the converters: listed, with what is known
                manifest = {"size_bytes": tree_size(repo.version_dir(name, version))}
            parity = manifest.get("parity", {})
            table.append(
                {
                    "name": name,
                    "version": version,
                    "served": version in served,
                    "platform": platform,
                    "task": manifest.get("task"),
                    "precision": manifest.get("precision"),
                    "size_bytes": manifest.get("size_bytes", tree_size(repo.version_dir(name, version))),
                    "max_abs_err": parity.get("max_abs_err"),
                    "parity_passed": parity.get("passed"),
                    "created_at": manifest.get("created_at"),
                    "companion_of": owners[name],
                    "role": manifest.get("role"),
                }
            )
    return table


def run_list(args: argparse.Namespace) -> int:
    table = rows(args.repository)
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    if not table:
        print("no models")
        return 0
    print(
        _ROW.format(
            name="NAME",
            version="VER",
            served="SERVED",
            task="TASK",
            precision="PREC",
            size="SIZE",
            err="MAX ABS ERR",
            parity="PARITY",
        )
    )
    for row in table:
        err = row["max_abs_err"]
        companion = row["companion_of"] is not None
        print(
            _ROW.format(
                # A companion is indented under its entry; its task column says what it does.
                name=f"  {row['name']}" if companion else row["name"],
                version=row["version"],
                served="yes" if row["served"] else "",
                task=f"({row['role'] or 'companion'})" if companion else row["task"] or "?",
                precision="-" if companion else row["precision"] or "?",
                size=_fmt_size(row["size_bytes"] or 0),
                err="-" if err is None else f"{err:.2e}",
                parity="-" if companion else "passed" if row["parity_passed"] else "FAILED",
            )
        )
    return 0


def run_validate(args: argparse.Namespace) -> int:
    from converters.validate import validate

    with progress(f"validating {args.ref}"):
        result = validate(
            args.ref,
            repository=args.repository,
            trust_checkpoint=args.trust_checkpoint,
            trust_module=args.trust_module,
        )
    outputs = result.outputs
    figures = {
        k: outputs[k] for k in ("max_abs_err", "max_rel_err", "min_cosine", "top1_agreement") if k in outputs
    }
    print(json.dumps({"name": outputs["name"], "version": outputs["version"], "passed": True, **figures}))
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    from core.repository import Repository, validate_name

    repo = Repository(args.repository)
    name = validate_name(args.name)
    repo.require(name)  # NotFound naming the models there, before any version is looked at
    repo.check_not_companion(name)  # a companion follows its entry: roll the entry back
    versions = repo.versions(name)
    if args.to is None:
        repo.rollback(name)  # what was served before, from the entry's served history
    elif args.to == "latest":
        repo.set_version_policy(name, "latest")
    else:
        if not args.to.isdigit():
            raise InvalidArgument(f"--to: {args.to!r} is not a version number or 'latest'", field="to")
        repo.set_version_policy(name, [repo.require(name, int(args.to))])
    print(json.dumps({"name": name, "served": repo.served_versions(name), "versions": versions}))
    return 0


def run_configure(args: argparse.Namespace) -> int:
    """The accelerator and/or a tuning result, applied in one atomic write of the entry's config."""
    from core.repository import Repository, validate_name
    from core.triton_config import set_accelerator, set_response_cache

    if args.accelerator is None and args.tuning is None and args.response_cache is None:
        raise InvalidArgument(
            "configure: nothing to change; give --accelerator tensorrt|none, --tuning FILE, "
            "--response-cache on|off, or several",
            field="accelerator",
        )
    repo = Repository(args.repository)
    name = validate_name(args.name)
    repo.require(name)
    tuned = None
    if args.tuning is not None:
        from core import tuning

        source = f"--tuning {args.tuning}"
        tuned = tuning.read(args.tuning).settings_for(name, source=source)

    def apply_tuning(config) -> None:
        try:
            tuned.apply(config)
        except InvalidArgument as err:  # the entry changed since it was tuned (its max_batch_size)
            raise InvalidArgument(
                f"{source}: chosen.{err.field} does not fit {name}'s config: {err}; tune {name} again",
                field=f"chosen.{err.field}",
            ) from None

    if tuned is not None:
        apply_tuning(repo.config(name))  # a result that does not fit is refused before anything is touched
    random = []
    if args.response_cache == "on":  # every version's graph must be deterministic, checked before writing
        from converters.determinism import random_ops

        for version in repo.versions(name):
            path = repo.version_dir(name, version) / "model.onnx"
            if path.is_file():
                random += [f"{op} (version {version})" for op in random_ops(path)]
        set_response_cache(repo.config(name), True, random)

    def change(config) -> None:
        if tuned is not None:
            apply_tuning(config)
        if args.accelerator == "none":
            config.ClearField("optimization")
        elif args.accelerator is not None:
            set_accelerator(config, args.accelerator, args.precision)
            for group in config.instance_group:  # the accelerator only applies to GPU instances
                group.kind = group.KIND_GPU
        if args.response_cache is not None:
            set_response_cache(config, args.response_cache == "on", random)

    config = repo.update_config(name, change)
    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    kinds = sorted({group.Kind.Name(group.kind) for group in config.instance_group})
    print(
        json.dumps(
            {
                "name": name,
                "gpu_execution_accelerator": [a.name for a in accelerators],
                "instance_kinds": kinds,
                "max_queue_delay_microseconds": config.dynamic_batching.max_queue_delay_microseconds,
                "preferred_batch_size": list(config.dynamic_batching.preferred_batch_size),
                "instance_counts": [group.count for group in config.instance_group],
                "tuning": None if args.tuning is None else str(args.tuning),
                "response_cache": config.response_cache.enable,
            }
        )
    )
    return 0


def run_companions(args: argparse.Namespace) -> int:
    """Write (or bring back in step) a text entry's NAME_tokenizer and NAME_text from its versions."""
    from converters.pipeline import TOKENIZER_MODEL
    from core.repository import Repository, validate_name

    repo = Repository(args.repository)
    name = validate_name(args.name)
    repo.require(name)
    written = repo.write_companions(name, TOKENIZER_MODEL.read_bytes())
    print(json.dumps({"name": name, "companions": written, "served": repo.served_versions(name)}))
    return 0


def register(subparsers) -> None:
    listing = subparsers.add_parser(
        "list",
        help="models, versions, sizes, parity",
        description="List every entry and version of a repository.",
    )
    add_repository_flag(listing)
    add_json_flag(listing)
    listing.set_defaults(func=run_list)

    validate = subparsers.add_parser(
        "validate",
        help="re-run the parity check of a version",
        description="Re-run the check a version was published under: parity against the source in its "
        "manifest (fp32), or the int8 gate against its fp32 version. Exit 1 when it fails. A Lightning "
        "version's check imports the LightningModule's module its manifest names: only with --trust-module.",
    )
    validate.add_argument("ref", metavar="NAME[:VERSION]", help="entry and version (default: latest)")
    validate.add_argument(
        "--trust-checkpoint", action="store_true", help="full-pickle load of a Lightning source"
    )
    validate.add_argument(
        "--trust-module",
        action="store_true",
        help="import the Python module a Lightning version's manifest names (runs its code): only for a "
        "repository you trust",
    )
    add_repository_flag(validate)
    add_json_flag(validate, default_json=True)
    validate.set_defaults(func=run_validate)

    rollback = subparsers.add_parser(
        "rollback",
        help="serve what was served before (nothing deleted)",
        description="Point the entry's version_policy back at the version(s) it served before the current "
        "ones, from the entry's served history (each rollback goes one change further back), or at --to "
        "VERSION, or back to 'latest'. No version is deleted; Triton picks the change up on reload.",
    )
    rollback.add_argument("name", metavar="NAME")
    rollback.add_argument("--to", default=None, metavar="VERSION|latest", help="serve this version instead")
    add_repository_flag(rollback)
    add_json_flag(rollback, default_json=True)
    rollback.set_defaults(func=run_rollback)

    configure = subparsers.add_parser(
        "configure",
        help="set the GPU accelerator, apply a batching tuning result, or turn the response cache on/off",
        description="Change an entry's config.pbtxt in one atomic write under the repository lock. "
        "--accelerator: write ONNX Runtime's TensorRT execution accelerator into an ONNX entry's config and "
        "make its instances KIND_GPU (for GPU deployments; a CPU-only server cannot load it then), or "
        "remove the accelerator with --accelerator none (instances stay as they are). --tuning: set the "
        "dynamic batching (max_queue_delay_microseconds, preferred_batch_size) and instance count that "
        "`python -m benchmarks tune NAME` chose, from its tuning.json (checked whole first: unknown keys, "
        "bad fields and a result for another entry are refused). Triton picks the change up on reload "
        "(`python -m converters load NAME`). --response-cache on|off: Triton's response cache for the entry.",
    )
    configure.add_argument("name", metavar="NAME")
    configure.add_argument("--accelerator", default=None, choices=(*ACCELERATORS, "none"))
    configure.add_argument("--precision", choices=ACCELERATOR_PRECISIONS, default="FP16")
    configure.add_argument(
        "--response-cache",
        choices=("on", "off"),
        default=None,
        help="Triton's response cache for the entry (on: refused when a version's graph has random "
        "operators; the server needs --cache-config, which `serve` passes)",
    )
    configure.add_argument(
        "--tuning",
        type=Path,
        default=None,
        metavar="FILE",
        help="a tuning result (tuning.json) written by `python -m benchmarks tune` for this entry",
    )
    add_repository_flag(configure)
    add_json_flag(configure, default_json=True)
    configure.set_defaults(func=run_configure)

    companions = subparsers.add_parser(
        "companions",
        help="write a text entry's NAME_tokenizer and NAME_text (text in, through Triton)",
        description="Write, or bring back in step, the two models that let a Triton client send text to a "
        "text entry: NAME_tokenizer (Triton's python backend with the version's own tokenizer; one version "
        "per version of NAME, same version_policy) and the ensemble NAME_text (input `text`, NAME's "
        "outputs). The converters write them with every text version; this is for entries published "
        "before they existed, or left behind by a killed publish. Triton picks them up on "
        "`python -m converters load NAME`.",
    )
    companions.add_argument("name", metavar="NAME")
    add_repository_flag(companions)
    add_json_flag(companions, default_json=True)
    companions.set_defaults(func=run_companions)
