"""benchmarks/perf_triton against the session Triton server: the rows it returns are real
perf_analyzer and ONNX Runtime measurements, parsed and complete (no speed is asserted here)."""

from __future__ import annotations

import json

import pytest

from benchmarks.perf_triton import PerfTritonResult, measure

pytestmark = pytest.mark.triton


def test_measure_returns_parsed_rows_and_cpu_per_item(triton_server, model_repo, tmp_path):
    result = measure(
        model_repo,
        server=triton_server,
        concurrency=(1, 4),
        protocols=("grpc", "http"),
        window_ms=500,
        ceiling_s=0.5,
        out=tmp_path,
    )
    assert isinstance(result, PerfTritonResult)
    rows = result.rows()
    assert [(r["stack"], r["level"]) for r in rows] == [
        ("triton-grpc", 1),
        ("triton-grpc", 4),
        ("triton-http", 1),
        ("triton-http", 4),
        ("onnxruntime-in-process", 32),
        ("onnxruntime-in-process", 32),
    ]
    for row in rows:
        assert row["items_per_s"] > 0 and 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
    for row in rows[:4]:
        assert row["server_cpu_ms_per_item"] > 0 and row["client_cpu_ms_per_item"] > 0
        assert row["avg_batch"] >= 1.0
    assert rows[0]["avg_batch"] == pytest.approx(1.0)  # one request in flight: nothing to batch
    assert set(result.inprocess_cpu_ms_per_item) == {1, 8, 32}
    best = max(rows[:4], key=lambda r: r["items_per_s"])
    assert result.ratio == pytest.approx(best["items_per_s"] / result.ceiling)
    saved = json.loads((tmp_path / "perf_triton.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows)) and saved["goal"] == 0.9
    assert "of in-process ONNX Runtime at batch 32" in result.table()
    # perf_analyzer's own CSV rows are kept beside the JSON, one file per protocol.
    for protocol in ("grpc", "http"):
        merged = (tmp_path / f"minilm-short_{protocol}.csv").read_text().splitlines()
        assert merged[0].startswith("Concurrency,") and [line.split(",")[0] for line in merged[1:]] == [
            "1",
            "4",
        ]
