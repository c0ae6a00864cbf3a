"""The Triton model repository: versioned, atomic publishing, and reading entries back.

Layout of an entry (the contract between the parts)::

    <repo>/<name>/config.pbtxt
    <repo>/<name>/<version>/model.onnx        (or model.plan for tensorrt_plan)
    <repo>/<name>/<version>/manifest.json
    <repo>/<name>/<version>/tokenizer/        (text models)
    <repo>/<name>_tokenizer/<version>/        (text models: the tokenizer model, one version per version)
    <repo>/<name>_text/1/                     (text models: the ensemble, text in, <name>'s outputs out)

How a version is published without ever exposing a half-written one:

1. ``stage(name)`` makes a staging folder in the *workspace*, a hidden folder beside the repository on
   the same filesystem (``<parent>/.<repo>.publish/``): never inside it, where Triton would try to load
   it as a model. The exporter writes the version's files there; parity runs there.
2. ``commit()`` takes the model's lock (``fcntl.flock`` on ``<workspace>/locks/<name>.lock``), picks
   the next version number, writes ``manifest.json``, fsyncs everything, and makes the version visible
   in ONE atomic step: ``os.rename`` of the whole ``<name>/`` folder for a new model; ``os.rename`` of
   ``<name>/<version>/`` when the config stays the same and the new version is not served (a
   ``specific`` policy); and when the config changes, or the new version is served (its served
   history changes with it), a new ``<name>/`` is built in staging (existing versions hard-linked)
   and swapped with the live one by ``renameat2(RENAME_EXCHANGE)``. A failure after that step takes
   it back.
3. A text entry's companions (``core.companions``: ``NAME_tokenizer``, ``NAME_text``) are derived from
   ``NAME`` and rebuilt in staging whenever ``NAME``'s versions or config change (commit,
   ``update_config``: rollback, configure), then each put in place in one atomic step, in this order:
   the ensemble is taken out first when the tokenizer it would pair with the encoder changes, then
   ``NAME``, then ``NAME_tokenizer``, then ``NAME_text``. So whenever the ensemble is in the repository,
   its two steps' newest served versions tokenize alike. A failure at any step takes every earlier one
   back; a kill leaves what docs/repository.md describes.
4. Any exception inside ``stage()`` removes the staging folder. A process killed mid-way leaves only a
   staging folder in the workspace, which the next ``stage()`` removes once its owner is gone.

What each entry has served is kept in ``<name>/served_history.json`` (oldest first; the last entry is
what is served now), written in the same atomic step as the config or version that changes what is
served: ``rollback()`` returns to the entry before the last one. Triton ignores the file.

Symlinks that leave the repository are refused wherever an entry is read or written (a model folder, a
version folder, or any file or folder inside an entry): Triton would serve, and a publish would write or
hard-link, files that are not the repository's.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from core import companions
from core.errors import InvalidArgument, NotFound, PublishError, UnsafeInput
from core.tasks import TASK_SPECS
from core.triton_config import (
    atomic_write,
    fsync_dir,
    read_config,
    to_text,
    version_policy,
    write_config,
)

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MANIFEST = "manifest.json"
CONFIG = "config.pbtxt"
HISTORY = "served_history.json"
HISTORY_FORMAT = "modelpack-served-history/1"
OWNER = ".owner"
LOCK_TIMEOUT_S = 300.0

# Points in commit() where a test can inject a failure (disk full, a kill): the hook is called with
# the point's name. Production code passes no hook.
HOOK_POINTS = ("staged", "manifest_written", "renamed", "config_written")
# The further points of a text entry's commit (and of update_config when the entry has companions), in
# order: the live ensemble taken out (only when the tokenizer changes), NAME_tokenizer in place,
# NAME_text in place.
COMPANION_HOOK_POINTS = ("text_hidden", "tokenizer_written", "text_written")


def default_repository() -> Path:
    """``model_repository/`` at the project root."""
    return Path(__file__).resolve().parent.parent / "model_repository"


def add_repository_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repository",
        type=Path,
        default=None,
        metavar="DIR",
        help="model repository (default: model_repository/ at the project root)",
    )


def validate_name(name: str) -> str:
    """A model name that is safe as one path component: ``^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$``, no ``..``."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise UnsafeInput(
            f"--name: {name!r} is not a safe model name; use 1-64 letters, digits, '_', '.', '-', "
            "starting with a letter or digit, without '..' (e.g. 'minilm')",
            field="name",
        )
    return name


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME:VERSION`` -> (name, version or None)."""
    name, sep, version = ref.partition(":")
    validate_name(name)
    if not sep:
        return name, None
    if not version.isdigit() or int(version) <= 0:
        raise InvalidArgument(
            f"{ref!r}: the version after ':' must be a positive integer, e.g. {name}:1", field="version"
        )
    return name, int(version)


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a folder (relative paths and contents of every file, in sorted order)."""
    import hashlib

    digest = hashlib.sha256()
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def served_by_policy(config: mc.ModelConfig, versions: list[int]) -> list[int]:
    """The versions Triton serves out of ``versions`` (sorted) under the config's version_policy."""
    return served(versions, config.version_policy)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _fsync_tree(path: Path) -> None:
    for folder, _dirs, files in os.walk(path):
        for file in files:
            fd = os.open(os.path.join(folder, file), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(folder)


RENAME_EXCHANGE = 2  # linux/fs.h
AT_FDCWD = -100


def exchange(a: Path, b: Path) -> None:
    """Swap two paths on the same filesystem in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available in this C library")
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(a), None, str(b))


def served(versions: list[int], policy: mc.ModelVersionPolicy) -> list[int]:
    """The versions (sorted) that Triton serves under ``policy``."""
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return list(versions)
    if kind == "specific":
        return [v for v in versions if v in set(policy.specific.versions)]
    count = policy.latest.num_versions if kind == "latest" else 1
    return list(versions)[-count:]


@dataclass
class _CompanionPlan:
    """A text entry's companions as they must be after a change of the entry, built in staging."""

    tokenizer: Path  # the complete NAME_tokenizer/ to put in place
    text: Path  # the complete NAME_text/ to put in place
    hide: bool  # take the live ensemble out while NAME and NAME_tokenizer change


@dataclass
class Staged:
    """A version being prepared: write its files into ``dir``."""

    name: str
    root: Path  # the staging folder: <workspace>/staging-<pid>-<token>/
    dir: Path  # <root>/<name>/pending/: the version's files go here
    version: int | None = None
    path: Path | None = None  # where it landed, after commit


class Repository:
    def __init__(self, root: str | os.PathLike | None = None, *, hook: Callable[[str], None] | None = None):
        self.root = Path(root if root is not None else default_repository()).absolute()
        self._hook = hook or (lambda point: None)

    # ---- symlinks ----
    def _refuse_escape(self, path: Path, field: str) -> Path:
        """``path`` itself, unless it is a symlink whose target lies outside the repository."""
        if path.is_symlink():
            target = path.resolve()
            if not target.is_relative_to(self.root.resolve()):
                raise UnsafeInput(
                    f"{path} is a symlink to {target}, outside the repository {self.root}: Triton would "
                    "serve, and a publish would write into, files that are not the repository's; put the "
                    "files themselves there (or remove the link)",
                    field=field,
                )
        return path

    def check_links(self, name: str | None = None) -> None:
        """UnsafeInput naming the first symlink of an entry (every entry when ``name`` is None), at any
        depth, whose target lies outside the repository."""
        names = [name] if name is not None else self.models()
        for entry in names:
            folder = self.model_dir(entry)
            for parent, dirs, files in os.walk(folder):  # does not descend into linked folders
                for child in (*dirs, *files):
                    self._refuse_escape(Path(parent) / child, "name")

    # ---- reading ----
    def model_dir(self, name: str) -> Path:
        return self._refuse_escape(self.root / validate_name(name), "name")

    def models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if not p.name.startswith(".")
            and self._refuse_escape(p, "name").is_dir()
            and (p / CONFIG).is_file()
        )

    def versions(self, name: str) -> list[int]:
        folder = self.model_dir(name)
        if not folder.is_dir():
            return []
        return sorted(
            int(p.name)
            for p in folder.iterdir()
            if p.name.isdigit() and not p.name.startswith("0") and self._refuse_escape(p, "version").is_dir()
        )

    def require(self, name: str, version: int | None = None) -> int:
        """The version (the latest when None) of an existing entry, or NotFound naming what exists."""
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.models()) or "none"
            raise NotFound(f"model {name!r} is not in {self.root} (models there: {known})", field="name")
        if version is None:
            return versions[-1]
        if version not in versions:
            raise NotFound(
                f"{name}:{version} does not exist in {self.root}; versions: {', '.join(map(str, versions))}",
                field="version",
            )
        return version

    def latest_fp32(self, name: str) -> int:
        """The newest fp32 version (what quantize and tensorrt start from), else the newest version."""
        versions = [v for v in self.versions(name) if self.manifest(name, v).get("precision") == "fp32"]
        return versions[-1] if versions else self.require(name)

    def version_dir(self, name: str, version: int) -> Path:
        return self._refuse_escape(self.model_dir(name) / str(version), "version")

    def manifest(self, name: str, version: int | None = None) -> dict:
        version = self.require(name, version)
        path = self.version_dir(name, version) / MANIFEST
        if not path.is_file():
            raise NotFound(f"{path}: the version has no {MANIFEST}", field="version")
        return json.loads(path.read_text(encoding="utf-8"))

    def config(self, name: str) -> mc.ModelConfig:
        return read_config(self.model_dir(name) / CONFIG)

    def served_versions(self, name: str) -> list[int]:
        """The versions Triton serves under the entry's version_policy."""
        return served_by_policy(self.config(name), self.versions(name))

    def companions(self, name: str) -> list[str]:
        """The companion models of ``name`` in the repository (``NAME_tokenizer``, ``NAME_text``)."""
        return [
            other
            for other in companions.companion_names(name)
            if companions.companion_of(self.root / other) == name
        ]

    def companion_of(self, name: str) -> str | None:
        """The entry ``name`` is a companion of, or None for an entry of its own."""
        return companions.companion_of(self.model_dir(name))

    def served_history(self, name: str) -> list[dict]:
        """What the entry has served, oldest first; the last entry (``served``, ``at``, ``by``) is what it
        serves now. Recorded by every change made through the repository; reconciled with what the
        config serves now (a config edited by hand joins the history as its newest entry). Without a
        recorded history (an entry published before there was one) each version is taken to have been
        served in turn, in number order, up to the ones served now. Entries naming a version that no
        longer exists are left out."""
        versions = self.versions(name)
        current = served_by_policy(self.config(name), versions)
        path = self.model_dir(name) / HISTORY
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                entries = [dict(e) for e in data["entries"] if isinstance(e.get("served"), list)]
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                raise InvalidArgument(
                    f"{path}: not a served history ({err}); remove it to start a new one", field="name"
                ) from None
            entries = [e for e in entries if e["served"] and set(e["served"]) <= set(versions)]
        else:
            first = min(current, default=None)
            entries = [{"served": [v], "at": None, "by": "assumed"} for v in versions if first and v < first]
        if not entries or entries[-1]["served"] != current:
            entries.append({"served": current, "at": None, "by": "found in the config"})
        return entries

    def rollback(self, name: str) -> list[int]:
        """Serve again what was served before the current versions (the entry before the last of the
        served history, which is dropped); returns the versions served now. Nothing is deleted. A text
        entry's companions follow."""
        self.check_not_companion(name)

        def earlier() -> list[dict]:
            history = self.served_history(name)
            if len(history) < 2:
                served = ", ".join(map(str, history[-1]["served"])) or "none"
                raise InvalidArgument(
                    f"{name}: nothing was served before version {served} (the oldest entry of its served "
                    "history); there is nothing to roll back to",
                    field="name",
                )
            return history

        earlier()  # refused before the lock (and its workspace) is taken: a refusal changes nothing
        with self.lock(name):
            history = earlier()
            history.pop()
            target = history[-1]["served"]
            config = self.config(name)
            config.version_policy.CopyFrom(version_policy(target))
            self._change_config(name, config, history)
        log.info("%s: rolled back to version(s) %s", name, target)
        return target

    # ---- workspace, lock ----
    def workspace(self) -> Path:
        """The hidden folder beside the repository (``<parent>/.<repo>.publish/``) where versions are
        staged and locks live. It must be on the repository's filesystem, for ``os.rename``; it must not
        be inside the repository, where Triton would take it for a model (tritonserver 2.51 loads
        dot-folders too, and fails on them)."""
        self.root.mkdir(parents=True, exist_ok=True)
        beside = self.root.parent / f".{self.root.name}.publish"
        beside.mkdir(exist_ok=True)
        if beside.stat().st_dev != self.root.stat().st_dev:
            raise PublishError(
                f"{self.root} is a mount point: staging beside it ({beside}) is on another filesystem, so a "
                "version cannot be renamed into place atomically; put the repository in a subfolder of "
                "its volume (e.g. <volume>/model_repository)"
            )
        return beside

    @contextlib.contextmanager
    def lock(self, name: str, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """Exclusive per-model lock, shared by every process publishing into this repository."""
        locks = self.workspace() / "locks"
        locks.mkdir(exist_ok=True)
        with open(locks / f"{validate_name(name)}.lock", "a+") as handle:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise PublishError(
                            f"{locks / (name + '.lock')}: another publish of {name!r} held the lock for "
                            f"more than {timeout_s:.0f} s; retry when it is done"
                        ) from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _remove_stale_staging(self, workspace: Path) -> None:
        """Remove staging folders whose owner is gone: their ``.owner`` lock can be taken."""
        for folder in workspace.glob("staging-*"):
            try:
                with open(folder / OWNER, "rb") as handle:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live publisher holds it
            except FileNotFoundError:
                pass  # killed before it took its lock, or removed meanwhile
            log.info("removing staging folder %s left by a publisher that is gone", folder)
            shutil.rmtree(folder, ignore_errors=True)

    # ---- publishing ----
    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[Staged]:
        """A staging folder for a new version of ``name``; removed on any failure, and after commit.
        The folder's ``.owner`` file stays locked while this publisher lives."""
        validate_name(name)
        workspace = self.workspace()
        self._remove_stale_staging(workspace)
        root = workspace / f"staging-{os.getpid()}-{secrets.token_hex(4)}"
        root.mkdir()
        with open(root / OWNER, "wb") as owner:
            fcntl.flock(owner.fileno(), fcntl.LOCK_EX)
            pending = root / name / "pending"
            pending.mkdir(parents=True)
            staged = Staged(name=name, root=root, dir=pending)
            try:
                yield staged
            finally:
                shutil.rmtree(root, ignore_errors=True)

    def commit(
        self,
        staged: Staged,
        config: mc.ModelConfig,
        manifest: dict,
        *,
        tokenizer_model: bytes | None = None,
    ) -> Staged:
        """Publish the staged files as the next version of the model, with ``config``.

        A text entry (its task's input kind is text) published with ``tokenizer_model`` (the model file
        of ``NAME_tokenizer``), or that has companions already, gets them rebuilt in the same commit:
        the next version of ``NAME_tokenizer`` and ``NAME_text`` (see the module's docstring for the
        order). Any failure takes every step back; the repository is as it was."""
        name = staged.name
        if config.name != name:
            raise InvalidArgument(
                f"config.name {config.name!r} differs from the model name {name!r}", field="name"
            )
        self.check_not_companion(name)
        text_entry = _is_text(manifest.get("task"))
        if text_entry and tokenizer_model is not None:
            companions.check_name(name)
        try:
            self._hook("staged")
            with self.lock(name):
                self.check_task(name, manifest.get("task"))
                version = max(self.versions(name), default=0) + 1
                manifest = dict(manifest)
                manifest.update(
                    name=name, version=version, size_bytes=tree_size(staged.dir), created_at=_now()
                )
                (staged.dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
                self._hook("manifest_written")
                versioned = staged.dir.with_name(str(version))
                os.rename(staged.dir, versioned)
                plan = None
                if text_entry and (tokenizer_model is not None or self.companions(name)):
                    added = companions.TextVersion(version, versioned, manifest)
                    plan = self._plan_companions(name, config, staged.root, added, tokenizer_model)
                model_dir = self.model_dir(name)
                undos: list[Callable[[], None]] = []
                try:
                    if plan is not None and plan.hide:
                        undos.append(self._hide_text_model(name, staged.root))
                        self._hook("text_hidden")
                    serves = served_by_policy(config, [*self.versions(name), version])
                    record = {"served": serves, "at": _now(), "by": f"publish {version}"}
                    if not model_dir.exists():
                        undos.append(self._publish_new_model(versioned, model_dir, config, [record]))
                    else:
                        self.check_links(name)
                        history = self.served_history(name)
                        same_config = to_text(self.config(name)) == to_text(config)
                        if same_config and serves == history[-1]["served"]:
                            undos.append(self._publish_version(versioned, model_dir / str(version)))
                        else:  # what is served changes: version, config and history in one step
                            if serves != history[-1]["served"]:
                                history.append(record)
                            undos.append(self._publish_with_config(versioned, model_dir, config, history))
                    self._hook("renamed")
                    self._hook("config_written")
                    if plan is not None:
                        self._put_companions(name, plan, undos)
                except BaseException:
                    for undo in reversed(undos):
                        undo()
                    raise
        except OSError as err:
            hint = " (disk full)" if err.errno == errno.ENOSPC else ""
            raise PublishError(
                f"publishing {name!r} into {self.root} failed{hint}: {err}; the repository is unchanged"
            ) from err
        staged.version = version
        staged.path = self.version_dir(name, version)
        staged.dir = staged.path
        log.info("published %s version %d at %s", name, version, staged.path)
        return staged

    # ---- a text entry's companions ----
    def check_not_companion(self, name: str) -> None:
        """InvalidArgument when ``name`` is a text entry's companion: the repository writes those."""
        owner = self.companion_of(name) if (self.root / name).is_dir() else None
        if owner is not None:
            raise InvalidArgument(
                f"--name: {name!r} is a companion model of {owner!r}, written by the repository whenever "
                f"{owner!r} changes; change {owner!r} instead, or choose another name",
                field="name",
            )

    def _text_versions(self, name: str, added: companions.TextVersion | None) -> list[companions.TextVersion]:
        """Every version of the entry that carries a tokenizer, with ``added`` (a staged one)."""
        found = []
        for version in self.versions(name):
            folder = self.version_dir(name, version)
            try:
                manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # not written by the converters: no tokenizer to serve it with
            entry = companions.TextVersion(version, folder, manifest)
            if (entry.tokenizer_dir / "tokenizer.json").is_file():
                found.append(entry)
        if added is not None:
            found.append(added)
        return found

    def _plan_companions(
        self,
        name: str,
        config: mc.ModelConfig,
        root: Path,
        added: companions.TextVersion | None,
        tokenizer_model: bytes | None,
    ) -> _CompanionPlan:
        """Build ``NAME_tokenizer/`` and ``NAME_text/`` as they must be once ``NAME`` has ``config`` (and
        the ``added`` version) into ``root``; decide whether the live ensemble must be taken out."""
        tokenizer, text = companions.companion_names(name)
        for other in (tokenizer, text):
            owner = companions.companion_of(self.root / other)
            if (self.root / other).exists() and owner != name:
                raise PublishError(
                    f"{self.root / other} exists and is not {name!r}'s companion model; rename it, or "
                    f"publish {name!r} under another --name"
                )
        versions = self._text_versions(name, added)
        all_versions = sorted({*self.versions(name), *([added.version] if added else [])})
        serving = served(all_versions, config.version_policy)
        newest = next((v for v in versions if serving and v.version == serving[-1]), None)
        if newest is None:
            raise PublishError(
                f"{name}: the version it would serve ({serving[-1] if serving else 'none'}) has no "
                f"tokenizer, so {text} cannot serve it; publish it again with the converters"
            )
        target = root / ".companions"  # a dot: never a model name, so never the staged model's folder
        shutil.rmtree(target, ignore_errors=True)
        companions.build_tokenizer_model(
            target / tokenizer, name, config, versions, self.root / tokenizer, tokenizer_model
        )
        labels = None
        if TASK_SPECS[newest.manifest["task"]].postprocess == "labels":
            labels = [str(label) for label in newest.manifest.get("labels") or []] or None
        companions.build_text_model(target / text, name, config, labels)
        hide = False
        if (self.root / text).exists():
            live = self.root / tokenizer
            live_served = (
                served(self.versions(tokenizer), self.config(tokenizer).version_policy)
                if (live / CONFIG).is_file()
                else []
            )
            pairs_with = companions.tokenizer_identity(live / str(live_served[-1])) if live_served else None
            hide = pairs_with != newest.identity()
        return _CompanionPlan(tokenizer=target / tokenizer, text=target / text, hide=hide)

    def _hide_text_model(self, name: str, root: Path) -> Callable[[], None]:
        """Take the live ``NAME_text/`` out of the repository (into staging) in one rename."""
        live = self.root / companions.text_name(name)
        hidden = root / ".hidden" / live.name
        hidden.parent.mkdir(parents=True, exist_ok=True)
        os.rename(live, hidden)
        fsync_dir(self.root)

        def undo() -> None:
            os.rename(hidden, live)
            fsync_dir(self.root)

        return undo

    def _put_companions(self, name: str, plan: _CompanionPlan, undos: list[Callable[[], None]]) -> None:
        tokenizer, text = companions.companion_names(name)
        undos.append(self._swap_in(plan.tokenizer, self.root / tokenizer))
        self._hook("tokenizer_written")
        undos.append(self._swap_in(plan.text, self.root / text))
        self._hook("text_written")

    def _swap_in(self, built: Path, live: Path) -> Callable[[], None]:
        """Put the folder ``built`` (in staging) at ``live`` in one atomic step; nothing when they are
        the same already. Returns how to take it back."""
        if companions.same_tree(built, live):
            return lambda: None
        _fsync_tree(built)
        if not live.exists():
            os.rename(built, live)
            fsync_dir(self.root)

            def undo_new() -> None:
                os.rename(live, built)
                fsync_dir(self.root)

            return undo_new
        try:
            exchange(built, live)
        except OSError as err:
            if err.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            log.warning("%s: this filesystem cannot swap folders (%s); replacing in two steps", live, err)
            old = built.with_name(built.name + ".old")
            os.rename(live, old)
            os.rename(built, live)
            fsync_dir(self.root)

            def undo_two_steps() -> None:
                os.rename(live, built)
                os.rename(old, live)
                fsync_dir(self.root)

            return undo_two_steps
        fsync_dir(self.root)

        def undo() -> None:
            exchange(built, live)
            fsync_dir(self.root)

        return undo

    # Each of the three ways to publish makes the new version visible in one atomic step and returns
    # how to take that step back.
    def _publish_new_model(
        self, versioned: Path, model_dir: Path, config: mc.ModelConfig, history: list[dict]
    ) -> Callable[[], None]:
        """A new model: <name>/ with its config, history and first version appears in one rename."""
        write_config(versioned.parent / CONFIG, config)
        _write_history(versioned.parent / HISTORY, history)
        _fsync_tree(versioned.parent)
        os.rename(versioned.parent, model_dir)
        fsync_dir(self.root)

        def undo() -> None:
            shutil.rmtree(model_dir, ignore_errors=True)
            fsync_dir(self.root)

        return undo

    def _publish_version(self, versioned: Path, target: Path) -> Callable[[], None]:
        """Same config: only the version folder is renamed into place."""
        _fsync_tree(versioned)
        os.rename(versioned, target)
        fsync_dir(target.parent)

        def undo() -> None:
            shutil.rmtree(target, ignore_errors=True)
            fsync_dir(target.parent)

        return undo

    def _publish_with_config(
        self,
        versioned: Path | None,
        model_dir: Path,
        config: mc.ModelConfig,
        history: list[dict],
        *,
        swap: Path | None = None,
    ) -> Callable[[], None]:
        """New version (or none), new config and served history together: build the whole new <name>/ in
        staging (existing versions hard-linked, not copied; symlinks, all inside the repository, copied
        as symlinks) and swap it with the live one in one renameat2 call."""
        swap = versioned.parent if versioned is not None else swap
        self.check_links(model_dir.name)  # never a hard link to a file outside the repository
        for entry in model_dir.iterdir():
            if entry.name in (CONFIG, HISTORY):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, swap / entry.name, symlinks=True, copy_function=os.link)
            else:
                os.link(entry, swap / entry.name, follow_symlinks=False)
        write_config(swap / CONFIG, config)
        _write_history(swap / HISTORY, history)
        _fsync_tree(swap)
        try:
            exchange(swap, model_dir)
        except OSError as err:
            if err.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            log.warning(
                "%s: this filesystem cannot swap folders (%s); publishing in two steps", self.root, err
            )
            return self._publish_in_two_steps(versioned, model_dir, config, history)
        fsync_dir(self.root)

        def undo() -> None:
            exchange(swap, model_dir)
            fsync_dir(self.root)

        return undo

    def _publish_in_two_steps(
        self,
        versioned: Path | None,
        model_dir: Path,
        config: mc.ModelConfig,
        history: list[dict] | None = None,
    ) -> Callable[[], None]:
        """Fallback without renameat2: rename the version in (if any), then replace the config, then
        the served history. A kill between them leaves the new version with the old config, or a
        history one change behind (``served_history`` reconciles it with the config)."""
        old_config = (model_dir / CONFIG).read_bytes()
        history_path = model_dir / HISTORY
        old_history = history_path.read_bytes() if history_path.is_file() else None
        undo_version = (
            self._publish_version(versioned, model_dir / versioned.name) if versioned is not None else None
        )

        def undo() -> None:
            atomic_write(model_dir / CONFIG, old_config)
            if old_history is not None:
                atomic_write(history_path, old_history)
            else:
                history_path.unlink(missing_ok=True)
            if undo_version is not None:
                undo_version()

        try:
            write_config(model_dir / CONFIG, config)
            if history is not None:
                _write_history(history_path, history)
        except BaseException:
            undo()
            raise
        return undo

    def check_task(self, name: str, task: str | None) -> None:
        versions = self.versions(name)
        if not versions or task is None:
            return
        current = self.manifest(name, versions[-1]).get("task")
        if current != task:
            raise InvalidArgument(
                f"--name: {name!r} holds {current} versions; a {task} model needs another name (its "
                "inputs and outputs differ)",
                field="name",
            )

    def set_version_policy(self, name: str, policy: str | list[int]) -> mc.ModelConfig:
        """Change which versions Triton serves (atomically, with the served history); nothing is deleted.
        A text entry's companions follow: ``NAME_tokenizer`` serves the same versions."""
        return self.update_config(name, lambda config: config.version_policy.CopyFrom(version_policy(policy)))

    def write_companions(self, name: str, tokenizer_model: bytes) -> list[str]:
        """Write (or bring back in step) the companions of the text entry ``name`` from its versions and
        config, with ``tokenizer_model`` as the model file of versions built anew; the entry itself is
        not changed. Returns the companions' names."""
        self.check_not_companion(name)
        companions.check_name(name)
        with self.lock(name):
            task = self.manifest(name).get("task")
            if not _is_text(task):
                raise InvalidArgument(
                    f"{name}: a {task} entry takes no text, so it has no tokenizer or text model",
                    field="name",
                )
            with self.stage(name) as staged:
                plan = self._plan_companions(name, self.config(name), staged.root, None, tokenizer_model)
                undos: list[Callable[[], None]] = []
                try:
                    if plan.hide:
                        undos.append(self._hide_text_model(name, staged.root))
                        self._hook("text_hidden")
                    self._put_companions(name, plan, undos)
                except BaseException:
                    for undo in reversed(undos):
                        undo()
                    raise
        return self.companions(name)

    def update_config(self, name: str, change: Callable[[mc.ModelConfig], None]) -> mc.ModelConfig:
        """Apply ``change`` to the entry's config under the model lock and write it atomically; when it
        changes what is served, the served history records it in the same step. When the entry has
        companions, they are rebuilt and put in place after it (in the order of ``commit``), and a
        failure at any step takes the earlier ones back."""
        self.check_not_companion(name)
        with self.lock(name):
            config = self.config(name)
            history = self.served_history(name)
            change(config)
            serves = served_by_policy(config, self.versions(name))
            if serves == history[-1]["served"]:
                self._change_config(name, config, None)
            else:
                history.append({"served": serves, "at": _now(), "by": "version policy"})
                self._change_config(name, config, history)
        return config

    def _change_config(self, name: str, config: mc.ModelConfig, history: list[dict] | None) -> None:
        """Under the model lock: the config alone in one atomic write (``history`` None: what is served
        does not change), else the config and the served history together in one swap of the entry's
        folder; then, when the entry has companions, they are rebuilt and put in place (in the order of
        ``commit``). A failure at any step takes the earlier ones back."""
        model_dir = self.model_dir(name)
        self.check_links(name)
        has_companions = bool(self.companions(name))
        if history is None and not has_companions:
            write_config(model_dir / CONFIG, config)
            return
        try:
            with self.stage(name) as staged:
                plan = (
                    self._plan_companions(name, config, staged.root, None, None) if has_companions else None
                )
                undos: list[Callable[[], None]] = []
                try:
                    if plan is not None and plan.hide:
                        undos.append(self._hide_text_model(name, staged.root))
                        self._hook("text_hidden")
                    if history is None:
                        path = model_dir / CONFIG
                        old = path.read_bytes()
                        write_config(path, config)
                        undos.append(lambda: atomic_write(path, old))
                    else:
                        staged.dir.rmdir()
                        undos.append(
                            self._publish_with_config(
                                None, model_dir, config, history, swap=staged.dir.parent
                            )
                        )
                    self._hook("config_written")
                    if plan is not None:
                        self._put_companions(name, plan, undos)
                except BaseException:
                    for undo in reversed(undos):
                        undo()
                    raise
        except OSError as err:
            hint = " (disk full)" if err.errno == errno.ENOSPC else ""
            raise PublishError(
                f"changing the config of {name!r} in {self.root} failed{hint}: {err}; the repository is "
                "unchanged"
            ) from err


def _is_text(task: str | None) -> bool:
    spec = TASK_SPECS.get(task) if task else None
    return spec is not None and spec.input_kind == "text"


def _history_text(history: list[dict]) -> bytes:
    return (json.dumps({"format": HISTORY_FORMAT, "entries": history}, indent=2) + "\n").encode("utf-8")


def _write_history(path: Path, history: list[dict]) -> None:
    atomic_write(path, _history_text(history))
