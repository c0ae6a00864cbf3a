"""A text entry's companions (``NAME_tokenizer``, ``NAME_text``), kept in step by the repository: written
in the same commit as the entry, following its versions and version policy, taken back whole when any
step fails, never leaving an ensemble whose tokenizer differs from its encoder's; and what a publisher
killed between the steps leaves. The entries here carry real tokenizer files (MiniLM's); the model file
is not read by the repository."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import textwrap
from pathlib import Path

import pytest

from core import companions
from core.errors import InvalidArgument, PublishError
from core.repository import COMPANION_HOOK_POINTS, HOOK_POINTS, Repository
from core.tasks import TASK_SPECS, with_static_dims
from core.triton_config import build_config
from tests.unit.test_repository import _start, _wait_for, tree_hash

ROOT = Path(__file__).resolve().parents[2]
MODEL_FILE = (ROOT / "converters" / "assets" / "tokenizer_model.py").read_bytes()


@pytest.fixture(scope="module")
def tokenizer_files(minilm_path, tmp_path_factory) -> dict[str, Path]:
    """MiniLM's tokenizer, and a second one that tokenizes differently (another vocabulary order)."""
    folder = tmp_path_factory.mktemp("tokenizers")
    same = folder / "minilm"
    same.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(minilm_path / name, same / name)
    other = folder / "other"
    shutil.copytree(same, other)
    data = json.loads((other / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    data["model"]["vocab"] = {token: len(vocab) - 1 - i for token, i in vocab.items()}
    (other / "tokenizer.json").write_text(json.dumps(data))
    return {"same": same, "other": other}


def text_config(name: str, *, policy="latest", max_batch_size: int = 64):
    spec = TASK_SPECS["feature-extraction"]
    outputs = [with_static_dims(spec.outputs[0], {1: 384})]
    return build_config(name, spec.inputs, outputs, policy=policy, max_batch_size=max_batch_size)


def publish_text(
    repo: Repository,
    name: str,
    tokenizer: Path,
    *,
    payload: bytes = b"onnx",
    max_length: int = 128,
    model_file: bytes | None = MODEL_FILE,
    max_batch_size: int = 64,
) -> int:
    with repo.stage(name) as staged:
        (staged.dir / "model.onnx").write_bytes(payload)
        shutil.copytree(tokenizer, staged.dir / "tokenizer")
        manifest = {
            "task": "feature-extraction",
            "precision": "fp32",
            "preprocessing": {"tokenizer": "tokenizer", "max_length": max_length},
        }
        config = text_config(name, max_batch_size=max_batch_size)
        repo.commit(staged, config, manifest, tokenizer_model=model_file)
        return staged.version


@pytest.fixture
def repo(tmp_path, tokenizer_files) -> Repository:
    repository = Repository(tmp_path / "repository")
    publish_text(repository, "enc", tokenizer_files["same"])
    return repository


def test_a_text_commit_writes_both_companions(repo):
    assert repo.models() == ["enc", "enc_text", "enc_tokenizer"]
    assert repo.companions("enc") == ["enc_tokenizer", "enc_text"]
    assert repo.companion_of("enc_tokenizer") == "enc" and repo.companion_of("enc") is None
    tokenizer = repo.config("enc_tokenizer")
    assert tokenizer.backend == "python" and tokenizer.max_batch_size == 64
    assert [(t.name, list(t.dims)) for t in tokenizer.input] == [("text", [1])]
    assert [t.name for t in tokenizer.output] == ["input_ids", "attention_mask"]
    assert tokenizer.version_policy == repo.config("enc").version_policy
    assert len(tokenizer.model_warmup) == 1
    version = repo.version_dir("enc_tokenizer", 1)
    assert (version / "model.py").read_bytes() == MODEL_FILE
    settings = json.loads((version / "settings.json").read_text())
    assert settings["buckets"] == [16, 24, 32, 48, 64, 96, 128] and settings["max_length"] == 128
    assert settings["pad_id"] == 0  # [PAD] in MiniLM's vocabulary
    text = repo.config("enc_text")
    assert text.platform == "ensemble" and not text.model_warmup and not text.instance_group
    assert [(s.model_name, s.model_version) for s in text.ensemble_scheduling.step] == [
        ("enc_tokenizer", -1),
        ("enc", -1),
    ]
    assert [(t.name, list(t.dims)) for t in text.output] == [("embeddings", [384])]
    assert repo.versions("enc_text") == [1]


def test_the_buckets_step_by_at_most_one_and_a_half_up_to_max_length():
    assert companions.length_buckets(256) == [16, 24, 32, 48, 64, 96, 128, 192, 256]
    assert companions.length_buckets(384) == [16, 24, 32, 48, 64, 96, 128, 192, 256, 384]
    assert companions.length_buckets(200) == [16, 24, 32, 48, 64, 96, 128, 192, 200]
    assert companions.length_buckets(8) == [8]
    for max_length in (8, 100, 128, 200, 384, 512):
        buckets = companions.length_buckets(max_length)
        assert all(b / a <= 1.5 for a, b in zip(buckets, buckets[1:], strict=False))


def test_versions_and_policy_follow_the_entry(repo, tokenizer_files):
    inode = (repo.version_dir("enc_tokenizer", 1) / "model.py").stat().st_ino
    assert publish_text(repo, "enc", tokenizer_files["same"], payload=b"v2") == 2
    assert repo.versions("enc_tokenizer") == [1, 2] and repo.served_versions("enc_tokenizer") == [2]
    # The kept version is hard-linked into the rebuilt folder, not copied.
    assert (repo.version_dir("enc_tokenizer", 1) / "model.py").stat().st_ino == inode
    repo.set_version_policy("enc", [1])
    assert repo.served_versions("enc_tokenizer") == [1]
    repo.set_version_policy("enc", "all")
    assert repo.served_versions("enc_tokenizer") == [1, 2]
    assert repo.config("enc_tokenizer").version_policy == repo.config("enc").version_policy


def test_a_config_change_of_the_entry_reaches_both(repo):
    def smaller(config):
        config.max_batch_size = 16
        del config.dynamic_batching.preferred_batch_size[:]

    repo.update_config("enc", smaller)
    assert repo.config("enc_tokenizer").max_batch_size == 16
    assert repo.config("enc_text").max_batch_size == 16


@pytest.mark.parametrize("point", HOOK_POINTS + COMPANION_HOOK_POINTS)
@pytest.mark.parametrize("change", ["same tokenizer", "other tokenizer", "new entry"])
def test_a_failure_at_any_step_leaves_the_repository_byte_for_byte(repo, tokenizer_files, point, change):
    before = tree_hash(repo.root)
    name = "fresh" if change == "new entry" else "enc"
    tokenizer = tokenizer_files["other" if change == "other tokenizer" else "same"]

    def disk_full(at: str) -> None:
        if at == point:
            raise OSError(errno.ENOSPC, "No space left on device")

    reached = []
    failing = Repository(repo.root, hook=lambda at: (reached.append(at), disk_full(at)))
    try:
        publish_text(failing, name, tokenizer, payload=b"new", max_batch_size=32)
    except PublishError as err:
        assert "disk full" in str(err) and "the repository is unchanged" in str(err)
    else:  # the point is not on this path: the ensemble is hidden only when the tokenizer changes
        assert point == "text_hidden" and change != "other tokenizer" and point not in reached
        return
    assert tree_hash(repo.root) == before
    assert list(repo.workspace().glob("staging-*")) == []


def test_the_ensemble_is_out_of_the_repository_while_its_tokenizer_changes(repo, tokenizer_files):
    """Whenever NAME_text is in the repository, the newest versions of its two steps tokenize alike:
    with another tokenizer it is taken out before NAME changes and put back after NAME_tokenizer."""
    seen = {}

    def look(at: str) -> None:
        if at in ("renamed", "tokenizer_written", "text_written"):
            seen[at] = (repo.root / "enc_text").exists()

    publish_text(Repository(repo.root, hook=look), "enc", tokenizer_files["other"], payload=b"v2")
    assert seen == {"renamed": False, "tokenizer_written": False, "text_written": True}
    newest = json.loads((repo.version_dir("enc_tokenizer", 2) / "settings.json").read_text())
    assert newest["identity"] == companions.identity(repo.version_dir("enc", 2) / "tokenizer", 128)

    seen.clear()
    publish_text(Repository(repo.root, hook=look), "enc", tokenizer_files["other"], payload=b"v3")
    assert seen == {"renamed": True, "tokenizer_written": True, "text_written": True}  # same tokenizer

    seen.clear()  # a rollback across the change hides it too
    Repository(repo.root, hook=look).set_version_policy("enc", [1])
    assert seen == {"tokenizer_written": False, "text_written": True}
    assert repo.served_versions("enc_tokenizer") == [1]


KILLED = textwrap.dedent(
    """
    import json, shutil, sys, time
    from pathlib import Path
    from core.repository import Repository
    from tests.unit.test_companions import MODEL_FILE, publish_text

    root, tokenizer, point, ready = sys.argv[1:5]

    def pause(at):
        if at == point:
            Path(ready).write_text("paused")
            time.sleep(120)

    publish_text(Repository(root, hook=pause), "enc", Path(tokenizer), payload=b"v2")
    """
)


@pytest.mark.parametrize(
    ("point", "tokenizer", "left"),
    [
        ("renamed", "same", "enc:2, enc_tokenizer:1"),  # same tokenizer: the ensemble pairs alike
        ("renamed", "other", "enc:2, no enc_text"),  # another: the ensemble is out
        ("tokenizer_written", "other", "enc:2, enc_tokenizer:2, no enc_text"),
    ],
)
def test_what_a_publisher_killed_between_the_steps_leaves(
    repo, tokenizer_files, tmp_path, point, tokenizer, left
):
    """docs/repository.md: a kill after NAME's step leaves NAME's new version, with NAME_tokenizer still
    at the old one (only when the tokenizer is the same) or the ensemble out of the repository; the next
    change of NAME, or `converters companions NAME`, brings both back in step."""
    ready = tmp_path / "ready"
    process = _start(KILLED, str(repo.root), str(tokenizer_files[tokenizer]), point, str(ready))
    try:
        _wait_for(ready, process)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
        process.communicate()
    assert repo.served_versions("enc") == [2]
    tokenizer_served = repo.served_versions("enc_tokenizer")
    state = [f"enc:{repo.served_versions('enc')[-1]}"]
    if "enc_tokenizer:" in left:
        state.append(f"enc_tokenizer:{tokenizer_served[-1]}")
    if not (repo.root / "enc_text").exists():
        state.append("no enc_text")
    assert ", ".join(state) == left
    if (repo.root / "enc_text").exists():  # what Triton would pair tokenizes alike
        newest = repo.version_dir("enc", 2) / "tokenizer"
        assert companions.tokenizer_identity(
            repo.version_dir("enc_tokenizer", tokenizer_served[-1])
        ) == companions.identity(newest, 128)

    assert repo.write_companions("enc", MODEL_FILE) == ["enc_tokenizer", "enc_text"]
    assert repo.versions("enc_tokenizer") == [1, 2] and repo.served_versions("enc_tokenizer") == [2]


def test_companion_names_are_not_entries_of_their_own(repo, tokenizer_files):
    with pytest.raises(InvalidArgument, match="'enc_text' is a companion model of 'enc'"):
        publish_text(repo, "enc_text", tokenizer_files["same"])
    with pytest.raises(InvalidArgument, match="change 'enc' instead"):
        repo.set_version_policy("enc_tokenizer", "all")
    with pytest.raises(InvalidArgument, match="at most 54"):
        publish_text(repo, "x" * 55, tokenizer_files["same"])


def test_a_foreign_model_in_the_companions_place_is_refused(tmp_path, tokenizer_files):
    repo = Repository(tmp_path / "repository")
    (repo.root / "enc_tokenizer" / "1").mkdir(parents=True)
    (repo.root / "enc_tokenizer" / "config.pbtxt").write_text('name: "enc_tokenizer"\n')
    before = tree_hash(repo.root)
    with pytest.raises(PublishError, match="is not 'enc''s companion model"):
        publish_text(repo, "enc", tokenizer_files["same"])
    assert tree_hash(repo.root) == before


def test_an_entry_published_before_companions_gets_them_on_request(tmp_path, tokenizer_files):
    repo = Repository(tmp_path / "repository")
    publish_text(repo, "old", tokenizer_files["same"], model_file=None)  # as before: no companions
    assert repo.models() == ["old"] and repo.companions("old") == []
    repo.set_version_policy("old", "all")  # an entry without companions changes alone
    assert repo.models() == ["old"]
    assert repo.write_companions("old", MODEL_FILE) == ["old_tokenizer", "old_text"]
    assert repo.served_versions("old_tokenizer") == [1]


def test_companions_rebuild_a_tokenizer_version_written_otherwise(repo):
    """A version built by an earlier model file or bucket rule is rebuilt by `companions NAME` (the
    other versions stay linked): it is also how a repository takes a new tokenizer model."""
    version = repo.version_dir("enc_tokenizer", 1)
    settings = json.loads((version / "settings.json").read_text())
    (version / "settings.json").write_text(json.dumps({**settings, "buckets": [16, 128]}))
    (version / "model.py").write_bytes(b"# an older model file\n")
    assert repo.write_companions("enc", MODEL_FILE) == ["enc_tokenizer", "enc_text"]
    version = repo.version_dir("enc_tokenizer", 1)
    assert json.loads((version / "settings.json").read_text()) == settings
    assert (version / "model.py").read_bytes() == MODEL_FILE


@pytest.mark.parametrize("name", ["companions", "hidden"])
def test_entry_names_that_are_words_of_the_staging_folder(repo, tokenizer_files, name):
    """The companions are built in the staging folder beside the staged entry: an entry of any name
    publishes, twice (a new model, then a new version with another config)."""
    assert publish_text(repo, name, tokenizer_files["same"]) == 1
    assert publish_text(repo, name, tokenizer_files["other"], max_batch_size=16) == 2
    assert repo.companions(name) == [f"{name}_tokenizer", f"{name}_text"]
    assert (repo.version_dir(name, 2) / "model.onnx").read_bytes() == b"onnx"
    assert repo.versions(f"{name}_tokenizer") == [1, 2]
