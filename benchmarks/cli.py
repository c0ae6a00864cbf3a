"""``python -m benchmarks``: the benchmark run, and the batching tuner.

python -m benchmarks [--quick] [--out DIR] [--repository DIR] [--workloads a,b] [--stacks a,b]
python -m benchmarks tune NAME --p99-ms X [--repository DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

from core.errors import InvalidArgument, ToolkitError

log = logging.getLogger(__name__)

TIME_SCALE_ENV = "MODELPACK_BENCH_TIME_SCALE"


def _csv_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def run_parser() -> argparse.ArgumentParser:
    from benchmarks.run import STACK_CHOICES
    from benchmarks.workloads import WORKLOADS

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure the ONNX Runtime ceiling, Triton direct (perf_analyzer), the Bento service "
        "and a FastAPI-eager baseline (Locust) in one run; write summary.json, report.md and plots. "
        "`python -m benchmarks tune --help` for the batching tuner.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="short run (at most 90 s) instead of the full one (5 min)"
    )
    parser.add_argument(
        "--out", type=Path, help="run folder (default runs/bench-<UTC timestamp>/); must be new or empty"
    )
    parser.add_argument(
        "--repository",
        type=Path,
        help="model repository holding minilm and image_classifier (default: model_repository/ "
        "when it holds both, else they are built into the run folder)",
    )
    parser.add_argument(
        "--workloads",
        type=_csv_list,
        default=None,
        help=f"comma-separated subset of: {', '.join(WORKLOADS)} (default: all)",
    )
    parser.add_argument(
        "--stacks",
        type=_csv_list,
        default=None,
        help=f"comma-separated subset of: {', '.join(STACK_CHOICES)} (default: all)",
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=None,
        help=f"multiply every measurement duration by this factor (also ${TIME_SCALE_ENV}); for smoke tests",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def tune_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks tune",
        description="Sweep Triton's dynamic batching (max_queue_delay_microseconds, preferred batch sizes) "
        "and instance count against the real server, measure each point with perf_analyzer, and write the "
        "config with the most throughput under the p99 target back to the repository (curve saved beside "
        "it).",
    )
    parser.add_argument("name", help="model entry in the repository, e.g. minilm")
    parser.add_argument("--p99-ms", type=float, required=True, help="p99 latency target in milliseconds")
    parser.add_argument(
        "--repository", type=Path, default=None, help="model repository (default model_repository/)"
    )
    parser.add_argument(
        "--workload",
        default=None,
        help="inputs to measure with (default: minilm-short for text entries, image for images)",
    )
    parser.add_argument(
        "--delays-us",
        type=lambda s: [int(x) for x in _csv_list(s)],
        default=None,
        help="max_queue_delay_microseconds values (default 0,1000,4000)",
    )
    parser.add_argument(
        "--preferred",
        type=lambda s: [[int(x) for x in g.split("+")] for g in _csv_list(s)],
        default=None,
        help="preferred batch size sets, '+' within a set, e.g. '8,16+32' (default: 8 and 16+32)",
    )
    parser.add_argument(
        "--instances",
        type=lambda s: [int(x) for x in _csv_list(s)],
        default=None,
        help="instance counts (default 1,2)",
    )
    parser.add_argument(
        "--concurrency",
        type=lambda s: [int(x) for x in _csv_list(s)],
        default=None,
        help="perf_analyzer concurrency levels measured at each point (default 1,4,8,16)",
    )
    parser.add_argument(
        "--window-ms", type=int, default=1000, help="perf_analyzer measurement window (default 1000)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for tuning.json/.csv, raw perf_analyzer files under its raw/ (default: the curve "
        "beside the config in <repo>/<name>/, raw files under runs/tune-<name>-<time>/)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="measure and report, but do not write the config"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main_run(argv: list[str]) -> int:
    from benchmarks import report
    from benchmarks.plans import PLANS
    from benchmarks.run import STACK_CHOICES, RunOptions, default_out_dir, run_benchmarks
    from benchmarks.workloads import get_workloads

    args = run_parser().parse_args(argv)
    _setup_logging(args.verbose)
    plan = PLANS["quick" if args.quick else "full"]
    scale = args.time_scale
    if scale is None and os.environ.get(TIME_SCALE_ENV):
        try:
            scale = float(os.environ[TIME_SCALE_ENV])
        except ValueError:
            raise InvalidArgument(
                f"${TIME_SCALE_ENV}: {os.environ[TIME_SCALE_ENV]!r} is not a number", field=TIME_SCALE_ENV
            ) from None
    if scale is not None:
        plan = plan.scaled(scale)
    stacks = tuple(args.stacks) if args.stacks else STACK_CHOICES
    unknown = [s for s in stacks if s not in STACK_CHOICES]
    if unknown:
        raise InvalidArgument(
            f"--stacks: unknown {', '.join(unknown)}; choose from {', '.join(STACK_CHOICES)}", field="stacks"
        )
    options = RunOptions(
        out_dir=(args.out or default_out_dir()).absolute(),
        plan=plan,
        workloads=get_workloads(args.workloads),
        stacks=stacks,
        repository=args.repository,
        command="python -m benchmarks " + shlex.join(argv) if argv else "python -m benchmarks",
    )
    summary, paths = run_benchmarks(options)
    if summary["errors"]:
        print(f"{len(summary['errors'])} error(s), see report.md:", file=sys.stderr)
        for error in summary["errors"]:
            print(f"  {error.splitlines()[0]}", file=sys.stderr)
        sys.stderr.flush()
    print(f"run folder: {options.out_dir}")
    print(f"report: {paths['report']}")
    print(report.summary_table(summary))  # last
    return 1 if summary["errors"] else 0


def main_tune(argv: list[str]) -> int:
    from benchmarks.tune import TuneOptions, tune

    args = tune_parser().parse_args(argv)
    _setup_logging(args.verbose)
    result = tune(
        TuneOptions(
            name=args.name,
            p99_ms=args.p99_ms,
            repository=args.repository,
            workload=args.workload,
            delays_us=args.delays_us,
            preferred=args.preferred,
            instances=args.instances,
            concurrency=args.concurrency,
            window_ms=args.window_ms,
            out_dir=args.out,
            write=not args.dry_run,
        )
    )
    print(result.table())
    return 0 if result.chosen is not None else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "tune":
            return main_tune(argv[1:])
        return main_run(argv)
    except ToolkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted: every process this run started was stopped", file=sys.stderr)
        return 130
