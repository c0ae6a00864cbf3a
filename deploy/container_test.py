"""The container test (`make container-test`, ``python -m deploy.images test``): both images of
``make images`` in one podman pod, checked end to end against a real model repository.

The pod runs them as the Kubernetes pods do (read-only root filesystem, every capability dropped, no
privilege escalation, the repository exported for CPU nodes as the clusters serve it and mounted
read-only at /models, the Bento's service.yaml mounted where the ConfigMap is) and publishes its
ports on 127.0.0.1 only. Every wait has a deadline; a container that stops fails its wait at once with
its last log lines. Both images' own HEALTHCHECKs run; ``/embed`` goes to the Bento and a
``tritonclient`` gRPC request to Triton, and every embedding is compared with sentence-transformers on
the source model (cosine >= 0.9999). The pod and everything in it is removed on the way out, also when
a step fails or the process is stopped; pods a killed test left behind go at the next start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import CheckFailed, NotFound, Unavailable
from deploy.images import image_names
from deploy.podman import ROOT, image_labels, podman

log = logging.getLogger(__name__)

BENTO_PORT = 3000
TRITON_PORTS = {"http": 8000, "grpc": 8001}
POD_LABEL = "io.modelpack.container-test.pid"
# The texts the container test embeds: a short, a longer, and a non-ASCII one.
TEST_TEXTS = (
    "A container runs the model.",
    "Triton serves the ONNX export of MiniLM while the Bento tokenizes, validates and routes the "
    "request; both run from images built on this machine.",
    "Déjà vu: les conteneurs démarrent en quelques secondes.",
)
MIN_COSINE = 0.9999


@dataclass
class ContainerTestResult:
    """What ``test`` measured: readiness after ``podman run``, first requests, agreement with
    sentence-transformers (the smallest cosine over the test texts) for both paths."""

    images: dict[str, str]
    triton_ready_s: float
    bento_ready_s: float
    first_embed_ms: float
    first_grpc_ms: float
    cosine_bento: float
    cosine_triton: float
    healthy: dict[str, bool] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (
            min(self.cosine_bento, self.cosine_triton) >= MIN_COSINE
            and bool(self.healthy)
            and all(self.healthy.values())
        )

    def line(self) -> str:
        status = "ok" if self.passed else "FAILED"
        health = ", ".join(f"{k} {'healthy' if v else 'UNHEALTHY'}" for k, v in self.healthy.items())
        return (
            f"container-test: {status}: /embed cosine {self.cosine_bento:.6f}, Triton gRPC cosine "
            f"{self.cosine_triton:.6f} (min over {len(TEST_TEXTS)} texts vs sentence-transformers, need "
            f">= {MIN_COSINE}); ready after podman run: Triton {self.triton_ready_s:.1f} s, Bento "
            f"{self.bento_ready_s:.1f} s; first request: /embed {self.first_embed_ms:.0f} ms, gRPC "
            f"{self.first_grpc_ms:.0f} ms; {health}"
        )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_pods() -> None:
    """Pods a killed earlier test left behind (their creating process is gone)."""
    done = podman(
        "pod", "ps", "--filter", f"label={POD_LABEL}", "--format", "{{.Name}} {{.Labels}}", check=False
    )
    for line in done.stdout.splitlines():
        name = line.split()[0]
        found = re.search(rf"{re.escape(POD_LABEL)}:(\d+)", line)
        if found and not _pid_alive(int(found.group(1))):
            log.info("removing pod %s left by a test that is gone", name)
            podman("pod", "rm", "--force", "--time", "5", name, check=False, timeout=120)


@contextlib.contextmanager
def pod(ports: dict[int, int]) -> Iterator[str]:
    """A pod whose container ports are published on 127.0.0.1 (``ports``: container -> host);
    removed with every container in it on the way out, whatever happened."""
    name = f"modelpack-ct-{os.getpid()}-{int(time.time())}"
    argv = ["pod", "create", "--name", name, "--label", f"{POD_LABEL}={os.getpid()}"]
    for inside, outside in ports.items():
        argv += ["--publish", f"127.0.0.1:{outside}:{inside}"]
    try:
        podman(*argv)  # inside: a stop while podman creates it still removes what it made
        yield name
    finally:
        podman("pod", "rm", "--force", "--time", "10", name, check=False, timeout=180)
        if podman("pod", "exists", name, check=False).returncode == 0:
            log.error("pod %s could not be removed: `podman pod rm -f %s`", name, name)


def run_container(pod_name: str, role: str, image: str, options: list[str]) -> tuple[str, float]:
    """``podman run -d`` in the pod with the Kubernetes pods' restrictions; (name, start time)."""
    name = f"{pod_name}-{role}"
    start = time.perf_counter()
    podman(
        "run",
        "--detach",
        "--pod",
        pod_name,
        "--name",
        name,
        "--read-only",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        # The test runs the image's HEALTHCHECK itself (`podman healthcheck run`): no systemd timer.
        "--health-interval=disable",
        *options,
        image,
        timeout=120,
    )
    return name, start


def container_state(name: str) -> str:
    done = podman("container", "inspect", "--format", "{{.State.Status}}", name, check=False)
    return done.stdout.strip() or "gone"


def container_logs(name: str, lines: int = 15) -> str:
    """The last lines the container wrote, stdout and stderr in their order."""
    done = podman(
        "logs",
        "--tail",
        str(lines),
        name,
        check=False,
        capture_output=False,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return (done.stdout or "").strip()


def wait_ready(url: str, container: str, start: float, deadline_s: float) -> float:
    """Seconds from ``start`` until GET ``url`` answers 200; Unavailable at the deadline or as soon as
    the container stops, with its last log lines."""
    import httpx

    limit = start + deadline_s
    last = "no answer"
    checked = 0.0
    while time.perf_counter() < limit:
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == 200:
                return time.perf_counter() - start
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as err:
            last = type(err).__name__
        if time.perf_counter() - checked > 1:
            checked = time.perf_counter()
            state = container_state(container)
            if state != "running":
                raise Unavailable(
                    f"{container} is {state} before {url} was ready:\n{container_logs(container)}"
                )
        time.sleep(0.1)
    raise Unavailable(
        f"{url} not ready {deadline_s:.0f} s after podman run (last: {last}); {container} says:\n"
        f"{container_logs(container)}"
    )


def healthcheck(container: str) -> bool:
    """The image's own HEALTHCHECK, run once in the container."""
    return podman("healthcheck", "run", container, check=False, timeout=60).returncode == 0


def prepare_repository(work: Path, source: Path | None) -> tuple[Path, list[str]]:
    """The repository the pod mounts: ``source`` (or a fresh MiniLM conversion) exported for CPU nodes,
    as the clusters serve it (``deploy.release export --target cpu``), readable by the images' users."""
    if source is None:
        source = work / "converted"
        done = subprocess.run(
            [sys.executable, "-m", "converters", "hf", "--name", "minilm", "--repository", str(source)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if done.returncode != 0:
            raise CheckFailed(
                f"python -m converters hf --name minilm: exit {done.returncode}: {done.stderr.strip()[-800:]}"
            )
    from deploy.release import export

    exported = export(source, work / "models", "cpu")
    for path in [work, *work.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return work / "models", list(exported.models)


def service_config(work: Path, models: list[str]) -> Path:
    """service.yaml for the Bento container, mounted where the Kubernetes ConfigMap is: the project's
    own file with the entries of ``models`` only, Triton at 127.0.0.1 (same pod), repository /models."""
    import yaml

    settings = yaml.safe_load((ROOT / "service.yaml").read_text(encoding="utf-8"))
    settings["models"] = [m for m in settings["models"] if m["name"] in models]
    if not any(m.get("task") == "feature-extraction" for m in settings["models"]):
        raise NotFound(
            f"--repository: no feature-extraction entry of service.yaml among {models}", field="repository"
        )
    folder = work / "config"
    folder.mkdir()
    (folder / "service.yaml").write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    folder.chmod(0o755)
    (folder / "service.yaml").chmod(0o644)
    return folder


def reference_embeddings(entry: Path) -> tuple[object, str]:
    """sentence-transformers on the model the entry was converted from (its manifest's source)."""
    from sentence_transformers import SentenceTransformer

    manifest = json.loads((entry / "manifest.json").read_text(encoding="utf-8"))
    source = manifest["source"]["path"] if isinstance(manifest.get("source"), dict) else manifest["source"]
    model = SentenceTransformer(str(source), device="cpu")
    return model.encode(list(TEST_TEXTS), normalize_embeddings=True), str(source)


def min_cosine(got, want) -> float:
    import numpy as np

    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise CheckFailed(f"embeddings of shape {got.shape}, sentence-transformers gives {want.shape}")
    cos = (got * want).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    return float(cos.min())


def grpc_embeddings(url: str, entry: Path, model: str) -> tuple[object, float]:
    """A tritonclient gRPC request with the entry's own tokenizer, rows padded (the CPU export has no
    ragged batching); (embeddings, milliseconds of the call)."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(entry / "tokenizer" / "tokenizer.json"))
    tokenizer.enable_padding()
    encoded = tokenizer.encode_batch(list(TEST_TEXTS))
    tensors = {
        "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
    }
    inputs = []
    for name, array in tensors.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    with grpcclient.InferenceServerClient(url) as client:
        start = time.perf_counter()
        result = client.infer(model, inputs, client_timeout=60)
        elapsed = (time.perf_counter() - start) * 1000
    return result.as_numpy("embeddings"), elapsed


def latest_version(entry: Path) -> Path:
    return max((p for p in entry.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def bento_options(models_dir: Path, config_dir: Path) -> list[str]:
    """The Bento container as the Kubernetes Deployment runs it: repository and service.yaml mounted
    read-only, BentoML's writable paths on tmpfs (podman's --read-only makes /tmp one), Triton's gRPC
    port in the same pod."""
    env = {
        "MODELPACK_SERVICE_CONFIG": "/etc/modelpack/service.yaml",
        "MODELPACK_TRITON_URL": f"127.0.0.1:{TRITON_PORTS['grpc']}",
        "MODELPACK_REPOSITORY": "/models",
        "HF_HOME": "/tmp/huggingface",
        # No usage report to BentoML: the test's traffic stays on 127.0.0.1.
        "BENTOML_DO_NOT_TRACK": "True",
    }
    options = [
        "--volume",
        f"{models_dir}:/models:ro",
        "--volume",
        f"{config_dir}:/etc/modelpack:ro",
        "--tmpfs",
        "/home/bentoml/prometheus_multiproc_dir:rw,mode=1777",
    ]
    for key, value in env.items():
        options += ["--env", f"{key}={value}"]
    return options


def ask_bento(url: str) -> tuple[list, list, float]:
    """The first request (one text, timed), then all the test texts in one batch."""
    import httpx

    with httpx.Client(base_url=url, timeout=60) as client:
        start = time.perf_counter()
        first = client.post("/embed", json={"text": TEST_TEXTS[0]})
        first_ms = (time.perf_counter() - start) * 1000
        if first.status_code != 200:
            raise CheckFailed(f"POST /embed: HTTP {first.status_code}: {first.text[:300]}")
        batch = client.post("/embed/batch", json={"texts": list(TEST_TEXTS)})
        if batch.status_code != 200:
            raise CheckFailed(f"POST /embed/batch: HTTP {batch.status_code}: {batch.text[:300]}")
    return first.json()["embedding"], batch.json()["embeddings"], first_ms


def container_test(repository: Path | None = None, deadline_s: float = 300) -> ContainerTestResult:
    """Both images in one pod against a real repository; see the module's docstring."""
    images = image_names()
    for role, image in images.items():
        if image_labels(image) is None:
            raise NotFound(f"image {image} ({role}) is not built; run `make images`", field="image")
    if repository is not None and not (repository / "minilm").is_dir():
        raise NotFound(f"--repository: {repository} has no minilm entry", field="repository")
    remove_stale_pods()
    with tempfile.TemporaryDirectory(prefix="modelpack-container-test-") as tmp:
        work = Path(tmp)
        models_dir, models = prepare_repository(work, repository)
        config_dir = service_config(work, models)
        entry = latest_version(models_dir / "minilm")
        ports = {port: free_port() for port in (TRITON_PORTS["http"], TRITON_PORTS["grpc"], BENTO_PORT)}
        with pod(ports) as pod_name:
            triton, started = run_container(
                pod_name,
                "triton",
                images["triton-cpu"],
                ["--volume", f"{models_dir}:/models:ro", "--shm-size=256m"],
            )
            triton_url = f"http://127.0.0.1:{ports[TRITON_PORTS['http']]}/v2/health/ready"
            triton_ready = wait_ready(triton_url, triton, started, deadline_s)
            bento, started = run_container(
                pod_name, "bento", images["bento"], bento_options(models_dir, config_dir)
            )
            bento_url = f"http://127.0.0.1:{ports[BENTO_PORT]}"
            bento_ready = wait_ready(f"{bento_url}/readyz", bento, started, deadline_s)
            healthy = {"triton": healthcheck(triton), "bento": healthcheck(bento)}
            first, batch, first_ms = ask_bento(bento_url)
            grpc_url = f"127.0.0.1:{ports[TRITON_PORTS['grpc']]}"
            triton_vectors, grpc_ms = grpc_embeddings(grpc_url, entry, "minilm")
        reference, _ = reference_embeddings(entry)
        return ContainerTestResult(
            images=images,
            triton_ready_s=triton_ready,
            bento_ready_s=bento_ready,
            first_embed_ms=first_ms,
            first_grpc_ms=grpc_ms,
            cosine_bento=min(min_cosine([first], reference[:1]), min_cosine(batch, reference)),
            cosine_triton=min_cosine(triton_vectors, reference),
            healthy=healthy,
            models=models,
        )
