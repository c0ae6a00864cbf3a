"""Make a release of the model repository: a copy that NVIDIA's Triton image serves as intended, named
by its content; check one.

    python -m deploy.release check DIR --target cpu|gpu
    python -m deploy.release export SRC DST --target cpu|gpu      # prints the release digest
    python -m deploy.release digest DIR                           # verifies SHA256SUMS, prints it
    python -m deploy.release pin DIR --releases s3://BUCKET/releases --env-file OVERLAY/release.env

The repository the converters write is the one production serves: the local server runs it through a
python-based ONNX Runtime backend that follows the native one's rules (local_triton/backends), so the
configs are not rewritten for production. ``check`` audits every entry against the native backends'
rules (``RULES``, listed in docs/repository.md; each has a test that breaks it), plus the nodes'
instance kind.

``export`` copies the repository (each entry under its publish lock) to a new folder, sets the instance
groups of the ONNX and TensorRT entries to the target's kind, gives every TensorRT accelerator (GPU) an
engine cache under ``ENGINE_CACHE`` named after the entry's model files (a changed model never reuses a
stale engine), checks the result, writes ``SHA256SUMS`` (every file, ``sha256sum`` format), and only
then moves it into place. Nothing else changes; the source is not changed.

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

from core import companions
from core.errors import CheckFailed, InvalidArgument, NotFound, ToolkitError
from core.repository import CONFIG, Repository, served, sha256_path
from core.triton_config import read_config, write_config

log = logging.getLogger(__name__)

# The instance_group kind each target's nodes need.
KINDS = {"cpu": mc.ModelInstanceGroup.KIND_CPU, "gpu": mc.ModelInstanceGroup.KIND_GPU}
TARGETS = tuple(KINDS)
# Where the GPU overlay mounts the TensorRT engine cache (deploy/k8s/overlays/gpu/triton-gpu.yaml).
ENGINE_CACHE = "/cache/tensorrt"
SUMS = "SHA256SUMS"
DIGEST = re.compile(r"^[0-9a-f]{64}$")
MODEL_FILES = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan", "python": "model.py"}
# Where the instance kind follows the target: the ONNX and TensorRT entries (python models tokenize on
# CPU on either kind of node; ensembles have no instances).
ACCELERATED = ("onnxruntime_onnx", "tensorrt_plan")

# What NVIDIA's Triton 2.51 image (24.10) checks when it loads a model, as rules of this audit: each
# problem names its rule. docs/repository.md lists them (a test holds the two lists together).
RULES = {
    "kind": "an entry is one the image serves: platform onnxruntime_onnx, tensorrt_plan or ensemble, or "
    "backend python",
    "graph-inputs": "an ONNX entry declares exactly the graph's inputs (plus its batch inputs), each with "
    "the graph's data type",
    "ragged": "allow_ragged_batch only on an input the graph takes as [-1]: the native backends hand "
    "such an input to the model flattened to 1-D",
    "dims": "with max_batch_size > 0 each graph input and output has a dynamic first axis and the "
    "config's dims match the rest (an input where the graph's axis is fixed, an output exactly, dynamic "
    "as -1)",
    "graph-outputs": "each output of an ONNX entry is in the graph, with the graph's data type",
    "batching": "preferred batch sizes are within max_batch_size; an ensemble has no dynamic_batching and "
    "no instance_group",
    "warmup": "no model_warmup on an ensemble; each sample within max_batch_size, every input once with "
    "the config's data type, dims without -1 that fit the config's, and data to send",
    "ensemble": "an ensemble's steps name models of the repository and map only their inputs and "
    "outputs; each tensor it declares has the type of the step tensor it maps to; its max_batch_size is "
    "within each step's; its label files exist",
    "files": "the version policy serves a version, and each served version holds the model file "
    "(model.onnx, model.plan, model.py) or, for an ensemble, a version folder",
    "companions": "a text entry's NAME_tokenizer serves the versions NAME serves (same numbers, same "
    "version_policy), and its newest one tokenizes as NAME's newest does",
    "instances": "ONNX and TensorRT entries run on the nodes' kind (KIND_GPU on gpu nodes, KIND_CPU on "
    "cpu); a TensorRT plan needs gpu nodes; each TensorRT accelerator caches its engines under "
    "/cache/tensorrt",
}


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


def _kind_of(config: mc.ModelConfig) -> str:
    if config.platform == "ensemble":
        return "ensemble"
    if config.backend == "python":
        return "python"
    return config.platform or config.backend


# ONNX Runtime's tensor types, as the native backend maps them to Triton's.
_ORT_TYPES = {
    "tensor(bool)": mc.TYPE_BOOL,
    "tensor(uint8)": mc.TYPE_UINT8,
    "tensor(int8)": mc.TYPE_INT8,
    "tensor(int16)": mc.TYPE_INT16,
    "tensor(int32)": mc.TYPE_INT32,
    "tensor(int64)": mc.TYPE_INT64,
    "tensor(float16)": mc.TYPE_FP16,
    "tensor(float)": mc.TYPE_FP32,
    "tensor(double)": mc.TYPE_FP64,
    "tensor(string)": mc.TYPE_STRING,
}


def _graph(path: Path) -> tuple[dict, dict]:
    """(inputs, outputs) of an ONNX file as ONNX Runtime reports them to the native backend (shapes
    after its own inference): name -> (Triton data type, dims with -1 where dynamic)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own untyped errors
        raise CheckFailed(f"{path}: ONNX Runtime cannot load it: {err}") from err

    def tensors(values) -> dict:
        return {
            v.name: (_ORT_TYPES.get(v.type), [d if isinstance(d, int) and d >= 0 else -1 for d in v.shape])
            for v in values
        }

    return tensors(session.get_inputs()), tensors(session.get_outputs())


def _dims_problem(model: str, tensor, graph_dims: list[int], batching: bool, exact: bool) -> str | None:
    if not graph_dims:
        return None
    if batching and graph_dims[0] != -1:
        return (
            f"dims: {model}: {tensor.name} has a fixed first axis in the graph {graph_dims} but "
            "max_batch_size > 0 makes it the batch axis"
        )
    full = ([-1] if batching else []) + list(tensor.dims)
    same = len(full) == len(graph_dims) and all(
        g == f for g, f in zip(graph_dims, full, strict=True) if exact or g != -1
    )
    if not same:
        return (
            f"dims: {model}: {tensor.name} is {full} in the config (batch axis first) but {graph_dims} "
            "in the graph"
        )
    return None


def _onnx_problems(model: str, config: mc.ModelConfig, path: Path) -> list[str]:
    inputs, outputs = _graph(path)
    batching = config.max_batch_size > 0
    problems = []
    declared = [t for t in config.input if not t.optional]
    expected = len(declared) + len(config.batch_input)
    if expected != len(inputs):
        problems.append(
            f"graph-inputs: {model}: the config declares {expected} inputs (with batch inputs), the graph "
            f"{path.parent.name}/{path.name} has {len(inputs)}: {sorted(inputs)}"
        )
    for tensor in config.input:
        if tensor.name not in inputs:
            problems.append(
                f"graph-inputs: {model}: input {tensor.name} is not in the graph ({sorted(inputs)})"
            )
            continue
        graph_type, graph_dims = inputs[tensor.name]
        if graph_type != tensor.data_type:
            problems.append(
                f"graph-inputs: {model}: input {tensor.name} is {mc.DataType.Name(tensor.data_type)} in "
                f"the config, {mc.DataType.Name(graph_type or 0)} in the graph"
            )
        if tensor.allow_ragged_batch:
            if graph_dims != [-1]:
                problems.append(
                    f"ragged: {model}: input {tensor.name} has allow_ragged_batch but the graph takes it "
                    f"as {graph_dims}; the native backend refuses to load it (it would hand the model a "
                    "flattened 1-D tensor); publish it again with the converters, which no longer set it"
                )
            continue
        problem = _dims_problem(model, tensor, graph_dims, batching, exact=False)
        if problem:
            problems.append(problem)
    for tensor in config.output:
        if tensor.name not in outputs:
            problems.append(
                f"graph-outputs: {model}: output {tensor.name} is not in the graph ({sorted(outputs)})"
            )
            continue
        graph_type, graph_dims = outputs[tensor.name]
        if graph_type != tensor.data_type:
            problems.append(
                f"graph-outputs: {model}: output {tensor.name} is {mc.DataType.Name(tensor.data_type)} in "
                f"the config, {mc.DataType.Name(graph_type or 0)} in the graph"
            )
        problem = _dims_problem(model, tensor, graph_dims, batching, exact=True)
        if problem:
            problems.append(problem)
    return problems


def _warmup_problems(model: str, config: mc.ModelConfig) -> list[str]:
    if config.platform == "ensemble":
        return [f"warmup: {model}: an ensemble takes no model_warmup"] if config.model_warmup else []
    problems = []
    inputs = {t.name: t for t in config.input}
    for sample in config.model_warmup:
        where = f"warmup: {model}: sample {sample.name!r}"
        if not 1 <= sample.batch_size <= max(config.max_batch_size, 1):
            problems.append(
                f"{where}: batch_size {sample.batch_size} is not within 1..{config.max_batch_size}"
            )
        if set(sample.inputs) != set(inputs):
            problems.append(f"{where}: inputs {sorted(sample.inputs)} are not the config's {sorted(inputs)}")
        for name, tensor in sample.inputs.items():
            declared = inputs.get(name)
            if declared is None:
                continue
            fits = len(tensor.dims) == len(declared.dims) and all(
                d > 0 and want in (-1, d) for d, want in zip(tensor.dims, declared.dims, strict=True)
            )
            if tensor.data_type != declared.data_type or not fits:
                problems.append(
                    f"{where}: input {name} is {mc.DataType.Name(tensor.data_type)} {list(tensor.dims)}; the "
                    f"config has {mc.DataType.Name(declared.data_type)} {list(declared.dims)}"
                )
            if tensor.WhichOneof("input_data_type") is None:
                problems.append(
                    f"{where}: input {name} has no data (zero_data, random_data, input_data_file)"
                )
    return problems


def _ensemble_problems(repo: Repository, model: str, config: mc.ModelConfig) -> list[str]:
    problems = []
    own = {t.name: t.data_type for t in [*config.input, *config.output]}
    for step in config.ensemble_scheduling.step:
        if step.model_name not in repo.models():
            problems.append(f"ensemble: {model}: step model {step.model_name} is not in the repository")
            continue
        other = repo.config(step.model_name)
        if other.max_batch_size < config.max_batch_size:
            problems.append(
                f"ensemble: {model}: max_batch_size {config.max_batch_size} is above step "
                f"{step.model_name}'s {other.max_batch_size}"
            )
        for mapping, tensors, what in (
            (step.input_map, other.input, "input"),
            (step.output_map, other.output, "output"),
        ):
            types = {t.name: t.data_type for t in tensors}
            for key, value in mapping.items():
                if key not in types:
                    problems.append(f"ensemble: {model}: step {step.model_name} has no {what} {key}")
                elif value in own and own[value] != types[key]:
                    problems.append(
                        f"ensemble: {model}: {value} is {mc.DataType.Name(own[value])} but step "
                        f"{step.model_name}'s {what} {key} is {mc.DataType.Name(types[key])}"
                    )
    for tensor in config.output:
        if tensor.label_filename and not (repo.model_dir(model) / tensor.label_filename).is_file():
            problems.append(
                f"ensemble: {model}: label file {tensor.label_filename} of {tensor.name} is missing"
            )
    return problems


def _companion_problems(repo: Repository, name: str) -> list[str]:
    tokenizer = companions.tokenizer_name(name)
    problems = []
    config, other = repo.config(name), repo.config(tokenizer)
    if other.version_policy != config.version_policy or repo.versions(tokenizer) != [
        v for v in repo.versions(name) if (repo.version_dir(name, v) / "tokenizer").is_dir()
    ]:
        problems.append(
            f"companions: {tokenizer}: versions {repo.versions(tokenizer)} and its version_policy do not "
            f"mirror {name}'s ({repo.versions(name)}); change {name} through the converters (rollback, "
            "configure) to bring it back in step"
        )
    mine = repo.served_versions(name)
    theirs = repo.served_versions(tokenizer)
    if mine and theirs:
        newest = companions.TextVersion(
            mine[-1], repo.version_dir(name, mine[-1]), repo.manifest(name, mine[-1])
        )
        if companions.tokenizer_identity(repo.version_dir(tokenizer, theirs[-1])) != newest.identity():
            problems.append(
                f"companions: {companions.text_name(name)} would tokenize with {tokenizer}:{theirs[-1]} for "
                f"{name}:{mine[-1]}, whose tokenizer differs"
            )
    return problems


def release_problems(root: str | os.PathLike, target: str) -> list[str]:
    """Every reason NVIDIA's Triton image on ``target`` nodes would refuse or misserve ``root``, each
    line starting with the rule it breaks (``RULES``)."""
    want = _kind(target)
    repo = Repository(root)
    if not repo.root.is_dir():
        raise NotFound(f"{repo.root}: no model repository there", field="repository")
    names = repo.models()
    if not names:
        return [f"files: {repo.root}: no model entries (folders with a config.pbtxt)"]
    problems = []
    for name in names:
        try:
            config = repo.config(name)
        except ToolkitError as err:
            problems.append(f"kind: {name}: {err}")
            continue
        kind = _kind_of(config)
        if kind not in (*MODEL_FILES, "ensemble"):
            problems.append(
                f"kind: {name}: {kind!r}; the image serves {', '.join([*MODEL_FILES, 'ensemble'])}"
            )
            continue
        preferred = [p for p in config.dynamic_batching.preferred_batch_size if p > config.max_batch_size]
        if preferred:
            problems.append(f"batching: {name}: preferred batch sizes {preferred} above max_batch_size")
        if kind == "ensemble":
            if config.HasField("dynamic_batching") or config.instance_group:
                problems.append(f"batching: {name}: an ensemble takes no dynamic_batching or instance_group")
            problems += _ensemble_problems(repo, name, config)
        problems += _warmup_problems(name, config)
        if kind == "tensorrt_plan" and target == "cpu":
            problems.append(f"instances: {name}: a TensorRT plan needs a GPU; export it with --target gpu")
        if kind in ACCELERATED:
            kinds = {mc.ModelInstanceGroup.Kind.Name(g.kind) for g in config.instance_group if g.kind != want}
            if kinds or not config.instance_group:
                wanted = mc.ModelInstanceGroup.Kind.Name(want)
                problems.append(
                    f"instances: {name}: instance_group kind {', '.join(sorted(kinds)) or 'unset'} on "
                    f"{target} nodes; export with --target {target} (sets {wanted})"
                )
        versions = served(repo.versions(name), config.version_policy)
        if not versions:
            problems.append(
                f"files: {name}: its version_policy serves none of its versions {repo.versions(name)}"
            )
        for accelerator in config.optimization.execution_accelerators.gpu_execution_accelerator:
            cache = dict(accelerator.parameters)
            if accelerator.name == "tensorrt" and (
                cache.get("trt_engine_cache_enable") != "1"
                or not cache.get("trt_engine_cache_path", "").startswith(ENGINE_CACHE + "/")
            ):
                problems.append(
                    f"instances: {name}: the tensorrt accelerator has no engine cache under {ENGINE_CACHE}, "
                    "so every Triton start builds the engines again; export with --target gpu"
                )
        for version in versions:
            folder = repo.version_dir(name, version)
            needed = MODEL_FILES.get(kind)
            if needed and not (folder / needed).is_file():
                problems.append(f"files: {name}/{version}: {needed} is missing")
            elif kind == "onnxruntime_onnx":
                problems += _onnx_problems(name, config, folder / needed)
        if repo.companions(name) and companions.tokenizer_name(name) in names:
            problems += _companion_problems(repo, name)
    return problems


def check(root: str | os.PathLike, target: str) -> None:
    problems = release_problems(root, target)
    if problems:
        raise CheckFailed(
            f"{root}: not ready for NVIDIA's Triton image on {target} nodes:\n"
            + "\n".join(f"- {p}" for p in problems)
        )


def export(source: str | os.PathLike, destination: str | os.PathLike, target: str) -> ExportResult:
    """Copy ``source`` to the new folder ``destination``, with the ONNX and TensorRT entries' instance
    groups of ``target``'s kind; refused (nothing written) when the copy does not pass ``check``."""
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
            # A companion changes with its entry, under the entry's lock.
            with repo.lock(repo.companion_of(name) or name):
                shutil.copytree(
                    repo.model_dir(name), staging / name, ignore=shutil.ignore_patterns(".*", "*.tmp")
                )
            config = read_config(staging / name / CONFIG)  # the copy, not a source that may move on
            if _kind_of(config) not in ACCELERATED:
                continue
            if not config.instance_group:
                config.instance_group.add(kind=kind, count=1)
                changes.append(f"{name}: instance_group {mc.ModelInstanceGroup.Kind.Name(kind)} added")
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
