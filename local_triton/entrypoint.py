"""The CPU Triton image's entry point: start ``tritonserver`` the way ``TritonServer`` starts it here.

    python -m local_triton.entrypoint [TRITONSERVER ARGS...]

The python backend's stub takes ``sys.prefix`` from the first ``python3`` on PATH and links the bundled
libraries and libpython, so the server needs ``Installation.environment()`` (the backend venv's
``bin/`` first on PATH, ``.triton/lib`` and the venv interpreter's libdir on LD_LIBRARY_PATH). This
module applies exactly that environment, adds ``--backend-directory`` (the installation's backends:
the python backend and the python-based onnxruntime backend) before the given arguments, and replaces
itself with tritonserver (``execve``), so the server is the container's PID 1 and receives its stop
signal. The arguments are the image's CMD, or the ``args``/``command`` of a Kubernetes or ECS
container: the same flags NVIDIA's image takes. Outside a container it runs the local set-up's server
(``.triton/``, ``.venv-triton/`` of this checkout).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from core.errors import MissingDependency
from local_triton.server import Installation

ROOT = Path(__file__).resolve().parent.parent


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
    os.execve(argv_out[0], argv_out, install.environment())
    return 1  # not reached: execve replaces this process or raises OSError


if __name__ == "__main__":
    sys.exit(main())
