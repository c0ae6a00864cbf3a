"""Hugging Face model folder -> ONNX entry of the model repository. The task comes from the model.

The task is read from ``config.json``'s ``architectures`` (``infer_task``): ``*ForSequenceClassification``
-> text-classification, ``*ForTokenClassification`` -> token-classification, ``*ForImageClassification``
-> image-classification, a base model (``BertModel``) or a sentence-transformers folder ->
feature-extraction. ``--task`` overrides it where the two agree (a base model may take a new,
seeded head: text- or token-classification); a mismatch, or an architecture not supported here, is
refused with one line (exit 2), never converted into something else.

- ``feature-extraction``: the encoder wrapped with the folder's pooling (mean over ``attention_mask``,
  or the CLS token) and L2 normalisation, so the graph's ``embeddings`` equal sentence-transformers'
  ``encode(normalize_embeddings=True)``; parity is checked against sentence-transformers itself.
- ``text-classification``: ``AutoModelForSequenceClassification``, output ``logits`` [batch, labels].
- ``token-classification``: ``AutoModelForTokenClassification``, output ``logits`` [batch, tokens,
  labels]; the labels (``id2label``) and the tokenizer travel with the entry.
- ``image-classification``: ``AutoModelForImageClassification`` on ``input`` [batch, C, H, W], output
  ``logits``; the folder's image processor (``preprocessor_config.json``) becomes the manifest's
  preprocessing block (size, resample, crop, rescale, mean, std), checked against the processor itself
  on generated images of several sizes before anything is exported.

Text parity runs on ``converters.sentences.SENTENCES`` one at a time (batch 1) and all at once (padded
batch); image parity on generated images at batch 1 and 4, through the image processor. The tokenizer
files travel with text entries, in ``<version>/tokenizer/``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from converters import torch2onnx
from converters.determinism import random_ops
from converters.inputs import tokenize
from converters.manifest import build_manifest
from converters.model_card import model_card
from converters.parity import DEFAULT_ATOL, DEFAULT_RTOL, ParityReport, check_tolerances
from converters.pipeline import parity_step, publish
from converters.results import ConversionResult, StepResult, Timer
from converters.runtime import ort_session, run
from converters.sentences import SENTENCES
from core.companions import check_name
from core.errors import InvalidArgument, NotFound
from core.repository import Repository, validate_name
from core.tasks import TASK_SPECS, task_spec, with_static_dims
from core.triton_config import ServingOptions

log = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 512
HF_TASKS = ("feature-extraction", "text-classification", "token-classification", "image-classification")
# The end of an architecture's class name -> the task of its head (config.json `architectures`).
HEADS = (
    ("ForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForImageClassification", "image-classification"),
    ("ForImageClassificationWithTeacher", "image-classification"),
)
# Tasks a base model (no head) may be exported as: its encoder as is, or with a new, seeded head.
BASE_MODEL_TASKS = ("feature-extraction", "text-classification", "token-classification")
# Pre-training heads: no task served here, but their encoder is a base model; exported only when
# --task says so (the head is left out), never by default.
PRETRAINING_HEADS = ("ForMaskedLM", "ForPreTraining")
SUPPORTED_ARCHITECTURES = (
    "*ForSequenceClassification (text-classification), *ForTokenClassification (token-classification), "
    "*ForImageClassification (image-classification), a base text model such as BertModel or a "
    "sentence-transformers folder (feature-extraction)"
)


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


def _has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"))


def architecture_task(path: Path) -> tuple[str | None, str | None]:
    """(the task the folder's model is for, its architecture) from config.json; the task is None when
    config.json names no architecture, and InvalidArgument when it names one not supported here."""
    import json

    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InvalidArgument(f"PATH: {path}/config.json is not readable JSON: {err}", field="path") from None
    architectures = config.get("architectures") or []
    if (path / "modules.json").is_file():  # sentence-transformers: an embedder, whatever its encoder
        return "feature-extraction", (architectures[0] if architectures else None)
    if not architectures:
        return None, None
    architecture = str(architectures[0])
    for suffix, task in HEADS:
        if architecture.endswith(suffix):
            return task, architecture
    if architecture.endswith("Model") and "For" not in architecture and _has_tokenizer(path):
        return "feature-extraction", architecture
    if architecture.endswith(PRETRAINING_HEADS) and _has_tokenizer(path):
        return None, architecture
    raise InvalidArgument(
        f"PATH: {path} holds a {architecture} (config.json architectures), which is not supported here; "
        f"supported: {SUPPORTED_ARCHITECTURES}",
        field="path",
    )


def resolve_task(path: Path, requested: str | None) -> tuple[str, str | None]:
    """The task to export ``path`` as, and its architecture: the model's own task, or ``requested``
    where the two agree (a base model may take a new head). A mismatch is refused, never converted."""
    inferred, architecture = architecture_task(path)
    pretraining = architecture is not None and inferred is None
    if pretraining and requested not in BASE_MODEL_TASKS:
        raise InvalidArgument(
            f"PATH: {path} holds a {architecture} (config.json architectures), a pre-training head no task "
            f"here serves; pass --task feature-extraction to export its encoder's embeddings (the head is "
            f"left out), or --task text-classification / token-classification for a new head. Supported: "
            f"{SUPPORTED_ARCHITECTURES}",
            field="task" if requested else "path",
        )
    if pretraining:
        log.warning(
            "%s is a %s: its head is left out, the %s model uses its encoder", path, architecture, requested
        )
        return requested, architecture
    if requested is None:
        if inferred is None:
            raise InvalidArgument(
                f"--task: {path}/config.json names no architecture, so the task cannot be read from it; "
                f"pass --task (one of {', '.join(HF_TASKS)})",
                field="task",
            )
        log.info("task %s, from %s", inferred, architecture or "the sentence-transformers folder")
        return inferred, architecture
    if inferred is None or requested == inferred:
        return requested, architecture
    if inferred == "feature-extraction" and requested in BASE_MODEL_TASKS:
        log.warning(
            "%s is a base model (%s): the %s head is new, initialised from seed 0, not trained",
            path,
            architecture or "sentence-transformers",
            requested,
        )
        return requested, architecture
    raise InvalidArgument(
        f"--task {requested}: {path} is a {architecture or 'sentence-transformers folder'}, a {inferred} "
        f"model; exporting it as {requested} would drop or replace its head. Leave --task out (or pass "
        f"--task {inferred})",
        field="task",
    )


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
    from transformers import (
        AutoModel,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    heads = {
        "text-classification": AutoModelForSequenceClassification,
        "token-classification": AutoModelForTokenClassification,
    }
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
                classifier = heads[task].from_pretrained(str(path), dtype=torch.float32)
            labels = [str(classifier.config.id2label[i]) for i in range(classifier.config.num_labels)]
            module = _logits_only(classifier)
    except (OSError, ValueError, KeyError) as err:
        raise InvalidArgument(f"PATH: cannot load a {task} model from {path}: {err}", field="path") from err
    return tokenizer, module.eval(), labels


def max_length_of(path: Path, tokenizer) -> int:
    """sentence-transformers' ``max_seq_length`` when the folder has one, else the tokenizer's limit;
    never more than the model's position embeddings (``max_position_embeddings`` in config.json): a
    longer sequence would fail in the graph (the warm-up at max_length would fail the model's load)."""
    import json

    positions = json.loads((path / "config.json").read_text()).get("max_position_embeddings")
    cap = positions if isinstance(positions, int) and positions > 0 else DEFAULT_MAX_LENGTH
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():
        value = json.loads(st_config.read_text()).get("max_seq_length")
        if isinstance(value, int) and value > 0:
            return min(value, cap)
    limit = getattr(tokenizer, "model_max_length", DEFAULT_MAX_LENGTH) or DEFAULT_MAX_LENGTH
    return int(min(limit, DEFAULT_MAX_LENGTH, cap))


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


def token_parity(
    session, module, tokenizer, max_length: int, output: str, report: ParityReport
) -> ParityReport:
    """Per-token logits: each sentence alone against the module on it alone, and the padded batch
    against the module on the same padded batch (every position, padding included)."""
    singles, references = [], []
    for sentence in SENTENCES:
        feeds = tokenize(tokenizer, [sentence], max_length)
        singles.append(run(session, feeds)[output].reshape(-1))
        references.append(
            reference_outputs(Path(), "token-classification", module, tokenizer, [sentence], max_length)
        )
    report.add(
        f"{output}[batch=1]", np.concatenate(singles), np.concatenate([r.reshape(-1) for r in references])
    )
    batched = run(session, tokenize(tokenizer, SENTENCES, max_length))[output]
    reference = reference_outputs(Path(), "token-classification", module, tokenizer, SENTENCES, max_length)
    report.add(f"{output}[batch={len(SENTENCES)}]", batched, reference)
    return report


def text_parity(
    model_path: Path, source: Path, task: str, module, tokenizer, max_length: int, atol: float, rtol: float
) -> ParityReport:
    """ONNX Runtime on SENTENCES at batch 1 (each alone) and batch N (padded together) against the
    source model: sentence-transformers for embeddings, the PyTorch module for logits."""
    output = TASK_SPECS[task].outputs[0].name
    session = ort_session(model_path)
    report = ParityReport(atol=atol, rtol=rtol)
    if task == "token-classification":
        token_parity(session, module, tokenizer, max_length, output, report)
        report.cases = [f"{len(SENTENCES)} real sentences, batch 1 and batch {len(SENTENCES)}"]
        log.info("parity: max abs err %.3g, max rel err %.3g", report.max_abs_err, report.max_rel_err)
        return report
    reference = reference_outputs(source, task, module, tokenizer, SENTENCES, max_length)
    singles = np.concatenate([run(session, tokenize(tokenizer, [s], max_length))[output] for s in SENTENCES])
    report.add(f"{output}[batch=1]", singles, reference)
    batched = run(session, tokenize(tokenizer, SENTENCES, max_length))[output]
    report.add(f"{output}[batch={len(SENTENCES)}]", batched, reference)
    report.cases = [f"{len(SENTENCES)} real sentences, batch 1 and batch {len(SENTENCES)}"]
    log.info("parity: max abs err %.3g, max rel err %.3g", report.max_abs_err, report.max_rel_err)
    return report


# ---- image classification ------------------------------------------------------------------------

# PIL's resampling filters by their number (what preprocessor_config.json's `resample` holds).
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
IMAGE_PARITY_BATCHES = (1, 4)
IMAGE_SEED = 4321
# Sizes (height, width) of the generated images the preprocessing check feeds both pipelines.
CHECK_SIZES = ((32, 32), (48, 40), (31, 57), (96, 64), (224, 300))
PREPROCESSING_ATOL = 1e-4


def load_image_model(path: Path):
    """(image processor, torch module giving logits, labels) of an image-classification folder."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification
    from transformers.utils import logging as hf_logging

    if not (path / "preprocessor_config.json").is_file():
        raise InvalidArgument(
            f"PATH: {path} has no preprocessor_config.json; save the model's image processor beside it "
            "(processor.save_pretrained(PATH)): its size, mean and std are how images must be prepared",
            field="path",
        )
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "falling back to the PIL backend": that is the one compared with
    try:
        processor = AutoImageProcessor.from_pretrained(str(path))
        model = AutoModelForImageClassification.from_pretrained(str(path), dtype=torch.float32)
    except (OSError, ValueError, KeyError) as err:
        raise InvalidArgument(
            f"PATH: cannot load an image-classification model from {path}: {err}", field="path"
        ) from err
    finally:
        hf_logging.set_verbosity(verbosity)
    labels = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]

    class Logits(torch.nn.Module):
        def __init__(self, classifier):
            super().__init__()
            self.classifier = classifier

        def forward(self, pixel_values):
            return self.classifier(pixel_values=pixel_values).logits

    return processor, Logits(model).eval(), labels


def _size(value) -> dict | None:
    """A processor's SizeDict (or dict) -> its set keys, as a plain dict."""
    if value is None:
        return None
    items = value.items() if isinstance(value, dict) else vars(value).items()
    return {k: int(v) for k, v in items if v is not None and not k.startswith("_")} or None


def image_preprocessing(processor, channels: int, where: str) -> dict:
    """The processor's steps as the manifest's preprocessing block (docs/repository.md): resize (to
    height x width, or the shortest edge), resample, center crop, rescale, normalise. InvalidArgument
    for a processor whose output size is not fixed or that does what the block cannot say."""
    kind = type(processor).__name__.removesuffix("Pil")
    get = lambda key: getattr(processor, key, None)  # noqa: E731
    unsupported = [key for key in ("do_pad", "do_reduce_labels") if get(key)]
    if unsupported:
        raise InvalidArgument(
            f"{where}: the image processor {kind} sets {', '.join(unsupported)}, which the service's "
            "preprocessing does not do",
            field="path",
        )
    resize = crop = None
    if get("do_resize"):
        size = _size(get("size")) or {}
        if set(size) == {"height", "width"}:
            resize = {"height": size["height"], "width": size["width"]}
        elif set(size) == {"shortest_edge"}:
            edge = size["shortest_edge"]
            crop_pct = get("crop_pct")
            if kind == "ConvNextImageProcessor" and crop_pct:  # ConvNeXt's own resize: edge/crop_pct, crop
                if edge < 384:
                    resize, crop = {"shortest_edge": int(edge / crop_pct)}, {"height": edge, "width": edge}
                else:
                    resize = {"height": edge, "width": edge}
            else:
                resize = {"shortest_edge": edge}
        else:
            raise InvalidArgument(
                f"{where}: the image processor {kind} resizes to {size}; the service resizes to height x "
                "width or by the shortest edge",
                field="path",
            )
    if get("do_center_crop"):
        crop = _size(get("crop_size"))
        if not crop or set(crop) != {"height", "width"}:
            raise InvalidArgument(f"{where}: the image processor {kind} crops to {crop}", field="path")
    final = crop or (resize if resize and "height" in resize else None)
    if final is None:
        raise InvalidArgument(
            f"{where}: the image processor {kind} gives images whose size depends on the input (size "
            f"{_size(get('size'))}, no crop); the entry needs one fixed input size",
            field="path",
        )
    resample = get("resample")
    resample = RESAMPLE.get(int(resample) if resample is not None else 2)
    if resample is None:
        raise InvalidArgument(f"{where}: resample {get('resample')!r} is not a PIL filter", field="path")
    mean = [float(v) for v in get("image_mean")] if get("do_normalize") else [0.0] * channels
    std = [float(v) for v in get("image_std")] if get("do_normalize") else [1.0] * channels
    block = {
        "channels": channels,
        "height": final["height"],
        "width": final["width"],
        "mean": mean,
        "std": std,
        "scale": float(get("rescale_factor")) if get("do_rescale") else 1.0,
        "resize": resize,
        "resample": resample,
        "image_processor": kind,
    }
    if crop is not None:
        block["crop"] = crop
    return block


def generated_images(count: int, seed: int, sizes=CHECK_SIZES):
    """Seeded RGB images (PIL) of the given sizes, cycling; smooth gradients plus noise, so resampling
    filters see both edges and flat areas."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        height, width = sizes[i % len(sizes)]
        ramp = np.linspace(0, 255, width)[None, :, None] * np.linspace(0.2, 1.0, height)[:, None, None]
        noise = rng.normal(0, 40, size=(height, width, 3))
        pixels = np.clip(ramp + noise + rng.uniform(0, 60, size=3), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels, mode="RGB"))
    return images


def check_image_preprocessing(block: dict, processor, where: str) -> float:
    """The service's image pipeline (serving.preprocess.ImagePipeline, built from ``block``) against
    the processor itself on generated images of several sizes: the largest difference, or
    InvalidArgument when they disagree (the processor does something the block does not say)."""
    from serving.preprocess import ImagePipeline

    pipeline = ImagePipeline.from_manifest(block, 4096 * 4096, where)
    worst = 0.0
    for image in generated_images(len(CHECK_SIZES), IMAGE_SEED):
        expected = processor(images=[image], return_tensors="np")["pixel_values"][0]
        got = pipeline.prepare(image)
        diff = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else float("inf")
        if not diff <= PREPROCESSING_ATOL:
            raise InvalidArgument(
                f"{where}: the image processor {block['image_processor']} does something the service's "
                f"preprocessing cannot reproduce (on a {image.width}x{image.height} image: shape "
                f"{list(got.shape)} vs {list(expected.shape)}, max diff {diff:.3g}); supported: resize to "
                "height x width or by the shortest edge, center crop, rescale, normalise",
                field="path",
            )
        worst = max(worst, diff)
    return worst


def image_parity(model_path: Path, module, processor, atol: float, rtol: float) -> ParityReport:
    """ONNX Runtime against the PyTorch module on generated images through the image processor, at
    batch 1 and 4."""
    import torch

    session = ort_session(model_path)
    report = ParityReport(atol=atol, rtol=rtol)
    for batch in IMAGE_PARITY_BATCHES:
        images = generated_images(batch, IMAGE_SEED + batch)
        pixels = np.asarray(processor(images=images, return_tensors="np")["pixel_values"], dtype=np.float32)
        with torch.no_grad():
            reference = module(torch.from_numpy(pixels)).numpy()
        report.add(f"logits[batch={batch}]", run(session, {"input": pixels})["logits"], reference)
    batches = " and ".join(map(str, IMAGE_PARITY_BATCHES))
    report.cases = [
        f"generated images of {len(CHECK_SIZES)} sizes (seed {IMAGE_SEED}) through the image "
        f"processor, batch {batches}"
    ]
    log.info("parity: max abs err %.3g, max rel err %.3g", report.max_abs_err, report.max_rel_err)
    return report


def convert_image_classifier(
    path: Path,
    name: str,
    architecture: str | None,
    repo: Repository,
    *,
    atol: float,
    rtol: float,
    serving: ServingOptions,
    opset: int,
    license: str | None = None,
) -> ConversionResult:
    """``convert_hf`` for an image classifier folder: its model card carried as for text models."""
    import torch

    task = "image-classification"
    steps: list[StepResult] = []
    with Timer() as timer:
        processor, module, labels = load_image_model(path)
        channels = int(getattr(module.classifier.config, "num_channels", 3))
        preprocessing = image_preprocessing(processor, channels, f"PATH: {path}")
        preprocessing_err = check_image_preprocessing(preprocessing, processor, f"PATH: {path}")
        images = generated_images(2, IMAGE_SEED)
        pixels = np.asarray(processor(images=images, return_tensors="np")["pixel_values"], dtype=np.float32)
        with torch.no_grad():
            width = int(module(torch.from_numpy(pixels)).shape[1])
    steps.append(
        StepResult(
            "load", "ok", timer.elapsed, {"path": path, "preprocessing_max_abs_err": preprocessing_err}
        )
    )
    spec = TASK_SPECS[task]
    inputs = [
        with_static_dims(spec.inputs[0], {1: channels, 2: preprocessing["height"], 3: preprocessing["width"]})
    ]
    outputs = [with_static_dims(spec.outputs[0], {1: width})]

    with repo.stage(name) as staged:
        card = model_card(staged.dir, folder=path, flag=license)
        model_path = staged.dir / "model.onnx"
        steps.append(
            torch2onnx.export(module, (torch.from_numpy(pixels),), model_path, inputs, outputs, opset=opset)
        )
        with Timer() as timer:
            report = image_parity(model_path, module, processor, atol, rtol)
        steps.append(parity_step(report, timer.elapsed))
        report.raise_if_failed(f"{name} ({task}) against PyTorch")
        manifest = build_manifest(
            task=task,
            source=path,
            exporter=torch2onnx.EXPORTER,
            inputs=inputs,
            outputs=outputs,
            parity=report.to_manifest(),
            preprocessing=preprocessing,
            opset=opset,
            labels=labels,
            extra={"architecture": architecture, **card},
        )
        config = serving.build(name, inputs, outputs, random_ops=random_ops(model_path))
        return publish(repo, staged, steps, manifest=manifest, config=config)


# ---- the command ----------------------------------------------------------------------------------


def convert_hf(
    path: str | Path,
    name: str,
    *,
    task: str | None = None,
    repository: str | Path | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    serving: ServingOptions | None = None,
    opset: int = torch2onnx.DEFAULT_OPSET,
    hook=None,
    license: str | None = None,
) -> ConversionResult:
    """Export, check parity, publish as the next version of ``name``, its model card (the folder's README
    and license files, converters/model_card.py) carried. Nothing is published on failure.
    ``task``: None reads it from the folder (``resolve_task``)."""
    import torch

    if task is not None:
        task_spec(task, allowed=HF_TASKS)
    check_name(validate_name(name))  # room for its companions, NAME_tokenizer and NAME_text
    path = check_model_folder(path)
    task, architecture = resolve_task(path, task)
    spec = TASK_SPECS[task]
    atol, rtol = check_tolerances(atol, rtol)
    serving = (serving or ServingOptions()).check()
    repo = Repository(repository, hook=hook)
    repo.check_task(name, task)  # fail before the slow part; commit checks again under the lock
    if task == "image-classification":
        return convert_image_classifier(
            path,
            name,
            architecture,
            repo,
            atol=atol,
            rtol=rtol,
            serving=serving,
            opset=opset,
            license=license,
        )
    steps: list[StepResult] = []

    with Timer() as timer:
        tokenizer, module, labels = load(path, task)
        if tokenizer.pad_token is None:
            raise InvalidArgument(
                f"PATH: the tokenizer of {path} has no padding token, and requests are batched padded; "
                "set one (e.g. tokenizer.pad_token = tokenizer.eos_token, and the model's pad_token_id) "
                "and save the folder again",
                field="path",
            )
        max_length = max_length_of(path, tokenizer)
        example = tokenize(tokenizer, SENTENCES[:2], max_length)
        example_args = (torch.from_numpy(example["input_ids"]), torch.from_numpy(example["attention_mask"]))
        with torch.no_grad():
            width = int(module(*example_args).shape[-1])
    steps.append(StepResult("load", "ok", timer.elapsed, {"path": path}))
    inputs = list(spec.inputs)
    output = spec.outputs[0]
    outputs = [with_static_dims(output, {len(output.shape) - 1: width})]

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
            extra={"architecture": architecture, **card},
        )
        config = serving.build(name, inputs, outputs, random_ops=random_ops(model_path))
        return publish(repo, staged, steps, manifest=manifest, config=config)
