"""The models this service routes to: for each configured model, what the repository holds for each
served version (manifest, tensors, labels, its preprocessing), where its requests go in Triton, and
the choice of a version per request (a pinned one, else the configured split, e.g. a canary's
{1: 90, 2: 10}).

The versions are read at start-up and then kept in step with the repository and Triton while the
service runs (``serving/live.py``): which versions are routable is ``routable_split``.

A text model with ``tokenize: triton`` sends the texts of the version its ensemble ``NAME_text`` runs
(the newest served version, once Triton has it as its newest ready one) to the ensemble, which
tokenizes them in Triton; the ensemble cannot be asked for another version, so requests for the other
versions (pinned, drawn by a canary split, or while a new or rolled-back version loads) are tokenized
here and sent to ``NAME`` at that version."""

import random
from dataclasses import dataclass, replace

from core.companions import ENSEMBLE_VERSION, text_name
from core.errors import InvalidArgument, NotFound
from core.repository import Repository
from core.tasks import DATATYPES, TASK_SPECS, TensorSpec
from serving.preprocess import ImagePipeline, TextPipeline
from serving.settings import Limits, ModelSettings, ServiceSettings


@dataclass
class VersionEntry:
    version: int
    manifest: dict
    input_names: tuple[str, ...]
    output_name: str  # the output the task's post-processing reads (the first)
    labels: tuple[str, ...]
    text: TextPipeline | None = None
    image: ImagePipeline | None = None
    # Every tensor the version takes and gives, as its manifest declares them (the tensor routes check
    # requests against these).
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    # Where this version's requests go in Triton: NAME at this version, or (via_text_model) the texts
    # to NAME_text, the ensemble that tokenizes them in Triton.
    triton_model: str = ""
    triton_version: int = 0
    via_text_model: bool = False

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.outputs) or (self.output_name,)


@dataclass
class ModelEntry:
    name: str
    task: str
    top_k: int
    max_batch_size: int  # Triton's, from config.pbtxt
    versions: dict[int, VersionEntry]  # served by the repository, or still loaded on Triton
    split: dict[int, float]  # routable versions -> weight (kept up to date by serving/live.py)
    configured: dict[int, float] | None = None  # the settings' split, zero weights dropped; None: latest
    served: tuple[int, ...] = ()  # the repository's served versions (its version_policy)
    ready: frozenset[int] | None = None  # the versions Triton has READY; None: not known
    tokenize: str | None = None  # text models: "service" or "triton"

    def choose(self, pinned: int | None, rng: random.Random) -> VersionEntry:
        """The version a request goes to, routed to ``NAME_text`` where ``via_text`` says so."""
        chosen = self._choose(pinned, rng)
        if self.via_text(chosen.version):
            return replace(
                chosen,
                triton_model=text_name(self.name),
                triton_version=ENSEMBLE_VERSION,
                via_text_model=True,
            )
        return chosen

    def via_text(self, version: int) -> bool:
        """Whether ``version``'s texts go to the ensemble ``NAME_text``: with ``tokenize: triton``, for
        the version the ensemble runs (its steps run at Triton's newest ready version): the newest served
        version, once it is also the newest Triton has ready (not while a new version loads or a
        rolled-back one is still loaded)."""
        if self.tokenize != "triton" or not self.served or version != max(self.served):
            return False
        return self.ready is None or (bool(self.ready) and max(self.ready) == version)

    def _choose(self, pinned: int | None, rng: random.Random) -> VersionEntry:
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
        owner = repo.companion_of(spec.name) if spec.name in repo.models() else None
        if owner is not None:
            raise InvalidArgument(
                f"{where}: {spec.name!r} is a companion model of {owner!r} (written by the repository); "
                f"configure {owner!r} instead, with `tokenize: triton` to send its texts through "
                f"{text_name(owner)}",
                field=f"models.{index}.name",
            )
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
        versions = {v: read_version(repo, spec, v, settings.limits, where) for v in served}
        if spec.tokenize_in == "triton":
            ensemble = text_name(spec.name)
            if ensemble not in repo.companions(spec.name):
                raise NotFound(
                    f"{where}: tokenize: triton sends texts to {ensemble}, which is not in the repository "
                    f"{repo.root}; publish {spec.name} again with the converters, or run "
                    f"`python -m converters companions {spec.name}`",
                    field=f"models.{index}.tokenize",
                )
        # Zero weights first: a promotion ({1: 0, 2: 100}) may outlive the version it retired.
        configured = {v: w for v, w in spec.versions.items() if w > 0} if spec.versions else None
        missing = sorted(set(configured or ()) - set(versions))
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
            split=routable_split(configured, served, None, {}),
            configured=configured,
            served=tuple(served),
            tokenize=spec.tokenize_in,
        )
    return models


def routable_split(
    configured: dict[int, float] | None,
    served: list[int] | tuple[int, ...],
    ready: set[int] | frozenset[int] | None,
    previous: dict[int, float],
) -> dict[int, float]:
    """The versions requests are routed to now, with their weights.

    Wanted: the configured split (zero weights dropped), or the latest served version. Of those, the
    ones the repository serves and Triton has ready (``ready`` None: not known, the repository alone
    decides). When none is: the versions routed before that Triton still has ready (a new or a
    rolled-back version is routed once it is loaded, not before); else, for a split that names no
    served version any more, the latest served version Triton has ready; else the latest served version
    (Triton's answer then says why it cannot serve it)."""
    served = sorted(served)
    if not served:
        return dict(previous)
    wanted = {v: w for v, w in (configured or {served[-1]: 1.0}).items() if w > 0}
    usable = set(served) if ready is None else set(served) & set(ready)
    routable = {v: w for v, w in wanted.items() if v in usable}
    if routable:
        return routable
    if ready is not None:
        still = {v: w for v, w in previous.items() if v in ready}
        if still:
            return still
        if usable:
            return {max(usable): 1.0}
    return {served[-1]: 1.0}


def read_version(
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
        inputs = tuple(TensorSpec.from_manifest(t) for t in manifest["inputs"])
        outputs = tuple(TensorSpec.from_manifest(t) for t in manifest["outputs"])
        unknown = [t.datatype for t in (*inputs, *outputs) if t.datatype not in DATATYPES]
        if unknown or not inputs or not outputs:
            raise ValueError(unknown)
    except (KeyError, IndexError, TypeError, ValueError):
        raise InvalidArgument(
            f"{where}: the manifest lacks inputs/outputs (name, datatype one of {', '.join(DATATYPES)}, "
            "shape); re-publish the entry",
            field="manifest",
        ) from None
    pre = manifest.get("preprocessing") or {}
    entry = VersionEntry(
        version,
        manifest,
        tuple(t.name for t in inputs),
        outputs[0].name,
        tuple(manifest.get("labels") or ()),
        inputs=inputs,
        outputs=outputs,
    )
    entry.triton_model, entry.triton_version = spec.name, version
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
    if task.postprocess in ("labels", "entities") and not entry.labels:
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


def served_model(models: dict[str, ModelEntry], name: str) -> ModelEntry:
    """A configured model by name, whatever its task (the Open Inference Protocol routes)."""
    entry = models.get(name)
    if entry is None:
        raise NotFound(
            f"model: {name!r} is not served here; models: {', '.join(models) or 'none'}", field="model"
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
        model = {"name": entry.name, "task": entry.task, "max_batch_size": entry.max_batch_size}
        if entry.tokenize is not None:
            model["tokenize"] = entry.tokenize
        described.append({**model, "versions": versions})
    return {"models": described}
