"""What every command line of the project does alike (core/cli.py): every sub-command in ``--help``,
``--version``, ``--json`` on every command that reports (one JSON document on stdout, logs on
stderr), shell completion that completes, and a progress display that shows on a terminal and stays
silent when the output is piped."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from core.cli import subcommands

ROOT = Path(__file__).resolve().parents[2]
CLIS = {"converters": "converters.cli", "benchmarks": "benchmarks.cli"}
MODULE = "converters.examples.image_classifier:ImageClassifier"


def parser_of(cli: str):
    import importlib

    return importlib.import_module(CLIS[cli]).build_parser()


def run(*argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *map(str, argv)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


@pytest.mark.parametrize("cli", CLIS)
def test_help_lists_every_sub_command_and_version_prints_the_project_version(cli):
    done = run(cli, "--help")
    assert done.returncode == 0, done.stderr
    names = subcommands(parser_of(cli))
    assert "completion" in names and (cli != "benchmarks" or "tune" in names)
    for name in names:
        assert f"\n    {name} " in done.stdout, f"`{name}` is not listed in `python -m {cli} --help`"
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    done = run(cli, "--version")
    assert done.returncode == 0 and done.stdout == f"modelpack {version}\n"


@pytest.mark.parametrize("cli", CLIS)
def test_every_command_that_reports_takes_json(cli):
    parsers = {"(the run)": parser_of(cli)} if cli == "benchmarks" else {}
    parsers |= {name: p for name, p in subcommands(parser_of(cli)).items() if name != "completion"}
    missing = [name for name, p in parsers.items() if "--json" not in p.format_help()]
    assert not missing, f"python -m {cli}: no --json on {missing}"


def test_bash_completion_completes_commands_and_flags():
    script = f"""
modelpack() {{ :; }}
source <({sys.executable} -m converters completion bash)
complete_line() {{
  COMP_WORDS=("$@"); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); COMP_LINE="$*"; COMP_POINT=${{#COMP_LINE}}
  COMPREPLY=(); _shtab_modelpack; echo "${{COMPREPLY[*]}}"
}}
complete_line modelpack qu
complete_line modelpack hf --lic
complete_line modelpack rollback --
"""
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "quantize" and lines[1] == "--license"
    assert {"--to", "--repository", "--json"} <= set(lines[2].split())
    zsh = run("benchmarks", "completion", "zsh")
    assert zsh.returncode == 0 and zsh.stdout.startswith("#compdef modelpack-bench")
    assert "tune" in zsh.stdout and "--p99-ms" in zsh.stdout


def test_quantize_prints_one_document(model_repo, tmp_path, capsys):
    from converters.cli import main

    repo = tmp_path / "repository"
    shutil.copytree(model_repo, repo)
    code = main(["quantize", "image_classifier", "--speed-seconds", "0.2", "--repository", str(repo)])
    out, err = capsys.readouterr()
    assert code == 0, err
    document = json.loads(out)  # one document: a second one would not parse
    assert document["version"] == 2 and document["parity"]["passed"]
    assert set(document["quantization"]) == {"model_bytes", "throughput"}
    assert document["quantization"]["model_bytes"]["int8"] < document["quantization"]["model_bytes"]["fp32"]


@pytest.mark.triton
def test_load_and_unload_report_json(model_repo, tmp_path):
    from local_triton.server import TritonServer

    with TritonServer(model_repo, models=["image_classifier"], log_path=tmp_path / "triton.log") as server:
        done = run("converters", "load", "image_classifier", "--url", server.http_url, "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"name": "image_classifier", "ready": True, "versions": ["1"]}
        done = run("converters", "unload", "image_classifier", "--url", server.http_url, "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"name": "image_classifier", "unloaded": True}
        done = run("converters", "status", "--url", server.http_url, "--json")
        assert json.loads(done.stdout)["live"] is True


def conversion_argv(ckpt: Path, repo: Path) -> list[str]:
    return [sys.executable, "-m", "converters", "lightning", str(ckpt), "--module", MODULE, "--name", "ic",
            "--repository", str(repo)]  # fmt: skip


@pytest.mark.slow  # two conversions in child processes (~20 s each)
def test_progress_shows_on_a_terminal_and_is_silent_when_piped(lightning_ckpt, tmp_path):
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"}
    piped = subprocess.run(
        conversion_argv(lightning_ckpt, tmp_path / "piped"),
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["version"] == 1  # stdout: the one document, nothing else
    for stream in (piped.stdout, piped.stderr):
        assert "\x1b[" not in stream and "\r" not in stream and "converting ic" not in stream
    # stderr: log lines only, each in the log format.
    assert all(" INFO " in line or " WARNING " in line for line in piped.stderr.splitlines()), piped.stderr

    # On a terminal (a real pseudo-terminal for both streams): the display draws, then clears itself.
    main, child_side = pty.openpty()
    process = subprocess.Popen(
        conversion_argv(lightning_ckpt, tmp_path / "terminal"),
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=child_side, stderr=child_side,
    )  # fmt: skip
    os.close(child_side)
    shown = bytearray()
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the child side is closed, the process has exited
            break
        if not chunk:
            break
        shown += chunk
    os.close(main)
    assert process.wait(timeout=300) == 0, shown.decode(errors="replace")[-3000:]
    text = shown.decode(errors="replace")
    assert "converting ic" in text and "\x1b[" in text
    assert '"version": 1' in text  # the result still printed
