"""A real Triton Inference Server on this machine: no Docker, no GPU.

``TritonServer`` runs ``.triton/bin/tritonserver`` (Triton 2.51.0 from the nvidia-pytriton wheel, put
there by ``local_triton/setup.sh``) on 127.0.0.1 with explicit model control. Models whose config
says ``platform: "onnxruntime_onnx"`` run through the python-based backend in
``.triton/backends/onnxruntime/model.py``, inside ``.venv-triton`` (numpy<2), so the repository that
NVIDIA's Triton image serves in production loads here unchanged.

    with TritonServer("model_repository") as server:       # free ports, every model loaded
        client = tritonclient.grpc.InferenceServerClient(server.grpc_url)

The server runs in its own process group (the python backend's stub processes included): ``stop()``
ends the whole group and waits until none of it is left (``core.processes`` does that work). ``stop()``
then ``start()`` restarts it on the same ports, and ``kill()`` simulates a crash, for tests of clients
that must survive one.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from core import processes
from core.errors import MissingDependency, NotFound, Unavailable
from core.processes import HOST, check_port_free, free_port
from core.repository import Repository

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
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

    def check(self) -> Installation:
        """Raise MissingDependency naming the first missing piece and how to get it."""
        needed = [
            (self.binary, "the tritonserver binary"),
            (self.backends / "python" / "libtriton_python.so", "Triton's python backend"),
            (self.backends / "python" / "triton_python_backend_stub", "the python backend stub"),
            (self.backends / "onnxruntime" / "model.py", "the python-based onnxruntime backend"),
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


# Lines of Triton's log that say why it did not come up, most specific first.
_FAILURE_PATTERNS = (
    re.compile(r"failed to load '([^']+)' version (\d+): (.+?)\"?$"),
    re.compile(r"(failed to start \w+ service: .+?)\"?$"),
    re.compile(r"\] \"?(.*already in use.*?)\"?$", re.IGNORECASE),
    re.compile(r"^E\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] \"?(.+?)\"?$"),
    re.compile(r"^error: (.+)$"),
)


# Lines Triton 2.51 prints at every start on a machine without a GPU, then carries on: never the reason
# it stopped.
_HARMLESS = (
    "CudaDriverHelper has not been initialized",
    "Failed to initialize NVML",
    "DCGM unable to start",
    "Unable to allocate pinned system memory",
    "Unable to find CUDA",
    "unable to create stream",
)


def failure_reason(log_text: str) -> str | None:
    """The one line of a Triton log that explains a failed start, or None (lines Triton prints at every
    CPU-only start are not reasons)."""
    lines = [line for line in log_text.splitlines() if not any(h in line for h in _HARMLESS)]
    for pattern in _FAILURE_PATTERNS:
        for line in lines:
            match = pattern.search(line)
            if match is None:
                continue
            if pattern is _FAILURE_PATTERNS[0]:
                name, version, why = match.groups()
                return f"model {name!r} version {version} failed to load: {_first_line(why)}"
            return _first_line(match.group(1))
    return None


def _first_line(message: str) -> str:
    """Triton quotes multi-line errors with literal ``\\n``: keep the first line (no traceback)."""
    return message.split("\\n", 1)[0].strip()


class TritonServer:
    """One tritonserver process (and its stubs) serving ``repository`` on 127.0.0.1.

    Ports left as None are picked free at the first ``start()`` and kept, so a restart comes back on
    the same addresses. ``models=None`` loads every model of the repository; a list loads those only
    (explicit model control either way: ``load``/``unload`` change what is served without a restart).
    """

    def __init__(
        self,
        repository: str | os.PathLike,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        models: Iterable[str] | None = None,
        log_path: str | os.PathLike | None = None,
        *,
        root: str | os.PathLike | None = None,
        exit_timeout_s: int = 5,
        die_with_parent: bool = False,
        extra_args: Iterable[str] = (),
    ) -> None:
        self.repository = Path(repository).resolve()
        if not self.repository.is_dir():
            raise NotFound(
                f"repository: {self.repository} is not a directory; convert a model first "
                "(python -m converters hf PATH --name NAME) or pass --repository DIR",
                field="repository",
            )
        self.install = Installation(Path(root).resolve() if root else ROOT)
        self.models = None if models is None else list(models)
        self.log_path = Path(log_path).resolve() if log_path else None
        self.exit_timeout_s = exit_timeout_s
        self.die_with_parent = die_with_parent
        self.extra_args = list(extra_args)
        self._requested = {"http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port}
        self.http_port = self.grpc_port = self.metrics_port = None
        self._child: processes.Child | None = None
        self._log_offset = 0  # where the latest start's output begins in the (appended) log

    # ---- addresses ----------------------------------------------------------------------------------

    @property
    def http_url(self) -> str:
        return f"{HOST}:{self._port('http_port')}"

    @property
    def grpc_url(self) -> str:
        return f"{HOST}:{self._port('grpc_port')}"

    @property
    def metrics_url(self) -> str:
        """``127.0.0.1:P``: Prometheus metrics are at ``http://{metrics_url}/metrics``."""
        return f"{HOST}:{self._port('metrics_port')}"

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child else None

    @property
    def returncode(self) -> int | None:
        return self._child.returncode if self._child else None

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.alive()

    def cpu_times(self) -> dict[int, float]:
        """CPU seconds (user + system) used so far by each process of the server (tritonserver and its
        stubs), by pid. Over a load test, ``cpu_delta(before)`` divided by the items served is what
        serving costs per item."""
        return self._child.cpu_times() if self.running else {}

    def cpu_delta(self, before: dict[int, float]) -> float:
        """CPU seconds the server used since ``before = cpu_times()``; a stub started since then (a
        model reloaded) counts from zero, one that ended since then is left out."""
        return sum(now - before.get(pid, 0.0) for pid, now in self.cpu_times().items())

    def _port(self, which: str) -> int:
        port = getattr(self, which)
        if port is None:
            raise Unavailable(
                f"the Triton server has not been started, so it has no {which} yet; call start()"
            )
        return port

    # ---- life cycle ---------------------------------------------------------------------------------

    def command(self) -> list[str]:
        args = [
            str(self.install.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={self.install.backends}",
            "--model-control-mode=explicit",
            f"--http-address={HOST}",
            f"--grpc-address={HOST}",
            f"--metrics-address={HOST}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            # CPU only: no pinned (CUDA host) memory pool to allocate.
            "--pinned-memory-pool-byte-size=0",
            "--log-info=true",
        ]
        if self.models is None:
            args.append("--load-model=*")
        else:
            args.extend(f"--load-model={name}" for name in self.models)
        return args + self.extra_args

    def start(self, timeout: float = 120.0) -> TritonServer:
        """Start the server and wait until it and its models are ready; raise on failure."""
        if self.running:
            return self
        self.install.check()
        # Triton follows symlinks: a model or version folder linked outside the repository is refused
        # (UnsafeInput naming it) before anything starts.
        Repository(self.repository).check_links()
        auto = self.http_port is None
        for attempt in range(3):
            self._assign_ports()
            try:
                self._spawn()
                self.wait_ready(timeout)
                return self
            except Unavailable as err:
                self.stop()
                port_clash = "already in use" in str(err) or "Address in use" in str(err)
                if auto and port_clash and attempt < 2:  # lost a race for a free port: pick new ones
                    log.warning("port taken while starting (%s); retrying on other ports", err)
                    self.http_port = self.grpc_port = self.metrics_port = None
                    continue
                raise
            except BaseException:  # Ctrl-C or SIGTERM while waiting: no half-started server is left
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _assign_ports(self) -> None:
        for which in ("http_port", "grpc_port", "metrics_port"):
            if getattr(self, which) is not None:  # a restart keeps its ports
                continue
            wanted = self._requested[which]
            flag = "--" + which.replace("_", "-")
            setattr(self, which, free_port() if not wanted else check_port_free(wanted, flag))

    def _spawn(self) -> None:
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        log.info(
            "starting tritonserver: http %s, grpc %s, metrics %s, repository %s, log %s",
            self.http_port,
            self.grpc_port,
            self.metrics_port,
            self.repository,
            self.log_path,
        )
        # A session of its own: stop() ends the server and every stub it spawned (MissingDependency
        # when the binary cannot be run, e.g. it is there but not executable).
        self._child = processes.start(
            "tritonserver",
            self.command(),
            log_path=self.log_path,
            env=self.install.environment(),
            cwd=self.repository,
            die_with_parent=self.die_with_parent,
            hint=SETUP_HINT,
        )
        self._log_offset = self._child.log_offset
        atexit.register(self.stop)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until /v2/health/ready answers 200 and every model asked for is ready; Unavailable
        with the log line that says why when the server exits first or ``timeout`` passes."""
        if self._child is None:
            raise Unavailable("the Triton server has not been started; call start()")
        self._child.wait_ready(self._ready, timeout, explain=self.explain)

    def _ready(self) -> bool:
        paths = ["health/ready", *(f"models/{name}/ready" for name in self.models or [])]
        return all(processes.HttpProbe(f"http://{self.http_url}/v2/{path}")() for path in paths)

    def explain(self, what: str) -> str:
        """``tritonserver <what>: <the log line that says why> (log: PATH)``."""
        text = self.log_text()
        reason = failure_reason(text)
        if reason is None and "SIGSEGV" in what:
            # Seen with Triton 2.51 of the pytriton wheel: a model whose warm-up request fails takes the
            # whole server down (NVIDIA's image fails that model's load instead), with no log line.
            reason = (
                "no log line says why; this Triton build crashes so when a model's warm-up request "
                "fails: check the model_warmup of the models it loads"
            )
        return f"tritonserver {what}" + (f": {reason}" if reason else "") + f" (log: {self.log_path})"

    def log_text(self) -> str:
        """What this server wrote to its log since it was last started."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as handle:
            handle.seek(self._log_offset)
            return handle.read().decode("utf-8", "replace")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the process group, SIGKILL what is left of it after ``timeout``; return once none of
        it is left. Shared memory the server left behind (it was killed) is removed."""
        atexit.unregister(self.stop)
        child, self._child = self._child, None
        if child is not None:
            regions = _shared_memory_of(child.family())
            child.stop(grace_s=timeout)
            _remove(regions)

    def kill(self) -> None:
        """SIGKILL the server and its stubs at once, as a crash would (ports are kept for start()); then
        remove the shared memory regions they had mapped, which a killed server cannot remove itself
        (the python backend's /dev/shm/triton_*: this server's only, read from its processes' maps)."""
        atexit.unregister(self.stop)
        child, self._child = self._child, None
        if child is not None:
            regions = _shared_memory_of(child.family())
            child.kill()
            _remove(regions)

    def restart(self, timeout: float = 120.0) -> TritonServer:
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- model control and statistics (tritonclient over HTTP) --------------------------------------

    def client(self):
        """A tritonclient HTTP client for this server; close it (``with server.client() as c:``): Triton
        waits up to ``exit_timeout_s`` for open HTTP connections when it stops. Each call has a deadline
        (``CALL_TIMEOUT_S``): a stalled server fails the call instead of hanging its caller."""
        return _client(self.http_url, connection_timeout=10.0)

    def load(self, name: str, config: dict | None = None, *, timeout_s: float = None) -> list[str]:
        """(Re)load a model: versions come and go by its version_policy. Returns the ready versions;
        Unavailable naming the model, the version and Triton's last log line about it when the load
        does not finish within ``timeout_s`` (default ``LOAD_TIMEOUT_S``)."""
        try:
            return load_model(
                self.http_url,
                name,
                config=config,
                timeout_s=timeout_s or LOAD_TIMEOUT_S,
                log_path=self.log_path,
            )
        except Unavailable as err:
            if "did not finish loading" not in str(err):
                raise
            # The evidence for the next stalled load: which stubs exist (one per loaded version and
            # instance) and what state each process is in (S sleeping, R running, D disk, Z zombie).
            raise Unavailable(f"{err}; its processes: {self.processes()}") from None

    def processes(self) -> str:
        """``tritonserver 123 S, stub image_classifier/1/model.onnx 456 S, ...``: the server's family."""
        import psutil

        described = []
        for pid, proc in sorted(self._child.family().items() if self._child else []):
            try:
                argv = proc.cmdline()
                status = proc.status()
            except psutil.Error:
                continue
            if "triton_python_backend_stub" in " ".join(argv[:1]):
                what = "stub " + "/".join(Path(argv[1]).parts[-3:]) if len(argv) > 1 else "stub"
            else:
                what = Path(argv[0]).name if argv else "?"
            described.append(f"{what} {pid} {status}")
        return ", ".join(described) or "none"

    def unload(self, name: str) -> None:
        unload_model(self.http_url, name)

    def index(self) -> list[dict]:
        return repository_index(self.http_url)

    def statistics(self, name: str, version: str = "") -> dict:
        """Triton's inference statistics of a model (inference_count, execution_count, ...)."""
        with self.client() as client:
            return client.get_inference_statistics(name, version)


def _shared_memory_of(pids: Iterable[int]) -> set[Path]:
    """The /dev/shm/triton_* files mapped by those processes: the python backend's regions, one per
    stub, which the server removes when it stops normally and leaves behind when it is killed."""
    found = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:  # gone meanwhile
            continue
        for line in maps.splitlines():
            path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
            if path.startswith("/dev/shm/triton_"):
                found.add(Path(path.removesuffix(" (deleted)")))
    return found


def _remove(regions: Iterable[Path]) -> None:
    for region in regions:
        try:
            region.unlink(missing_ok=True)
        except OSError as err:
            log.warning("could not remove %s left by tritonserver: %s", region, err)


# ---- against any running server (the CLI's status/load/unload) ---------------------------------------

# Deadlines of the calls to a server, well under pytest's 600 s and a CI job's patience: a model loads
# here in 1-11 s (the slowest on a saturated 2-core machine), any other call answers at once. A load
# that is still running at its deadline is reported as stalled (load_model), never waited for without
# end: Triton 2.51's python backend can stall a load for good (docs/local-triton.md).
LOAD_TIMEOUT_S = 120.0
CALL_TIMEOUT_S = 30.0


def _client(url: str, connection_timeout: float = 5.0, network_timeout: float = CALL_TIMEOUT_S):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(
        url, network_timeout=network_timeout, connection_timeout=connection_timeout
    )


def _unreachable(url: str, err: Exception) -> Unavailable:
    return Unavailable(
        f"no Triton server answers at {url} ({err}); start one with `python -m converters serve` "
        "or pass --url HOST:PORT (its HTTP port)"
    )


@contextlib.contextmanager
def _connection(url: str, network_timeout: float = CALL_TIMEOUT_S) -> Iterator:
    """A client for the server at ``url``, closed after use; no answer at all is Unavailable, saying how
    to start a server or point at one, and so is a call past its deadline."""
    client = _client(url, network_timeout=network_timeout)
    try:
        yield client
    except TimeoutError as err:
        raise Unavailable(
            f"the Triton server at {url} did not answer within {network_timeout:.0f} s ({err}); it is up "
            "but stalled: see its log, or restart it"
        ) from err
    except (OSError, ConnectionError) as err:
        raise _unreachable(url, err) from err
    finally:
        client.close()


def server_status(url: str) -> dict:
    """Liveness, readiness, version and the repository index of the server at ``url`` (HTTP)."""
    from tritonclient.utils import InferenceServerException

    with _connection(url) as client:
        try:
            metadata = client.get_server_metadata()
            return {
                "url": url,
                "live": client.is_server_live(),
                "ready": client.is_server_ready(),
                "version": metadata.get("version"),
                "models": client.get_model_repository_index(),
            }
        except InferenceServerException as err:
            raise _unreachable(url, err) from err


def repository_index(url: str) -> list[dict]:
    return server_status(url)["models"]


def load_model(
    url: str,
    name: str,
    config: dict | None = None,
    *,
    timeout_s: float = LOAD_TIMEOUT_S,
    log_path: str | os.PathLike | None = None,
) -> list[str]:
    """Ask the server to (re)load ``name``; returns the versions now READY, raises with Triton's reason.
    A load still running after ``timeout_s`` is Unavailable naming the model, the version(s) being
    loaded and the last line of the server's log (``log_path``) about the model; the server keeps
    serving the versions it served (Triton swaps versions only once the new ones are ready).

    A text entry whose ensemble ``NAME_text`` is in the server's repository is (re)loaded through the
    ensemble: Triton then loads the changed ``NAME`` and ``NAME_tokenizer`` first and the ensemble once
    both are ready, in one request (a ``config`` override applies to ``name`` alone)."""
    from tritonclient.utils import InferenceServerException

    from core.companions import text_name

    with _connection(url, network_timeout=timeout_s) as client:
        try:
            target = name
            if config is None:
                index = {m["name"] for m in client.get_model_repository_index()}
                if text_name(name) in index:
                    target = text_name(name)
            client.load_model(target, config=json.dumps(config) if config is not None else None)
        except TimeoutError:
            raise Unavailable(stalled_load(url, name, timeout_s, log_path)) from None
        except InferenceServerException as err:
            message = err.message() or str(err)
            if "no such file" in message.lower() or "not found" in message.lower():
                raise NotFound(
                    f"model {name!r}: not in the server's repository ({message})", field="name"
                ) from None
            raise Unavailable(f"model {target!r} failed to load: {message}") from None
        try:
            index = client.get_model_repository_index()
        except InferenceServerException as err:
            raise Unavailable(
                f"model {name!r} loaded, but the server did not list its versions: {err.message() or err}"
            ) from None
    return sorted((m["version"] for m in index if m["name"] == name and m.get("state") == "READY"), key=int)


def stalled_load(url: str, name: str, timeout_s: float, log_path: str | os.PathLike | None) -> str:
    """The error of a load past its deadline: the model, the version(s) Triton was loading, and its log
    lines that started the load and that last mention the model (from the log's end)."""
    lines = _log_tail(log_path).splitlines()
    loading = re.compile(rf"loading: {re.escape(name)}:(\d+)\b")
    last_load = max((i for i, line in enumerate(lines) if loading.search(line)), default=None)
    versions: list[str] = []
    if last_load is not None:  # the versions of the latest load: its "loading:" lines come together
        first = last_load
        while first > 0 and loading.search(lines[first - 1]):
            first -= 1
        versions = [loading.search(line).group(1) for line in lines[first : last_load + 1]]
    about = [line.strip() for line in lines if name in line]
    what = f"version{'s' if len(versions) > 1 else ''} {', '.join(versions)}" if versions else "it"
    message = (
        f"model {name!r}: Triton did not finish loading {what} within {timeout_s:.0f} s (server {url}); "
        "the versions it served before are still served (Triton swaps versions only once the new ones "
        "are ready)"
    )
    if about:
        said = [lines[last_load].strip()] if last_load is not None else []
        if about[-1] not in said:
            said.append(about[-1])
        message += f"; its log ({log_path}) says: " + " ... ".join(_shorten(line) for line in said)
    elif log_path:
        message += f"; its log: {log_path}"
    return message + "; unload the model or restart the server to try again"


def _log_tail(log_path: str | os.PathLike | None, size: int = 256 * 1024) -> str:
    if not log_path:
        return ""
    try:
        with open(log_path, "rb") as handle:
            handle.seek(max(0, os.path.getsize(log_path) - size))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _shorten(line: str, limit: int = 300) -> str:
    return line if len(line) <= limit else line[: limit - 3] + "..."


def unload_model(url: str, name: str) -> None:
    from tritonclient.utils import InferenceServerException

    with _connection(url) as client:
        try:
            index = client.get_model_repository_index()
            if name not in {m["name"] for m in index}:
                known = sorted({m["name"] for m in index}) or ["(none)"]
                raise NotFound(
                    f"model {name!r} is not in the server's repository; it has {', '.join(known)}",
                    field="name",
                )
            client.unload_model(name)
            deadline = time.monotonic() + 60  # unloading waits for in-flight requests; report when done
            while any(
                m["name"] == name and m.get("state") not in ("UNAVAILABLE", None)
                for m in client.get_model_repository_index()
            ):
                if time.monotonic() > deadline:
                    raise Unavailable(f"model {name!r} was still unloading after 60s")
                time.sleep(0.1)
        except InferenceServerException as err:
            raise Unavailable(f"model {name!r} failed to unload: {err.message() or err}") from None
