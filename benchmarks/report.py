"""What a run leaves behind: ``summary.json`` (every figure), ``report.md`` (tables, ratios, goals,
machine facts, package versions), PNG plots, and the summary table printed last.

The summary is plain data (dicts and lists), so the report can be rebuilt from a ``summary.json``
alone: ``render_markdown(json.load(...))``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from importlib import metadata
from pathlib import Path

from benchmarks.parsers import PERCENTILES, Point
from benchmarks.stats import best, throughput_at_p99
from core.errors import InvalidArgument

log = logging.getLogger(__name__)

# Stacks, in report order, with how each was measured.
STACKS: dict[str, str] = {
    "ceiling": "ONNX Runtime in-process (x = batch size)",
    "triton-grpc": "Triton direct, perf_analyzer gRPC (x = concurrency)",
    "triton-http": "Triton direct, perf_analyzer HTTP (x = concurrency)",
    "bento": "Bento service, Locust (x = users)",
    "fastapi-eager": "FastAPI + eager PyTorch, Locust (x = users)",
    "triton-text-grpc": "Triton direct, texts to NAME_text, perf_analyzer gRPC (x = concurrency)",
    "triton-text-http": "Triton direct, texts to NAME_text, perf_analyzer HTTP (x = concurrency)",
    "bento-tokenize-service": "Bento tokenizing, token tensors to NAME, Locust (x = users)",
    "bento-tokenize-triton": "Bento sending texts to NAME_text, Locust (x = users)",
    "bento-no-coalesce": "Bento with batching.coalesce off (Triton's batcher alone), Locust (x = users)",
    "bento-no-split": "Bento with batching.split_lengths off (merged texts padded to the longest), Locust "
    "(x = users)",
    "infinity": "peer: Infinity 0.0.78, --engine optimum (ONNX), Locust (x = users)",
    "litserve": "peer: LitServe 0.2.19 + ONNX Runtime on the entry's model.onnx, Locust (x = users)",
}
# Servers a user would pick instead of ours (benchmarks/peers), measured with the same Locust sweep.
PEERS = ("infinity", "litserve")
# Stacks compared at equal p99 (``at_equal_p99``): (stack, against), the second's p99 at its best
# throughput is the target. The Coalescer against Triton's batcher alone, both ways; Bento against peers.
EQUAL_P99_PAIRS = (
    ("bento", "bento-no-coalesce"),
    ("bento-no-coalesce", "bento"),
    ("bento", "bento-no-split"),
    *(("bento", peer) for peer in PEERS),
)
# Side-by-side comparisons of one run: (stack, over stack), best throughput against best throughput.
PAIRS = (
    ("bento-tokenize-triton", "bento-tokenize-service"),
    ("triton-text-grpc", "triton-grpc"),
    ("triton-text-http", "triton-http"),
)
PACKAGES = (
    "onnxruntime",
    "torch",
    "transformers",
    "tokenizers",
    "tritonclient",
    "bentoml",
    "locust",
    "fastapi",
    "uvicorn",
    "numpy",
)
# The goals of the project (issues 5 and 16): stack -> (compared with, target, how the ratio is
# taken, direction: "min" = at least the target, "max" = at most, workloads: "all" | "mixed").
GOALS = (
    ("triton", "ceiling", 0.90, "Triton direct (best of gRPC/HTTP) >= 90% of the in-process ceiling"),
    ("bento", "ceiling", 0.80, "Bento >= 80% of the in-process ceiling"),
    ("bento", "fastapi-eager@p99", 4.0, "Bento >= 4x the FastAPI-eager baseline at equal p99"),
    (
        "triton@c1",
        "ceiling@b1",
        1.3,
        "Triton direct at concurrency 1: p50 within 1.3x of in-process batch-1 latency",
        "max",
        "all",
    ),
    (
        "bento@c1",
        "ceiling@b1",
        1.3,
        "Bento at 1 user: p50 within 1.3x of in-process batch-1 latency",
        "max",
        "all",
    ),
    ("bento", "best-peer@p99", 1.0, "Bento >= the best peer's throughput at equal p99", "min", "all"),
    ("bento", "ceiling", 0.85, "Bento >= 85% of the length-sorted ceiling in tokens/s", "min", "mixed"),
)


def new_run_folder(path: Path) -> Path:
    """The folder a run (or a tuning run) writes into: created, or refused when it already holds files
    (a report beside another run's raw files would be wrong about them)."""
    if path.exists() and any(path.iterdir()):
        raise InvalidArgument(f"--out: {path} is not empty; give a new folder", field="out")
    path.mkdir(parents=True, exist_ok=True)
    return path


def machine_facts() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        memory_gib = None
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(memory_gib, 1) if memory_gib else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": list(os.getloadavg()),
    }


def package_versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def stack_summary(points: list[Point], **info) -> dict:
    """One stack of one workload: its points, its best point, and what produced them."""
    top = best(points)
    return {"points": [p.to_dict() for p in points], "best": top.to_dict() if top else None, **info}


def _points(stack: dict | None) -> list[Point]:
    return [Point.from_dict(p) for p in (stack or {}).get("points", [])]


def compute_ratios(stacks: dict[str, dict]) -> dict:
    """Served over ceiling (best against best), and Bento over the FastAPI baseline at equal p99
    (the baseline's p99 at its best throughput is the target; each stack's throughput within it)."""
    ratios: dict = {}
    ceiling = best(_points(stacks.get("ceiling")))
    for name in STACKS:
        top = best(_points(stacks.get(name)))
        if name != "ceiling" and ceiling and top:
            ratios[f"{name}/ceiling"] = top.throughput / ceiling.throughput
    for name, other in PAIRS:
        top, theirs = best(_points(stacks.get(name))), best(_points(stacks.get(other)))
        if top and theirs:
            ratios[f"{name}/{other}"] = top.throughput / theirs.throughput
    triton = [ratios[k] for k in ("triton-grpc/ceiling", "triton-http/ceiling") if k in ratios]
    if triton:
        ratios["triton/ceiling"] = max(triton)
    ratios.update(low_load_ratios(stacks))
    ratios.update(cpu_ratios(stacks))
    for name, other in EQUAL_P99_PAIRS:
        compared = at_equal_p99(stacks, name, other)
        if compared is not None:
            ratios[f"{name}/{other}@p99"] = compared
    peers = {peer: ratios[f"bento/{peer}@p99"] for peer in PEERS if f"bento/{peer}@p99" in ratios}
    if peers:  # the goal is judged against the peer that does best against the Bento
        peer = min(peers, key=lambda p: peers[p]["ratio"])
        ratios["bento/best-peer@p99"] = {**peers[peer], "peer": peer}
    baseline, bento = _points(stacks.get("fastapi-eager")), _points(stacks.get("bento"))
    base_best = best(baseline)
    if base_best and bento:
        target = base_best.p99
        bento_tp = throughput_at_p99(bento, target)
        ratios["bento/fastapi-eager@p99"] = {
            "p99_ms": target,
            "fastapi-eager": base_best.throughput,
            "bento": bento_tp,
            "ratio": (bento_tp / base_best.throughput) if bento_tp else 0.0,
        }
    return ratios


def at_equal_p99(stacks: dict[str, dict], name: str, other: str) -> dict | None:
    """``name``'s most throughput with p99 within ``other``'s p99 at ``other``'s best throughput,
    over that best throughput (linear between measured levels, ``throughput_at_p99``)."""
    mine, theirs = _points(stacks.get(name)), best(_points(stacks.get(other)))
    if not mine or theirs is None:
        return None
    reached = throughput_at_p99(mine, theirs.p99)
    return {
        "p99_ms": theirs.p99,
        other: theirs.throughput,
        name: reached,
        "ratio": (reached / theirs.throughput) if reached else 0.0,
    }


def low_load_ratios(stacks: dict[str, dict]) -> dict:
    """The low end of the curve: each stack at concurrency (or users) 1 against ONNX Runtime in
    process at batch 1: p50 and p99 over the ceiling's p50 and p99 (1.0 = no serving cost at all).
    ``triton@c1`` is the better of gRPC and HTTP (by p50)."""
    ceiling = {p.concurrency: p for p in _points(stacks.get("ceiling"))}.get(1)
    if ceiling is None:
        return {}
    ratios = {}
    for name in STACKS:
        one = {p.concurrency: p for p in _points(stacks.get(name))}.get(1) if name != "ceiling" else None
        if one is not None:
            ratios[f"{name}@c1/ceiling@b1"] = {
                "p50": one.p50 / ceiling.p50,
                "p99": one.p99 / ceiling.p99,
                "p50_ms": one.p50,
                "p99_ms": one.p99,
                "ceiling_p50_ms": ceiling.p50,
                "ceiling_p99_ms": ceiling.p99,
            }
            breakdown = (one.extra or {}).get("breakdown_ms")
            if breakdown:
                ratios[f"{name}@c1/ceiling@b1"]["fixed_cost_ms"] = fixed_cost(breakdown, ceiling.p50)
    triton = [ratios[k] for k in ("triton-grpc@c1/ceiling@b1", "triton-http@c1/ceiling@b1") if k in ratios]
    if triton:
        ratios["triton@c1/ceiling@b1"] = min(triton, key=lambda r: r["p50"])
    return ratios


def cpu_ratios(stacks: dict[str, dict]) -> dict:
    """CPU time per item, which other load on a shared machine distorts far less than throughput
    (measured minutes apart, the ceiling and a stack can see different load): ONNX Runtime alone on
    one thread (the least over batch sizes) over each stack's least CPU per item over its levels
    (its server processes: Triton; the Bento and Triton; a peer's process family). 1.0 = serving
    costs nothing beyond the model; key ``STACK/ceiling@cpu``."""
    alone = [
        p["extra"]["cpu_ms_per_item"]["1"]
        for p in (stacks.get("ceiling") or {}).get("points", [])
        if "1" in (p.get("extra") or {}).get("cpu_ms_per_item", {})
    ]
    if not alone:
        return {}
    ratios = {}
    for name in STACKS:
        spent = [
            p["extra"]["server_cpu_ms_per_item"]
            for p in (stacks.get(name) or {}).get("points", [])
            if name != "ceiling" and (p.get("extra") or {}).get("server_cpu_ms_per_item")
        ]
        if spent:
            ratios[f"{name}/ceiling@cpu"] = min(alone) / min(spent)
    return ratios


def fixed_cost(breakdown: dict, ceiling_ms: float) -> dict:
    """Where a lone request's time goes beyond ONNX Runtime's own batch-1 call, from perf_analyzer's
    breakdown at concurrency 1 (means, ms): the transport (client send/receive, network, Triton's
    request handling), the queue, the python backend's input and output tensors, and what the backend's
    execute took beyond the in-process call (stub IPC, reading and checking inputs, ONNX Runtime's
    session settings)."""
    get = breakdown.get
    return {
        "transport": round(
            (get("Client Send") or 0) + (get("Network+Server Send/Recv") or 0) + (get("Client Recv") or 0), 3
        ),
        "queue": round(get("Server Queue") or 0, 3),
        "input_output": round((get("Server Compute Input") or 0) + (get("Server Compute Output") or 0), 3),
        "execute_beyond_onnxruntime": round((get("Server Compute Infer") or 0) - ceiling_ms, 3),
    }


def tokens_per_s(stacks: dict[str, dict], mean_tokens: float | None) -> dict:
    """Best throughput of each stack in tokens/s (real tokens, padding excluded): items/s times the
    workload's mean tokens per item (every stack cycles through the same items)."""
    if not mean_tokens:
        return {}
    return {
        name: data["best"]["throughput"] * mean_tokens
        for name, data in stacks.items()
        if data and data.get("best")
    }


def equal_p99_table(stacks: dict[str, dict]) -> list[dict]:
    """Bento against the baseline at every p99 the baseline was measured at: each stack's most
    throughput within that p99 (``throughput_at_p99``), and their ratio. The goal is judged at the
    baseline's best point (``compute_ratios``); this shows the rest of the curve."""
    baseline, bento = _points(stacks.get("fastapi-eager")), _points(stacks.get("bento"))
    rows = []
    for target in sorted({p.p99 for p in baseline}):
        base_tp, bento_tp = throughput_at_p99(baseline, target), throughput_at_p99(bento, target)
        rows.append(
            {
                "p99_ms": target,
                "fastapi-eager": base_tp,
                "bento": bento_tp,
                "ratio": (bento_tp or 0.0) / base_tp if base_tp else None,
            }
        )
    return rows


def cpu_per_item(stacks: dict[str, dict]) -> dict | None:
    """CPU milliseconds per item at each Triton level (the server's, and perf_analyzer's on the same
    cores) beside what ONNX Runtime alone spends per item on one thread at each batch size (the
    ceiling). Throughput on a shared machine moves with whatever else runs; CPU time per item does not,
    so this is where serving overhead shows (gRPC/HTTP, batching, the python backend's IPC, copies)."""
    triton = []
    for stack in ("triton-grpc", "triton-http"):
        for p in (stacks.get(stack) or {}).get("points", []):
            extra = p.get("extra") or {}
            if "server_cpu_ms_per_item" in extra:
                triton.append(
                    {
                        "stack": stack,
                        "concurrency": p["concurrency"],
                        "items_per_s": p["throughput"],
                        "avg_batch": extra.get("avg_batch"),
                        "server_ms": extra["server_cpu_ms_per_item"],
                        "perf_analyzer_ms": extra["client_cpu_ms_per_item"],
                    }
                )
    alone = [
        {"batch": p["concurrency"], "cpu_ms_per_item": p["extra"]["cpu_ms_per_item"]["1"]}
        for p in (stacks.get("ceiling") or {}).get("points", [])
        if "1" in (p.get("extra") or {}).get("cpu_ms_per_item", {})
    ]
    if not triton and not alone:
        return None
    return {"triton": triton, "onnxruntime_one_thread": alone}


def evaluate_goals(ratios: dict, *, mixed: bool = False) -> list[dict]:
    """Each goal that applies to the workload (``mixed``: a mixed-length one), met or not (None: a
    stack it needs was not measured). A low-load goal is judged on p50 (p99 is beside it)."""
    goals = []
    for stack, against, target, text, *rest in GOALS:
        direction, workloads = rest if rest else ("min", "all")
        if workloads == "mixed" and not mixed:
            continue
        key = f"{stack}/{against}"
        value = ratios.get(key)
        if isinstance(value, dict):
            value = value["ratio"] if "ratio" in value else value["p50"]
        met = None
        if value is not None:
            met = bool(value >= target) if direction == "min" else bool(value <= target)
        goals.append(
            {
                "goal": text,
                "key": key,
                "target": target,
                "direction": direction,
                "value": value,
                "met": met,
                # How far off: the factor still to gain (min) or to lose (max); None when met.
                "missed_by": _missed_by(value, target, direction) if met is False else None,
            }
        )
    return goals


def _missed_by(value: float, target: float, direction: str) -> float | None:
    if direction == "min":
        return round(target / value, 2) if value else None
    return round(value / target, 2)


# ---- rendering -----------------------------------------------------------------------------------


def _fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio_text(value, factor: bool = False) -> str:
    """A fraction of the ceiling as a percentage; a comparison of two stacks (``factor``) as "2.50x"."""
    if value is None:
        return "not measured"
    return f"{value:.2f}x" if factor else f"{value * 100:.0f}%"


def _is_factor(goal: dict) -> bool:
    """Goals against another stack or latency (key with "@") read as factors, the rest as shares."""
    return "@" in goal["key"]


def _goal_line(goal: dict) -> str:
    if goal["met"] is None:
        return f"- **not measured**: {goal['goal']} (a stack it needs did not run; see Errors and notes)"
    factor = _is_factor(goal)
    target = f"{goal['target']:.2g}x" if factor else f"{goal['target'] * 100:.0f}%"
    verdict = "met" if goal["met"] else "NOT met"
    measured = _ratio_text(goal["value"], factor=factor)
    missed = f", missed by {goal['missed_by']:.2f}x" if goal.get("missed_by") else ""
    return f"- **{verdict}**: {goal['goal']}: measured {measured} (goal {target}{missed})"


def _ratio_cell(key: str, value) -> str:
    """A ratio of the summary as text: a share of the ceiling, a latency factor at concurrency 1, or
    two stacks at equal p99 (``at_equal_p99``'s dict: the target, both stacks' items/s)."""
    if not isinstance(value, dict):
        return _ratio_text(value)
    if "p50" in value:
        cost = value.get("fixed_cost_ms")
        parts = ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in (cost or {}).items())
        return (
            f"p50 {value['p50']:.2f}x ({value['p50_ms']:.2f} ms against {value['ceiling_p50_ms']:.2f}), "
            f"p99 {value['p99']:.2f}x ({value['p99_ms']:.2f} ms against {value['ceiling_p99_ms']:.2f})"
            + (f"; fixed cost (ms): {parts}" if cost else "")
        )
    stacks = [k for k in value if k not in ("p99_ms", "ratio", "peer")]
    figures = ", ".join(
        f"{stack} {'none within it' if not value[stack] else f'{value[stack]:.1f}/s'}" for stack in stacks
    )
    peer = f" (best peer: {value['peer']})" if value.get("peer") else ""
    return f"{_ratio_text(value['ratio'], factor=True)}{peer} (at p99 <= {value['p99_ms']:.1f} ms: {figures})"


def _files_text(files: list[str]) -> str:
    """A few files by name; more as their common prefix and a count (Locust writes 4 per level)."""
    if len(files) <= 2:
        return ", ".join(f"`{f}`" for f in files)
    return f"`{os.path.commonprefix(files)}*` ({len(files)} files)"


def _loads(values: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in values)


def _before_after(points: list[dict]) -> list[str]:
    """The ceiling's two measurements (before the servers started, after they stopped) per batch size."""
    parts = []
    for p in points:
        extra = p.get("extra") or {}
        if "other_measurement" not in extra:
            continue
        kept, other = p["throughput"], extra["other_measurement"]
        before, after = (kept, other) if extra.get("measured") == "before the servers" else (other, kept)
        parts.append(f"x = {p['concurrency']}: {before:.1f} before, {after:.1f} after")
    if not parts:
        return []
    return [
        f"Measured before the servers started and after they stopped (items/s; the better one is the "
        f"ceiling): {'; '.join(parts)}.",
        "",
    ]


def _cpu_lines(cpu: dict | None) -> list[str]:
    if not cpu:
        return []
    alone = ", ".join(
        f"batch {row['batch']}: {row['cpu_ms_per_item']:.3f}" for row in cpu["onnxruntime_one_thread"]
    )
    lines = [
        "**CPU time per item** (ms; CPU time, which other load on the machine does not distort as it does "
        "throughput): the Triton server (tritonserver and its python-backend stubs) and perf_analyzer at "
        "each level, against ONNX Runtime alone on one thread" + (f" ({alone})." if alone else "."),
        "",
    ]
    if cpu["triton"]:
        lines += [
            "| stack | x | items/s | mean batch | server CPU ms/item | perf_analyzer CPU ms/item |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['stack']} | {r['concurrency']} | {r['items_per_s']:.1f} | {_fmt(r['avg_batch'])} | "
            f"{r['server_ms']:.3f} | {r['perf_analyzer_ms']:.3f} |"
            for r in cpu["triton"]
        ]
        lines.append("")
    return lines


def _tokenize_cpu_lines(workloads: dict) -> list[str]:
    """The Bento's two ways to a text model: CPU ms per request of the Bento and Triton together at
    each users level, side by side (the share of the machine each way costs)."""
    lines = []
    for name, workload in workloads.items():
        stacks = {s: workload["stacks"].get(s) for s in ("bento-tokenize-service", "bento-tokenize-triton")}
        if not all(stacks.values()):
            continue
        rows = {}
        for stack, data in stacks.items():
            for p in data["points"]:
                figure = (p.get("extra") or {}).get("server_cpu_ms_per_item")
                if figure is not None:
                    rows.setdefault(p["concurrency"], {})[stack] = (p["throughput"], figure)
        if not rows:
            continue
        lines += [
            f"CPU per request on **{name}** (Bento and Triton processes together, over each Locust run):",
            "",
            "| users | tokenize: service items/s | CPU ms | tokenize: triton items/s | CPU ms |",
            "|---:|---:|---:|---:|---:|",
        ]
        for users, row in sorted(rows.items()):
            cells = []
            for stack in stacks:
                throughput, figure = row.get(stack, (None, None))
                cells += [_fmt(throughput), "-" if figure is None else f"{figure:.2f}"]
            lines.append(f"| {users} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _cold_start_lines(cold: dict | None) -> list[str]:
    """The first request after a load against the steady state, without and with model_warmup."""
    if not cold:
        return []
    lines = [
        "## First request after a load",
        "",
        "Each entry unloaded and loaded again (a config override without its `model_warmup`, then its own "
        "config), then one item per gRPC request: the first request, and the median of the next ones.",
        "",
        "| workload | load | load s | first ms | steady median ms | first / steady | warm-up samples |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, result in cold.items():
        for label in ("without warm-up", "with warm-up"):
            row = result.get(label)
            if row:
                lines.append(
                    f"| {name} | {label} | {row['load_s']:.2f} | {row['first_ms']:.1f} | "
                    f"{row['steady_median_ms']:.1f} | {row['first_over_steady']:.1f}x | "
                    f"{row['warmup_samples']} |"
                )
    return [*lines, ""]


def render_markdown(summary: dict) -> str:
    lines = [f"# Benchmark report ({summary['mode']} run)", ""]
    lines += [
        f"Run from {summary['started_at']} to {summary['finished_at']} ({summary['duration_s']:.0f} s), "
        f"command `{summary['command']}`.",
        "",
        "One item = one sentence or one image; every served request carries one item. Throughput is items/s; "
        "latencies are in ms (per request for the served stacks, per `session.run` call for the ceiling). "
        "The load generators (perf_analyzer, Locust) run on the same machine and take CPU from what they "
        "measure, as does anything else running on it meanwhile (see the load average below).",
        "",
    ]
    if summary.get("notes"):
        lines += [f"> {note}" for note in summary["notes"]] + [""]
    lines += ["## Goals", ""]
    for name, workload in summary["workloads"].items():
        lines.append(f"**{name}**")
        lines += [_goal_line(goal) for goal in workload.get("goals", [])]
        lines.append("")
    lines += ["## Ratios", "", "| workload | ratio | value |", "|---|---|---|"]
    for name, workload in summary["workloads"].items():
        for key, value in workload.get("ratios", {}).items():
            lines.append(f"| {name} | {key} | {_ratio_cell(key, value)} |")
        for stack, figure in (workload.get("tokens_per_s") or {}).items():
            lines.append(f"| {name} | {stack} tokens/s (best) | {figure:.0f} |")
    lines.append("")
    for name, workload in summary["workloads"].items():
        if workload.get("equal_p99"):
            lines += [
                f"Bento against FastAPI-eager on **{name}** at each p99 the baseline reached "
                "(each stack's most items/s within it):",
                "",
                "| p99 within (ms) | FastAPI-eager items/s | Bento items/s | Bento / FastAPI-eager |",
                "|---:|---:|---:|---:|",
            ]
            for row in workload["equal_p99"]:
                ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"
                lines.append(
                    f"| {row['p99_ms']:.1f} | {_fmt(row['fastapi-eager'])} | {_fmt(row['bento'])} | {ratio} |"
                )
            lines.append("")
    for name, workload in summary["workloads"].items():
        lines += [f"## {name}: {workload['description']}", ""]
        for stack, label in STACKS.items():
            data = workload["stacks"].get(stack)
            if not data:
                continue
            lines += [
                f"**{label}**" + (f"; files: {_files_text(data['files'])}" if data.get("files") else ""),
                "",
            ]
            lines += [
                "| x | items/s | p50 | p90 | p95 | p99 | avg | requests | failures |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for p in data["points"]:
                pct = " | ".join(_fmt(p[k], 2) for k in PERCENTILES)
                lines.append(
                    f"| {p['concurrency']} | {p['throughput']:.1f} | {pct} | {_fmt(p['avg'], 2)} | "
                    f"{'-' if p['requests'] is None else p['requests']} | {p['failures']} |"
                )
            lines.append("")
            if stack == "ceiling":
                lines += _before_after(data["points"])
            top = data.get("best") or {}
            breakdown = (top.get("extra") or {}).get("breakdown_ms")
            if breakdown:
                parts = ", ".join(f"{k} {v:.2f}" for k, v in breakdown.items())
                batch = top["extra"].get("avg_batch")
                lines += [
                    f"Where a request's time goes at x = {top['concurrency']} (perf_analyzer, ms): {parts}."
                    + (f" Triton ran {batch} items per model execution on average." if batch else ""),
                    "",
                ]
        lines += _cpu_lines(workload.get("cpu_per_item"))
        if workload.get("plot"):
            lines += [f"![latency against throughput, {name}]({workload['plot']})", ""]
    lines += _tokenize_cpu_lines(summary["workloads"])
    lines += _cold_start_lines(summary.get("cold_start"))
    if summary.get("cache"):
        lines += cache_lines(summary["cache"])
    if summary.get("batch_job"):
        lines += batch_job_lines(summary["batch_job"])
    if summary.get("errors"):
        lines += ["## Errors", ""] + [f"- {e}" for e in summary["errors"]] + [""]
    machine = summary["machine"]
    lines += [
        "## Machine",
        "",
        f"- CPU: {machine['cpu_model']}, {machine['cores']} cores ({machine['cores_usable']} usable), "
        f"{machine['memory_gib']} GiB",
        f"- {machine['platform']}, Python {machine['python']}",
        f"- load average (1, 5, 15 min) at start: {_loads(machine['load_average_at_start'])}"
        + (
            f"; at the end: {_loads(machine['load_average_at_end'])}"
            if machine.get("load_average_at_end")
            else ""
        ),
        "",
        "## Package versions",
        "",
    ]
    lines += [f"- {name} {version or 'not installed'}" for name, version in summary["versions"].items()]
    return "\n".join(lines) + "\n"


CACHE_LABELS = {
    "none": "Triton direct, no cache",
    "triton": "Triton direct, response cache",
    "bento-none": "Bento, no cache",
    "redis": "Bento, Redis cache",
}


def cache_lines(cache: dict) -> list[str]:
    """The ``cache`` stack: every row, then cached over uncached at each hit rate."""
    lines = [
        "## Response caches",
        "",
        f"{cache['workload']}, Locust at {cache['users']} users for {cache['locust_s']:.0f} s per row; each "
        "request a known item with the asked probability (sent once before the row), else a new one; the "
        "measured hit rate is from the cache's own counters.",
        "",
        "| stack | hit rate | measured | items/s | p50 ms | p99 ms | failures |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in cache["rows"]:
        measured = "-" if row["measured_hit_rate"] is None else f"{row['measured_hit_rate']:.2f}"
        lines.append(
            f"| {CACHE_LABELS.get(row['cache'], row['cache'])} | {row['hit_rate']:.2f} | {measured} | "
            f"{row['throughput']:.1f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['failures']} |"
        )
    lines += [
        "",
        "| cache | hit rate | throughput, cached / none | p99, cached / none |",
        "|---|---|---|---|",
    ]
    for ratio in cache["ratios"]:
        lines.append(
            f"| {CACHE_LABELS[ratio['cache']]} | {ratio['hit_rate']:.2f} | "
            f"{ratio['throughput_ratio']:.2f}x | {ratio['p99_ratio']:.2f}x |"
        )
    return [*lines, ""]


def batch_job_lines(job: dict) -> list[str]:
    ceiling = job["ceiling"]
    share = "-" if job["of_ceiling"] is None else f"{job['of_ceiling'] * 100:.0f}%"
    return [
        "## Batch job",
        "",
        f"`{job['command']}`: {job['records']} records ({job['workload']}), batch {job['batch_size']}, "
        f"concurrency {job['concurrency']}: {job['items_per_s']:.1f} items/s in {job['seconds']:.1f} s, "
        f"{share} of the in-process ceiling at batch {ceiling['batch_size']} ({ceiling['items_per_s']:.1f} "
        "items/s).",
        "",
    ]


def plot_workload(name: str, workload: dict, out_dir: Path) -> Path | None:
    """Latency (p99, and p50 dashed) against throughput, one curve per stack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stacks = {k: v for k, v in workload["stacks"].items() if v and v.get("points")}
    if not stacks:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for index, (stack, data) in enumerate(stacks.items()):
        points = sorted(data["points"], key=lambda p: p["concurrency"])
        color = f"C{index}"
        xs = [p["throughput"] for p in points]
        ax.plot(xs, [p["p99"] for p in points], "o-", color=color, label=f"{stack} p99")
        ax.plot(xs, [p["p50"] for p in points], ".--", color=color, alpha=0.6, label=f"{stack} p50")
        for p in points:
            ax.annotate(
                str(p["concurrency"]),
                (p["throughput"], p["p99"]),
                fontsize=7,
                textcoords="offset points",
                xytext=(3, 3),
            )
    ax.set_xlabel("throughput (items/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title(f"{name}: latency against throughput (labels: concurrency / users / batch)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = out_dir / f"latency_{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary_table(summary: dict) -> str:
    """The table printed last: best point of each stack per workload, and the goals."""
    rows = [("workload", "stack", "best x", "items/s", "p50 ms", "p99 ms", "of ceiling")]
    for name, workload in summary["workloads"].items():
        for stack in STACKS:
            data = workload["stacks"].get(stack)
            if not data or not data.get("best"):
                continue
            top = data["best"]
            ratio = workload.get("ratios", {}).get(f"{stack}/ceiling")
            rows.append(
                (
                    name,
                    stack,
                    str(top["concurrency"]),
                    f"{top['throughput']:.1f}",
                    f"{top['p50']:.2f}",
                    f"{top['p99']:.2f}",
                    "-" if ratio is None else f"{ratio * 100:.0f}%",
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    text.insert(1, "  ".join("-" * w for w in widths))
    for name, workload in summary["workloads"].items():
        for goal in workload.get("goals", []):
            verdict = {True: "met", False: "NOT met", None: "not measured"}[goal["met"]]
            measured = _ratio_text(goal["value"], factor=_is_factor(goal))
            text.append(f"{name}: {verdict}: {goal['goal']} ({measured})")
        cpu = workload.get("cpu_per_item") or {}
        if cpu.get("triton"):
            top = max(cpu["triton"], key=lambda r: r["items_per_s"])
            line = (
                f"{name}: CPU per item at Triton's best point ({top['stack']}, x = {top['concurrency']}): "
                f"server {top['server_ms']:.3f} ms + perf_analyzer {top['perf_analyzer_ms']:.3f} ms"
            )
            if cpu["onnxruntime_one_thread"]:
                alone = cpu["onnxruntime_one_thread"][-1]  # the largest batch
                figure = alone["cpu_ms_per_item"]
                line += f"; ONNX Runtime alone, one thread, batch {alone['batch']}: {figure:.3f} ms"
            text.append(line)
    for ratio in (summary.get("cache") or {}).get("ratios", []):
        text.append(
            f"cache: {CACHE_LABELS[ratio['cache']]} at hit rate {ratio['hit_rate']:.2f}: "
            f"{ratio['throughput_ratio']:.2f}x the throughput, {ratio['p99_ratio']:.2f}x the p99 of no cache"
        )
    job = summary.get("batch_job")
    if job:
        share = "-" if job["of_ceiling"] is None else f"{job['of_ceiling'] * 100:.0f}%"
        text.append(
            f"batch job: {job['items_per_s']:.1f} items/s over {job['records']} records, {share} of the "
            f"in-process ceiling at batch {job['ceiling']['batch_size']}"
        )
    return "\n".join(text)


def write_report(summary: dict, out_dir: Path) -> dict[str, Path]:
    """summary.json, plots, report.md; the plots' names are recorded in the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, workload in summary["workloads"].items():
        try:
            plot = plot_workload(name, workload, out_dir)
        except Exception as err:  # a plot must not cost the figures: record it and go on
            log.warning("plot of %s failed: %s", name, err)
            summary.setdefault("errors", []).append(f"plot {name}: {err}")
            plot = None
        if plot:
            workload["plot"] = plot.name
            paths[f"plot_{name}"] = plot
    paths["summary"] = out_dir / "summary.json"
    paths["summary"].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    paths["report"] = out_dir / "report.md"
    paths["report"].write_text(render_markdown(summary), encoding="utf-8")
    return paths
