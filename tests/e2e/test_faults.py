"""The fault suite measures what it says: ``python -m benchmarks faults --quick`` (what CI runs) over the
session's repository completes, and ``faults.json`` has every section, each with figures that agree
with one another. The goals themselves are reported by the suite, never asserted here as timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.faults.run import SECTIONS

pytestmark = [pytest.mark.triton, pytest.mark.bento, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def logs(out: Path) -> str:
    tails = []
    for path in sorted((out / "logs").glob("*.log")) if (out / "logs").is_dir() else []:
        lines = path.read_text(errors="replace").splitlines()[-25:]
        tails.append(f"--- {path.name} ends with:\n" + "\n".join(lines))
    return "\n".join(tails)


@pytest.fixture(scope="module")
def quick_run(model_repo, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("faults") / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "faults",
            "--quick",
            "--repository",
            str(model_repo),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,  # within pytest's 600 s
        start_new_session=True,
    )
    return done, out


def test_a_quick_run_completes_with_every_section(quick_run, model_repo):
    done, out = quick_run
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:] + logs(out)
    result = json.loads((out / "faults.json").read_text())
    assert result["mode"] == "quick" and result["errors"] == []
    assert set(result["sections"]) == set(SECTIONS)
    for name, section in result["sections"].items():
        assert section.get("error") is None, (name, section)
    # The table of goals is printed last, every goal measured.
    assert all(goal["met"] is not None for goal in result["goals"]), result["goals"]
    assert done.stdout.strip().splitlines()[-len(result["goals"]) :][0].startswith("0 5xx")
    assert (out / "faults.md").read_text().count("| ") >= len(result["goals"])
    # The repository given was copied, never changed.
    assert sorted(p.name for p in (model_repo / "image_classifier").iterdir()) == [
        "1",
        "config.pbtxt",
        "served_history.json",
    ]


def test_the_figures_agree_with_one_another(quick_run):
    done, out = quick_run
    sections = json.loads((out / "faults.json").read_text())["sections"]

    bad = sections["bad_inputs"]
    assert bad["cases"] == len(bad["results"]) > 40 and bad["as_expected"] <= bad["cases"]
    assert sum(bad["answers"].values()) >= bad["cases"]  # the service's own count of its answers

    fuzz = sections["fuzz"]
    assert fuzz["operations"]["tested"] > 5 and sum(fuzz["answers"].values()) > 0

    metrics = sections["metrics"]
    assert sum(metrics["statuses"].values()) == metrics["unknown_paths"] == 200
    assert metrics["new_series"] == metrics["series_after"] - metrics["series_before"]

    blocking = sections["blocking"]
    for request in blocking["requests"].values():
        assert request["probes"] >= 1 and request["status"] in (200, 413)
    assert blocking["healthz_max_ms"] == max(
        r["healthz_max_ms"] for name, r in blocking["requests"].items() if "array" not in name
    )

    swaps = sections["swaps"]
    assert swaps["swaps"] == swaps["requested"] == 4 and len(swaps["records"]) == 4
    assert swaps["requests"] == sum(swaps["statuses"].values()) > 0
    assert len(swaps["versions_answering"]) >= 2  # the swaps really changed what answered

    for name in ("triton_kill", "triton_stop"):
        fault = sections[name]
        assert fault["requests"] == sum(fault["statuses"].values())
        assert fault["statuses"].get("503", 0) > 0, fault  # the fault really happened
        assert fault["first_503_after_s"] is not None and fault["recovered"] is True
        assert fault["during_fault"]["requests"] <= fault["requests"]

    kills = sections["publish_kills"]
    assert len(kills["kills"]) == 8 and kills["killed_at_point"] == 8
    assert kills["unchanged"] + kills["published"] + kills["partial"] == 8
    assert kills["unchanged"] > 0 and kills["published"] > 0  # killed before and after the atomic step
