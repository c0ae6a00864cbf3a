"""The benchmark run's Triton step against in-process ONNX Runtime (``python -m benchmarks --stacks
ceiling,triton``), run in this process with the quick plan's sweeps: the figures it records are real
perf_analyzer and ONNX Runtime measurements, parsed and complete, with the CPU time per item of the
server and of perf_analyzer, and the ceiling measured before and after the server (no speed is asserted
here)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def triton_step(model_repo, tmp_path_factory):
    from benchmarks.plans import PLANS
    from benchmarks.run import RunOptions, run_benchmarks
    from benchmarks.workloads import get_workloads

    out = tmp_path_factory.mktemp("bench") / "run"
    # The quick plan's sweeps (concurrency 1 and 4, gRPC and HTTP, 500 ms windows, ceiling at batch 1, 8
    # and 32), with the closing ceiling measurement too; a budget no step can run out of under load.
    plan = replace(PLANS["quick"], ceiling_again=True, budget_s=600)
    options = RunOptions(
        out_dir=out,
        plan=plan,
        workloads=get_workloads(["minilm-short"]),
        stacks=("ceiling", "triton"),
        repository=model_repo,
        command="python -m benchmarks --quick --stacks ceiling,triton --workloads minilm-short",
    )
    summary, paths = run_benchmarks(options)
    return out, summary, paths


def test_triton_levels_carry_parsed_figures_and_cpu_per_item(triton_step):
    _, summary, _ = triton_step
    assert summary["errors"] == [] and summary["notes"] == []
    stacks = summary["workloads"]["minilm-short"]["stacks"]
    assert {name: [p["concurrency"] for p in stacks[name]["points"]] for name in stacks} == {
        "ceiling": [1, 8, 32],
        "triton-grpc": [1, 4],
        "triton-http": [1, 4],
    }
    triton = stacks["triton-grpc"]["points"] + stacks["triton-http"]["points"]
    for point in triton + stacks["ceiling"]["points"]:
        assert point["throughput"] > 0 and 0 < point["p50"] <= point["p95"] <= point["p99"]
    for point in triton:
        extra = point["extra"]
        assert extra["server_cpu_ms_per_item"] > 0 and extra["client_cpu_ms_per_item"] > 0
        assert extra["avg_batch"] >= 1.0
    # One request in flight: nothing to batch. Triton counts a request's inference when its response is
    # sent and the execution when the batch's statistics are reported, so a window's boundary can fall
    # between the two for the one request in flight at each end.
    lone = triton[0]["extra"]
    assert abs(lone["server_inferences"] - lone["server_executions"]) <= 2, lone


def test_ceiling_is_measured_before_and_after_with_cpu_per_item(triton_step):
    _, summary, _ = triton_step
    workload = summary["workloads"]["minilm-short"]
    for point in workload["stacks"]["ceiling"]["points"]:
        extra = point["extra"]
        assert extra["measured"] in ("before the servers", "after the servers")
        # The better of the two is kept (the other is recorded rounded to 0.01 items/s).
        assert 0 < extra["other_measurement"] <= point["throughput"] + 0.01
        assert set(extra["cpu_ms_per_item"]) == {"default", "1"} and extra["cpu_ms_per_item"]["1"] > 0
    cpu = workload["cpu_per_item"]
    assert [row["batch"] for row in cpu["onnxruntime_one_thread"]] == [1, 8, 32]
    assert [(row["stack"], row["concurrency"]) for row in cpu["triton"]] == [
        ("triton-grpc", 1),
        ("triton-grpc", 4),
        ("triton-http", 1),
        ("triton-http", 4),
    ]


def test_ratio_goal_report_and_kept_files(triton_step):
    from benchmarks.report import summary_table

    out, summary, paths = triton_step
    workload = summary["workloads"]["minilm-short"]
    stacks = workload["stacks"]
    best = max(p["throughput"] for s in ("triton-grpc", "triton-http") for p in stacks[s]["points"])
    ceiling = max(p["throughput"] for p in stacks["ceiling"]["points"])
    assert workload["ratios"]["triton/ceiling"] == pytest.approx(best / ceiling)
    goal = next(g for g in workload["goals"] if g["key"] == "triton/ceiling")
    assert goal["target"] == 0.9 and goal["met"] == (best / ceiling >= 0.9)
    # summary.json holds what the run returned.
    assert json.loads(paths["summary"].read_text())["workloads"] == json.loads(
        json.dumps(summary["workloads"])
    )
    report = paths["report"].read_text()
    assert "| stack | x | items/s | mean batch | server CPU ms/item | perf_analyzer CPU ms/item |" in report
    assert "against ONNX Runtime alone on one thread (batch 1: " in report
    assert "Measured before the servers started and after they stopped" in report
    assert "minilm-short: CPU per item at Triton's best point (triton-" in summary_table(summary)
    # perf_analyzer's own CSV rows are kept, one file per protocol, the levels' files merged into it.
    for protocol in ("grpc", "http"):
        merged = (out / "perf_analyzer" / f"minilm-short_triton_{protocol}.csv").read_text().splitlines()
        assert merged[0].startswith("Concurrency,") and [line.split(",")[0] for line in merged[1:]] == [
            "1",
            "4",
        ]
    assert not list((out / "perf_analyzer").glob("*_c[0-9]*.csv"))
