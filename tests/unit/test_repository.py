"""Versioned, atomic publishing: injected failures at every step, a killed publisher, two publishers
at once. "Unchanged" means the whole repository tree hashes the same before and after."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from core.errors import InvalidArgument, NotFound, PublishError, UnsafeInput
from core.repository import HOOK_POINTS, Repository, parse_ref, validate_name
from core.tasks import TensorSpec
from core.triton_config import build_config, read_config, version_policy, write_config

ROOT = Path(__file__).resolve().parents[2]
INPUT = TensorSpec("input", "FP32", (-1, 4), {0: "batch"})
OUTPUT = TensorSpec("logits", "FP32", (-1, 2), {0: "batch"})


def tree_hash(root: Path) -> str:
    """Every path (files and folders) and every file's bytes under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(path.relative_to(root).as_posix().encode() + (b"/" if path.is_dir() else b""))
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def publish_files(repo: Repository, name: str, payload: bytes, *, max_batch_size: int = 8) -> int:
    """Publish a version whose model file holds ``payload`` (the repository does not read it)."""
    with repo.stage(name) as staged:
        (staged.dir / "model.onnx").write_bytes(payload)
        config = build_config(name, [INPUT], [OUTPUT], max_batch_size=max_batch_size)
        repo.commit(staged, config, {"task": "image-classification", "precision": "fp32"})
        return staged.version


@pytest.fixture
def repo(tmp_path) -> Repository:
    repository = Repository(tmp_path / "repository")
    publish_files(repository, "existing", b"v1")
    return repository


def test_versions_count_up_and_the_manifest_is_completed(repo):
    assert publish_files(repo, "existing", b"v2") == 2
    manifest = repo.manifest("existing", 2)
    assert manifest["name"] == "existing" and manifest["version"] == 2
    assert manifest["size_bytes"] == 2 and manifest["created_at"].endswith("Z")
    assert (repo.version_dir("existing", 2) / "model.onnx").read_bytes() == b"v2"
    assert repo.versions("existing") == [1, 2] and repo.served_versions("existing") == [2]


def test_staging_happens_beside_the_repository(repo):
    names = sorted(p.name for p in repo.root.iterdir())
    assert names == ["existing"]  # no staging or lock files inside what Triton reads
    workspace = repo.workspace()
    assert workspace.parent == repo.root.parent and workspace.name.startswith(".")
    assert list(workspace.glob("staging-*")) == []


def test_non_numeric_and_zero_prefixed_folders_are_not_versions(repo):
    (repo.model_dir("existing") / "notes").mkdir()
    (repo.model_dir("existing") / "02").mkdir()
    assert repo.versions("existing") == [1]


@pytest.mark.parametrize("point", HOOK_POINTS)
@pytest.mark.parametrize("model", ["existing", "fresh"])
def test_disk_full_at_any_step_leaves_the_repository_byte_for_byte(repo, point, model):
    before = tree_hash(repo.root)

    def disk_full(at: str) -> None:
        if at == point:
            raise OSError(errno.ENOSPC, "No space left on device")

    failing = Repository(repo.root, hook=disk_full)
    # A changed config too, so that the config replacement is part of what must be undone.
    with pytest.raises(PublishError, match="disk full.*the repository is unchanged"):
        publish_files(failing, model, b"new", max_batch_size=16)
    assert tree_hash(repo.root) == before
    assert list(repo.workspace().glob("staging-*")) == []
    assert publish_files(repo, "existing", b"after") == 2  # and the repository still works


def test_an_exception_while_staging_removes_the_staging_folder(repo):
    before = tree_hash(repo.root)
    with pytest.raises(RuntimeError, match="export blew up"):
        with repo.stage("existing") as staged:
            (staged.dir / "model.onnx").write_bytes(b"half")
            raise RuntimeError("export blew up")
    assert tree_hash(repo.root) == before
    assert list(repo.workspace().glob("staging-*")) == []


def test_a_live_publishers_staging_folder_is_left_alone(repo):
    with repo.stage("existing") as first:
        (first.dir / "model.onnx").write_bytes(b"in progress")
        with repo.stage("existing") as second:
            assert first.root.is_dir() and second.root != first.root
        assert (first.dir / "model.onnx").read_bytes() == b"in progress"


KILLED_PUBLISHER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from core.repository import Repository
    from core.tasks import TensorSpec
    from core.triton_config import build_config

    root, name, point, ready = sys.argv[1:5]

    def pause(at):
        if at == point:
            Path(ready).write_text("paused")
            time.sleep(120)

    repo = Repository(root, hook=pause)
    spec_in = TensorSpec("input", "FP32", (-1, 4), {0: "batch"})
    spec_out = TensorSpec("logits", "FP32", (-1, 2), {0: "batch"})
    with repo.stage(name) as staged:
        (staged.dir / "model.onnx").write_bytes(b"x" * 1_000_000)
        repo.commit(staged, build_config(name, [spec_in], [spec_out]), {"task": "image-classification"})
    """
)


def _start(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_for(path: Path, process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"publisher exited early: {process.communicate()}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError("publisher never reached the pause point")
        time.sleep(0.05)


@pytest.mark.parametrize("point", ["staged", "manifest_written"])
@pytest.mark.parametrize("model", ["existing", "fresh"])
def test_a_publisher_killed_mid_publish_leaves_the_repository_as_it_was(repo, tmp_path, point, model):
    before = tree_hash(repo.root)
    ready = tmp_path / "ready"
    process = _start(KILLED_PUBLISHER, str(repo.root), model, point, str(ready))
    try:
        _wait_for(ready, process)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
        process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert tree_hash(repo.root) == before
    leftovers = list(repo.workspace().glob("staging-*"))
    assert len(leftovers) == 1  # what the killed process left, outside the repository
    assert publish_files(repo, "existing", b"next") == 2
    assert list(repo.workspace().glob("staging-*")) == []  # removed once its owner is gone


def test_a_publisher_killed_after_the_atomic_step_leaves_the_complete_new_version(repo, tmp_path):
    ready = tmp_path / "ready"
    # The killed publisher's config differs (default max_batch_size 64 against 8): the swap path.
    process = _start(KILLED_PUBLISHER, str(repo.root), "existing", "renamed", str(ready))
    try:
        _wait_for(ready, process)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
        process.communicate()
    assert repo.versions("existing") == [1, 2]
    assert repo.config("existing").max_batch_size == 64
    assert (repo.version_dir("existing", 1) / "model.onnx").read_bytes() == b"v1"
    assert (repo.version_dir("existing", 2) / "model.onnx").stat().st_size == 1_000_000


def test_a_new_config_and_version_arrive_together_and_old_versions_are_kept(repo):
    inode = (repo.version_dir("existing", 1) / "model.onnx").stat().st_ino
    assert publish_files(repo, "existing", b"v2", max_batch_size=32) == 2
    assert repo.config("existing").max_batch_size == 32
    assert (repo.version_dir("existing", 1) / "model.onnx").read_bytes() == b"v1"
    assert (repo.version_dir("existing", 1) / "model.onnx").stat().st_ino == inode  # linked, not copied
    assert list(repo.workspace().glob("staging-*")) == []


def test_the_two_step_fallback_publishes_and_undoes(repo):
    """Where renameat2 cannot swap folders: version first, then config; undo restores both."""
    before = tree_hash(repo.root)
    with repo.stage("existing") as staged:
        (staged.dir / "model.onnx").write_bytes(b"v2")
        versioned = staged.dir.with_name("2")
        os.rename(staged.dir, versioned)
        config = build_config("existing", [INPUT], [OUTPUT], max_batch_size=4)
        undo = repo._publish_in_two_steps(versioned, repo.model_dir("existing"), config)
        assert repo.versions("existing") == [1, 2] and repo.config("existing").max_batch_size == 4
        undo()
    assert tree_hash(repo.root) == before


CONCURRENT_PUBLISHER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from core.repository import Repository
    from core.tasks import TensorSpec
    from core.triton_config import build_config

    root, name, me, other = sys.argv[1:5]

    def rendezvous(at):
        if at == "staged":  # both have staged before either takes the lock
            Path(me).write_text("staged")
            while not Path(other).exists():
                time.sleep(0.01)

    repo = Repository(root, hook=rendezvous)
    spec_in = TensorSpec("input", "FP32", (-1, 4), {0: "batch"})
    spec_out = TensorSpec("logits", "FP32", (-1, 2), {0: "batch"})
    with repo.stage(name) as staged:
        (staged.dir / "model.onnx").write_bytes(me.encode())
        repo.commit(staged, build_config(name, [spec_in], [spec_out]), {"task": "image-classification"})
    print(staged.version)
    """
)


@pytest.mark.parametrize("model", ["existing", "fresh"])
def test_two_concurrent_publishes_get_distinct_versions(repo, tmp_path, model):
    a, b = tmp_path / "a", tmp_path / "b"
    first = _start(CONCURRENT_PUBLISHER, str(repo.root), model, str(a), str(b))
    second = _start(CONCURRENT_PUBLISHER, str(repo.root), model, str(b), str(a))
    results = [p.communicate(timeout=60) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], results
    versions = sorted(int(out) for out, _ in results)
    expected = [2, 3] if model == "existing" else [1, 2]
    assert versions == expected
    assert repo.versions(model) == ([1] if model == "existing" else []) + expected
    payloads = {(repo.version_dir(model, v) / "model.onnx").read_bytes() for v in expected}
    assert payloads == {str(a).encode(), str(b).encode()}
    assert read_config(repo.model_dir(model) / "config.pbtxt").name == model


def test_a_model_keeps_its_task(repo):
    with pytest.raises(InvalidArgument, match="holds image-classification versions"):
        with repo.stage("existing") as staged:
            config = build_config("existing", [INPUT], [OUTPUT])
            repo.commit(staged, config, {"task": "feature-extraction"})


def test_version_policy_rollback_deletes_nothing(repo):
    publish_files(repo, "existing", b"v2")
    before = {v: (repo.version_dir("existing", v) / "model.onnx").read_bytes() for v in (1, 2)}
    repo.set_version_policy("existing", [1])
    assert repo.served_versions("existing") == [1]
    assert {v: (repo.version_dir("existing", v) / "model.onnx").read_bytes() for v in (1, 2)} == before
    assert list(
        read_config(repo.model_dir("existing") / "config.pbtxt").version_policy.specific.versions
    ) == [1]
    repo.set_version_policy("existing", "latest")
    assert repo.served_versions("existing") == [2]


@pytest.mark.parametrize("name", ["minilm", "image_classifier", "a", "A-1.b_2", "x" * 64])
def test_safe_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "..", "../etc", "a/b", "a..b", ".hidden", "-flag", "x" * 65, "a b", "ä", "a\\b", "/abs", "a\0"],
)
def test_unsafe_names_are_refused_with_the_pattern(name):
    with pytest.raises(UnsafeInput, match="not a safe model name") as caught:
        validate_name(name)
    assert caught.value.field == "name" and caught.value.exit_code == 2


def test_refs_parse_and_missing_ones_name_what_exists(repo):
    assert parse_ref("minilm") == ("minilm", None) and parse_ref("minilm:3") == ("minilm", 3)
    for bad in ("minilm:0", "minilm:x", "minilm:-1"):
        with pytest.raises(InvalidArgument, match="positive integer"):
            parse_ref(bad)
    with pytest.raises(NotFound, match=r"'nope' is not in .*\(models there: existing\)"):
        repo.require("nope")
    with pytest.raises(NotFound, match="existing:9 does not exist.*versions: 1"):
        repo.require("existing", 9)


def test_manifest_json_is_plain_json(repo):
    text = (repo.version_dir("existing", 1) / "manifest.json").read_text()
    assert json.loads(text)["task"] == "image-classification"


# ---- served history: rollback returns to what was served before ------------------------------------


def served(repo: Repository, name: str = "existing") -> list[int]:
    return repo.served_versions(name)


def test_rollback_returns_to_what_was_served_before_not_the_previous_number(repo):
    """The issue's sequence: v2 -> rollback -> v3 published -> rollback serves v1 again, which was served
    before v3; v2 was never served since."""
    publish_files(repo, "existing", b"v2")
    assert repo.rollback("existing") == [1]
    publish_files(repo, "existing", b"v3")  # the converters' config serves the latest again
    assert served(repo) == [3]
    assert repo.rollback("existing") == [1]
    assert served(repo) == [1] and repo.versions("existing") == [1, 2, 3]  # nothing deleted
    with pytest.raises(InvalidArgument, match="oldest.*nothing to roll back") as caught:
        repo.rollback("existing")
    assert caught.value.field == "name"


def test_each_rollback_goes_one_step_further_back(repo):
    publish_files(repo, "existing", b"v2")
    publish_files(repo, "existing", b"v3")
    assert [repo.rollback("existing"), repo.rollback("existing")] == [[2], [1]]
    assert [entry["served"] for entry in repo.served_history("existing")] == [[1]]


def test_a_chosen_version_is_history_too(repo):
    """`rollback --to N` and `--to latest` are changes like any other: a rollback after one undoes it."""
    publish_files(repo, "existing", b"v2")
    publish_files(repo, "existing", b"v3")
    repo.set_version_policy("existing", [1])
    assert repo.rollback("existing") == [3]
    repo.set_version_policy("existing", [2])
    repo.set_version_policy("existing", "latest")
    assert repo.rollback("existing") == [2]
    assert [entry["served"] for entry in repo.served_history("existing")] == [[1], [2], [3], [2]]


def test_a_publish_that_does_not_change_what_is_served_is_not_history(repo):
    repo.set_version_policy("existing", [1])
    with repo.stage("existing") as staged:  # the same config: version 2 is published, not served
        (staged.dir / "model.onnx").write_bytes(b"v2")
        repo.commit(staged, repo.config("existing"), {"task": "image-classification"})
    assert served(repo) == [1]
    assert [entry["served"] for entry in repo.served_history("existing")] == [[1]]


def test_served_history_lives_in_the_entry_and_changes_with_the_config_in_one_step(repo, monkeypatch):
    publish_files(repo, "existing", b"v2")
    history = repo.model_dir("existing") / "served_history.json"
    entries = json.loads(history.read_text())["entries"]
    assert [e["served"] for e in entries] == [[1], [2]] and all(e["at"].endswith("Z") for e in entries)
    before = tree_hash(repo.root)

    def no_space(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("core.repository.exchange", no_space)
    with pytest.raises(PublishError, match="disk full"):
        repo.rollback("existing")
    assert tree_hash(repo.root) == before  # neither the config nor the history changed
    monkeypatch.undo()
    assert repo.rollback("existing") == [1]
    assert [e["served"] for e in json.loads(history.read_text())["entries"]] == [[1]]


def test_without_a_history_rollback_takes_the_version_numbered_before(repo):
    """An entry published before the served history existed (or whose history was removed): rollback
    falls back to the version before the one served, as it always did."""
    publish_files(repo, "existing", b"v2")
    publish_files(repo, "existing", b"v3")
    (repo.model_dir("existing") / "served_history.json").unlink()
    assert repo.rollback("existing") == [2]
    assert repo.rollback("existing") == [1]


def test_a_config_edited_by_hand_joins_the_history(repo):
    publish_files(repo, "existing", b"v2")
    config = repo.config("existing")
    config.version_policy.CopyFrom(version_policy([1]))
    write_config(repo.model_dir("existing") / "config.pbtxt", config)  # not through the repository
    assert repo.rollback("existing") == [2]  # what was served before the edit


# ---- symlinks that leave the repository --------------------------------------------------------------


def test_a_model_folder_linked_outside_the_repository_is_refused(repo, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (repo.root / "linked").symlink_to(outside)
    with pytest.raises(UnsafeInput, match=r"linked.* is a symlink to .*elsewhere, outside") as caught:
        publish_files(repo, "linked", b"v1")
    assert caught.value.field == "name"
    assert list(outside.iterdir()) == []  # nothing written outside
    for read in (repo.models, lambda: repo.versions("linked"), lambda: repo.manifest("linked")):
        with pytest.raises(UnsafeInput, match="outside"):
            read()


def test_a_version_folder_linked_outside_the_repository_is_refused(repo, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "model.onnx").write_bytes(b"not ours")
    (repo.model_dir("existing") / "2").symlink_to(outside)
    for read in (
        lambda: repo.versions("existing"),
        lambda: repo.served_versions("existing"),
        lambda: repo.version_dir("existing", 2),
    ):
        with pytest.raises(UnsafeInput, match=r"existing/2 is a symlink to .*elsewhere, outside"):
            read()
    # A config-changing publish would hard-link every version: never the outside files.
    with pytest.raises(UnsafeInput, match="outside"):
        publish_files(repo, "existing", b"v3", max_batch_size=16)
    assert (outside / "model.onnx").stat().st_nlink == 1
    with pytest.raises(UnsafeInput, match="outside"):
        repo.set_version_policy("existing", [1])


def test_a_file_linked_outside_the_repository_is_never_hard_linked(repo, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not ours")
    (repo.version_dir("existing", 1) / "extra.txt").symlink_to(secret)
    with pytest.raises(UnsafeInput, match=r"existing/1/extra.txt is a symlink to .*secret.txt, outside"):
        publish_files(repo, "existing", b"v2", max_batch_size=16)
    assert secret.stat().st_nlink == 1
    with pytest.raises(UnsafeInput, match="outside"):
        repo.check_links()


def test_symlinks_inside_the_repository_stay_symlinks(repo):
    (repo.version_dir("existing", 1) / "alias.onnx").symlink_to("model.onnx")
    publish_files(repo, "existing", b"v2", max_batch_size=16)  # the whole entry is rebuilt
    alias = repo.version_dir("existing", 1) / "alias.onnx"
    assert alias.is_symlink() and os.readlink(alias) == "model.onnx" and alias.read_bytes() == b"v1"


def test_the_rollback_command_returns_to_what_was_served_before(repo, capsys):
    from converters.cli import main

    def rollback() -> list[int]:
        assert main(["rollback", "existing", "--repository", str(repo.root)]) == 0
        return json.loads(capsys.readouterr().out)["served"]

    publish_files(repo, "existing", b"v2")
    assert rollback() == [1]
    publish_files(repo, "existing", b"v3")
    assert rollback() == [1]  # not 2: version 2 was not served before version 3
