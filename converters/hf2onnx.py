"""Hugging Face model folder -> ONNX entry of the model repository.

- ``feature-extraction``: the encoder wrapped with the folder's pooling (mean over ``attention_mask``,
  or the CLS token) and L2 normalisation, so the graph's ``embeddings`` equal sentence-transformers'
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
from converters.inputs import tokenize
from converters.manifest import build_manifest
from converters.model_card import model_card
from converters.parity import DEFAULT_ATOL, DEFAULT_RTOL, ParityReport, check_tolerances
from converters.pipeline import parity_step, publish
from converters.results import ConversionResult, StepResult, Timer
from converters.runtime import ort_session, run
from converters.sentences import SENTENCES
from core.errors import InvalidArgument, NotFound
from core.repository import Repository, validate_name
from core.tasks import TASK_SPECS, TEXT_TASKS, task_spec, with_static_dims
from core.triton_config import ServingOptions

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


POOLING_MODES = ("mean", "cls")


def pooling_mode(path: Path) -> str:
    """The pooling of a sentence-transformers folder (its Pooling module's config); ``mean`` for a plain
    Hugging Face folder, as sentence-transformers itself would use."""
    import json

    modules = path / "modules.json"
    if not modules.is_file():
        return "mean"
    for module in json.loads(modules.read_text()):
        if module.get("type", "").endswith("models.Pooling"):
            config = json.loads((path / module["path"] / "config.json").read_text())
            modes = [
                k.removeprefix("pooling_mode_")
                for k, v in config.items()
                if k.startswith("pooling_mode_") and v
            ]
            modes = ["mean" if m == "mean_tokens" else "cls" if m == "cls_token" else m for m in modes]
            if len(modes) != 1 or modes[0] not in POOLING_MODES:
                raise InvalidArgument(
                    f"PATH: {path} pools with {modes or 'nothing'}; the exporter supports one of "
                    f"{', '.join(POOLING_MODES)}",
                    field="path",
                )
            return modes[0]
    return "mean"


def _pooled(encoder, mode: str):
    """The encoder, plus pooling (mean over the attention mask, or the CLS token) and L2 normalisation,
    as one module: its output equals sentence-transformers' normalised embeddings."""
    import torch

    class PooledEncoder(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            if mode == "cls":
                pooled = hidden[:, 0]
            else:
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    return PooledEncoder(encoder)


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
            module = _pooled(AutoModel.from_pretrained(str(path), dtype=torch.float32), pooling_mode(path))
            labels = None
        else:
            # A fixed seed: a folder without a trained head (a bare encoder) gets the same head each time
            # (validate relies on it); the caller's random state is left as it was.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                classifier = AutoModelForSequenceClassification.from_pretrained(
                    str(path), dtype=torch.float32
                )
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


def reference_outputs(path: Path, task: str, module, tokenizer, sentences, max_length: int) -> np.ndarray:
    """The source model's outputs: sentence-transformers for embeddings, PyTorch for logits."""
    import torch

    if task == "feature-extraction":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(path), device="cpu")
        model.max_seq_length = max_length
        return model.encode(
            list(sentences), batch_size=len(sentences), normalize_embeddings=True, show_progress_bar=False
        )
    feeds = tokenize(tokenizer, sentences, max_length)
    with torch.no_grad():
        out = module(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))
    return out.numpy()


def text_parity(
    model_path: Path, source: Path, task: str, module, tokenizer, max_length: int, atol: float, rtol: float
) -> ParityReport:
    """ONNX Runtime on SENTENCES at batch 1 (each alone) and batch N (padded together) against the
    source model: sentence-transformers for embeddings, the PyTorch module for logits."""
    output = TASK_SPECS[task].outputs[0].name
    reference = reference_outputs(source, task, module, tokenizer, SENTENCES, max_length)
    session = ort_session(model_path)
    report = ParityReport(atol=atol, rtol=rtol)
    singles = np.concatenate([run(session, tokenize(tokenizer, [s], max_length))[output] for s in SENTENCES])
    report.add(f"{output}[batch=1]", singles, reference)
    batched = run(session, tokenize(tokenizer, SENTENCES, max_length))[output]
    report.add(f"{output}[batch={len(SENTENCES)}]", batched, reference)
    report.cases = [f"{len(SENTENCES)} real sentences, batch 1 and batch {len(SENTENCES)}"]
    log.info("parity: max abs err %.3g, max rel err %.3g", report.max_abs_err, report.max_rel_err)
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
    license: str | None = None,
) -> ConversionResult:
    """Export, check parity, publish as the next version of ``name``, its model card (the folder's README
    and license files, converters/model_card.py) carried. Nothing is published on failure."""
    import torch

    spec = task_spec(task, allowed=TEXT_TASKS)
    validate_name(name)
    path = check_model_folder(path)
    atol, rtol = check_tolerances(atol, rtol)
    serving = (serving or ServingOptions()).check()
    steps: list[StepResult] = []
    repo = Repository(repository, hook=hook)
    repo.check_task(name, task)  # fail before the slow part; commit checks again under the lock

    with Timer() as timer:
        tokenizer, module, labels = load(path, task)
        max_length = max_length_of(path, tokenizer)
        example = tokenize(tokenizer, SENTENCES[:2], max_length)
        example_args = (torch.from_numpy(example["input_ids"]), torch.from_numpy(example["attention_mask"]))
        with torch.no_grad():
            width = int(module(*example_args).shape[1])
    steps.append(StepResult("load", "ok", timer.elapsed, {"path": path}))
    inputs = list(spec.inputs)
    outputs = [with_static_dims(spec.outputs[0], {1: width})]

    with repo.stage(name) as staged:
        card = model_card(staged.dir, folder=path, flag=license)
        model_path = staged.dir / "model.onnx"
        steps.append(torch2onnx.export(module, example_args, model_path, inputs, outputs, opset=opset))
        tokenizer.save_pretrained(str(staged.dir / "tokenizer"))
        with Timer() as timer:
            report = text_parity(model_path, path, task, module, tokenizer, max_length, atol, rtol)
        steps.append(parity_step(report, timer.elapsed))
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
            extra=card,
        )
        return publish(repo, staged, steps, manifest=manifest, config=serving.build(name, inputs, outputs))
