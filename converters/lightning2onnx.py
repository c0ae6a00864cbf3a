"""Lightning checkpoint + its LightningModule class -> ONNX entry (task ``image-classification``).

The checkpoint is loaded with ``torch.load(weights_only=True)`` unless the user passes
``--trust-checkpoint``; the input spec comes from the module's ``example_input_array`` or from
``--input-shape C,H,W``; the batch axis is dynamic. Parity: seeded inputs of the declared shape at batch
1 and batch 4, ONNX Runtime against the PyTorch module.
"""

from __future__ import annotations

import importlib
import logging
import pickle
import re
from pathlib import Path

from converters import torch2onnx
from converters.inputs import IMAGE_SEED, seeded_images
from converters.manifest import build_manifest
from converters.model_card import model_card
from converters.parity import DEFAULT_ATOL, DEFAULT_RTOL, ParityReport, check_tolerances
from converters.pipeline import parity_step, publish
from converters.results import ConversionResult, StepResult, Timer
from converters.runtime import ort_session, run
from core.errors import InvalidArgument, NotFound, UnsafeInput
from core.repository import Repository, validate_name
from core.tasks import TASK_SPECS, TensorSpec, with_static_dims
from core.triton_config import ServingOptions

log = logging.getLogger(__name__)

TASK = "image-classification"
TRUST_FLAG = "--trust-checkpoint"
PARITY_BATCHES = (1, 4)


def parse_input_shape(text: str | None) -> tuple[int, ...] | None:
    """``"3,32,32"`` -> (3, 32, 32)."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise InvalidArgument(
            f"--input-shape: {text!r} is not C,H,W with three positive integers; write e.g. 3,32,32",
            field="input_shape",
        )
    return tuple(int(p) for p in parts)


def resolve_class(ref: str):
    """``pkg.mod:Class`` -> the LightningModule subclass."""
    import lightning as L

    module_name, sep, class_name = ref.partition(":")
    if not sep or not module_name or not class_name.isidentifier():
        raise InvalidArgument(
            f"--module: {ref!r} is not 'pkg.mod:Class'; "
            "e.g. converters.examples.image_classifier:ImageClassifier",
            field="module",
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise NotFound(
            f"--module: cannot import {module_name!r} ({err}); check the module path", field="module"
        ) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise NotFound(f"--module: {module_name!r} has no class {class_name!r}", field="module")
    if not (isinstance(cls, type) and issubclass(cls, L.LightningModule)):
        raise InvalidArgument(f"--module: {ref} is not a LightningModule subclass", field="module")
    return cls


def _first_line(err: BaseException) -> str:
    """The first sentence of an error, which is what says what went wrong."""
    text = str(err).strip()
    return text.splitlines()[0].split(". ")[0] if text else type(err).__name__


def read_checkpoint(path: Path, *, trust: bool) -> dict:
    """Load the checkpoint dict (weights only unless ``trust``) and check that Lightning wrote it."""
    import torch

    if not path.exists():
        raise NotFound(
            f"CKPT: {path} does not exist; train one with "
            "`python -m converters.examples.image_classifier --out PATH`",
            field="ckpt",
        )
    if not path.is_file():
        raise InvalidArgument(f"CKPT: {path} is not a file", field="ckpt")
    try:
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        message = str(err)
        if not trust and ("Unsupported global" in message or "allowed global" in message):
            global_name = re.search(r"GLOBAL (\S+)", message)
            what = global_name.group(1) if global_name else message.strip().splitlines()[0]
            raise UnsafeInput(
                f"CKPT: {path} holds an object ({what}) that a weights-only load refuses; if you trust the "
                f"file's origin, pass {TRUST_FLAG} to load it with full pickle",
                field="ckpt",
            ) from None
        raise InvalidArgument(
            f"CKPT: {path} is not a PyTorch checkpoint (torch.load cannot unpickle it); save one with "
            "Trainer.save_checkpoint",
            field="ckpt",
        ) from None
    except Exception as err:  # torch.load raises many kinds on a file that is not a checkpoint
        raise InvalidArgument(
            f"CKPT: {path} is not a PyTorch checkpoint ({_first_line(err)}); save one with "
            "Trainer.save_checkpoint",
            field="ckpt",
        ) from None
    if (
        not isinstance(checkpoint, dict)
        or "state_dict" not in checkpoint
        or "pytorch-lightning_version" not in checkpoint
    ):
        keys = sorted(checkpoint)[:6] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise InvalidArgument(
            f"CKPT: {path} is not a Lightning checkpoint (no 'state_dict'/'pytorch-lightning_version'; found "
            f"{keys}); save it with Trainer.save_checkpoint",
            field="ckpt",
        )
    return checkpoint


def load_module(path: Path, cls, *, trust: bool):
    """The LightningModule ``cls`` loaded from ``path``, in eval mode, once ``read_checkpoint`` found the
    file to be a Lightning checkpoint (so each kind of bad file gets its own message)."""
    read_checkpoint(path, trust=trust)
    try:
        module = cls.load_from_checkpoint(str(path), map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        raise UnsafeInput(
            f"CKPT: {path}: weights-only load refused ({err}); pass {TRUST_FLAG} if you trust it",
            field="ckpt",
        ) from None
    except (RuntimeError, KeyError, TypeError) as err:
        raise InvalidArgument(
            f"CKPT: {path} does not fit {cls.__module__}:{cls.__name__}: {str(err).splitlines()[0]}",
            field="module",
        ) from None
    return module.eval()


def input_shape_of(module, override: tuple[int, ...] | None) -> tuple[int, ...]:
    if override is not None:
        return override
    example = getattr(module, "example_input_array", None)
    if example is None or not hasattr(example, "shape") or len(example.shape) != 4:
        raise InvalidArgument(
            f"{type(module).__name__} has no 4-d example_input_array; pass --input-shape C,H,W",
            field="input_shape",
        )
    return tuple(int(d) for d in example.shape[1:])


def image_parity(model_path: Path, module, shape: tuple[int, ...], atol: float, rtol: float) -> ParityReport:
    """ONNX Runtime against the PyTorch module on seeded inputs of the declared shape, at PARITY_BATCHES."""
    import torch

    session = ort_session(model_path)
    report = ParityReport(atol=atol, rtol=rtol)
    for batch in PARITY_BATCHES:
        x = seeded_images(shape, batch)
        with torch.no_grad():
            reference = module(torch.from_numpy(x)).numpy()
        report.add(f"logits[batch={batch}]", run(session, {"input": x})["logits"], reference)
    batches = " and ".join(map(str, PARITY_BATCHES))
    report.cases = [f"seeded N(0,1) inputs of shape {list(shape)} (seed {IMAGE_SEED}), batch {batches}"]
    log.info("parity: max abs err %.3g, max rel err %.3g", report.max_abs_err, report.max_rel_err)
    return report


def preprocessing_of(module, shape: tuple[int, ...]) -> dict:
    hparams = dict(getattr(module, "hparams", {}) or {})
    channels, height, width = shape
    mean = [float(v) for v in hparams.get("mean", [0.0] * channels)]
    std = [float(v) for v in hparams.get("std", [1.0] * channels)]
    if len(mean) != channels or len(std) != channels:
        raise InvalidArgument(f"hparams mean/std need {channels} values, one per channel", field="hparams")
    return {
        "channels": channels,
        "height": height,
        "width": width,
        "mean": mean,
        "std": std,
        "scale": 1 / 255,
    }


def convert_lightning(
    ckpt: str | Path,
    module_ref: str,
    name: str,
    *,
    input_shape: tuple[int, ...] | None = None,
    trust_checkpoint: bool = False,
    repository: str | Path | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    serving: ServingOptions | None = None,
    opset: int = torch2onnx.DEFAULT_OPSET,
    hook=None,
    license: str | None = None,
) -> ConversionResult:
    """Export, check parity, publish as the next version of ``name``; the license from the checkpoint's
    hparams or ``license`` (converters/model_card.py). Nothing is published on failure."""
    import torch

    validate_name(name)
    atol, rtol = check_tolerances(atol, rtol)
    ckpt = Path(ckpt)
    serving = (serving or ServingOptions()).check()
    cls = resolve_class(module_ref)
    repo = Repository(repository, hook=hook)
    repo.check_task(name, TASK)
    steps: list[StepResult] = []
    with Timer() as timer:
        module = load_module(ckpt, cls, trust=trust_checkpoint)
        shape = input_shape_of(module, input_shape)
        example = torch.from_numpy(seeded_images(shape, 1))
        with torch.no_grad():
            try:
                probe = module(example)
            except RuntimeError as err:
                raise InvalidArgument(
                    f"--input-shape: {type(module).__name__} rejects inputs of shape {list(example.shape)}: "
                    f"{str(err).splitlines()[0]}",
                    field="input_shape",
                ) from None
        if not isinstance(probe, torch.Tensor) or probe.ndim != 2:
            got = f"shape {list(probe.shape)}" if isinstance(probe, torch.Tensor) else type(probe).__name__
            raise InvalidArgument(
                f"{type(module).__name__} returns {got}; image-classification needs one tensor of "
                "[batch, num_classes] logits",
                field="module",
            )
    steps.append(StepResult("load", "ok", timer.elapsed, {"path": ckpt}))

    spec = TASK_SPECS[TASK]
    num_classes = int(probe.shape[1])
    inputs: list[TensorSpec] = [with_static_dims(spec.inputs[0], dict(enumerate(shape, start=1)))]
    outputs = [with_static_dims(spec.outputs[0], {1: num_classes})]
    labels = [str(v) for v in (getattr(module, "hparams", {}) or {}).get("labels", range(num_classes))]
    if len(labels) != num_classes:
        raise InvalidArgument(
            f"hparams labels has {len(labels)} names for {num_classes} classes", field="labels"
        )
    preprocessing = preprocessing_of(module, shape)

    with repo.stage(name) as staged:
        card = model_card(staged.dir, hparams=dict(getattr(module, "hparams", {}) or {}), flag=license)
        model_path = staged.dir / "model.onnx"
        steps.append(torch2onnx.export(module, (example,), model_path, inputs, outputs, opset=opset))
        with Timer() as timer:
            report = image_parity(model_path, module, shape, atol, rtol)
        steps.append(parity_step(report, timer.elapsed))
        report.raise_if_failed(f"{name} ({TASK}) against PyTorch")

        manifest = build_manifest(
            task=TASK,
            source=ckpt,
            exporter=torch2onnx.EXPORTER,
            inputs=inputs,
            outputs=outputs,
            parity=report.to_manifest(),
            preprocessing=preprocessing,
            opset=opset,
            labels=labels,
            extra={"module": module_ref, **card},
        )
        return publish(repo, staged, steps, manifest=manifest, config=serving.build(name, inputs, outputs))
