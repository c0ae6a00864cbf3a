"""``validate NAME[:VERSION]``: re-run the check a version was published under, from its manifest.

- fp32 ONNX versions: parity against the source named in the manifest (its sha256 must still match),
  exactly as at export: sentence-transformers / the PyTorch model on the fixed sentences or on generated
  images, or the LightningModule on the seeded inputs of its recorded signature;
- int8 versions: the int8 gate against the fp32 version they came from.

Everything read from the repository is data. A Lightning version's manifest names the Python module of
its LightningModule (``module``); importing it runs code, so validate imports it only when the user
says so (``--trust-module``): a module placed in the repository and named by a manifest never runs
otherwise.
"""

from __future__ import annotations

import logging
from pathlib import Path

from converters.inputs import EntryInputs
from converters.results import StepResult, Timer
from converters.runtime import ort_session, run
from core.errors import CheckFailed, NotFound, UnsafeInput
from core.repository import Repository, parse_ref, sha256_path
from core.tasks import TEXT_TASKS

log = logging.getLogger(__name__)

TRUST_MODULE_FLAG = "--trust-module"


def _source(manifest: dict) -> Path:
    source = Path(manifest["source"]["path"])
    if not source.exists():
        raise NotFound(
            f"source {source} named in the manifest no longer exists; cannot re-run parity", field="source"
        )
    digest = sha256_path(source)
    if digest != manifest["source"]["sha256"]:
        raise CheckFailed(
            f"source {source} changed since export (sha256 {digest[:12]}... where the manifest has "
            f"{manifest['source']['sha256'][:12]}...); convert it again to publish a new version"
        )
    return source


def _module_ref(ref: str, manifest: dict, *, trust_module: bool) -> str:
    """The manifest's ``module`` (``PKG.MOD:CLASS``), once the user allowed importing it."""
    module = manifest.get("module")
    if not isinstance(module, str) or not module:
        raise CheckFailed(f"{ref}: its manifest names no LightningModule (`module`); convert it again")
    if not trust_module:
        raise UnsafeInput(
            f"{ref}: its manifest names the Python module {module!r} to import for the parity check, and "
            f"importing it runs code read from the repository; pass {TRUST_MODULE_FLAG} if you trust the "
            "repository and that module",
            field="module",
        )
    return module


def _fp32_parity(ref: str, manifest: dict, version_dir: Path, *, trust_checkpoint: bool, trust_module: bool):
    parity = manifest["parity"]
    atol, rtol = float(parity["atol"]), float(parity["rtol"])
    source = _source(manifest)
    model_path = version_dir / "model.onnx"
    if manifest["task"] in TEXT_TASKS:
        from converters.hf2onnx import load, text_parity
        from converters.inputs import load_tokenizer

        # Embeddings are checked against sentence-transformers, which loads the folder itself: the
        # PyTorch module is the reference for logits only.
        module = None if manifest["task"] == "feature-extraction" else load(source, manifest["task"])[1]
        tokenizer = load_tokenizer(version_dir / manifest["preprocessing"]["tokenizer"])
        max_length = int(manifest["preprocessing"]["max_length"])
        return text_parity(model_path, source, manifest["task"], module, tokenizer, max_length, atol, rtol)
    if "module" not in manifest:  # a Hugging Face image classifier
        from converters.hf2onnx import image_parity as hf_image_parity
        from converters.hf2onnx import load_image_model

        processor, module, _ = load_image_model(source)
        return hf_image_parity(model_path, module, processor, atol, rtol)
    from converters.lightning2onnx import lightning_parity, load_module, resolve_class, wrapped_module
    from converters.signatures import Signature

    cls = resolve_class(_module_ref(ref, manifest, trust_module=trust_module))
    module = load_module(source, cls, trust=trust_checkpoint)
    signature = Signature.from_manifest(manifest)
    return lightning_parity(model_path, wrapped_module(module, signature), signature, atol, rtol)


def _int8_gate(repo: Repository, name: str, manifest: dict, version_dir: Path) -> dict:
    from converters.onnx2int8 import GATE_BATCH, gate, gate_figure

    quantization = manifest["quantization"]
    source_version = int(quantization["source_version"])
    fp32_dir = repo.version_dir(name, repo.require(name, source_version))
    inputs = EntryInputs(manifest, version_dir)
    feeds = inputs.feeds(GATE_BATCH)
    output = manifest["outputs"][0]["name"]
    threshold = float(quantization["gate"]["threshold"])
    result = gate(
        manifest["task"],
        run(ort_session(fp32_dir / "model.onnx"), feeds)[output],
        run(ort_session(version_dir / "model.onnx"), feeds)[output],
        min_cosine=threshold,
        min_top1=threshold,
    )
    if not result["passed"]:
        raise CheckFailed(
            f"int8 gate of {name}:{manifest['version']} failed:\n- {output}: {result['kind']} "
            f"{gate_figure(result):.4f} < {threshold} against {name}:{source_version}"
        )
    return result


def validate(
    ref: str,
    *,
    repository: str | Path | None = None,
    trust_checkpoint: bool = False,
    trust_module: bool = False,
) -> StepResult:
    """Re-run the version's check; CheckFailed (exit 1) when it no longer passes. ``trust_module``: import
    the LightningModule's module that a Lightning version's manifest names (UnsafeInput without it)."""
    name, version = parse_ref(ref)
    repo = Repository(repository)
    version = repo.require(name, version)
    manifest = repo.manifest(name, version)
    version_dir = repo.version_dir(name, version)
    with Timer() as timer:
        if manifest.get("precision") == "int8":
            outputs = _int8_gate(repo, name, manifest, version_dir)
        elif (version_dir / "model.onnx").is_file():
            report = _fp32_parity(
                f"{name}:{version}",
                manifest,
                version_dir,
                trust_checkpoint=trust_checkpoint,
                trust_module=trust_module,
            )
            report.raise_if_failed(f"{name}:{version}")
            outputs = report.to_manifest()
        else:
            raise CheckFailed(f"{name}:{version} has no model.onnx; validate re-runs ONNX parity only")
    return StepResult("validate", "ok", timer.elapsed, {"name": name, "version": version, **outputs})
