"""Hugging Face model folder -> ONNX entry of the model repository.

- ``feature-extraction``: the encoder wrapped with mean pooling over ``attention_mask`` and L2
  normalisation, so the graph's ``embeddings`` equal sentence-transformers'
  ``encode(normalize_embeddings=True)``; parity is checked against sentence-transformers itself.
- ``text-classification``: ``AutoModelForSequenceClassification``, output ``logits``; parity against
  the PyTorch model.

Parity runs on ``converters.sentences.SENTENCES`` one at a time (batch 1) and all at once (padded
batch). The tokenizer files travel with the entry, in ``<version>/tokenizer/``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from converters import torch2onnx
from converters.errors import InvalidArgument, NotFound
from converters.manifest import build_manifest
from converters.parity import DEFAULT_ATOL, DEFAULT_RTOL, ParityReport, check_tolerances
from converters.repository import Repository, validate_name
from converters.results import ConversionResult, StepResult, Timer
from converters.runtime import ort_session, run
from converters.sentences import SENTENCES
from converters.specs import TEXT_TASKS, task_spec, with_static_dims
from converters.triton_config import ServingOptions

log = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 512


def check_model_folder(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise NotFound(f"PATH: {path} does not exist; give a local Hugging Face model folder", field="path")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise InvalidArgument(
            f"PATH: {path} is not a Hugging Face model folder (no config.json in it); give the folder that "
            "save_pretrained() wrote",
            field="path",
        )
    return path


def _mean_pooled(encoder):
    """The encoder, plus mean pooling over the attention mask and L2 normalisation, as one module."""
    import torch

    class MeanPooledEncoder(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * mask).sum(dim=1)
            counts = mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(summed / counts, p=2, dim=1)

    return MeanPooledEncoder(encoder)


def _logits_only(classifier):
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, classifier):
            super().__init__()
            self.classifier = classifier

        def forward(self, input_ids, attention_mask):
            return self.classifier(input_ids=input_ids, attention_mask=attention_mask).logits

    return Logits(classifier)


def load(path: Path, task: str):
    """(tokenizer, torch module with the contract's outputs, labels or None)."""
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        if task == "feature-extraction":
            module = _mean_pooled(AutoModel.from_pretrained(str(path), dtype=torch.float32))
            labels = None
        else:
            # A fixed seed: a folder without a trained head (a bare encoder) gets the same head each time.
            torch.manual_seed(0)
            classifier = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch.float32)
            labels = [classifier.config.id2label[i] for i in range(classifier.config.num_labels)]
            module = _logits_only(classifier)
    except (OSError, ValueError, KeyError) as err:
        raise InvalidArgument(f"PATH: cannot load a {task} model from {path}: {err}", field="path") from err
    return tokenizer, module.eval(), labels


def max_length_of(path: Path, tokenizer) -> int:
    """sentence-transformers' ``max_seq_length`` when the folder has one, else the tokenizer's limit."""
    import json

    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():
        value = json.loads(st_config.read_text()).get("max_seq_length")
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", DEFAULT_MAX_LENGTH) or DEFAULT_MAX_LENGTH
    return int(min(limit, DEFAULT_MAX_LENGTH))


def tokenize(tokenizer, sentences, max_length: int) -> dict[str, np.ndarray]:
    encoded = tokenizer(
        list(sentences), padding=True, truncation=True, max_length=max_length, return_tensors="np"
    )
    return {k: np.asarray(encoded[k], dtype=np.int64) for k in ("input_ids", "attention_mask")}


def reference_outputs(path: Path, task: str, module, tokenizer, sentences, max_length: int) -> np.ndarray:
    """The source model's outputs: sentence-transformers for embeddings, PyTorch for logits."""
    import torch

    if task == "feature-extraction":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(path), device="cpu")
        model.max_seq_length = max_length
        return model.encode(list(sentences), batch_size=len(sentences), normalize_embeddings=True)
    feeds = tokenize(tokenizer, sentences, max_length)
    with torch.no_grad():
        out = module(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))
    return out.numpy()


def text_parity(
    model_path: Path, output: str, tokenizer, max_length: int, reference: np.ndarray, atol: float, rtol: float
) -> ParityReport:
    """ONNX Runtime on SENTENCES at batch 1 (each alone) and batch N (padded together) vs ``reference``."""
    session = ort_session(model_path)
    report = ParityReport(atol=atol, rtol=rtol)
    singles = np.concatenate([run(session, tokenize(tokenizer, [s], max_length))[output] for s in SENTENCES])
    report.add(f"{output}[batch=1]", singles, reference)
    batched = run(session, tokenize(tokenizer, SENTENCES, max_length))[output]
    report.add(f"{output}[batch={len(SENTENCES)}]", batched, reference)
    report.cases = [f"{len(SENTENCES)} real sentences, batch 1 and batch {len(SENTENCES)}"]
    return report


def convert_hf(
    path: str | Path,
    name: str,
    *,
    task: str = "feature-extraction",
    repository: str | Path | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    serving: ServingOptions | None = None,
    opset: int = torch2onnx.DEFAULT_OPSET,
    hook=None,
) -> ConversionResult:
    """Export, check parity, publish as the next version of ``name``. Nothing is published on failure."""
    spec = task_spec(task, allowed=TEXT_TASKS)
    validate_name(name)
    path = check_model_folder(path)
    atol, rtol = check_tolerances(atol, rtol)
    serving = serving or ServingOptions()
    steps: list[StepResult] = []

    with Timer() as timer:
        tokenizer, module, labels = load(path, task)
        max_length = max_length_of(path, tokenizer)
    steps.append(StepResult("load", "ok", timer.elapsed, {"path": path}))

    output = spec.outputs[0]
    example = tokenize(tokenizer, SENTENCES[:2], max_length)
    import torch

    example_args = (torch.from_numpy(example["input_ids"]), torch.from_numpy(example["attention_mask"]))
    with torch.no_grad():
        width = int(module(*example_args).shape[1])
    outputs = [with_static_dims(output, {1: width})]
    inputs = list(spec.inputs)

    repo = Repository(repository, hook=hook)
    with repo.stage(name) as staged:
        model_path = staged.dir / "model.onnx"
        steps.append(torch2onnx.export(module, example_args, model_path, inputs, outputs, opset=opset))
        tokenizer.save_pretrained(str(staged.dir / "tokenizer"))

        with Timer() as timer:
            reference = reference_outputs(path, task, module, tokenizer, SENTENCES, max_length)
            report = text_parity(model_path, output.name, tokenizer, max_length, reference, atol, rtol)
        steps.append(
            StepResult("parity", "ok" if report.passed else "failed", timer.elapsed, report.to_manifest())
        )
        log.info("parity: max abs err %.3g, max rel err %.3g", report.max_abs_err, report.max_rel_err)
        reference_name = "sentence-transformers" if task == "feature-extraction" else "PyTorch"
        report.raise_if_failed(f"{name} ({task}) against {reference_name}")

        manifest = build_manifest(
            task=task,
            source=path,
            exporter=torch2onnx.EXPORTER,
            inputs=inputs,
            outputs=outputs,
            parity=report.to_manifest(),
            preprocessing={"tokenizer": "tokenizer", "max_length": max_length},
            opset=opset,
            labels=labels,
        )
        config = serving.build(name, inputs, outputs)
        with Timer() as timer:
            repo.commit(staged, config, manifest)
        steps.append(
            StepResult("publish", "ok", timer.elapsed, {"path": staged.path, "version": staged.version})
        )
        published = repo.manifest(name, staged.version)
    return ConversionResult(name, staged.version, staged.path, published, steps)
