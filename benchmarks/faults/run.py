"""One run of the fault suite: its own Triton and Bento over a copy of the repository, each section in
turn, ``faults.json`` and ``faults.md`` in the run folder, the goals last.

A section that fails is recorded under ``errors`` (the run goes on with the others); every process
started is stopped on exit, error, Ctrl-C or SIGTERM (``benchmarks.procs.ProcessSet``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import report
from benchmarks.procs import ProcessSet
from core.processes import descendants

log = logging.getLogger(__name__)

SECTIONS = (
    "publish_kills",
    "bad_inputs",
    "fuzz",
    "metrics",
    "blocking",
    "swaps",
    "triton_kill",
    "triton_stop",
)
# The model the load, the swaps and the publish kills use: small, loads in ~2 s, answers in ~2 ms.
SWAP_MODEL = "image_classifier"


@dataclass(frozen=True)
class FaultPlan:
    mode: str
    fuzz_examples: int  # schemathesis cases per operation
    fuzz_time_s: int  # schemathesis time budget
    unknown_paths: int
    blocking_repeats: int
    swaps: int
    clients: int  # concurrent clients of the load
    warm_s: float  # load before a fault
    down_s: float  # Triton dead (kill) or frozen (stop)


PLANS = {
    "full": FaultPlan("full", 200, 600, 1200, 3, 100, 4, 2.0, 4.0),
    "quick": FaultPlan("quick", 5, 30, 200, 1, 4, 2, 1.0, 3.0),
}


@dataclass
class FaultOptions:
    out_dir: Path
    plan: FaultPlan
    repository: Path | None = None
    sections: tuple[str, ...] = SECTIONS
    command: str = "python -m benchmarks faults"


@dataclass
class Stack:
    """The suite's Triton and Bento (Bento ``timeout_s`` sets what counts as hung)."""

    repository: Path
    triton: object
    bento: object
    timeout_s: float
    expected: dict = field(default_factory=dict)
    workers: set[int] = field(default_factory=set)

    def bento_restarted(self) -> bool:
        """The Bento's server or one of its workers is not the process it was at start."""
        return not self.bento.running or set(descendants(self.bento.pid)) != self.workers

    def wait_for_version(self, version: int, timeout_s: float) -> float | None:
        """When the Bento first answered from ``version`` (time.monotonic()), or None."""
        from benchmarks.faults.load import BODY

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            response = self.bento.client.post("/predict", json=BODY)
            if response.status_code == 200 and response.json().get("version") == version:
                return time.monotonic()
            time.sleep(0.05)
        return None


def source_repository(options: FaultOptions) -> Path:
    """--repository, else model_repository/ when it holds both models, else both built by the converters
    into the run folder (the benchmark run's own rules)."""
    from benchmarks.plans import PLANS as BENCH_PLANS
    from benchmarks.run import Run, RunOptions
    from benchmarks.workloads import get_workloads

    builder = Run(
        RunOptions(
            out_dir=options.out_dir,
            plan=BENCH_PLANS["quick"],
            workloads=get_workloads(None),
            repository=options.repository,
        )
    )
    return builder.repository().root


def linked_copy(source: Path, target: Path) -> None:
    """A copy of the repository whose files are hard links where the filesystem allows (a publish never
    writes into an existing file), plain copies elsewhere."""

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link_or_copy, ignore=shutil.ignore_patterns(".*"))


def start_stack(procs: ProcessSet, repository: Path, out: Path) -> Stack:
    import yaml

    from benchmarks.faults.load import reference
    from local_triton.server import TritonServer
    from serving.launcher import BentoServer

    triton = procs.enter(
        TritonServer(repository, log_path=out / "logs" / "tritonserver.log", die_with_parent=True),
        name="triton",
    )
    timeout_s = 2.0
    config = out / "service.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "repository": str(repository),
                "triton": {
                    "url": triton.grpc_url,
                    "timeout_s": timeout_s,
                    "retry_after_s": 1,
                    "ready_timeout_s": 1,
                },
                "refresh_s": 0.25,
                "models": [
                    {"name": "minilm", "task": "feature-extraction"},
                    {"name": SWAP_MODEL, "task": "image-classification", "top_k": 3},
                ],
            }
        ),
        encoding="utf-8",
    )
    bento = BentoServer(config, out / "bentoml_home", out / "logs" / "bento.log", die_with_parent=True)
    procs.enter(bento.start(timeout=120), name="bento")
    stack = Stack(repository, triton, bento, timeout_s)
    stack.expected = reference(bento.client)
    stack.workers = set(descendants(bento.pid))
    return stack


def http_statuses(metrics_text: str) -> dict[str, float]:
    """Answers by HTTP status over every route, from BentoML's ``bentoml_service_request_total``."""
    import re

    counts: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("bentoml_service_request_total{"):
            code = re.search(r'http_response_code="(\d+)"', line)
            if code:
                counts[code.group(1)] = counts.get(code.group(1), 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def run_faults(options: FaultOptions) -> tuple[dict, dict[str, Path]]:
    from benchmarks.faults import inputs, probes, publish, swaps, triton

    out = options.out_dir
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        from core.errors import InvalidArgument

        raise InvalidArgument(f"--out: {out} is not empty; give a new or empty folder", field="out")
    plan = options.plan
    started = datetime.now(UTC)
    result: dict = {
        "mode": plan.mode,
        "command": options.command,
        "started_at": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "plan": asdict(plan),
        "machine": report.machine_facts(),
        "sections": {},
        "errors": [],
    }
    sections = result["sections"]

    def section(name: str, work) -> None:
        if name not in options.sections:
            return
        log.info("section %s", name)
        began = time.monotonic()
        try:
            sections[name] = work()
        except Exception as err:  # noqa: BLE001 - recorded; the other sections still run
            log.exception("section %s failed", name)
            result["errors"].append(f"{name}: {type(err).__name__}: {err}")
            sections[name] = {"error": f"{type(err).__name__}: {err}"}
        sections[name]["section_s"] = round(time.monotonic() - began, 1)

    source = source_repository(options)
    repository = out / "repository" / "models"
    linked_copy(source, repository)
    scratch = out / "scratch" / "models"
    scratch.mkdir(parents=True)
    linked_copy(source / SWAP_MODEL, scratch / SWAP_MODEL)
    section("publish_kills", lambda: publish.run_kills(scratch, SWAP_MODEL, log))
    shutil.rmtree(out / "scratch", ignore_errors=True)

    server_sections = set(options.sections) - {"publish_kills"}
    if server_sections:
        with ProcessSet() as procs:
            stack = start_stack(procs, repository, out)
            url = stack.bento.url

            def counted(work):
                def run() -> dict:
                    before = http_statuses(stack.bento.client.get("/metrics").text)
                    found = work()
                    after = http_statuses(stack.bento.client.get("/metrics").text)
                    delta = {k: int(after.get(k, 0) - before.get(k, 0)) for k in after}
                    found["answers"] = {k: v for k, v in sorted(delta.items()) if v}
                    found["5xx"] = sum(v for k, v in delta.items() if k.startswith("5"))
                    found["bento_restarted"] = stack.bento_restarted()
                    return found

                return run

            section("bad_inputs", counted(lambda: inputs.run_cases(stack.bento.client)))
            section(
                "fuzz",
                counted(
                    lambda: inputs.fuzz(
                        url, out / "fuzz", max_examples=plan.fuzz_examples, max_time_s=plan.fuzz_time_s
                    )
                ),
            )
            section("metrics", lambda: probes.metrics_growth(url, plan.unknown_paths))
            section("blocking", lambda: probes.blocking(url, plan.blocking_repeats))
            section(
                "swaps", lambda: swaps.swaps(stack, SWAP_MODEL, plan.swaps, clients=plan.clients, log=log)
            )
            section(
                "triton_kill",
                lambda: triton.kill(stack, warm_s=plan.warm_s, down_s=plan.down_s, clients=plan.clients),
            )
            section(
                "triton_stop",
                lambda: triton.freeze(stack, warm_s=plan.warm_s, frozen_s=plan.down_s, clients=plan.clients),
            )
    result["finished_at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    result["goals"] = goals(sections)
    paths = {"json": out / "faults.json", "report": out / "faults.md"}
    paths["json"].write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    paths["report"].write_text(markdown(result), encoding="utf-8")
    return result, paths


def goals(sections: dict) -> list[dict]:
    """Each goal of issue 15: met or not, with the measured figure (None: the section did not run)."""

    def get(section: str, *keys):
        value = sections.get(section)
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return value

    def goal(name: str, figure, met) -> dict:
        return {"goal": name, "figure": figure, "met": None if figure is None else bool(met)}

    fivexx = [get(s, "5xx") for s in ("bad_inputs", "fuzz")]
    crashes = [get(s, "bento_restarted") for s in ("bad_inputs", "fuzz")]
    inputs_seen = None if None in fivexx else f"{sum(fivexx)} 5xx, {sum(map(bool, crashes))} crashes"
    healthz = get("blocking", "healthz_max_ms")
    array_healthz = get("blocking", "array_healthz_max_ms")
    kill_503 = get("triton_kill", "first_503_after_s")
    kill_hung, kill_lost = get("triton_kill", "hung"), get("triton_kill", "lost")
    recovered = get("triton_kill", "recovered")
    restarted = get("triton_kill", "bento_restarted")
    swaps_done, swaps_failed, swaps_hung = get("swaps", "swaps"), get("swaps", "failed"), get("swaps", "hung")
    kills = get("publish_kills", "kills")
    partial = get("publish_kills", "partial")
    unmatched = get("metrics", "new_series")
    return [
        goal(
            "0 5xx and 0 crashes (bad inputs and fuzzing)",
            inputs_seen,
            inputs_seen and sum(fivexx) == 0 and not any(crashes),
        ),
        goal(
            "/healthz under 100 ms while the largest allowed image request decodes",
            None if healthz is None else f"{healthz} ms max",
            healthz is not None and healthz < 100,
        ),
        goal(
            "/healthz under 100 ms while the largest allowed pixel array is parsed and decoded",
            None if array_healthz is None else f"{array_healthz} ms max",
            array_healthz is not None and array_healthz < 100,
        ),
        goal(
            "first 503 under 1 s after Triton dies",
            None if kill_hung is None else f"{kill_503} s",
            kill_503 is not None and kill_503 < 1.0,
        ),
        goal(
            "0 hung and 0 lost requests while Triton dies",
            None if kill_hung is None else f"{kill_hung} hung, {kill_lost} lost",
            kill_hung == 0 and kill_lost == 0,
        ),
        goal(
            "recovery without a restart of the Bento",
            None if recovered is None else f"recovered={recovered}, restarted={restarted}",
            recovered and not restarted,
        ),
        goal(
            "100 swaps under load: 0 hangs, 0 failed requests",
            None if swaps_done is None else f"{swaps_done} swaps, {swaps_failed} failed, {swaps_hung} hung",
            swaps_done is not None and swaps_done >= 100 and swaps_failed == 0 and swaps_hung == 0,
        ),
        goal(
            "publishes byte-identical after every kill",
            None if kills is None else f"{len(kills) - partial} of {len(kills)} kills left it whole",
            partial == 0,
        ),
        goal(
            "/metrics bounded after many unknown paths",
            None if unmatched is None else f"{unmatched} new series",
            unmatched is not None and unmatched <= 30 and not get("metrics", "unknown_paths_in_metrics"),
        ),
    ]


def markdown(result: dict) -> str:
    lines = [
        f"# Fault suite ({result['mode']}), {result['started_at']}",
        "",
        f"`{result['command']}`",
        "",
        "| goal | figure | met |",
        "|---|---|---|",
    ]
    for goal in result["goals"]:
        met = {True: "yes", False: "**no**", None: "not run"}[goal["met"]]
        lines.append(f"| {goal['goal']} | {goal['figure']} | {met} |")
    if result["errors"]:
        lines += ["", "## Errors", "", *(f"- {e}" for e in result["errors"])]
    lines += ["", "Every figure, by section: faults.json.", ""]
    return "\n".join(lines)


def table(result: dict) -> str:
    width = max(len(g["goal"]) for g in result["goals"])
    rows = [f"{'goal':<{width}}  met      figure"]
    for goal in result["goals"]:
        met = {True: "yes", False: "NO", None: "not run"}[goal["met"]]
        rows.append(f"{goal['goal']:<{width}}  {met:<7}  {goal['figure']}")
    return "\n".join(rows)
