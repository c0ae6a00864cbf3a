"""Peers: the servers a user would pick instead of ours, started on the same machine and the same model.

- ``infinity``: Infinity 0.0.78 (``infinity_emb v2 --engine optimum``) on an optimum export of the
  entry's source model (``optimum-cli export onnx --task feature-extraction``: Infinity's ONNX engine
  wants a ``last_hidden_state`` output, which our pooled ``model.onnx`` does not have). It must be
  started from inside the export's folder with ``--model-id .`` (it refuses an absolute path), with
  ``--pooling-method mean`` (``auto`` picks CLS for MiniLM) and ``HF_HUB_OFFLINE=1``. The export is
  cached under ``.cache/peers/`` by the source's checksum. Its OpenAI-style route ``POST /embeddings``
  is driven by ``locustfile.py:InfinityUser``.
- ``litserve``: LitServe 0.2.19 + ONNX Runtime on the entry's own ``model.onnx`` (``litserve_server.py``),
  answering the Bento's own ``/embed`` route and body, driven by ``BentoUser``.

Each runs in a venv of its own under ``.venv-peers/`` (``make peers``; their pins conflict with ours).
A peer whose venv is missing raises ``MissingDependency`` naming ``make peers``: the run records it as
skipped and goes on.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from core.errors import CheckFailed, MissingDependency
from core.processes import free_port
from core.repository import Repository

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent.parent
VENVS = ROOT / ".venv-peers"
# Where the peers' venvs are looked for instead (tests point it at an empty folder).
VENVS_ENV = "MODELPACK_PEER_VENVS"
CACHE = ROOT / ".cache" / "peers"
PEERS = ("infinity", "litserve")
# Seconds a peer may take to answer /health (Infinity loads torch, optimum and the model: ~60 s on a
# loaded 2-core machine).
READY_TIMEOUT_S = 180
EXPORT_TIMEOUT_S = 300


@dataclass(frozen=True)
class PeerServer:
    """A started peer: its URL, the Locust user class that speaks its API, and its process (whose
    family's CPU time the run divides by the requests served, as for the Bento and Triton)."""

    name: str
    url: str
    user_class: str
    child: object

    def cpu_times(self) -> dict[int, float]:
        return self.child.cpu_times()


def venv_python(peer: str) -> Path:
    """The peer's venv interpreter, or MissingDependency that says how to create it."""
    venvs = Path(os.environ.get(VENVS_ENV) or VENVS)
    python = venvs / peer / "bin" / "python"
    if not (venvs / peer / ".installed").is_file() or not python.exists():
        raise MissingDependency(
            f"{peer}: its venv {venvs / peer} is missing; run `make peers` (it pip installs "
            f"benchmarks/peers/requirements-{peer}.txt into a venv of its own)"
        )
    return python


def start(procs, peer: str, repo: Repository, model: str, out: Path) -> PeerServer:
    """Start ``peer`` serving ``model``'s latest version, wait until it answers, return where."""
    python = venv_python(peer)
    version = repo.require(model)
    folder = repo.version_dir(model, version)
    port = free_port()
    log_path = out / "logs" / f"{peer}.log"
    if peer == "litserve":
        argv = [str(python), str(ROOT / "benchmarks" / "peers" / "litserve_server.py")]
        argv += ["--model-dir", str(folder), "--port", str(port)]
        child = procs.start(peer, argv, log_path=log_path, cwd=ROOT, die_with_parent=True)
        user = "BentoUser"
    elif peer == "infinity":
        export = optimum_export(python, repo, model, out)
        argv = [str(python.parent / "infinity_emb"), "v2", "--model-id", ".", "--served-model-name", model]
        argv += ["--engine", "optimum", "--pooling-method", "mean", "--batch-size", "32"]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--no-model-warmup"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
        child = procs.start(peer, argv, log_path=log_path, cwd=export, env=env, die_with_parent=True)
        user = "InfinityUser"
    else:
        raise MissingDependency(f"{peer}: not a peer; choose from {', '.join(PEERS)}")
    url = f"http://127.0.0.1:{port}"
    waited = child.wait_ready(f"{url}/health", timeout_s=READY_TIMEOUT_S)
    log.info("%s ready at %s after %.1f s", peer, url, waited)
    return PeerServer(peer, url, user, child)


def optimum_export(python: Path, repo: Repository, model: str, out: Path) -> Path:
    """The entry's source model exported by optimum for Infinity's ONNX engine, cached by the
    source's checksum (the manifest's ``source.sha256``)."""
    manifest = repo.manifest(model)
    source = Path(manifest["source"]["path"])
    if not source.is_dir():
        raise CheckFailed(
            f"{model}: Infinity serves the Hugging Face source model, and {source} (manifest source.path) "
            "is not a folder"
        )
    target = CACHE / f"infinity-{model}-{manifest['source'].get('sha256', 'unknown')[:16]}"
    if (target / "model.onnx").is_file():
        return target
    from benchmarks.loadgen import log_tail, run_logged

    staging = target.with_name(target.name + ".partial")
    staging.parent.mkdir(parents=True, exist_ok=True)
    argv = [str(python.parent / "optimum-cli"), "export", "onnx", "--model", str(source)]
    argv += ["--task", "feature-extraction", "--library-name", "transformers", str(staging)]
    log_path = out / "logs" / "infinity-export.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = run_logged(argv, log_path, EXPORT_TIMEOUT_S, f"optimum export of {model} took over 300 s", env=env)
    if done.returncode != 0 or not (staging / "model.onnx").is_file():
        raise CheckFailed(
            f"optimum export of {model} failed (exit {done.returncode}):\n{log_tail(log_path, 10)}"
        )
    staging.rename(target)
    return target
