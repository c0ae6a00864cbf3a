"""The fault suite's own arithmetic, without servers: the repository digest a killed publish is judged
by, the goals read from the sections, the load's summary, the CLI's refusals."""

from __future__ import annotations

import json
import shutil

import pytest

from benchmarks.faults.load import Outcome, summarise
from benchmarks.faults.publish import tree_digest
from benchmarks.faults.run import goals


def test_tree_digest_sees_bytes_names_and_modes_but_not_the_times_of_a_publish(model_repo, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(model_repo / "image_classifier", repo / "image_classifier")
    before = tree_digest(repo)
    manifest = repo / "image_classifier" / "1" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["created_at"] = "2000-01-01T00:00:00Z"
    manifest.write_text(json.dumps(data))
    history = repo / "image_classifier" / "served_history.json"
    recorded = json.loads(history.read_text())
    for entry in recorded["entries"]:
        entry["at"] = "2000-01-01T00:00:00Z"
    history.write_text(json.dumps(recorded))
    assert tree_digest(repo) == before  # two runs of one publish differ only there
    recorded["entries"][-1]["served"] = [7]
    history.write_text(json.dumps(recorded))
    assert tree_digest(repo) != before
    history.write_text(json.dumps({**recorded, "entries": [{**recorded["entries"][-1], "served": [1]}]}))
    config = repo / "image_classifier" / "config.pbtxt"
    mode = config.stat().st_mode & 0o777
    config.chmod(mode ^ 0o004)
    assert tree_digest(repo) != before
    config.chmod(mode)
    (repo / "image_classifier" / "stray").write_text("")
    assert tree_digest(repo) != before


def test_summary_counts_lost_hung_and_wrong_answers():
    outcomes = [
        Outcome(0.0, 0.1, 200, version=1, right=True),
        Outcome(0.0, 0.2, 200, version=1, right=False),  # a 200 with another answer: wrong
        Outcome(0.0, 0.3, 503, retry_after="1"),
        Outcome(0.0, 9.0, 503),  # slower than the threshold: hung
        Outcome(0.0, 0.5, None, error="ConnectError"),  # no answer: lost
        Outcome(0.0, 0.5, 500),  # not 200 or 503: wrong
    ]
    summary = summarise(outcomes, hung_s=3.0)
    assert summary["requests"] == 6 and summary["statuses"] == {"200": 2, "503": 2, "lost": 1, "500": 1}
    assert (summary["lost"], summary["hung"], summary["wrong"]) == (1, 1, 2)
    assert summary["slowest_s"] == 9.0


def test_goals_are_met_or_not_from_the_figures_and_unmeasured_when_a_section_did_not_run():
    sections = {
        "bad_inputs": {"5xx": 0, "bento_restarted": False},
        "fuzz": {"5xx": 2, "bento_restarted": False},
        "blocking": {"healthz_max_ms": 40.0, "array_healthz_max_ms": 140.0},
        "triton_kill": {
            "first_503_after_s": 0.3,
            "hung": 0,
            "lost": 0,
            "recovered": True,
            "bento_restarted": False,
        },
        "publish_kills": {"kills": [{}] * 8, "partial": 0},
    }
    by_name = {g["goal"]: g for g in goals(sections)}
    assert by_name["0 5xx and 0 crashes (bad inputs and fuzzing)"]["met"] is False
    assert by_name["0 5xx and 0 crashes (bad inputs and fuzzing)"]["figure"] == "2 5xx, 0 crashes"
    assert by_name["/healthz under 100 ms while the largest allowed image request decodes"]["met"] is True
    assert (
        by_name["/healthz under 100 ms while the largest allowed pixel array is parsed and decoded"]["met"]
        is False
    )
    assert by_name["first 503 under 1 s after Triton dies"]["met"] is True
    assert by_name["recovery without a restart of the Bento"]["met"] is True
    assert by_name["publishes byte-identical after every kill"]["met"] is True
    assert by_name["100 swaps under load: 0 hangs, 0 failed requests"]["met"] is None  # not run
    assert by_name["/metrics bounded after many unknown paths"]["met"] is None


def test_the_cli_refuses_unknown_sections_and_options_before_the_subcommand(capsys):
    from benchmarks.cli import main

    assert main(["faults", "--sections", "fuzz,nope"]) == 2
    assert "--sections: unknown nope" in capsys.readouterr().err
    assert main(["--quick", "faults"]) == 2
    assert "the options before `faults` are the run's" in capsys.readouterr().err


@pytest.mark.parametrize("limit", [1000, 210_000])
def test_the_largest_array_probe_fits_the_limit_the_service_counts(limit):
    import orjson

    from benchmarks.faults.probes import largest_array_side

    side = largest_array_side(limit)
    count = lambda s: (lambda b: b.count(b",") + b.count(b"[") + b.count(b"{"))(  # noqa: E731
        orjson.dumps({"array": [[[0, 0, 0]] * s] * s})
    )
    assert count(side) <= limit < count(side + 1)
