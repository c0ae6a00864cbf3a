"""``bentoml serve service:ModelService`` on this machine, as a child process: the one launcher the tests
and the benchmarks use (``TritonServer`` is its counterpart for Triton).

    with BentoServer(config, home=folder / "home", log_path=folder / "bento.log") as bento:
        bento.client.get("/readyz")

The server listens on a free 127.0.0.1 port, reads the service.yaml ``config`` (MODELPACK_SERVICE_CONFIG;
the inherited MODELPACK_TRITON_URL / MODELPACK_REPOSITORY are dropped, so the file alone says where
Triton and the repository are), keeps BentoML's state under ``home`` (BENTOML_HOME) and sends no usage
data. ``stop()`` ends it with its workers, which BentoML runs in sessions of their own.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from core import processes
from core.processes import HOST, free_port

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "service:ModelService"
# Settings from the environment that would override the service.yaml given to the launcher.
OVERRIDES = ("MODELPACK_TRITON_URL", "MODELPACK_REPOSITORY")


class BentoServer:
    """One ``bentoml serve`` of the project's service (and its workers) on 127.0.0.1.

    ``start()`` picks a free port and waits until ``/readyz`` answers 200 (``ready=False``: ``/healthz``,
    the process is up whether or not Triton is); it raises Unavailable with the end of the server's log
    when the server exits first or does not get there in time, and leaves nothing running then.
    """

    def __init__(
        self,
        config: str | os.PathLike,
        home: str | os.PathLike,
        log_path: str | os.PathLike,
        *,
        root: str | os.PathLike = ROOT,
        die_with_parent: bool = False,
    ) -> None:
        self.config = Path(config)
        self.home = Path(home)
        self.log_path = Path(log_path)
        self.root = Path(root)
        # Linux SIGTERMs the server when the thread that starts it ends: the tests' and the benchmarks'
        # servers go with a runner killed outright (SIGKILL, a CI timeout), leaving no orphan.
        self.die_with_parent = die_with_parent
        self.port: int | None = None
        self.ready_after_s: float | None = None  # how long the latest start() waited
        self._child: processes.Child | None = None
        self._client = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        """``bentoml serve``'s pid (the leader of its process group; the workers are below it)."""
        return self._child.pid if self._child else None

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.alive()

    def cpu_times(self) -> dict[int, float]:
        """CPU seconds used so far by each process of the server (``bentoml serve`` and its workers),
        by pid; what serving costs per request is the difference over a load test."""
        return self._child.cpu_times() if self.running else {}

    @property
    def client(self):
        """A pooled ``httpx.Client`` (thread-safe) for requests to the server: a new client per request
        costs ~80 ms here."""
        import httpx

        if self._client is None:
            self._client = httpx.Client(base_url=self.url, timeout=30)
        return self._client

    def command(self) -> list[str]:
        bentoml = str(Path(sys.executable).parent / "bentoml")
        port = str(self.port)
        return [bentoml, "serve", SERVICE, "--host", HOST, "--port", port, "--working-dir", str(self.root)]

    def environment(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if key not in OVERRIDES}
        env["MODELPACK_SERVICE_CONFIG"] = str(self.config)
        env["BENTOML_HOME"] = str(self.home)
        env["BENTOML_DO_NOT_TRACK"] = "True"
        return env

    def start(self, timeout: float = 90.0, *, ready: bool = True) -> BentoServer:
        """Start the server and wait until ``/readyz`` (``ready=False``: ``/healthz``) answers 200."""
        if self.running:
            return self
        self.port = free_port()
        self._child = processes.start(
            "bentoml serve",
            self.command(),
            log_path=self.log_path,
            env=self.environment(),
            cwd=self.root,
            die_with_parent=self.die_with_parent,
        )
        probe = f"{self.url}/readyz" if ready else f"{self.url}/healthz"
        try:
            self.ready_after_s = self._child.wait_ready(probe, timeout)
        except BaseException:  # not ready, Ctrl-C or SIGTERM: nothing is left running
            self.stop()
            raise
        log.info("bentoml serve ready at %s after %.1f s", self.url, self.ready_after_s)
        return self

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the server, SIGKILL what is left of it (workers included) after ``timeout``; return
        once none of it runs."""
        if self._client is not None:
            self._client.close()
            self._client = None
        child, self._child = self._child, None
        if child is not None:
            child.stop(grace_s=timeout)

    def __enter__(self) -> BentoServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
