"""The batch job's parts without a service: reading JSONL and CSV (ids, bad lines, image files), the
output's resume point (a line a kill cut short is dropped; another job's output is refused), the job's
recorded input and options, and the routes it takes from the task registry. The job against the real
service, killed and resumed: tests/e2e/test_batch_job.py."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import InvalidArgument
from serving.batch import batch_routes, check_state, completed_lines, input_format, read_records

ROOT = Path(__file__).resolve().parents[2]


def test_batch_routes_come_from_the_task_registry():
    routes = batch_routes()
    # Every route that takes a list of texts or images; feature rows and named tensors are no file lines.
    assert sorted(routes) == ["/classify/batch", "/embed/batch", "/entities/batch", "/predict/batch"]
    assert (routes["/entities/batch"].kind, routes["/entities/batch"].answer_field) == ("text", "results")
    assert (routes["/embed/batch"].request_field, routes["/embed/batch"].reply) == ("texts", "embeddings")
    assert (routes["/predict/batch"].kind, routes["/predict/batch"].request_field) == ("image", "images")


def test_jsonl_records_keep_ids_and_carry_their_errors(tmp_path):
    path = tmp_path / "in.jsonl"
    lines = ['{"id": 7, "text": "a"}', '"bare string"', "", "{oops", '{"title": "no text"}']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    records = list(read_records(path, "jsonl", "text", "text"))
    assert [(r.index, r.id, r.value) for r in records[:2]] == [(0, 7, "a"), (1, None, "bare string")]
    assert records[2].error.startswith("line 4: not JSON")
    assert "line 5: no string field 'text' (has ['title']); pass --field NAME" == records[3].error
    assert len(records) == 4  # the blank line is no record


def test_csv_records_and_image_files(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG fake bytes")
    path = tmp_path / "in.csv"
    path.write_text('id,image\nx,a.png\ny,"missing, file.png"\n', encoding="utf-8")
    records = list(read_records(path, "csv", "image", "image"))
    assert records[0].id == "x" and base64.b64decode(records[0].value) == b"\x89PNG fake bytes"
    assert records[1].error.startswith("image: cannot read image 'missing, file.png'")
    with pytest.raises(InvalidArgument, match="has no column 'text'"):
        list(read_records(path, "csv", "text", "text"))
    assert input_format(path, None) == "csv" and input_format(tmp_path / "x.ndjson", None) == "jsonl"
    with pytest.raises(InvalidArgument, match="--format"):
        input_format(tmp_path / "x.txt", None)


def test_resume_point_drops_a_cut_line_and_refuses_another_output(tmp_path):
    out = tmp_path / "out.jsonl"
    assert completed_lines(out) == 0
    out.write_bytes(b'{"index":0,"x":1}\n{"index":1,"x":2}\n{"index":2,"x"')
    assert completed_lines(out) == 2
    assert out.read_bytes() == b'{"index":0,"x":1}\n{"index":1,"x":2}\n'  # the cut line is gone
    out.write_bytes(b'{"index":0}\n{"index":5}\n')
    with pytest.raises(InvalidArgument, match="line 2 is not the result of record 1"):
        completed_lines(out)


def test_changed_input_or_options_are_refused_on_resume(tmp_path):
    state = tmp_path / "out.jsonl.batch.json"
    first = {"input": "in.jsonl", "input_sha256": "a" * 64, "route": "/embed/batch", "field": "text"}
    state.write_text(json.dumps(first))
    check_state(state, first, resuming=True)
    with pytest.raises(InvalidArgument, match="input_sha256 'aaa.*' -> 'bbb"):
        check_state(state, {**first, "input_sha256": "b" * 64}, resuming=True)
    check_state(state, {**first, "route": "/classify/batch"}, resuming=False)  # a new output: no check


def test_bad_flags_are_named_before_any_request(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('"a"\n', encoding="utf-8")
    for flags, says in (
        (["--batch-size", "0"], "--batch-size: must be 1 or more"),
        (["--concurrency", "0"], "--concurrency: must be 1 or more"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "serving.batch", str(path), str(tmp_path / "o.jsonl"), *flags],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 2 and says in done.stderr, done.stderr
    assert not (tmp_path / "o.jsonl").exists()
