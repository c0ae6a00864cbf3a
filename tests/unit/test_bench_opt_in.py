"""The benchmark's opt-in stacks without servers: the workload with repeats (its share of known items,
new items really new), the cached-over-uncached ratios, and the report's sections for the caches and
the batch job. The stacks against the real servers: tests/e2e/test_benchmarks.py (batch) and the
figures in docs/figures.md (cache)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from core.errors import InvalidArgument

DATA = {
    "kind": "text",
    "version": None,
    "output": "embeddings",
    "texts": ["the cat sat on the mat today", "paris is the capital of france"],
    "token_ids": [[101, 1996, 4937, 2938, 102], [101, 3000, 2003, 1996, 102]],
}
DATA["bodies"] = [json.dumps({"text": t}) for t in DATA["texts"]]
# As benchmarks/locustfile.py writes them: the entry's token inputs (a BERT's three here).
DATA["triton_bodies"] = [
    json.dumps(
        {
            "inputs": [
                {"name": name, "shape": [1, len(ids)], "datatype": "INT64", "data": data}
                for name, data in (
                    ("input_ids", ids),
                    ("attention_mask", [1] * len(ids)),
                    ("token_type_ids", [0] * len(ids)),
                )
            ],
            "outputs": [{"name": "embeddings"}],
        }
    )
    for ids in DATA["token_ids"]
]


@pytest.mark.parametrize("triton", [False, True])
def test_repeats_send_known_items_at_the_rate_and_new_ones_otherwise(triton):
    from benchmarks.workloads import repeats

    known = set(DATA["triton_bodies"] if triton else DATA["bodies"])
    stream = repeats(DATA, 0.5, triton, random.Random(7))
    bodies = [next(stream) for _ in range(4000)]
    share = sum(b in known for b in bodies) / len(bodies)
    assert 0.47 < share < 0.53
    new = [json.loads(b) for b in bodies if b not in known]
    if triton:
        ids = {i for seq in DATA["token_ids"] for i in seq[1:-1]}
        for body in new[:50]:
            seq = body["inputs"][0]["data"]
            assert len(seq) == 5 and seq[0] == 101 and seq[-1] == 102 and set(seq[1:-1]) <= ids
            assert body["inputs"][1]["data"] == [1] * 5 and body["outputs"] == [{"name": "embeddings"}]
            # Every input the known bodies send, and no other.
            assert [i["name"] for i in body["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
            assert body["inputs"][2]["data"] == [0] * 5
    else:
        assert all(set(b) == {"text"} for b in new)
    never = repeats(DATA, 0.0, triton, random.Random(7))
    assert not any(next(never) in known for _ in range(500))
    always = repeats(DATA, 1.0, triton, random.Random(7))
    assert all(next(always) in known for _ in range(500))


def test_hit_rate_from_the_environment():
    from benchmarks.workloads import hit_rate, repeats

    assert hit_rate(None) is None and hit_rate("") is None and hit_rate("0.95") == 0.95
    for bad in ("1.5", "-0.1", "half"):
        with pytest.raises(InvalidArgument, match="give a share of repeats from 0 to 1"):
            hit_rate(bad)
    with pytest.raises(InvalidArgument, match="needs a text workload"):
        next(repeats({**DATA, "kind": "image"}, 0.5, False, random.Random()))


def _row(stack, cache, rate, throughput, p99, measured):
    return {
        "stack": stack,
        "cache": cache,
        "hit_rate": rate,
        "measured_hit_rate": measured,
        "throughput": throughput,
        "p50_ms": p99 / 2,
        "p99_ms": p99,
        "requests": 100,
        "failures": 0,
        "users": 8,
        "files": [],
    }


def test_cache_ratios_and_report_sections():
    from types import SimpleNamespace

    from benchmarks import report
    from benchmarks.caching import CacheBench
    from benchmarks.plans import PLANS

    bench = CacheBench(SimpleNamespace(out=Path("unused"), plan=PLANS["full"]))
    bench.rows = [
        _row("triton", "none", 0.5, 100.0, 40.0, 0.0),
        _row("triton", "triton", 0.5, 180.0, 20.0, 0.51),
        _row("bento", "bento-none", 0.95, 50.0, 80.0, 0.0),
        _row("bento", "redis", 0.95, 200.0, 20.0, 0.94),
        _row("bento", "redis", 0.0, 45.0, 90.0, 0.0),  # no row without the cache at 0: no ratio
    ]
    result = bench.result("minilm-short")
    assert [(r["cache"], r["hit_rate"]) for r in result["ratios"]] == [("triton", 0.5), ("redis", 0.95)]
    assert result["ratios"][0]["throughput_ratio"] == pytest.approx(1.8)
    assert result["ratios"][1]["p99_ratio"] == pytest.approx(0.25)

    summary = {
        "mode": "full",
        "started_at": "2026-12-01T00:00:00Z",
        "finished_at": "2026-12-01T00:05:00Z",
        "duration_s": 300.0,
        "command": "python -m benchmarks --stacks cache,batch",
        "workloads": {},
        "machine": {
            "cpu_model": "x",
            "cores": 2,
            "cores_usable": 2,
            "memory_gib": 8,
            "platform": "linux",
            "python": "3.11",
            "load_average_at_start": [1.0, 1.0, 1.0],
        },
        "versions": {},
        "cache": result,
        "batch_job": {
            "workload": "minilm-short",
            "records": 2000,
            "batch_size": 32,
            "concurrency": 4,
            "seconds": 20.0,
            "items_per_s": 100.0,
            "ceiling": {"batch_size": 32, "items_per_s": 400.0, "measured": None},
            "of_ceiling": 0.25,
            "command": "python -m serving.batch corpus.jsonl OUT --url BENTO_URL --batch-size 32",
        },
    }
    text = report.render_markdown(summary)
    assert "| Triton direct, response cache | 0.50 | 0.51 | 180.0 | 10.0 | 20.0 | 0 |" in text
    assert "| Bento, Redis cache | 0.95 | 4.00x | 0.25x |" in text
    assert "100.0 items/s in 20.0 s, 25% of the in-process ceiling at batch 32 (400.0 items/s)" in text
    table = report.summary_table(summary)
    assert "cache: Bento, Redis cache at hit rate 0.95: 4.00x the throughput, 0.25x the p99" in table
    assert "batch job: 100.0 items/s over 2000 records, 25% of the in-process ceiling" in table
