"""Lightning checkpoint + its LightningModule class -> ONNX entry, for any signature ONNX can express.

The checkpoint is loaded with ``torch.load(weights_only=True)`` unless the user passes
``--trust-checkpoint``. The inputs come from the module's ``example_input_array`` (a tensor, a tuple/list
of positional arguments, a dict of keyword arguments) and/or ``--input NAME:DTYPE:DIMS`` flags (or the
old ``--input-shape DIMS`` of a one-input module); the outputs from running it (a tensor, a tuple/list,
a dict): see ``converters.signatures``. The batch axis is always dynamic, and so is every axis declared
-1. The task: ``image-classification`` for a (C,H,W) -> logits module, ``classification`` for
(features) -> (classes) with labels, ``tensor`` for anything else; ``--task`` chooses, and is refused
when the signature does not fit it. Parity: ONNX Runtime against the PyTorch module on seeded inputs at
batch 1 and batch 4, every dynamic axis at two sizes.
"""

from __future__ import annotations

import importlib
import logging
import pickle
import re
from dataclasses import replace
from pathlib import Path

from converters import torch2onnx
from converters.determinism import random_ops
from converters.manifest import build_manifest
from converters.model_card import model_card
from converters.parity import DEFAULT_ATOL, DEFAULT_RTOL, ParityReport, check_tolerances
from converters.pipeline import parity_step, publish
from converters.results import ConversionResult, StepResult, Timer
from converters.runtime import ort_session, run
from converters.signatures import (
    EXPORT_BATCH,
    InputDecl,
    OutputDecl,
    Signature,
    adapter,
    declare_inputs,
    generate,
    parse_dims,
    probe,
    torch_outputs,
)
from core.errors import InvalidArgument, NotFound, UnsafeInput
from core.repository import Repository, validate_name
from core.tasks import TASK_SPECS
from core.triton_config import ServingOptions

log = logging.getLogger(__name__)

LIGHTNING_TASKS = ("image-classification", "classification", "tensor")
TRUST_FLAG = "--trust-checkpoint"


def parse_input_shape(text: str | None) -> tuple[int, ...] | None:
    """``"3,32,32"`` -> (3, 32, 32): the dims of a one-input module without the batch axis (-1: dynamic)."""
    if text is None:
        return None
    dims = parse_dims(text, "--input-shape")
    if not dims:
        raise InvalidArgument(
            "--input-shape: give the dims without the batch axis, e.g. 3,32,32 or 20", field="input_shape"
        )
    return dims


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


def _weights_only_refusal(message: str) -> bool:
    """Whether torch.load's UnpicklingError is a weights-only load refusing something (which a full
    pickle load would run), not a damaged file. torch 2.6+ starts every such message with "Weights only
    load failed"; what it names differs by case: a global not on the allow-list ("Unsupported global:
    GLOBAL fractions.Fraction was not an allowed global"), a global from a blocked module, the one a
    code-running pickle uses ("unsupported GLOBAL posix.system whose module posix is blocked"), an
    unsupported opcode."""
    return (
        message.lstrip().startswith("Weights only load failed")
        or re.search(r"\bGLOBAL \S+", message) is not None
    )


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
        if not trust and _weights_only_refusal(message):
            global_name = re.search(r"GLOBAL (\S+)", message)
            what = f"an object ({global_name.group(1)})" if global_name else "data"
            raise UnsafeInput(
                f"CKPT: {path} holds {what} that a weights-only load refuses; if you trust the "
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


def choose_task(
    requested: str | None,
    decls: list[InputDecl],
    outputs: list[OutputDecl],
    labels: list[str] | None,
    cls: str,
) -> str:
    """The task the signature fits: the one requested (InvalidArgument when it does not fit), else
    image-classification for one FP32 C,H,W input (C 1 or 3) -> one [batch, classes] FP32 output,
    classification for one FP32 [batch, features] input -> [batch, classes] with labels, else tensor."""
    one_to_one = len(decls) == 1 and len(outputs) == 1
    logits = (
        one_to_one and outputs[0].datatype == "FP32" and len(outputs[0].dims) == 1 and outputs[0].dims[0] > 0
    )
    fits = {
        "image-classification": bool(
            logits
            and decls[0].datatype == "FP32"
            and len(decls[0].dims) == 3
            and decls[0].dims[0] in (1, 3)
            and min(decls[0].dims) > 0
        ),
        "classification": bool(
            logits and decls[0].datatype == "FP32" and len(decls[0].dims) == 1 and decls[0].dims[0] > 0
        ),
        "tensor": True,
    }
    if requested is not None:
        if not fits[requested]:
            takes = ", ".join(d.describe() for d in decls)
            gives = ", ".join(f"{o.name} {o.datatype} {list(o.dims)}" for o in outputs)
            raise InvalidArgument(
                f"--task {requested}: {cls} takes [{takes}] and gives [{gives}] (dims after the batch "
                f"axis); {requested} needs {TASK_NEEDS[requested]}; use --task tensor (any signature)",
                field="task",
            )
        return requested
    if fits["image-classification"]:
        return "image-classification"
    if fits["classification"] and labels is not None:
        return "classification"
    return "tensor"


# What each task needs of the signature, for the error when --task asks for one it does not fit.
TASK_NEEDS = {
    "image-classification": "one FP32 input of C,H,W (C 1 or 3, static) and one FP32 [batch, classes] output",
    "classification": "one FP32 [batch, features] input and one FP32 [batch, classes] output",
    "tensor": "any signature",
}


def lightning_parity(
    model_path: Path, wrapped, signature: Signature, atol: float, rtol: float
) -> ParityReport:
    """ONNX Runtime against the PyTorch module on the signature's seeded inputs: batch 1 with every
    dynamic axis at its sample size, batch 4 with the dynamic axes doubled."""
    session = ort_session(model_path)
    report = ParityReport(atol=atol, rtol=rtol)
    names = [o.name for o in signature.outputs]
    for label, feeds in signature.cases():
        reference = dict(zip(names, torch_outputs(wrapped, feeds, signature.inputs), strict=True))
        got = run(session, feeds, names)
        for name in names:
            report.add(f"{name}[{label}]", got[name], reference[name])
    report.cases = signature.describe_cases()
    log.info("parity: max abs err %.3g, max rel err %.3g", report.max_abs_err, report.max_rel_err)
    return report


def wrapped_module(module, signature: Signature):
    """The module called as the entry's graph is: positional tensors in, a tuple (or a tensor) out."""
    return adapter(module, signature.inputs, signature.output_form, [o.key for o in signature.outputs])


def parse_labels(text: str | None) -> list[str] | None:
    """``--labels a,b,c`` or ``--labels @FILE`` (one label per line)."""
    if text is None:
        return None
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise NotFound(
                f"--labels: {path} does not exist; give a file with one label per line", field="labels"
            )
        labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        labels = [part.strip() for part in text.split(",")]
    if not labels or not all(labels) or len(set(labels)) != len(labels):
        raise InvalidArgument(
            f"--labels: {text!r} is not a list of distinct, non-empty labels; write e.g. cat,dog,bird or "
            "@labels.txt",
            field="labels",
        )
    return labels


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
    inputs: list[InputDecl] | None = None,
    output_names: list[str] | None = None,
    task: str | None = None,
    labels: list[str] | None = None,
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
    hparams or ``license`` (converters/model_card.py). Nothing is published on failure.

    The inputs come from ``example_input_array`` and/or ``inputs`` (``--input``), or ``input_shape``
    (``--input-shape``); the task is ``task`` when given (refused when the signature does not fit it),
    else the one the signature fits (see ``choose_task``)."""
    validate_name(name)
    atol, rtol = check_tolerances(atol, rtol)
    ckpt = Path(ckpt)
    serving = (serving or ServingOptions()).check()
    if task is not None and task not in LIGHTNING_TASKS:
        raise InvalidArgument(
            f"--task: unsupported {task!r} for Lightning; supported: {', '.join(LIGHTNING_TASKS)}",
            field="task",
        )
    cls = resolve_class(module_ref)
    repo = Repository(repository, hook=hook)
    if task is not None:
        repo.check_task(name, task)
    steps: list[StepResult] = []
    with Timer() as timer:
        module = load_module(ckpt, cls, trust=trust_checkpoint)
        flag = "--input-shape" if input_shape is not None else "--input"
        decls = declare_inputs(module, list(inputs or []), input_shape)
        form, outputs = probe(module, decls, output_names, flag)
        hparams = dict(getattr(module, "hparams", {}) or {})
        known_labels = labels if labels is not None else hparams.get("labels")
        task = choose_task(task, decls, outputs, known_labels, type(module).__name__)
        repo.check_task(name, task)  # fail before the slow part; commit checks again under the lock
    steps.append(StepResult("load", "ok", timer.elapsed, {"path": ckpt}))

    entry_labels = None
    preprocessing: dict = {}
    if task in ("image-classification", "classification"):
        if output_names is not None:
            raise InvalidArgument(
                f"--output-names: a {task} entry names its output 'logits'; leave --output-names out, or "
                "use --task tensor",
                field="output_names",
            )
        spec = TASK_SPECS[task]
        decls = [replace(decls[0], name=spec.inputs[0].name)]
        outputs = [replace(outputs[0], name=spec.outputs[0].name)]
        num_classes = outputs[0].dims[0]
        entry_labels = [str(v) for v in (known_labels if known_labels is not None else range(num_classes))]
        if len(entry_labels) != num_classes:
            where = "--labels" if labels is not None else "hparams labels"
            raise InvalidArgument(
                f"{where}: {len(entry_labels)} names for {num_classes} classes", field="labels"
            )
        if task == "image-classification":
            preprocessing = preprocessing_of(module, decls[0].dims)
        else:
            preprocessing = {"features": decls[0].dims[0]}
    elif labels is not None:
        raise InvalidArgument(
            f"--labels: a {task} entry has no labels; use --task classification for a (batch, features) -> "
            "(batch, classes) module",
            field="labels",
        )
    signature = Signature(tuple(decls), tuple(outputs), form)
    wrapped = wrapped_module(module, signature)
    example = generate(decls, EXPORT_BATCH, 0, signature.seed)

    with repo.stage(name) as staged:
        card = model_card(staged.dir, hparams=hparams, flag=license)
        model_path = staged.dir / "model.onnx"
        import torch

        example_args = tuple(torch.from_numpy(example[d.name]) for d in decls)
        steps.append(
            torch2onnx.export(
                wrapped, example_args, model_path, signature.input_specs, signature.output_specs, opset=opset
            )
        )
        signature = unused_inputs_dropped(model_path, signature, type(module).__name__)
        with Timer() as timer:
            report = lightning_parity(model_path, wrapped, signature, atol, rtol)
        steps.append(parity_step(report, timer.elapsed))
        report.raise_if_failed(f"{name} ({task}) against PyTorch")

        input_specs, output_specs = signature.input_specs, signature.output_specs
        manifest = build_manifest(
            task=task,
            source=ckpt,
            exporter=torch2onnx.EXPORTER,
            inputs=input_specs,
            outputs=output_specs,
            parity=report.to_manifest(),
            preprocessing=preprocessing,
            opset=opset,
            labels=entry_labels,
            extra={"module": module_ref, "signature": signature.to_manifest(), **card},
        )
        config = serving.build(name, input_specs, output_specs, random_ops=random_ops(model_path))
        return publish(repo, staged, steps, manifest=manifest, config=config)


def unused_inputs_dropped(model_path: Path, signature: Signature, cls: str) -> Signature:
    """The exporter leaves out inputs forward does not use; the entry (config, manifest) must too, or
    Triton refuses the config. Logged, since a user may not expect it."""
    session = ort_session(model_path)
    graph = {i.name for i in session.get_inputs()}
    dropped = tuple(d.name for d in signature.inputs if d.name not in graph)
    if dropped:
        log.warning("%s.forward does not use %s: left out of the entry", cls, ", ".join(dropped))
    if len(dropped) == len(signature.inputs):
        raise InvalidArgument(
            f"{cls}.forward uses none of its inputs; there is nothing to serve", field="input"
        )
    return replace(signature, dropped=dropped)
