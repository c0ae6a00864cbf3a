"""`python -m converters`: exit 0 on success, 2 on bad input (one line naming the field, the value and
the fix), 1 on a failed check; and whatever fails, the repository is left as it was."""

from __future__ import annotations

import fractions
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from converters.cli import main
from core.triton_config import read_config

ROOT = Path(__file__).resolve().parents[2]
MODULE = "converters.examples.image_classifier:ImageClassifier"


def snapshot(root: Path) -> list[tuple]:
    """Every path under ``root`` with its size and modification time."""
    return sorted(
        (p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
    )


@pytest.fixture(scope="module")
def cli_repo(model_repo, tmp_path_factory) -> Path:
    """One copy of the session repository for this module's commands that must change nothing: the
    tests that take it assert it is left as it was. A test that changes a repository takes a
    repository of its own (``writable_model_repo``, or a new one), so the tests pass in any order."""
    copy = tmp_path_factory.mktemp("cli") / "repository"
    shutil.copytree(model_repo, copy)
    return copy


class CodeRunningObject:
    """Unpickling this runs a shell command: what a hostile checkpoint holds."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, lightning_ckpt) -> dict[str, Path]:
    import torch

    folder = tmp_path_factory.mktemp("bad")
    files = {
        "garbage": folder / "garbage.ckpt",
        "plain_torch": folder / "plain.ckpt",
        "unsafe": folder / "unsafe.ckpt",
        "code_running": folder / "code_running.ckpt",
        "not_a_folder": folder / "model.bin",
        "no_config": folder / "empty_model",
    }
    files["garbage"].write_bytes(b"this is not a checkpoint at all")
    torch.save({"weights": torch.zeros(3)}, files["plain_torch"])
    checkpoint = torch.load(str(lightning_ckpt), map_location="cpu", weights_only=True)
    checkpoint["provenance"] = fractions.Fraction(1, 3)  # a global that weights_only refuses
    torch.save(checkpoint, files["unsafe"])
    checkpoint["provenance"] = CodeRunningObject(folder / "code-ran")
    torch.save(checkpoint, files["code_running"])
    files["not_a_folder"].write_bytes(b"\0")
    files["no_config"].mkdir()
    return files


def cli(*argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


BAD_INPUTS = [
    # (argv template, words in the error); {ckpt}, {minilm}, {repo} and bad file names are filled in.
    (["hf", "{missing}", "--name", "m"], ["PATH:", "does not exist"]),
    (["hf", "{not_a_folder}", "--name", "m"], ["not a Hugging Face model folder", "config.json"]),
    (["hf", "{no_config}", "--name", "m"], ["not a Hugging Face model folder"]),
    (
        ["hf", "{minilm}", "--name", "m", "--task", "summarization"],
        ["--task", "'summarization'", "text-classification"],
    ),
    (["hf", "{minilm}", "--name", "../escape"], ["--name", "'../escape'", "not a safe model name"]),
    (["hf", "{minilm}", "--name", "m", "--max-batch-size", "0"], ["max_batch_size", "got 0"]),
    (
        ["hf", "{minilm}", "--name", "m", "--preferred-batch-size", "128"],
        ["preferred_batch_size", "128", "64"],
    ),
    (["hf", "{minilm}", "--name", "m", "--atol", "-1"], ["--atol", "-1"]),
    (
        ["lightning", "{missing}", "--module", MODULE, "--name", "m"],
        ["CKPT:", "does not exist", "--out PATH"],
    ),
    (["lightning", "{garbage}", "--module", MODULE, "--name", "m"], ["CKPT:", "is not a PyTorch checkpoint"]),
    (
        ["lightning", "{plain_torch}", "--module", MODULE, "--name", "m"],
        ["not a Lightning checkpoint", "weights"],
    ),
    (["lightning", "{unsafe}", "--module", MODULE, "--name", "m"], ["weights-only", "--trust-checkpoint"]),
    (
        ["lightning", "{code_running}", "--module", MODULE, "--name", "m"],
        ["CKPT:", "posix.system", "weights-only", "--trust-checkpoint"],
    ),
    (["lightning", "{ckpt}", "--module", "no.such.module:Net", "--name", "m"], ["--module", "cannot import"]),
    (
        ["lightning", "{ckpt}", "--module", "converters.examples.image_classifier:Nope", "--name", "m"],
        ["no class"],
    ),
    (
        ["lightning", "{ckpt}", "--module", "converters.examples.image_classifier", "--name", "m"],
        ["pkg.mod:Class"],
    ),
    (
        ["lightning", "{ckpt}", "--module", "converters.results:Timer", "--name", "m"],
        ["not a LightningModule"],
    ),
    (
        ["lightning", "{ckpt}", "--module", MODULE, "--name", "m", "--input-shape", "3,32"],
        ["--input-shape", "C,H,W"],
    ),
    (
        ["lightning", "{ckpt}", "--module", MODULE, "--name", "m", "--input-shape", "1,32,32"],
        ["rejects inputs"],
    ),
    (["lightning", "{ckpt}", "--module", MODULE, "--name", "m", "--task", "text-classification"], ["--task"]),
    (["lightning", "{ckpt}", "--module", MODULE, "--name", "a/b"], ["not a safe model name"]),
    (["quantize", "nope"], ["'nope' is not in", "minilm"]),
    (["quantize", "minilm", "--min-cosine", "1.5"], ["--min-cosine", "between 0 and 1"]),
    (["validate", "minilm:0"], ["positive integer"]),
    (["validate", "minilm:7"], ["minilm:7 does not exist", "versions: 1"]),
    (["rollback", "minilm"], ["oldest", "nothing to roll back"]),
    (["rollback", "minilm", "--to", "x"], ["--to", "'x'"]),
    (["configure", "nope", "--accelerator", "tensorrt"], ["'nope' is not in"]),
    (["configure", "minilm"], ["nothing to change", "--accelerator", "--tuning"]),
    (["configure", "minilm", "--tuning", "{missing}"], ["--tuning: /no/such/path does not exist"]),
    (["tensorrt", "image_classifier", "--output-name", "../x"], ["not a safe model name"]),
]


@pytest.mark.parametrize(("argv", "words"), BAD_INPUTS, ids=[" ".join(a[:1] + a[2:4]) for a, _ in BAD_INPUTS])
def test_bad_input_exits_2_with_one_clear_line(
    argv, words, bad_files, lightning_ckpt, minilm_path, cli_repo, capsys
):
    values = {"ckpt": lightning_ckpt, "minilm": minilm_path, "missing": "/no/such/path", **bad_files}
    before = snapshot(cli_repo.parent)
    code, out, err = cli(*[a.format(**values) for a in argv], "--repository", cli_repo, capsys=capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0]
    assert out == ""
    assert snapshot(cli_repo.parent) == before
    assert not (bad_files["code_running"].parent / "code-ran").exists()  # nothing in a checkpoint ran


def test_parity_failure_exits_1_lists_every_output_and_publishes_nothing(
    lightning_ckpt, model_repo, tmp_path, capsys
):
    manifest = json.loads((model_repo / "image_classifier" / "1" / "manifest.json").read_text())
    assert manifest["parity"]["max_abs_err"] > 0  # so a zero tolerance must fail
    repo = tmp_path / "repository"
    code, _, err = cli(
        "lightning",
        lightning_ckpt,
        "--module",
        MODULE,
        "--name",
        "ic",
        "--atol",
        "0",
        "--repository",
        repo,
        capsys=capsys,
    )
    assert code == 1
    assert "parity of ic (image-classification) against PyTorch failed on 2 of 2 outputs" in err
    assert "- logits[batch=1]: max abs err" in err and "- logits[batch=4]: max abs err" in err
    assert "nothing published" in err
    assert not (repo / "ic").exists() and list(repo.iterdir()) == []
    assert list((tmp_path / ".repository.publish").glob("staging-*")) == []


def test_trusting_a_checkpoint_loads_what_weights_only_refuses(bad_files, tmp_path, capsys):
    repo = tmp_path / "repository"
    code, out, err = cli(
        "lightning",
        bad_files["unsafe"],
        "--module",
        MODULE,
        "--name",
        "ic",
        "--trust-checkpoint",
        "--repository",
        repo,
        capsys=capsys,
    )
    assert code == 0, err
    assert json.loads(out)["version"] == 1 and (repo / "ic" / "1" / "model.onnx").is_file()


def test_serving_flags_reach_the_config(lightning_ckpt, tmp_path, capsys):
    repo = tmp_path / "repository"
    code, out, err = cli(
        "lightning",
        lightning_ckpt,
        "--module",
        MODULE,
        "--name",
        "ic",
        "--input-shape",
        "3,32,32",
        "--max-batch-size",
        "16",
        "--preferred-batch-size",
        "4,16",
        "--max-queue-delay-us",
        "500",
        "--instance-kind",
        "gpu",
        "--instance-count",
        "2",
        "--intra-op-threads",
        "1",
        "--accelerator",
        "tensorrt",
        "--repository",
        repo,
        capsys=capsys,
    )
    assert code == 0, err
    config = read_config(repo / "ic" / "config.pbtxt")
    assert config.max_batch_size == 16 and list(config.dynamic_batching.preferred_batch_size) == [4, 16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert (config.instance_group[0].kind, config.instance_group[0].count) == (
        config.instance_group[0].KIND_GPU,
        2,
    )
    assert config.parameters["intra_op_thread_count"].string_value == "1"
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    assert [i.name for i in config.input] == ["input"] and list(config.input[0].dims) == [3, 32, 32]


def test_list_rollback_configure_validate(writable_model_repo, lightning_ckpt, capsys):
    repo = writable_model_repo  # this test publishes, rolls back and configures: a copy of its own
    code, out, _ = cli(
        "lightning",
        lightning_ckpt,
        "--module",
        MODULE,
        "--name",
        "image_classifier",
        "--repository",
        repo,
        capsys=capsys,
    )
    assert code == 0 and json.loads(out)["version"] == 2

    code, out, _ = cli("list", "--json", "--repository", repo, capsys=capsys)
    listed = json.loads(out)
    rows = {(r["name"], r["version"]): r for r in listed}
    assert set(rows) == {
        ("minilm", 1),
        ("minilm_tokenizer", 1),
        ("minilm_text", 1),
        ("image_classifier", 1),
        ("image_classifier", 2),
    }
    assert rows[("image_classifier", 2)]["served"] and not rows[("image_classifier", 1)]["served"]
    assert rows[("minilm", 1)]["parity_passed"] and rows[("minilm", 1)]["size_bytes"] > 80e6
    # minilm's companions come right after it, and say whose and what they are.
    assert [r["name"] for r in listed].index("minilm_tokenizer") == [r["name"] for r in listed].index(
        "minilm"
    ) + 1
    assert {(r["companion_of"], r["role"]) for r in listed if r["name"].startswith("minilm_")} == {
        ("minilm", "tokenizer"),
        ("minilm", "text"),
    }
    assert rows[("minilm", 1)]["companion_of"] is None and rows[("minilm_tokenizer", 1)]["served"]

    code, out, _ = cli("list", "--repository", repo, capsys=capsys)
    assert code == 0 and out.splitlines()[0].split()[:3] == ["NAME", "VER", "SERVED"]
    assert "image_classifier       2 yes" in out
    assert (
        "  minilm_tokenizer     1 yes    (tokenizer)" in out
        and "  minilm_text          1 yes    (text)" in out
    )

    foreign = repo / "image_classifier" / "9"  # a version put there by hand, without a manifest
    foreign.mkdir()
    (foreign / "model.onnx").write_bytes(b"x" * 10)
    code, out, _ = cli("list", "--json", "--repository", repo, capsys=capsys)
    row = {(r["name"], r["version"]): r for r in json.loads(out)}[("image_classifier", 9)]
    assert row["size_bytes"] == 10 and row["task"] is None and row["served"]
    shutil.rmtree(foreign)

    code, out, _ = cli("rollback", "image_classifier", "--repository", repo, capsys=capsys)
    assert code == 0 and json.loads(out) == {"name": "image_classifier", "served": [1], "versions": [1, 2]}
    assert (repo / "image_classifier" / "2" / "model.onnx").is_file()  # nothing deleted
    code, out, _ = cli("rollback", "image_classifier", "--to", "latest", "--repository", repo, capsys=capsys)
    assert json.loads(out)["served"] == [2]

    code, out, _ = cli(
        "configure", "image_classifier", "--accelerator", "tensorrt", "--repository", repo, capsys=capsys
    )
    assert code == 0 and json.loads(out)["gpu_execution_accelerator"] == ["tensorrt"]
    assert json.loads(out)["instance_kinds"] == ["KIND_GPU"]
    code, out, _ = cli(
        "configure", "image_classifier", "--accelerator", "none", "--repository", repo, capsys=capsys
    )
    assert json.loads(out)["gpu_execution_accelerator"] == []
    assert not read_config(repo / "image_classifier" / "config.pbtxt").HasField("optimization")

    code, out, err = cli(
        "validate", "image_classifier:1", "--trust-module", "--repository", repo, capsys=capsys
    )
    assert code == 0, err
    assert json.loads(out)["passed"] is True


def test_companions_of_an_entry_published_before_them(cli_repo, tmp_path, capsys):
    """`companions NAME` writes NAME_tokenizer and NAME_text for a text entry that lacks them (and only
    for a text entry); the companions themselves are not changed directly."""
    root = tmp_path / "repository"
    shutil.copytree(cli_repo, root)
    for name in ("minilm_tokenizer", "minilm_text"):
        shutil.rmtree(root / name)
    code, out, err = cli("companions", "minilm", "--repository", root, capsys=capsys)
    assert code == 0, err
    assert json.loads(out) == {
        "name": "minilm",
        "companions": ["minilm_tokenizer", "minilm_text"],
        "served": [1],
    }
    assert (root / "minilm_tokenizer" / "config.pbtxt").read_bytes() == (
        cli_repo / "minilm_tokenizer" / "config.pbtxt"
    ).read_bytes()
    code, _, err = cli("companions", "image_classifier", "--repository", root, capsys=capsys)
    assert code == 2 and "image-classification entry takes no text" in err
    code, _, err = cli("companions", "minilm_text", "--repository", root, capsys=capsys)
    assert code == 2 and "is a companion model of 'minilm'" in err
    code, _, err = cli("rollback", "minilm_tokenizer", "--repository", root, capsys=capsys)
    assert code == 2 and "change 'minilm' instead" in err


# ---- configure --tuning: a tuning result of `python -m benchmarks tune`, applied -----------------------


@pytest.fixture(scope="module")
def tuning_file(model_repo, tmp_path_factory) -> Path:
    """A real tuning result: the tuner against a real Triton (its own; the repository is only read),
    two points that both differ from the entry's config in every tuned field."""
    from benchmarks.tune import TuneOptions, tune

    result = tune(
        TuneOptions(
            name="image_classifier",
            p99_ms=5000.0,
            repository=model_repo,
            delays_us=[1000, 3000],
            preferred=[[4]],
            instances=[2],
            concurrency=[1],
            window_ms=400,
            out_dir=tmp_path_factory.mktemp("tune") / "run",
        )
    )
    assert result.chosen is not None, result.table()
    return result.path


@pytest.mark.triton
def test_configure_applies_a_tuning_result_to_exactly_its_fields_in_one_write(
    tuning_file, writable_model_repo, capsys
):
    config_path = writable_model_repo / "image_classifier" / "config.pbtxt"
    before, inode = read_config(config_path), config_path.stat().st_ino
    # The folder's mtime changes with the rename into it; every other path must stay as it is.
    changing = {"image_classifier", "image_classifier/config.pbtxt"}
    untouched = [row for row in snapshot(writable_model_repo) if row[0] not in changing]
    chosen = json.loads(tuning_file.read_text())["chosen"]
    assert (chosen["preferred_batch_size"], chosen["instance_count"]) == ([4], 2)
    assert before.dynamic_batching.max_queue_delay_microseconds != chosen["max_queue_delay_microseconds"]

    code, out, err = cli(
        "configure",
        "image_classifier",
        "--tuning",
        tuning_file,
        "--repository",
        writable_model_repo,
        capsys=capsys,
    )
    assert code == 0, err
    printed = json.loads(out)
    assert printed["max_queue_delay_microseconds"] == chosen["max_queue_delay_microseconds"]
    assert printed["preferred_batch_size"] == [4] and printed["instance_counts"] == [2]
    after = read_config(config_path)
    assert after.dynamic_batching.max_queue_delay_microseconds == chosen["max_queue_delay_microseconds"]
    assert list(after.dynamic_batching.preferred_batch_size) == [4]
    assert [g.count for g in after.instance_group] == [2]
    # Nothing else in the config changed, and nothing else in the repository.
    after.dynamic_batching.CopyFrom(before.dynamic_batching)
    for group, old in zip(after.instance_group, before.instance_group, strict=True):
        group.count = old.count
    assert after == before
    assert [row for row in snapshot(writable_model_repo) if row[0] not in changing] == untouched
    # One atomic replace: a new file renamed over the old one (a new inode), no temporary file left.
    assert config_path.stat().st_ino != inode
    assert sorted(p.name for p in config_path.parent.iterdir() if not p.name.isdigit()) == [
        "config.pbtxt",
        "served_history.json",  # written by the publish; configuring serves the same version
    ]


def _edited(data: dict, edit: str) -> dict:
    data = json.loads(json.dumps(data))
    chosen = data["chosen"]
    grid_point = next(
        g for g in data["grid"] if g["max_queue_delay_microseconds"] == chosen["max_queue_delay_microseconds"]
    )
    if edit == "unknown key":
        data["notes"] = "mine"
    elif edit == "instance count 0":
        chosen["instance_count"] = 0
    elif edit == "preferred as text":
        chosen["preferred_batch_size"] = "4"
    elif edit == "negative target":
        data["target"]["p99_ms"] = -1
    elif edit == "curve value":
        data["grid"][0]["curve"][0]["p99_ms"] = "fast"
    elif edit == "curve key":
        data["grid"][0]["curve"][0]["p42_ms"] = 1.0
    elif edit == "date":
        data["measured_at"] = "yesterday"
    elif edit == "format":
        data["format"] = "modelpack-tuning/9"
    elif edit == "no command":
        del data["command"]
    elif edit == "chosen not measured":
        chosen["max_queue_delay_microseconds"] = 7
    elif edit == "nothing chosen":
        data["chosen"] = None
    elif edit == "does not fit the entry":  # consistent in itself, but above max_batch_size 64
        chosen["preferred_batch_size"] = grid_point["preferred_batch_size"] = [128]
    return data


MALFORMED = [
    ("unknown key", ["notes: unknown key"]),
    ("instance count 0", ["chosen.instance_count: must be an integer >= 1, got 0"]),
    ("preferred as text", ["chosen.preferred_batch_size: must be a list of integers"]),
    ("negative target", ["target.p99_ms: must be a positive number, got -1"]),
    ("curve value", ["grid[0].curve[0].p99_ms: must be a non-negative number, got a string"]),
    ("curve key", ["grid[0].curve[0].p42_ms: unknown key"]),
    ("date", ["measured_at: 'yesterday' is not a UTC time"]),
    ("format", ["format: 'modelpack-tuning/9' is not 'modelpack-tuning/1'"]),
    ("no command", ["command: missing"]),
    ("chosen not measured", ["chosen: delay=7us", "is not a grid point that met the target"]),
    ("nothing chosen", ["chosen: null", "nothing to apply"]),
    ("does not fit the entry", ["chosen.preferred_batch_size does not fit image_classifier's config", "128"]),
    ("not JSON", ["not a JSON file"]),
]


@pytest.mark.triton
@pytest.mark.parametrize(("edit", "words"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_configure_refuses_a_malformed_tuning_file_naming_the_field(
    edit, words, tuning_file, cli_repo, tmp_path, capsys
):
    bad = tmp_path / "tuning.json"
    if edit == "not JSON":
        bad.write_text(tuning_file.read_text()[:-20])
    else:
        bad.write_text(json.dumps(_edited(json.loads(tuning_file.read_text()), edit)))
    before = snapshot(cli_repo.parent)
    code, out, err = cli(
        "configure", "image_classifier", "--tuning", bad, "--repository", cli_repo, capsys=capsys
    )
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --tuning {bad}: "), err
    for word in words:
        assert word in lines[0]
    assert out == ""
    assert snapshot(cli_repo.parent) == before


@pytest.mark.triton
def test_configure_refuses_a_tuning_result_for_another_model(tuning_file, cli_repo, capsys):
    before = snapshot(cli_repo.parent)
    code, out, err = cli(
        "configure", "minilm", "--tuning", tuning_file, "--repository", cli_repo, capsys=capsys
    )
    assert code == 2 and out == ""
    assert f"--tuning {tuning_file}: model: this result tunes 'image_classifier', not 'minilm'" in err
    assert snapshot(cli_repo.parent) == before


def test_validate_fails_when_the_source_changed(lightning_ckpt, tmp_path, capsys):
    repo = tmp_path / "repository"  # this test publishes: a repository of its own
    moved = tmp_path / "changed.ckpt"
    shutil.copy(lightning_ckpt, moved)
    code, _, err = cli(
        "lightning", moved, "--module", MODULE, "--name", "changing", "--repository", repo, capsys=capsys
    )
    assert code == 0, err
    with moved.open("ab") as handle:
        handle.write(b"\0")
    code, _, err = cli("validate", "changing", "--repository", repo, capsys=capsys)
    assert code == 1 and "changed since export" in err


def _validate_in_a_process(repo: Path, *flags: str) -> subprocess.CompletedProcess:
    """``python -m converters validate image_classifier:1`` as a user runs it, with the folder holding the
    repository importable (as the project root is, for a repository at model_repository/)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(repo.parent)])}
    argv = ["validate", "image_classifier:1", "--repository", str(repo), *flags]
    return subprocess.run(
        [sys.executable, "-m", "converters", *argv],
        cwd=repo.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_validate_never_imports_the_module_a_manifest_names_without_trust_module(writable_model_repo):
    """The manifest's ``module`` is data read from the repository: a payload placed in a version folder
    and named there must not run unless the user passes --trust-module."""
    version = writable_model_repo / "image_classifier" / "1"
    marker = writable_model_repo.parent / "payload-ran"
    (version / "payload.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["module"] = f"{writable_model_repo.name}.image_classifier.1.payload:Net"
    (version / "manifest.json").write_text(json.dumps(manifest))

    refused = _validate_in_a_process(writable_model_repo)
    assert refused.returncode == 2, refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith("error: image_classifier:1: ") and manifest["module"] in line
    assert "--trust-module" in line
    assert not marker.exists()  # nothing of the repository ran

    trusted = _validate_in_a_process(writable_model_repo, "--trust-module")
    assert marker.read_text() == "ran"  # the flag is what lets it run
    assert trusted.returncode == 2 and "has no class 'Net'" in trusted.stderr


@pytest.mark.parametrize(
    "command", ["hf", "lightning", "quantize", "tensorrt", "list", "validate", "rollback", "configure"]
)
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as caught:
        main([command, "--help"])
    assert caught.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m converters {command}")


def test_a_real_process_exits_2_with_one_line():
    run = subprocess.run(
        [sys.executable, "-m", "converters", "hf", "/no/such/dir", "--name", "x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and run.stdout == ""
    assert (
        run.stderr.strip()
        == "error: PATH: /no/such/dir does not exist; give a local Hugging Face model folder"
    )
