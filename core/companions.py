"""A text entry's two companion models, so that a plain Triton client can send text:

- ``NAME_tokenizer`` (Triton's python backend, the ``tokenizers`` library): strings in, ``NAME``'s token
  tensors out. Its versions mirror ``NAME``'s one to one (same numbers, same ``version_policy``), each
  holding that version's own tokenizer files, ``max_length`` and the model file
  (``converters/assets/tokenizer_model.py``).
- ``NAME_text`` (an ensemble, one version): input ``text`` (TYPE_STRING, one string per batch row),
  outputs those of ``NAME`` (a classifier's carry ``label_filename``, so a client asking for
  ``class_count`` gets "score:index:label" strings). Both steps use ``model_version: -1``: Triton runs
  the newest served version of each, and since the two serve the same versions, a rollback of ``NAME``
  moves its ensemble with it.

Everything here is derived from ``NAME`` (its config, versions and manifests): this module only
builds the folders; ``core.repository`` puts them in place, in an order that never shows Triton an
ensemble whose tokenizer differs from its encoder's (see ``Repository.commit``). Standard library and
the config protobuf only: the bento ships this package.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from core.errors import InvalidArgument, PublishError
from core.triton_config import write_config

TOKENIZER_SUFFIX = "_tokenizer"
TEXT_SUFFIX = "_text"
TEXT_INPUT = "text"
MANIFEST = "manifest.json"
SETTINGS = "settings.json"
MODEL_FILE = "model.py"
LABELS = "labels.txt"
ENSEMBLE_VERSION = 1
# Pad lengths: 16, 24, 32, 48, 64, 96, ... (each power of two and 1.5 times it) below max_length, then
# max_length itself.
MIN_BUCKET = 16
# Longest name a text entry may have: its companions' names must fit the repository's 64 characters.
MAX_TEXT_NAME = 64 - len(TOKENIZER_SUFFIX)
# What the tokenizer model can give, by the entry's input name: the ids, the mask, the segment ids.
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def tokenizer_name(name: str) -> str:
    return name + TOKENIZER_SUFFIX


def text_name(name: str) -> str:
    return name + TEXT_SUFFIX


def companion_names(name: str) -> tuple[str, str]:
    return tokenizer_name(name), text_name(name)


def check_name(name: str) -> str:
    """A text entry's name leaves room for ``NAME_tokenizer`` within the 64-character limit."""
    if len(name) > MAX_TEXT_NAME:
        raise InvalidArgument(
            f"--name: {name!r} has {len(name)} characters; a text entry's name may have at most "
            f"{MAX_TEXT_NAME}, so that {tokenizer_name('NAME')} and {text_name('NAME')} fit",
            field="name",
        )
    return name


def companion_of(model_dir: Path) -> str | None:
    """The entry a model folder is a companion of (its versions' manifests say so), else None."""
    if not model_dir.is_dir():
        return None
    for version in sorted((p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        try:
            return json.loads((version / MANIFEST).read_text(encoding="utf-8")).get("companion_of")
        except (OSError, ValueError):
            continue
    return None


def length_buckets(max_length: int) -> list[int]:
    """The lengths the tokenizer model pads an execution's rows to: 16, 24, 32, 48, 64, 96, 128, ...
    (each power of two and 1.5 times it) below ``max_length``, then ``max_length``. Few lengths, so that
    requests padded in different executions still meet in the encoder's batcher; steps of 1.5x at most,
    so padding costs at most half again the longest row (with powers of two alone, a row just above
    one, e.g. 146 tokens padded to 256, costs the encoder about twice its work)."""
    buckets = []
    size = MIN_BUCKET
    while size < max_length:
        buckets.append(size)
        half_step = size + size // 2
        if half_step < max_length:
            buckets.append(half_step)
        size *= 2
    return [*buckets, max_length]


def _tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(file.relative_to(folder).as_posix().encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def identity(tokenizer_dir: Path, max_length: int) -> str:
    """What decides the token tensors of a text: the tokenizer files and the truncation length. Two
    versions with the same identity tokenize every text the same way."""
    return hashlib.sha256(f"{_tree_digest(tokenizer_dir)}:{int(max_length)}".encode()).hexdigest()


@dataclass(frozen=True)
class TextVersion:
    """One version of a text entry, as its companions need it."""

    version: int
    folder: Path  # NAME/<version>/ (or its staged copy)
    manifest: dict

    @property
    def tokenizer_dir(self) -> Path:
        return self.folder / self.manifest.get("preprocessing", {}).get("tokenizer", "tokenizer")

    @property
    def max_length(self) -> int:
        return int(self.manifest.get("preprocessing", {}).get("max_length") or 512)

    def identity(self) -> str:
        if not (self.tokenizer_dir / "tokenizer.json").is_file():
            raise PublishError(
                f"{self.folder}: the version has no {self.tokenizer_dir.name}/tokenizer.json, so no "
                "tokenizer model can serve it; publish it again with the converters"
            )
        return identity(self.tokenizer_dir, self.max_length)


def tokenizer_identity(version_dir: Path) -> str | None:
    """The identity a built tokenizer version was made with (its settings.json), None if unreadable."""
    try:
        return json.loads((version_dir / SETTINGS).read_text(encoding="utf-8"))["identity"]
    except (OSError, ValueError, KeyError):
        return None


def pad_id(tokenizer_dir: Path) -> int:
    """The pad token's id: the one tokenizer_config.json names (or [PAD]/<pad>), looked up in
    tokenizer.json's added tokens and vocabulary; 0 when there is none (padded positions are masked)."""
    names = []
    config = tokenizer_dir / "tokenizer_config.json"
    if config.is_file():
        pad = json.loads(config.read_text(encoding="utf-8")).get("pad_token")
        names.append(pad.get("content") if isinstance(pad, dict) else pad)
    data = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    added = {t.get("content"): t.get("id") for t in data.get("added_tokens") or []}
    vocab = (data.get("model") or {}).get("vocab")
    for token in [*names, "[PAD]", "<pad>"]:
        if not isinstance(token, str):
            continue
        if isinstance(added.get(token), int):
            return added[token]
        if isinstance(vocab, dict) and isinstance(vocab.get(token), int):
            return vocab[token]
        if isinstance(vocab, list):  # Unigram: [[piece, score], ...]
            for index, entry in enumerate(vocab):
                if entry and entry[0] == token:
                    return index
    return 0


def tokenizer_settings(source: TextVersion) -> dict:
    """What ``NAME_tokenizer/<version>/settings.json`` holds for a version of the entry."""
    return {
        "max_length": source.max_length,
        "pad_id": pad_id(source.tokenizer_dir),
        "buckets": length_buckets(source.max_length),
        "identity": source.identity(),
    }


def build_tokenizer_version(target: Path, name: str, source: TextVersion, model_file: bytes) -> None:
    """``NAME_tokenizer/<version>/``: the model file, the version's tokenizer files, its settings."""
    target.mkdir(parents=True)
    (target / MODEL_FILE).write_bytes(model_file)
    shutil.copytree(source.tokenizer_dir, target / "tokenizer")
    settings = tokenizer_settings(source)
    (target / SETTINGS).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    manifest = {
        "name": tokenizer_name(name),
        "version": source.version,
        "companion_of": name,
        "role": "tokenizer",
        "source": f"{name}:{source.version}",
        "max_length": source.max_length,
    }
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def tokenizer_config(name: str, config: mc.ModelConfig) -> mc.ModelConfig:
    """``NAME_tokenizer``'s config: text in, ``NAME``'s token inputs out (padded rows, so [-1]), the
    same batch limit and version policy as ``NAME``, dynamically batched, one CPU instance, warmed up
    with one text."""
    unknown = [t.name for t in config.input if t.name not in TOKEN_INPUTS]
    if unknown:
        raise InvalidArgument(
            f"{name}: inputs {unknown} are not token tensors the tokenizer model can make "
            f"({', '.join(TOKEN_INPUTS)}); a text entry takes those",
            field="name",
        )
    out = mc.ModelConfig(name=tokenizer_name(name), backend="python", max_batch_size=config.max_batch_size)
    out.input.add(name=TEXT_INPUT, data_type=mc.TYPE_STRING, dims=[1])
    for tensor in config.input:
        out.output.add(name=tensor.name, data_type=tensor.data_type, dims=[-1])
    out.dynamic_batching.SetInParent()
    out.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    out.version_policy.CopyFrom(config.version_policy)
    warmup = out.model_warmup.add(name="one text", batch_size=1)
    sample = warmup.inputs[TEXT_INPUT]
    sample.data_type = mc.TYPE_STRING
    sample.dims.append(1)
    sample.zero_data = True
    return out


def text_config(name: str, config: mc.ModelConfig, *, labels: bool) -> mc.ModelConfig:
    """``NAME_text``'s config: the ensemble of ``NAME_tokenizer`` then ``NAME``, both at version -1."""
    out = mc.ModelConfig(name=text_name(name), platform="ensemble", max_batch_size=config.max_batch_size)
    out.input.add(name=TEXT_INPUT, data_type=mc.TYPE_STRING, dims=[1])
    for tensor in config.output:
        output = out.output.add(name=tensor.name, data_type=tensor.data_type, dims=list(tensor.dims))
        if labels:
            output.label_filename = LABELS
    tokenize = out.ensemble_scheduling.step.add(model_name=tokenizer_name(name), model_version=-1)
    tokenize.input_map[TEXT_INPUT] = TEXT_INPUT
    encode = out.ensemble_scheduling.step.add(model_name=name, model_version=-1)
    for tensor in config.input:
        tokenize.output_map[tensor.name] = tensor.name
        encode.input_map[tensor.name] = tensor.name
    for tensor in config.output:
        encode.output_map[tensor.name] = tensor.name
    return out


def build_text_model(target: Path, name: str, config: mc.ModelConfig, labels: list[str] | None) -> None:
    """``NAME_text/``: config.pbtxt, labels.txt for classifiers, and version 1 (a manifest in it: an
    empty folder would not survive a sync to object storage)."""
    version = target / str(ENSEMBLE_VERSION)
    version.mkdir(parents=True)
    manifest = {
        "name": text_name(name),
        "version": ENSEMBLE_VERSION,
        "companion_of": name,
        "role": "text",
        "steps": [tokenizer_name(name), name],
    }
    (version / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if labels:
        (target / LABELS).write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
    write_config(target / "config.pbtxt", text_config(name, config, labels=bool(labels)))


def build_tokenizer_model(
    target: Path,
    name: str,
    config: mc.ModelConfig,
    versions: list[TextVersion],
    live: Path,
    model_file: bytes | None,
) -> None:
    """The whole ``NAME_tokenizer/`` as it must be: one version per version of ``NAME``. A version the
    live folder already holds as it would be built (same settings, same tokenizer, and the same model
    file when ``model_file`` is given) is hard-linked, not copied; the others are built with
    ``model_file`` (when None: the model file of a live version)."""
    target.mkdir(parents=True)
    for source in versions:
        live_version = live / str(source.version)
        if _up_to_date(live_version, source, model_file):
            shutil.copytree(live_version, target / str(source.version), copy_function=os.link)
            continue
        if model_file is None:
            model_file = _live_model_file(live)
        build_tokenizer_version(target / str(source.version), name, source, model_file)
    write_config(target / "config.pbtxt", tokenizer_config(name, config))


def _up_to_date(live_version: Path, source: TextVersion, model_file: bytes | None) -> bool:
    try:
        settings = json.loads((live_version / SETTINGS).read_text(encoding="utf-8"))
        if settings != tokenizer_settings(source):
            return False
        return model_file is None or (live_version / MODEL_FILE).read_bytes() == model_file
    except (OSError, ValueError):
        return False


def _live_model_file(live: Path) -> bytes:
    for version in sorted(live.glob(f"*/{MODEL_FILE}")):
        return version.read_bytes()
    raise PublishError(
        f"{live}: no {MODEL_FILE} to build a tokenizer version from; publish the entry with the converters"
    )


def same_tree(a: Path, b: Path) -> bool:
    """Whether two folders hold the same files with the same bytes."""
    if not a.is_dir() or not b.is_dir():
        return False
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    if files_a != files_b:
        return False
    for relative in files_a:
        left, right = a / relative, b / relative
        if os.path.samefile(left, right):
            continue
        if left.stat().st_size != right.stat().st_size or left.read_bytes() != right.read_bytes():
            return False
    return True
