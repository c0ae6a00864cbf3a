"""The models this service routes to: for each configured model, what the repository holds for each
served version (manifest, tensor names, labels, its preprocessing), and the choice of a version per
request (a pinned one, else the configured split, e.g. a canary's {1: 90, 2: 10})."""

import random
from dataclasses import dataclass

from core.errors import InvalidArgument, NotFound
from core.repository import Repository
from core.tasks import TASK_SPECS
from serving.preprocess import ImagePipeline, TextPipeline
from serving.settings import Limits, ModelSettings, ServiceSettings


@dataclass
class VersionEntry:
    version: int
    manifest: dict
    input_names: tuple[str, ...]
    output_name: str
    labels: tuple[str, ...]
    text: TextPipeline | None = None
    image: ImagePipeline | None = None


@dataclass
class ModelEntry:
    name: str
    task: str
    top_k: int
    max_batch_size: int  # Triton's, from config.pbtxt
    versions: dict[int, VersionEntry]
    split: dict[int, float]  # routable versions -> weight

    def choose(self, pinned: int | None, rng: random.Random) -> VersionEntry:
        if pinned is not None:
            if pinned not in self.versions:
                served = ", ".join(map(str, sorted(self.versions)))
                raise NotFound(
                    f"version: {self.name} has no served version {pinned}; served versions: {served} "
                    "(leave `version` out to use the configured split)",
                    field="version",
                )
            return self.versions[pinned]
        if len(self.split) == 1:
            return self.versions[next(iter(self.split))]
        return self.versions[rng.choices(list(self.split), weights=list(self.split.values()))[0]]


def load_models(settings: ServiceSettings) -> dict[str, ModelEntry]:
    """Read every configured model's served versions from the repository; errors name the setting."""
    repo = Repository(settings.repository)
    models = {}
    for index, spec in enumerate(settings.models):
        where = f"models.{index} ({spec.name})"
        if spec.name not in repo.models():
            known = ", ".join(repo.models()) or "none"
            raise NotFound(
                f"{where}: {spec.name!r} is not in the repository {repo.root} (models there: {known}); "
                "publish it with `python -m converters` or fix `repository`/`name`",
                field=f"models.{index}.name",
            )
        config = repo.config(spec.name)
        served = repo.served_versions(spec.name)
        if not served:
            raise NotFound(
                f"{where}: {repo.model_dir(spec.name)} has no served version", field=f"models.{index}"
            )
        versions = {v: _version_entry(repo, spec, v, settings.limits, where) for v in served}
        split = dict(spec.versions) if spec.versions else {served[-1]: 1.0}
        # A zero weight routes nothing, so that version need not be served: after a promotion
        # ({1: 0, 2: 100}) the next release may drop version 1 before the split is edited.
        split = {v: w for v, w in split.items() if w > 0}
        missing = sorted(set(split) - set(versions))
        if missing:
            raise NotFound(
                f"{where}: versions {missing} of the split are not served (served: {served}); publish them "
                "or change `versions`",
                field=f"models.{index}.versions",
            )
        models[spec.name] = ModelEntry(
            name=spec.name,
            task=spec.task,
            top_k=spec.top_k,
            max_batch_size=max(1, int(config.max_batch_size)),
            versions=versions,
            split=split,
        )
    return models


def _version_entry(
    repo: Repository, spec: ModelSettings, version: int, limits: Limits, where: str
) -> VersionEntry:
    manifest = repo.manifest(spec.name, version)
    where = f"{where} version {version}"
    if manifest.get("task") != spec.task:
        raise InvalidArgument(
            f"{where}: the manifest says task {manifest.get('task')!r} but service.yaml says {spec.task!r}; "
            "make `task` match the entry",
            field="task",
        )
    try:
        input_names = tuple(t["name"] for t in manifest["inputs"])
        output_name = manifest["outputs"][0]["name"]
    except (KeyError, IndexError, TypeError):
        raise InvalidArgument(
            f"{where}: the manifest lacks inputs/outputs; re-publish the entry", field="manifest"
        ) from None
    pre = manifest.get("preprocessing") or {}
    entry = VersionEntry(version, manifest, input_names, output_name, tuple(manifest.get("labels") or ()))
    task = TASK_SPECS[spec.task]
    if task.input_kind == "text":
        declared = int(pre.get("max_length") or 512)
        if spec.max_length is not None and spec.max_length > declared:
            raise InvalidArgument(
                f"{where}: max_length {spec.max_length} exceeds the entry's {declared}; "
                f"use at most {declared}",
                field="max_length",
            )
        tokenizer_dir = repo.version_dir(spec.name, version) / pre.get("tokenizer", "tokenizer")
        entry.text = TextPipeline(tokenizer_dir, spec.max_length or declared)
    elif task.input_kind == "image":
        entry.image = ImagePipeline.from_manifest(pre, limits.max_image_pixels, where)
    if task.postprocess == "labels" and not entry.labels:
        num = (manifest["outputs"][0].get("shape") or [-1, -1])[-1]
        if num > 0:
            entry.labels = tuple(str(i) for i in range(num))
    return entry


def find_model(models: dict[str, ModelEntry], name: str | None, task: str, endpoint: str) -> ModelEntry:
    """The model a request names, or the one configured model with the endpoint's task."""
    if name is None:
        candidates = [m for m in models.values() if m.task == task]
        if len(candidates) == 1:
            return candidates[0]
        names = ", ".join(m.name for m in candidates) or "none"
        raise InvalidArgument(
            f"model: {endpoint} needs a {task} model and {'several are' if candidates else 'none is'} "
            f"configured ({names}); name one in `model`",
            field="model",
        )
    entry = models.get(name)
    if entry is None:
        names = ", ".join(m.name for m in models.values() if m.task == task) or "none"
        raise NotFound(f"model: {name!r} is not served here; {task} models: {names}", field="model")
    if entry.task != task:
        other = TASK_SPECS[entry.task].routes[0].path
        raise InvalidArgument(
            f"model: {name!r} serves {entry.task} and {endpoint} needs {task}; call {other} with it instead",
            field="model",
        )
    return entry


def describe(models: dict[str, ModelEntry]) -> dict:
    """GET /models: every configured model, its task and split, and per served version its tensors,
    parity, size and license, from the manifests."""
    described = []
    for entry in models.values():
        versions = []
        for number, version in sorted(entry.versions.items()):
            manifest = version.manifest
            versions.append(
                {
                    "version": number,
                    "weight": entry.split.get(number, 0.0) / sum(entry.split.values()),
                    "inputs": manifest.get("inputs"),
                    "outputs": manifest.get("outputs"),
                    "parity": manifest.get("parity"),
                    "precision": manifest.get("precision"),
                    "preprocessing": manifest.get("preprocessing"),
                    "labels": list(version.labels) or None,
                    "license": manifest.get("license"),
                    "created_at": manifest.get("created_at"),
                    "size_bytes": manifest.get("size_bytes"),
                }
            )
        described.append(
            {
                "name": entry.name,
                "task": entry.task,
                "max_batch_size": entry.max_batch_size,
                "versions": versions,
            }
        )
    return {"models": described}
