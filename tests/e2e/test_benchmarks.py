"""The benchmark harness: its parsers on files the real tools write, the curve arithmetic, the
process clean-up, the FastAPI-eager baseline, the CLI's bad inputs, and a whole ``--quick`` run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.parsers import (
    Point,
    locust_point,
    parse_locust_history,
    parse_locust_stats,
    parse_perf_analyzer_csv,
)
from benchmarks.stats import throughput_at_p99
from core.errors import InvalidArgument, NotFound

ROOT = Path(__file__).resolve().parents[2]


def _point(concurrency: int, throughput: float, p99: float) -> Point:
    return Point(concurrency, throughput, p50=p99 / 2, p90=p99 * 0.8, p95=p99 * 0.9, p99=p99, avg=p99 / 2)


# ---- curve arithmetic ----------------------------------------------------------------------------


def test_throughput_at_p99_takes_measured_points_and_interpolates_between_them():
    curve = [_point(1, 100.0, 10.0), _point(4, 300.0, 20.0), _point(8, 400.0, 60.0)]
    assert throughput_at_p99(curve, 20.0) == 300.0  # a measured point exactly on the target
    assert throughput_at_p99(curve, 40.0) == pytest.approx(350.0)  # halfway from 20 ms to 60 ms
    assert throughput_at_p99(curve, 1000.0) == 400.0
    assert throughput_at_p99(curve, 5.0) is None  # even the lightest load is over the target


def test_ratios_and_goals_from_curves():
    from benchmarks.report import compute_ratios, evaluate_goals, stack_summary

    stacks = {
        "ceiling": stack_summary([_point(1, 200.0, 5.0), _point(32, 500.0, 70.0)]),
        "triton-grpc": stack_summary([_point(1, 150.0, 8.0), _point(8, 460.0, 30.0)]),
        "bento": stack_summary([_point(1, 100.0, 12.0), _point(8, 380.0, 40.0), _point(16, 420.0, 90.0)]),
        "fastapi-eager": stack_summary([_point(1, 50.0, 25.0), _point(8, 90.0, 40.0)]),
    }
    ratios = compute_ratios(stacks)
    assert ratios["triton-grpc/ceiling"] == pytest.approx(0.92)
    assert ratios["triton/ceiling"] == pytest.approx(0.92)
    assert ratios["bento/ceiling"] == pytest.approx(0.84)
    at_p99 = ratios["bento/fastapi-eager@p99"]
    assert (
        at_p99["p99_ms"] == 40.0 and at_p99["bento"] == 380.0 and at_p99["ratio"] == pytest.approx(380 / 90)
    )
    met = {goal["key"]: goal["met"] for goal in evaluate_goals(ratios)}
    # Issue 16's goals beside them: at concurrency 1, p50 4 and 6 ms against the ceiling's 2.5 (1.6x
    # and 2.4x, over 1.3x); no peer ran, so that one is not measured.
    assert met == {
        "triton/ceiling": True,
        "bento/ceiling": True,
        "bento/fastapi-eager@p99": True,
        "triton@c1/ceiling@b1": False,
        "bento@c1/ceiling@b1": False,
        "bento/best-peer@p99": None,
    }


# ---- parsers on real files -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def perf_analyzer_run(triton_server, model_repo, tmp_path_factory):
    """perf_analyzer for real against the session Triton: MiniLM over gRPC at concurrency 1 and 2."""
    from benchmarks.loadgen import perf_sweep
    from benchmarks.workloads import WORKLOADS, load_inputs, write_perf_analyzer_data
    from core.repository import Repository

    folder = tmp_path_factory.mktemp("perf_analyzer")
    inputs = load_inputs(WORKLOADS["minilm-short"], Repository(model_repo))
    data = write_perf_analyzer_data(inputs, folder / "input.json")
    csv_path = folder / "minilm_grpc.csv"
    points = perf_sweep("minilm", triton_server.grpc_url, "grpc", [1, 2], data, csv_path, window_ms=400)
    return csv_path, points


@pytest.mark.triton
def test_perf_analyzer_csv_of_a_real_sweep(perf_analyzer_run):
    csv_path, points = perf_analyzer_run
    assert [p.concurrency for p in points] == [1, 2]
    # The kept CSV holds the header once and one row per level, and parses to the same points.
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("Concurrency,Inferences/Second,") and len(lines) == 3
    fields = ("concurrency", "throughput", "p50", "p90", "p95", "p99", "avg")
    parsed = parse_perf_analyzer_csv(csv_path)
    assert [[getattr(p, f) for f in fields] for p in parsed] == [
        [getattr(p, f) for f in fields] for p in points
    ]
    for point in points:
        assert point.throughput > 0
        assert 0 < point.p50 <= point.p90 <= point.p95 <= point.p99
        breakdown = point.extra["breakdown_ms"]
        assert breakdown["Server Compute Infer"] > 0
        assert point.avg == pytest.approx(sum(breakdown.values()))
        # Triton's own counts of the window, from perf_analyzer's report.
        assert point.extra["server_inferences"] >= point.extra["server_executions"] > 0
        assert point.extra["avg_batch"] >= 1


@pytest.mark.triton
def test_perf_analyzer_parser_refuses_other_files(perf_analyzer_run, tmp_path):
    csv_path, _ = perf_analyzer_run
    header, *rows = csv_path.read_text().splitlines()
    wrong = tmp_path / "wrong.csv"
    wrong.write_text(header.replace("p99 latency", "p99") + "\n" + "\n".join(rows) + "\n")
    with pytest.raises(InvalidArgument, match=r"missing column\(s\) p99 latency"):
        parse_perf_analyzer_csv(wrong)
    empty = tmp_path / "empty.csv"
    empty.write_text(header + "\n")
    with pytest.raises(Exception, match="no measurement"):
        parse_perf_analyzer_csv(empty)
    with pytest.raises(NotFound, match="no perf_analyzer CSV"):
        parse_perf_analyzer_csv(tmp_path / "absent.csv")


@pytest.mark.triton
def test_perf_analyzer_drives_the_text_model_with_strings(triton_server, model_repo, tmp_path):
    """perf_analyzer sends the workload's texts (string input data) to minilm_text: every request
    answered, and the encoder behind the ensemble ran them (Triton's own counts, from its report)."""
    from benchmarks.loadgen import perf_sweep
    from benchmarks.workloads import WORKLOADS, load_inputs, write_perf_analyzer_data
    from core.repository import Repository

    inputs = load_inputs(WORKLOADS["minilm-short"], Repository(model_repo))
    data = write_perf_analyzer_data(inputs, tmp_path / "texts.json", texts=True)
    first = json.loads(data.read_text())["data"][0]
    assert first == {"text": {"content": [inputs.texts[0]], "shape": [1]}}
    with triton_server.client() as client:
        before = client.get_inference_statistics("minilm")["model_stats"][0]["inference_count"]
    points = perf_sweep(
        "minilm_text", triton_server.grpc_url, "grpc", [1, 2], data, tmp_path / "t.csv", window_ms=400
    )
    assert [p.concurrency for p in points] == [1, 2]
    for point in points:
        assert point.throughput > 0 and point.failures == 0
        assert point.extra["server_inferences"] >= point.extra["server_executions"] > 0
    with triton_server.client() as client:
        after = client.get_inference_statistics("minilm")["model_stats"][0]["inference_count"]
    assert int(after) - int(before) >= sum(p.extra["server_inferences"] for p in points)


@pytest.fixture(scope="module")
def locust_run(bento_server, model_repo, tmp_path_factory):
    """Locust headless for real: the project's BentoUser against the session Bento, 2 users, 2 s."""
    from benchmarks.loadgen import run_locust

    prefix = tmp_path_factory.mktemp("locust") / "bento"
    result = run_locust(
        ROOT / "benchmarks" / "locustfile.py",
        bento_server.url,
        2,
        2.0,
        prefix,
        user_classes=["BentoUser"],
        env={"MODELPACK_WORKLOAD": "minilm-short", "MODELPACK_REPOSITORY": str(model_repo)},
    )
    return prefix, result


@pytest.mark.bento
def test_locust_csv_of_a_real_run(locust_run):
    prefix, result = locust_run
    assert result.exit_code == 0
    rows = {row.name: row for row in parse_locust_stats(Path(f"{prefix}_stats.csv"))}
    assert set(rows) == {"/embed", "Aggregated"}
    total = rows["Aggregated"]
    assert total.requests == rows["/embed"].requests > 0 and total.failures == 0
    assert total.rps > 0 and 0 < total.p50 <= total.p90 <= total.p95 <= total.p99
    point = locust_point(Path(f"{prefix}_stats.csv"), users=2)
    assert point == result.point or point.throughput == result.point.throughput
    history = parse_locust_history(Path(f"{prefix}_stats_history.csv"))
    assert history and history[-1].users == 2 and history[-1].total_requests > 0
    # The run lasted its -t (2 s): a run cut short by gevent's stale loop clock recorded requests over a
    # fraction of a second only (see benchmarks/locustfile.py).
    [embed] = [entry for entry in json.loads(Path(f"{prefix}.json").read_text()) if entry["name"] == "/embed"]
    assert embed["last_request_timestamp"] - embed["start_time"] >= 1.0, embed
    assert all(a.timestamp <= b.timestamp for a, b in zip(history, history[1:], strict=False))
    assert Path(f"{prefix}.html").read_text().lstrip().lower().startswith("<!doctype html")


# Locust starts its -t clock right after its init event: the users' inputs must be loaded by then, or a
# short run spends its time loading them and records no request.
INIT_THEN_INSPECT = """
import locust
from locust.env import Environment
from benchmarks import locustfile

assert locustfile.workload_data.cache_info().currsize == 0  # importing the file loads nothing
environment = Environment(user_classes=[locustfile.BentoUser], events=locust.events)
locust.events.init.fire(environment=environment, runner=None, web_ui=None)
print(locustfile.workload_data.cache_info().currsize, len(locustfile.workload_data()["bodies"]))
"""


def test_the_locust_users_inputs_are_loaded_before_the_run_clock_starts(model_repo):
    done = subprocess.run(  # a process of its own: importing locust monkey-patches the standard library
        [sys.executable, "-c", INIT_THEN_INSPECT],
        cwd=ROOT,
        env={**os.environ, "MODELPACK_WORKLOAD": "minilm-short", "MODELPACK_REPOSITORY": str(model_repo)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    loaded, bodies = map(int, done.stdout.split())
    assert loaded == 1 and bodies > 0


@pytest.mark.bento
def test_locust_parser_refuses_a_history_file_as_stats(locust_run):
    prefix, _ = locust_run
    with pytest.raises(InvalidArgument, match="not a Locust _stats CSV"):
        parse_locust_stats(Path(f"{prefix}_stats_history.csv"))


# ---- processes -----------------------------------------------------------------------------------


def test_process_set_stops_whole_groups_on_error(tmp_path):
    from benchmarks.procs import ProcessSet
    from core.processes import group_members

    with pytest.raises(RuntimeError, match="boom"):
        with ProcessSet() as procs:
            # A parent with a child of its own: both are in the group and both must go.
            proc = procs.start("sleeper", ["sh", "-c", "sleep 60 & sleep 60"], log_path=tmp_path / "s.log")
            deadline = time.monotonic() + 5
            while len(group_members(proc.pid)) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(group_members(proc.pid)) >= 2
            raise RuntimeError("boom")
    assert group_members(proc.pid) == []
    assert procs.started == [{"name": "sleeper", "pid": proc.pid}]


# ---- the FastAPI-eager baseline ------------------------------------------------------------------


def torch_labels(checkpoint: Path) -> list[str]:
    import torch

    return torch.load(checkpoint, map_location="cpu", weights_only=True)["hyper_parameters"]["labels"]


def test_baseline_fastapi_matches_sentence_transformers_and_names_bad_fields(
    minilm_path, lightning_ckpt, model_repo
):
    import numpy as np
    from fastapi.testclient import TestClient
    from sentence_transformers import SentenceTransformer

    from benchmarks.baseline_fastapi import create_app

    client = TestClient(create_app(minilm_path, lightning_ckpt))
    texts = ["The cat sat on the mat.", "Paris is the capital of France."]
    expected = SentenceTransformer(str(minilm_path), device="cpu").encode(texts, normalize_embeddings=True)
    single = client.post("/embed", json={"text": texts[0]})
    batch = client.post("/embed/batch", json={"texts": texts})
    assert single.status_code == 200 and batch.status_code == 200
    assert np.abs(np.asarray(single.json()["embedding"]) - expected[0]).max() < 1e-5
    assert np.abs(np.asarray(batch.json()["embeddings"]) - expected).max() < 1e-5

    from benchmarks.workloads import WORKLOADS, load_inputs
    from core.repository import Repository

    png = load_inputs(WORKLOADS["image"], Repository(model_repo), samples=1).png_b64[0]
    predicted = client.post("/predict", json={"image": png, "top_k": 3})
    assert predicted.status_code == 200
    labels = [p["label"] for p in predicted.json()["predictions"]]
    assert len(labels) == 3 and set(labels) <= set(torch_labels(lightning_ckpt))

    bad = client.post("/predict", json={"image": "not base64!"})
    assert bad.status_code == 400 and "image" in bad.json()["detail"]
    empty = client.post("/embed/batch", json={"texts": []})
    assert empty.status_code == 422 and empty.json()["detail"][0]["loc"][-1] == "texts"


# ---- command line --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--stacks", "ceiling,nginx"], "--stacks: unknown nginx"),
        (["--workloads", "minilm-huge"], "--workloads: unknown 'minilm-huge'"),
        (["--quick", "--time-scale", "0"], "--time-scale: must be in (0, 10]"),
        (["tune", "minilm", "--p99-ms", "-5"], "--p99-ms: must be a positive number"),
        (["tune", "resnet", "--p99-ms", "20"], "model 'resnet' is not in"),
        (
            ["tune", "minilm", "--p99-ms", "20", "--preferred", "128"],
            "--preferred: 128 must be sizes between 1",
        ),
        (["tune", "minilm", "--p99-ms", "20", "--workload", "image"], "--workload: 'image' does not measure"),
    ],
)
def test_cli_bad_input_exits_2_naming_the_field(argv, message, model_repo, capsys):
    from benchmarks.cli import main

    assert main([*argv, "--repository", str(model_repo)]) == 2
    assert message in capsys.readouterr().err


def test_help_lists_the_tune_sub_command():
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "python -m benchmarks tune NAME --p99-ms X" in done.stdout
    assert "\n    tune " in done.stdout  # the sub-command list, with its one-line help


def test_cli_refuses_run_options_before_tune(model_repo, capsys):
    from benchmarks.cli import main

    assert main(["--quick", "tune", "minilm", "--p99-ms", "20", "--repository", str(model_repo)]) == 2
    assert "--quick: the options before `tune` are the run's" in capsys.readouterr().err


def test_cli_refuses_a_non_empty_out_folder(model_repo, tmp_path, capsys):
    from benchmarks.cli import main

    (tmp_path / "keep.txt").write_text("mine")
    assert main(["--quick", "--out", str(tmp_path), "--repository", str(model_repo)]) == 2
    assert f"--out: {tmp_path} is not empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


# ---- a whole run ---------------------------------------------------------------------------------


def quick_run_argv(out: Path, repository: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "benchmarks",
        "--quick",
        "--out",
        str(out),
        "--repository",
        str(repository),
        *extra,
    ]


@pytest.mark.triton
@pytest.mark.bento
@pytest.mark.slow
def test_quick_run_writes_a_report_with_positive_figures(model_repo, tmp_path):
    """``python -m benchmarks --quick`` end to end on the MiniLM short workload, every stack, durations
    shrunk to a fifth (the image workload takes the same code path; the reference runs cover it)."""
    from core.processes import group_members

    out = tmp_path / "run"
    env = {**os.environ, "MODELPACK_BENCH_TIME_SCALE": "0.2"}
    # No speed is asserted: the harness keeps its own time budget (84 s in --quick) by skipping what
    # would not fit, and says so. The deadline only stops a hung run, well before pytest's 600 s.
    done = subprocess.run(
        quick_run_argv(out, model_repo, "--workloads", "minilm-short"),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # The summary table comes last on stdout.
    assert done.stdout.splitlines()[2].split()[:2] == ["workload", "stack"]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["errors"] == [] and summary["mode"] == "quick"
    assert summary["machine"]["cores"] >= 1 and summary["versions"]["onnxruntime"]
    assert set(summary["workloads"]) == {"minilm-short"}
    for name in ("minilm-short",):
        workload = summary["workloads"][name]
        assert set(workload["stacks"]) == {"ceiling", "triton-grpc", "triton-http", "bento", "fastapi-eager"}
        for stack, data in workload["stacks"].items():
            assert data["points"], stack
            for point in data["points"]:
                assert point["throughput"] > 0 and point["p99"] > 0 and point["failures"] == 0, (stack, point)
        assert [p["concurrency"] for p in workload["stacks"]["ceiling"]["points"]] == [1, 8, 32]
        assert [p["concurrency"] for p in workload["stacks"]["triton-grpc"]["points"]] == [1, 4]
        ratios = workload["ratios"]
        assert ratios["triton/ceiling"] > 0 and ratios["bento/ceiling"] > 0
        assert ratios["bento/fastapi-eager@p99"]["fastapi-eager"] > 0
        assert [row["p99_ms"] for row in workload["equal_p99"]] == sorted(
            p["p99"] for p in workload["stacks"]["fastapi-eager"]["points"]
        )
        # Every goal measured but the peers' (opt-in stacks, not in this run): both ends of the curve.
        measured = {g["key"]: g["met"] in (True, False) for g in workload["goals"]}
        assert measured == {
            "triton/ceiling": True,
            "bento/ceiling": True,
            "bento/fastapi-eager@p99": True,
            "triton@c1/ceiling@b1": True,
            "bento@c1/ceiling@b1": True,
            "bento/best-peer@p99": False,
        }
        assert workload["tokens_per_s"]["bento"] == pytest.approx(
            workload["stacks"]["bento"]["best"]["throughput"] * 16
        )
        # The raw files of the tools are kept where the summary says.
        for data in workload["stacks"].values():
            for file in data["files"]:
                assert (out / file).stat().st_size > 0, file
        plot = out / workload["plot"]
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    report = (out / "report.md").read_text()
    assert "## Goals" in report and "| x | items/s | p50 | p90 | p95 | p99 |" in report
    assert "Intel" in report or summary["machine"]["cpu_model"] in report
    # Every process the run started is gone (whole process groups).
    names = {p["name"] for p in summary["processes"]}
    assert names == {"tritonserver", "bento", "fastapi-eager"}
    assert all(group_members(p["pid"]) == [] for p in summary["processes"])


@pytest.mark.triton
@pytest.mark.bento
@pytest.mark.slow
def test_tokenize_stacks_and_cold_start_are_measured_side_by_side(model_repo, tmp_path):
    """The Bento's two ways to a text model and the warm-up measurement in one run (the full plan, on
    minilm-long, whose users sweep has two levels, and image): both settings measured on the same
    inputs with their ratio, and each entry's first request after a load, without and with its
    warm-up."""
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "benchmarks", "--out", str(out), "--repository", str(model_repo)]
    argv += ["--workloads", "minilm-long,image"]
    argv += ["--stacks", "cold-start,bento-tokenize-service,bento-tokenize-triton"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["errors"] == []
    text = summary["workloads"]["minilm-long"]
    assert set(text["stacks"]) == {"bento-tokenize-service", "bento-tokenize-triton"}
    for data in text["stacks"].values():
        assert data["points"] and all(p["failures"] == 0 and p["throughput"] > 0 for p in data["points"])
        # The CPU the Bento and Triton spent per request, the figure other load does not inflate.
        assert all(p["extra"]["server_cpu_ms_per_item"] > 0 for p in data["points"])
    assert text["ratios"]["bento-tokenize-triton/bento-tokenize-service"] > 0
    assert summary["workloads"]["image"]["stacks"] == {}  # the tokenize stacks are for text workloads
    cold = summary["cold_start"]
    assert set(cold) == {"minilm-long", "image"}
    for result in cold.values():
        assert result["without warm-up"]["warmup_samples"] == 0
        assert result["with warm-up"]["warmup_samples"] > 0
        for row in (result["without warm-up"], result["with warm-up"]):
            assert row["first_ms"] > 0 and row["steady_median_ms"] > 0 and row["load_s"] > 0
    report = (out / "report.md").read_text()
    assert "## First request after a load" in report and "Bento sending texts to NAME_text" in report
    assert "CPU per request on **minilm-long**" in report
    names = {p["name"] for p in summary["processes"]}
    assert names == {"tritonserver", "bento-tokenize-service", "bento-tokenize-triton"}


@pytest.mark.triton
@pytest.mark.bento
@pytest.mark.slow
def test_batch_stack_runs_a_job_against_the_ceiling(model_repo, tmp_path):
    """``--stacks batch`` alone: the ceiling at the job's batch size, then Triton and the Bento, then
    ``python -m serving.batch`` over a file of the workload's texts; every record answered, items/s
    against the ceiling, every process stopped."""
    from core.processes import group_members

    out = tmp_path / "run"
    done = subprocess.run(
        [*quick_run_argv(out, model_repo, "--workloads", "minilm-short"), "--stacks", "batch"],
        cwd=ROOT,
        env={**os.environ, "MODELPACK_BENCH_TIME_SCALE": "0.2"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    job = summary["batch_job"]
    assert summary["errors"] == [] and job["records"] == 500 and job["batch_size"] == 32
    assert job["items_per_s"] > 0 and job["ceiling"]["items_per_s"] > 0 and job["of_ceiling"] > 0
    assert (out / "batch" / "embeddings.jsonl").read_bytes().count(b"\n") == 500
    assert "## Batch job" in (out / "report.md").read_text() and "batch job:" in done.stdout
    assert {p["name"] for p in summary["processes"]} == {"tritonserver", "bento"}
    assert all(group_members(p["pid"]) == [] for p in summary["processes"])


# ---- the tuner -----------------------------------------------------------------------------------


@pytest.mark.triton
def test_tuner_writes_a_tuning_result_that_the_printed_command_applies(writable_model_repo, tmp_path):
    """Benchmarks measure, converters write: the tuner leaves the repository as it was and writes a
    tuning result; the converters command it prints sets exactly the tuned fields."""
    import shlex

    from benchmarks.tune import TuneOptions, tune
    from core.triton_config import read_config

    config_path = writable_model_repo / "image_classifier" / "config.pbtxt"
    repository_before = _tree(writable_model_repo)
    before = read_config(config_path)
    result = tune(
        TuneOptions(
            name="image_classifier",
            p99_ms=2000.0,
            repository=writable_model_repo,
            delays_us=[0, 3000],
            preferred=[[8]],
            instances=[1],
            concurrency=[2],
            window_ms=400,
            out_dir=tmp_path / "tune",
        )
    )
    assert [p.settings.label() for p in result.grid] == [
        "delay=0us preferred=8 instances=1",
        "delay=3000us preferred=8 instances=1",
    ]
    assert all(p.error is None and p.score and p.score > 0 for p in result.grid)
    assert result.chosen is max(result.grid, key=lambda p: p.score)
    assert _tree(writable_model_repo) == repository_before  # the tuner wrote nothing there

    # The tuning result: chosen settings, target, every curve, date, command; the CSV beside it.
    assert result.path == tmp_path / "tune" / "tuning.json"
    saved = json.loads(result.path.read_text())
    assert set(saved) == {"format", "model", "version", "target", "chosen", "grid", "measured_at", "command"}
    assert saved["model"] == "image_classifier" and saved["version"] == 1
    assert saved["target"] == {
        "p99_ms": 2000.0,
        "workload": "image",
        "protocol": "grpc",
        "concurrency": [2],
        "window_ms": 400,
    }
    assert saved["chosen"] == {
        "max_queue_delay_microseconds": result.chosen.settings.max_queue_delay_microseconds,
        "preferred_batch_size": [8],
        "instance_count": 1,
        "items_per_s": result.chosen.score,
    }
    assert [len(g["curve"]) for g in saved["grid"]] == [1, 1] and saved["grid"][0]["curve"][0][
        "concurrency"
    ] == 2
    assert saved["command"].startswith("python -m benchmarks tune image_classifier --p99-ms 2000 ")
    assert (
        "--delays-us 0,3000 --preferred 8 --instances 1 --concurrency 2 --window-ms 400" in saved["command"]
    )
    rows = result.csv_path.read_text().splitlines()
    assert rows[0].startswith("max_queue_delay_us,") and len(rows) == 3
    assert list((tmp_path / "tune" / "raw").glob("point*.csv"))

    # The printed command applies it.
    printed = result.table().splitlines()[-1]
    assert printed == f"apply it with: {result.apply_command()}"
    argv = shlex.split(printed.removeprefix("apply it with: "))
    assert argv[:3] == ["python", "-m", "converters"]
    done = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    after = read_config(config_path)
    assert (
        after.dynamic_batching.max_queue_delay_microseconds
        == result.chosen.settings.max_queue_delay_microseconds
    )
    assert list(after.dynamic_batching.preferred_batch_size) == [8]
    assert [g.count for g in after.instance_group] == [1]
    after.dynamic_batching.CopyFrom(before.dynamic_batching)
    assert after == before


@pytest.mark.triton
def test_tuner_result_without_a_choice_cannot_be_applied(writable_model_repo, tmp_path, capsys):
    from benchmarks.tune import TuneOptions, tune
    from converters.cli import main as converters_main

    config_path = writable_model_repo / "image_classifier" / "config.pbtxt"
    before = config_path.read_bytes()
    result = tune(
        TuneOptions(
            name="image_classifier",
            p99_ms=0.001,
            repository=writable_model_repo,
            delays_us=[0],
            preferred=[[4]],
            instances=[1],
            concurrency=[1],
            window_ms=400,
            out_dir=tmp_path / "tune",
        )
    )
    assert result.chosen is None and result.grid[0].score is None and result.grid[0].curve
    assert config_path.read_bytes() == before
    assert "no configuration kept p99 <= 0.001 ms: nothing to apply" in result.table()
    saved = json.loads(result.path.read_text())
    assert saved["chosen"] is None and saved["grid"][0]["curve"]
    capsys.readouterr()
    code = converters_main(
        [
            "configure",
            "image_classifier",
            "--tuning",
            str(result.path),
            "--repository",
            str(writable_model_repo),
        ]
    )
    assert code == 2 and "chosen: null: no configuration kept p99 <= 0.001 ms" in capsys.readouterr().err
    assert config_path.read_bytes() == before


def test_tuner_refuses_a_non_empty_out_folder(model_repo, tmp_path, capsys):
    from benchmarks.cli import main

    (tmp_path / "keep.txt").write_text("mine")
    argv = [
        "tune",
        "image_classifier",
        "--p99-ms",
        "50",
        "--out",
        str(tmp_path),
        "--repository",
        str(model_repo),
    ]
    assert main(argv) == 2
    assert f"--out: {tmp_path} is not empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def _tree(root: Path) -> list[tuple]:
    return sorted(
        (p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
    )


@pytest.mark.triton
def test_sigterm_mid_run_stops_every_process_and_keeps_what_was_measured(model_repo, tmp_path):
    import signal

    from core.processes import group_members

    out = tmp_path / "run"
    proc = subprocess.Popen(
        quick_run_argv(out, model_repo, "--workloads", "image", "--stacks", "ceiling,triton"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Wait until perf_analyzer is measuring against the run's Triton, then stop the run.
        deadline = time.monotonic() + 60
        while not list((out / "perf_analyzer").glob("*.log")) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted: every process this run started was stopped" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert any("interrupted" in error for error in summary["errors"])
    assert summary["workloads"]["image"]["stacks"]["ceiling"]["points"]  # measured before the signal
    assert [p["name"] for p in summary["processes"]] == ["tritonserver"]
    assert all(group_members(p["pid"]) == [] for p in summary["processes"])
    assert (out / "report.md").is_file()
    # perf_analyzer (a child of the run, its CSV path in its command line) is gone too.
    assert _processes_mentioning(str(out)) == []


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


# ---- --json: one document on stdout -------------------------------------------------------------------


def test_run_json_is_one_document(model_repo, tmp_path, capsys):
    """The run with ``--json``: one JSON document on stdout, the summary.json it wrote inside it."""
    from benchmarks.cli import main

    out = tmp_path / "run"
    argv = ["--quick", "--stacks", "ceiling", "--workloads", "image", "--time-scale", "0.1"]
    code = main([*argv, "--out", str(out), "--repository", str(model_repo), "--json"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    document = json.loads(printed)
    assert set(document) == {"run_folder", "files", "summary"} and document["run_folder"] == str(out)
    assert document["summary"] == json.loads((out / "summary.json").read_text())
    assert Path(document["files"]["report"]).is_file()
    assert document["summary"]["workloads"]["image"]["stacks"]["ceiling"]["points"]


@pytest.mark.triton
def test_tune_json_is_the_tuning_result(model_repo, tmp_path, capsys):
    from benchmarks.cli import main

    argv = ["tune", "image_classifier", "--p99-ms", "5000", "--repository", str(model_repo)]
    argv += ["--delays-us", "0", "--preferred", "4", "--instances", "1", "--concurrency", "1"]
    code = main([*argv, "--window-ms", "300", "--out", str(tmp_path / "tune"), "--json"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    document = json.loads(printed)
    saved = json.loads((tmp_path / "tune" / "tuning.json").read_text())
    assert {k: v for k, v in document.items() if k != "files"} == saved
    assert document["chosen"]["instance_count"] == 1
    assert document["files"] == {
        "tuning": str(tmp_path / "tune" / "tuning.json"),
        "csv": str(tmp_path / "tune" / "tuning.csv"),
    }
