"""Issue 16's stacks in real runs: a peer whose venv is missing is skipped and recorded, not a crash;
the mixed-length workload's ceiling counts every item and its tokens; the Bento variants and a peer,
when its venv is there, measured beside the Bento by the same Locust user (skipped otherwise)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(out: Path, repository: Path, *extra: str, env: dict | None = None, timeout: float = 240):
    argv = [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out), "--repository", str(repository)]
    return subprocess.run(
        [*argv, *extra],
        cwd=ROOT,
        env={**os.environ, "MODELPACK_BENCH_TIME_SCALE": "0.2", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_missing_peer_venvs_are_skipped_and_recorded(model_repo, tmp_path):
    out = tmp_path / "run"
    done = _run(
        out,
        model_repo,
        "--workloads",
        "minilm-mixed",
        "--stacks",
        "ceiling,infinity,litserve",
        env={"MODELPACK_PEER_VENVS": str(tmp_path / "no-venvs")},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["errors"] == []
    assert set(summary["skipped_stacks"]) == {"infinity", "litserve"}
    for peer, why in summary["skipped_stacks"].items():
        assert "make peers" in why and str(tmp_path / "no-venvs" / peer) in why
    assert any("skipped infinity" in note and "make peers" in note for note in summary["notes"])
    assert summary["processes"] == []  # nothing was started for them

    # The mixed workload's ceiling: every item once per round, tokens/s from the real tokens.
    workload = summary["workloads"]["minilm-mixed"]
    points = workload["stacks"]["ceiling"]["points"]
    assert [p["concurrency"] for p in points] == [1, 8, 32]
    for point in points:
        assert point["extra"]["length_sorted"] is True
        assert point["requests"] % -(-64 // point["concurrency"]) == 0  # whole rounds of sorted batches
        assert point["extra"]["tokens_per_s"] == pytest.approx(point["throughput"] * workload["mean_tokens"])
    assert 8 <= workload["mean_tokens"] <= 256
    goals = {g["goal"]: g for g in workload["goals"]}
    assert goals["Bento >= 85% of the length-sorted ceiling in tokens/s"]["met"] is None
    assert "not measured" in (out / "report.md").read_text()


@pytest.mark.triton
@pytest.mark.bento
@pytest.mark.slow
def test_bento_variants_and_a_peer_beside_the_bento(model_repo, tmp_path):
    """The Bento, the Bento without the Coalescer and without length splitting, and the LitServe
    peer when `make peers` has made its venv (else it is recorded as skipped), on mixed lengths."""
    from benchmarks.peers import venv_python
    from core.errors import MissingDependency

    try:
        venv_python("litserve")
        peer = True
    except MissingDependency:
        peer = False
    out = tmp_path / "run"
    stacks = "ceiling,bento,bento-no-coalesce,bento-no-split,litserve"
    done = _run(
        out, model_repo, "--workloads", "minilm-mixed", "--stacks", stacks, "--budget-s", "240", timeout=360
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["errors"] == []
    workload = summary["workloads"]["minilm-mixed"]
    expected = {"ceiling", "bento", "bento-no-coalesce", "bento-no-split"} | ({"litserve"} if peer else set())
    assert set(workload["stacks"]) == expected
    for stack in expected - {"ceiling"}:
        points = workload["stacks"][stack]["points"]
        assert [p["concurrency"] for p in points] == [1, 4], stack  # both ends: 1 user, and loaded
        assert all(p["failures"] == 0 and p["requests"] > 0 for p in points), stack
        assert f"{stack}@c1/ceiling@b1" in workload["ratios"]
    ratios = workload["ratios"]
    for key in ("bento/bento-no-coalesce@p99", "bento-no-coalesce/bento@p99", "bento/bento-no-split@p99"):
        assert ratios[key]["p99_ms"] > 0 and ratios[key]["ratio"] >= 0, key
    if peer:
        assert ratios["bento/best-peer@p99"]["peer"] == "litserve"
    else:
        assert "make peers" in summary["skipped_stacks"]["litserve"]
    names = {p["name"] for p in summary["processes"]}
    assert {"tritonserver", "bento", "bento-no-coalesce", "bento-no-split"} <= names
