"""The ``batch`` stack (opt-in: ``--stacks batch``): a batch job (``python -m serving.batch``, as a user
runs it) through the Bento in front of Triton, its items/s against the in-process ceiling.

The job embeds a JSONL file of the workload's texts (``RECORDS`` lines for the full plan, a quarter of
that for the quick one; each text with its line number, so no two requests repeat) with the job's
default batch size and concurrency, and writes the results in order. Its own summary gives the items
per second; the ceiling is ONNX Runtime in this process at the job's batch size, measured by this
run (the ``ceiling`` stack) or, when that stack was not asked for, right before the job with no server
running. The service runs without a cache: every item reaches the model.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from core.errors import CheckFailed

log = logging.getLogger(__name__)

RECORDS = 2000
BATCH_SIZE = 32  # serving.batch's default
CONCURRENCY = 4  # serving.batch's default


def records_for(plan) -> int:
    return RECORDS if plan.mode == "full" else RECORDS // 4


def need_s(plan) -> float:
    """Start-ups, the ceiling at one batch size and the job (at ~40 items/s on a loaded machine)."""
    return 40 + plan.ceiling_s + records_for(plan) / 40


def ceiling_at(run, repo, workload: str, batch_size: int) -> dict | None:
    """The ceiling at ``batch_size``: this run's, or measured now."""
    from benchmarks.ceiling import measure_ceiling

    points = run._stack(workload, "ceiling")["points"] if "ceiling" in run.options.stacks else []
    point = next((p for p in points if p.concurrency == batch_size), None)
    if point is None:
        (point,) = measure_ceiling(
            run.inputs[workload], repo, batch_sizes=(batch_size,), duration_s=run.plan.ceiling_s
        )
    return {
        "batch_size": batch_size,
        "items_per_s": point.throughput,
        "measured": point.extra.get("measured"),
    }


def run_job(run, procs, repo, workload: str) -> dict:
    """Ceiling first (no server up), then Triton and the Bento, then the job against them."""
    from benchmarks.run import ROOT
    from local_triton.server import TritonServer
    from serving.launcher import BentoServer

    inputs = run.inputs[workload]
    if inputs.workload.kind != "text":
        raise CheckFailed(f"batch: {workload} is not a text workload; the batch job stack embeds texts")
    ceiling = ceiling_at(run, repo, workload, BATCH_SIZE)
    folder = run.out / "batch"
    folder.mkdir(parents=True, exist_ok=True)
    count = records_for(run.plan)
    source = folder / "corpus.jsonl"
    with open(source, "w", encoding="utf-8") as handle:
        for i in range(count):
            text = inputs.texts[i % len(inputs.texts)]
            handle.write(json.dumps({"id": i, "text": f"{text} {i}"}) + "\n")
    model = inputs.workload.model
    logs = run.out / "logs"
    triton = procs.enter(
        TritonServer(repo.root, models=[model], log_path=logs / "triton-batch.log", die_with_parent=True),
        "tritonserver",
    )
    config = run.bento_config(triton, repo, [model], name="service-batch.yaml")
    bento = procs.enter(
        BentoServer(config, run.out / "bentoml_home", logs / "bento-batch.log", die_with_parent=True), "bento"
    )
    output = folder / "embeddings.jsonl"
    command = [
        sys.executable,
        "-m",
        "serving.batch",
        str(source),
        str(output),
        "--url",
        bento.url,
        "--batch-size",
        str(BATCH_SIZE),
        "--concurrency",
        str(CONCURRENCY),
    ]
    log.info("batch job: %d records through %s/embed/batch", count, bento.url)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=max(600, count))
    (folder / "job.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode != 0:
        raise CheckFailed(f"batch job exited {done.returncode}: {done.stderr.strip()[-500:]}")
    summary = json.loads(done.stdout)
    lines = output.read_bytes().count(b"\n")
    if lines != count or summary["errors"]:
        raise CheckFailed(f"batch job: {lines} lines for {count} records, {summary['errors']} errors")
    return {
        "workload": workload,
        "records": count,
        "batch_size": BATCH_SIZE,
        "concurrency": CONCURRENCY,
        "seconds": summary["seconds"],
        "items_per_s": summary["items_per_s"],
        "ceiling": ceiling,
        "of_ceiling": summary["items_per_s"] / ceiling["items_per_s"] if ceiling["items_per_s"] else None,
        # As run, with the paths of this run's folder and the Bento's address left out.
        "command": " ".join(
            ["python -m serving.batch corpus.jsonl embeddings.jsonl --url BENTO_URL", *command[7:]]
        ),
    }
