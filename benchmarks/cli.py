"""``python -m benchmarks``: the benchmark run, and the batching tuner.

python -m benchmarks [--quick] [--out DIR] [--repository DIR] [--workloads a,b] [--stacks a,b] [--json]
python -m benchmarks tune NAME --p99-ms X [--repository DIR] [--json]
python -m benchmarks faults [--quick] [--out DIR] [--repository DIR] [--sections a,b] [--json]
python -m benchmarks completion bash|zsh|tcsh

The run is the command itself (no sub-command); ``tune``, ``faults`` and ``completion`` are its
sub-commands, listed in --help. Each prints one document on stdout (its human form, or JSON with
``--json``), logs go to stderr, and a terminal shows a progress display while it runs (core/cli.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import sys
from pathlib import Path

from core.cli import add_completion_command, add_json_flag, add_version_flag, emit, progress
from core.errors import InvalidArgument, ToolkitError

log = logging.getLogger(__name__)

TIME_SCALE_ENV = "MODELPACK_BENCH_TIME_SCALE"
# The command name shell completion binds to (a function or alias running `python -m benchmarks`).
COMPLETION_COMMAND = "modelpack-bench"


def _csv_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _int_list(text: str) -> list[int]:
    try:
        return [int(item) for item in _csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def _preferred_sets(text: str) -> list[list[int]]:
    try:
        return [[int(x) for x in group.split("+")] for group in _csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of batch size sets, e.g. '8,16+32'"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    """The run's options, and the ``tune`` sub-command (so that --help lists it)."""
    from benchmarks.run import DEFAULT_STACKS, STACK_CHOICES
    from benchmarks.workloads import WORKLOADS

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        usage="python -m benchmarks [--quick] [--out DIR] [--repository DIR] [--workloads A,B] "
        "[--stacks A,B] [--time-scale F] [--json] [-v] [--version]\n"
        "       python -m benchmarks tune NAME --p99-ms X [...] (python -m benchmarks tune --help)\n"
        "       python -m benchmarks faults [--quick] [...] (python -m benchmarks faults --help)\n"
        "       python -m benchmarks completion bash|zsh|tcsh",
        description="Measure the ONNX Runtime ceiling, Triton direct (perf_analyzer, with CPU time per "
        "item), the Bento service and a FastAPI-eager baseline (Locust) in one run; write summary.json, "
        "report.md and plots. With the sub-command `tune`: Triton's batching settings, by measurement.",
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
        help=f"comma-separated subset of: {', '.join(STACK_CHOICES)} (default: {', '.join(DEFAULT_STACKS)}; "
        "cache: the response caches at hit rates 0, 0.5, 0.95; batch: a batch job against the ceiling)",
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=None,
        help=f"multiply every measurement duration by this factor (also ${TIME_SCALE_ENV}); for smoke tests",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="the run's time budget in seconds instead of the plan's (steps that would not fit are "
        "skipped and said so); e.g. room for the peers, which take a minute to start",
    )
    add_json_flag(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_version_flag(parser)
    commands = parser.add_subparsers(dest="command", title="sub-commands", metavar="COMMAND")
    add_tune_parser(commands)
    add_faults_parser(commands)
    add_completion_command(commands, parser, COMPLETION_COMMAND)
    return parser


def add_faults_parser(commands) -> argparse.ArgumentParser:
    from benchmarks.faults.run import SECTIONS

    parser = commands.add_parser(
        "faults",
        prog="python -m benchmarks faults",
        help="the fault suite: bad inputs, fuzzing, Triton killed and frozen, live swaps, killed publishes",
        description="Start a Triton and a Bento of the run's own over a copy of the repository and do what "
        "a hostile user and a bad day would: a matrix of bad inputs, a bounded schemathesis run of the "
        "OpenAPI schema, /healthz while the largest allowed request decodes, /metrics after many unknown "
        "paths, live version swaps under load, Triton SIGKILLed and SIGSTOPped under load, publishes "
        "SIGKILLed at each step. Writes faults.json (every figure) and faults.md (each goal met or not).",
    )
    parser.add_argument("--quick", action="store_true", help="the CI-sized run (a few minutes)")
    parser.add_argument(
        "--out", type=Path, help="run folder (default runs/faults-<UTC timestamp>/); must be new or empty"
    )
    parser.add_argument(
        "--repository",
        type=Path,
        help="model repository holding minilm and image_classifier (default: model_repository/ when it "
        "holds both, else they are built into the run folder); it is copied, never changed",
    )
    parser.add_argument(
        "--sections",
        type=_csv_list,
        default=None,
        help=f"comma-separated subset of: {', '.join(SECTIONS)} (default: all)",
    )
    add_json_flag(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def add_tune_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "tune",
        prog="python -m benchmarks tune",
        help="Triton's dynamic batching and instance count, chosen by measurement",
        description="Sweep Triton's dynamic batching (max_queue_delay_microseconds, preferred batch sizes) "
        "and instance count against the real server, measure each point with perf_analyzer, and write a "
        "tuning result (tuning.json: the point with the most throughput under the p99 target, the target, "
        "every curve, the date, the command) to the run folder. The repository is not touched: the "
        "printed `python -m converters configure NAME --tuning FILE` applies the result.",
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
        type=_int_list,
        default=None,
        help="max_queue_delay_microseconds values (default 0,1000,4000)",
    )
    parser.add_argument(
        "--preferred",
        type=_preferred_sets,
        default=None,
        help="preferred batch size sets, '+' within a set, e.g. '8,16+32' (default: 8 and 16+32)",
    )
    parser.add_argument("--instances", type=_int_list, default=None, help="instance counts (default 1,2)")
    parser.add_argument(
        "--concurrency",
        type=_int_list,
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
        help="run folder, new or empty: tuning.json, tuning.csv, raw perf_analyzer files under raw/ "
        "(default runs/tune-<name>-<UTC time>/)",
    )
    add_json_flag(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main_run(args: argparse.Namespace, argv: list[str]) -> int:
    from benchmarks import report
    from benchmarks.plans import PLANS
    from benchmarks.run import DEFAULT_STACKS, STACK_CHOICES, RunOptions, default_out_dir, run_benchmarks
    from benchmarks.workloads import get_workloads

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
    if args.budget_s is not None:
        if not 0 < args.budget_s <= 3600:
            raise InvalidArgument(
                f"--budget-s: must be in (0, 3600] seconds, got {args.budget_s:g}", field="budget_s"
            )
        plan = dataclasses.replace(plan, budget_s=args.budget_s)
    stacks = tuple(args.stacks) if args.stacks else DEFAULT_STACKS
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
    with progress(f"benchmarks ({plan.mode})", total=plan.budget_s, by_time=True):
        summary, paths = run_benchmarks(options)
    if summary["errors"]:
        print(f"{len(summary['errors'])} error(s), see report.md:", file=sys.stderr)
        for error in summary["errors"]:
            print(f"  {error.splitlines()[0]}", file=sys.stderr)
        sys.stderr.flush()
    emit(
        {
            "run_folder": str(options.out_dir),
            "files": {k: str(v) for k, v in paths.items()},
            "summary": summary,
        },
        as_json=args.json,
        # The summary table last.
        human=lambda: (
            f"run folder: {options.out_dir}\nreport: {paths['report']}\n" + report.summary_table(summary)
        ),
    )
    return 1 if summary["errors"] else 0


def main_tune(args: argparse.Namespace) -> int:
    from benchmarks.tune import TuneOptions, tune

    with progress(f"tuning {args.name}"):
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
            )
        )
    emit(
        {
            **json.loads(result.path.read_text()),
            "files": {"tuning": str(result.path), "csv": str(result.csv_path)},
        },
        as_json=args.json,
        human=result.table,
    )
    return 0 if result.chosen is not None else 1


def main_faults(args: argparse.Namespace, argv: list[str]) -> int:
    from datetime import UTC, datetime

    from benchmarks.faults.run import PLANS, SECTIONS, FaultOptions, run_faults, table

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request of the load otherwise
    sections = tuple(args.sections) if args.sections else SECTIONS
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise InvalidArgument(
            f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}", field="sections"
        )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = (args.out or Path("runs") / f"faults-{stamp}").absolute()
    with progress(f"fault suite ({'quick' if args.quick else 'full'})"):
        result, paths = run_faults(
            FaultOptions(
                out_dir=out,
                plan=PLANS["quick" if args.quick else "full"],
                repository=args.repository,
                sections=sections,
                command="python -m benchmarks " + shlex.join(argv),
            )
        )
    for error in result["errors"]:
        print(f"error: {error.splitlines()[0]}", file=sys.stderr)
    sys.stderr.flush()
    emit(
        {"run_folder": str(out), "files": {k: str(v) for k, v in paths.items()}, "result": result},
        as_json=args.json,
        human=lambda: f"run folder: {out}\nfigures: {paths['json']}\n" + table(result),  # the table last
    )
    return 1 if result["errors"] else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        if args.command == "completion":
            return args.func(args)
        if args.command == "faults":
            if argv[0] != "faults":
                raise InvalidArgument(
                    f"{argv[0]}: the options before `faults` are the run's; give the suite's after it: "
                    "python -m benchmarks faults [--quick] [--out DIR] ...",
                    field="command",
                )
            return main_faults(args, argv)
        if args.command == "tune":
            if argv[0] != "tune":
                raise InvalidArgument(
                    f"{argv[0]}: the options before `tune` are the run's; give tune's after it: "
                    "python -m benchmarks tune NAME --p99-ms X [--repository DIR] ...",
                    field="command",
                )
            return main_tune(args)
        return main_run(args, argv)
    except ToolkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted: every process this run started was stopped", file=sys.stderr)
        return 130
