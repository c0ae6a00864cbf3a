"""Where the set-up put Triton, its backends and the backends' venv (``Installation``).

Apart from ``local_triton.server`` so that the CPU Triton image's entry point (local_triton/entrypoint.py)
imports only this and ``core.errors``: the image's python has nothing but the standard library.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from core.errors import MissingDependency

SETUP_HINT = "run `make setup` (it runs local_triton/setup.sh)"


@dataclass(frozen=True)
class Installation:
    """Where the set-up put Triton, its backends and the backends' venv."""

    root: Path

    @property
    def binary(self) -> Path:
        return self.root / ".triton" / "bin" / "tritonserver"

    @property
    def libraries(self) -> Path:
        return self.root / ".triton" / "lib"

    @property
    def backends(self) -> Path:
        return self.root / ".triton" / "backends"

    @property
    def venv(self) -> Path:
        return self.root / ".venv-triton"

    @property
    def caches(self) -> Path:
        """Triton's response cache implementations (``local/libtritoncache_local.so``), for
        ``--cache-directory``; the server looks in /opt/tritonserver/caches otherwise."""
        return self.root / ".triton" / "caches"

    def check(self) -> Installation:
        """Raise MissingDependency naming the first missing piece and how to get it."""
        needed = [
            (self.binary, "the tritonserver binary"),
            (self.backends / "python" / "libtriton_python.so", "Triton's python backend"),
            (self.backends / "python" / "triton_python_backend_stub", "the python backend stub"),
            (self.backends / "onnxruntime" / "model.py", "the python-based onnxruntime backend"),
            (self.caches / "local" / "libtritoncache_local.so", "Triton's local response cache"),
            (self.venv / "bin" / "python3", "the backend venv .venv-triton"),
        ]
        for path, what in needed:
            if not path.exists():
                raise MissingDependency(f"{what} is missing: {path} does not exist; {SETUP_HINT}")
        return self

    def environment(self) -> dict[str, str]:
        """The server's environment: the stub takes ``sys.prefix`` from the first ``python3`` on PATH,
        so ``.venv-triton/bin`` goes first; the bundled libraries go on LD_LIBRARY_PATH, with the
        libpython the venv's interpreter was built with (the stub links ``libpython3.X.so``)."""
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        env.pop("PYTHONHOME", None)
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        libs = [str(self.libraries)]
        libdir = self._python_libdir()
        if libdir:
            libs.append(libdir)
        if env.get("LD_LIBRARY_PATH"):
            libs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
        return env

    def _python_libdir(self) -> str | None:
        """The directory of the venv interpreter's shared libpython, if it has one."""
        cfg = self.venv / "pyvenv.cfg"
        try:
            home = next(
                line.split("=", 1)[1].strip()
                for line in cfg.read_text().splitlines()
                if line.split("=", 1)[0].strip() == "home"
            )
        except (OSError, StopIteration):
            return None
        libdir = Path(home).parent / "lib"
        return str(libdir) if any(libdir.glob("libpython3*.so*")) else None
