"""The batch job against the real service (the session's ``bento_server``): killed with SIGKILL in the
middle and run again, the output holds every record exactly once, in input order, and the records done
before the kill are not sent again; the results are the service's own; a CSV of image files through
/predict/batch with a missing file recorded, not lost; progress on a terminal only."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from converters.sentences import SENTENCES

pytestmark = [pytest.mark.triton, pytest.mark.bento, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
RECORDS = 400


def _command(bento_server, source: Path, output: Path, *flags: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "serving.batch",
        str(source),
        str(output),
        "--url",
        bento_server.url,
        *flags,
    ]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_killed_midway_then_resumed_every_record_once_in_order(bento_server, tmp_path):
    source = tmp_path / "corpus.jsonl"
    with open(source, "w", encoding="utf-8") as handle:
        for i in range(RECORDS):
            handle.write(
                json.dumps({"id": f"doc-{i}", "text": f"{SENTENCES[i % len(SENTENCES)]} #{i}"}) + "\n"
            )
    output = tmp_path / "embeddings.jsonl"
    command = _command(bento_server, source, output, "--batch-size", "8", "--concurrency", "2")

    job = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while job.poll() is None and time.monotonic() < deadline:
        if output.exists() and output.read_bytes().count(b"\n") >= 80:
            break
        time.sleep(0.02)
    assert job.poll() is None, f"the job ended before it could be killed: {job.communicate()}"
    job.send_signal(signal.SIGKILL)
    job.communicate()
    written = output.read_bytes().count(b"\n")
    assert 80 <= written < RECORDS

    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["records"] == RECORDS and summary["errors"] == 0
    # Resumed after the complete lines the kill left (a line it cut short is dropped and redone); none
    # of them was sent again.
    assert summary["resumed_after"] == written
    assert summary["sent_items"] == RECORDS - summary["resumed_after"]

    lines = _lines(output)
    assert [line["index"] for line in lines] == list(range(RECORDS))
    assert [line["id"] for line in lines] == [f"doc-{i}" for i in range(RECORDS)]
    assert all(line["model"] == "minilm" and len(line["embedding"]) == 384 for line in lines)

    # The results are the service's own answers for those texts.
    sample = [0, written - 1, RECORDS - 1]
    texts = [json.loads(source.read_text().splitlines()[i])["text"] for i in sample]
    direct = bento_server.client.post("/embed/batch", json={"texts": texts}).json()["embeddings"]
    np.testing.assert_allclose([lines[i]["embedding"] for i in sample], direct, atol=1e-5)

    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and json.loads(again.stdout)["sent_items"] == 0  # complete: nothing sent
    assert _lines(output) == lines


def test_a_changed_input_is_refused_on_resume(bento_server, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('"one"\n"two"\n', encoding="utf-8")
    output = tmp_path / "out.jsonl"
    command = _command(bento_server, source, output)
    assert subprocess.run(command, cwd=ROOT, capture_output=True, timeout=120).returncode == 0
    source.write_text('"one"\n"two"\n"three"\n', encoding="utf-8")
    refused = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "started with another input or options" in refused.stderr
    assert len(_lines(output)) == 2


def test_images_from_a_csv_with_a_missing_file_and_a_bad_one(bento_server, tmp_path):
    from PIL import Image

    for name, color in (("red.png", (255, 0, 0)), ("blue.png", (0, 0, 255))):
        Image.new("RGB", (8, 8), color).save(tmp_path / name)
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    source = tmp_path / "images.csv"
    source.write_text("id,image\nr,red.png\nm,missing.png\nx,broken.png\nb,blue.png\n", encoding="utf-8")
    output = tmp_path / "labels.jsonl"
    done = subprocess.run(
        _command(bento_server, source, output, "--route", "/predict/batch", "--top-k", "2"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = _lines(output)
    assert [(line["index"], line["id"]) for line in lines] == [(0, "r"), (1, "m"), (2, "x"), (3, "b")]
    assert len(lines[0]["predictions"]) == 2 and len(lines[3]["predictions"]) == 2
    assert lines[1]["status"] is None and "cannot read image 'missing.png'" in lines[1]["error"]
    # The service refused the broken file: the batch was split until that record was alone.
    assert lines[2]["status"] == 400 and "this model takes PNG, JPEG files" in lines[2]["error"]
    assert lines[2]["error"].startswith("images[0]: ")  # alone in its request
    assert json.loads(done.stdout)["errors"] == 2


def test_progress_on_a_terminal_and_silence_otherwise(bento_server, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(f"line {i}") + "\n" for i in range(10)), encoding="utf-8")
    quiet = subprocess.run(
        _command(bento_server, source, tmp_path / "quiet.jsonl"), cwd=ROOT, capture_output=True, timeout=120
    )
    assert quiet.returncode == 0 and quiet.stderr == b""

    leader, follower = pty.openpty()
    try:
        job = subprocess.run(
            _command(bento_server, source, tmp_path / "tty.jsonl"),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=follower,
            timeout=120,
        )
        os.close(follower)
        follower = -1
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if follower != -1:
            os.close(follower)
        os.close(leader)
    assert job.returncode == 0
    assert b"10/10 (100%) records" in shown
