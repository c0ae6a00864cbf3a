"""The CPU Triton image's entry point: start ``tritonserver`` the way ``TritonServer`` starts it here.

    python -m local_triton.entrypoint [TRITONSERVER ARGS...]

The python backend's stub takes ``sys.prefix`` from the first ``python3`` on PATH and links the bundled
libraries and libpython, so the server needs ``Installation.environment()`` (the backend venv's
``bin/`` first on PATH, ``.triton/lib`` and the venv interpreter's libdir on LD_LIBRARY_PATH). This
module applies exactly that environment, adds ``--backend-directory`` (the installation's backends:
the python backend and the python-based onnxruntime backend) before the given arguments, and replaces
itself with tritonserver (``execve``), so the server is the container's PID 1 and receives its stop
signal. The arguments are the image's CMD, or the ``args``/``command`` of a Kubernetes or ECS
container: the same flags NVIDIA's image takes; the ONNX Runtime thread counts of
``--backend-config=onnxruntime,...`` reach the python-based backend through its environment
(``backend_config_environment``). Outside a container it runs the local set-up's server
(``.triton/``, ``.venv-triton/`` of this checkout).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from core.errors import MissingDependency
from local_triton.server import Installation

ROOT = Path(__file__).resolve().parent.parent


# The ``--backend-config=onnxruntime,KEY=VALUE`` settings the python-based onnxruntime backend reads
# from its environment (local_triton/backends/onnxruntime/model.py, BACKEND_CONFIG_ENV): Triton passes
# backend configs to native backends only.
ORT_BACKEND_CONFIG = {
    "intra_op_thread_count": "MODELPACK_ORT_INTRA_OP_THREADS",
    "inter_op_thread_count": "MODELPACK_ORT_INTER_OP_THREADS",
}


def backend_config_environment(args: list[str]) -> dict[str, str]:
    """The environment variables that carry the onnxruntime backend configs of ``args`` (both
    ``--backend-config=onnxruntime,K=V`` and ``--backend-config onnxruntime,K=V``) to the backend."""
    values = [a.split("=", 1)[1] for a in args if a.startswith("--backend-config=")]
    values += [b for a, b in zip(args, args[1:], strict=False) if a == "--backend-config"]
    env = {}
    for value in values:
        backend, _, setting = value.partition(",")
        key, _, raw = setting.partition("=")
        if backend == "onnxruntime" and key in ORT_BACKEND_CONFIG:
            env[ORT_BACKEND_CONFIG[key]] = raw
    return env


def command(install: Installation, args: list[str]) -> list[str]:
    """tritonserver's argv: the installation's backend directory first, so a later flag overrides it."""
    return [str(install.binary), f"--backend-directory={install.backends}", *args]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    install = Installation(ROOT)
    try:
        install.check()
    except MissingDependency as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    argv_out = command(install, args)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv_out[0], argv_out, {**install.environment(), **backend_config_environment(args)})
    return 1  # not reached: execve replaces this process or raises OSError


if __name__ == "__main__":
    sys.exit(main())
