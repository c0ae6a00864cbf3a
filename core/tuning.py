"""A tuning result: the batching settings ``python -m benchmarks tune`` measured best for an entry, as a
file that ``python -m converters configure NAME --tuning FILE`` applies.

Benchmarks measure, converters write: the tuner never touches the repository. It writes this file
(what it chose, against which target, the measured curve of every point, when, and by which command),
and the converters apply the chosen settings through ``Repository.update_config`` and
``triton_config.set_batching``. A file is read strictly: unknown keys are refused and every field is
checked, with a message that names it (``chosen.instance_count``), so that neither a hand-edited file
nor one for another entry reaches a config unnoticed.

Layout (``FORMAT`` names this version of it)::

    {"format": "modelpack-tuning/1", "model": "minilm", "version": 1,
     "target": {"p99_ms": 50.0, "workload": "minilm-short", "protocol": "grpc",
                "concurrency": [1, 4, 8, 16], "window_ms": 1000},
     "chosen": {"max_queue_delay_microseconds": 4000, "preferred_batch_size": [16, 32],
                "instance_count": 1, "items_per_s": 542.9},            (null: no point met the target)
     "grid": [{"max_queue_delay_microseconds": 0, "preferred_batch_size": [8], "instance_count": 1,
               "items_per_s": 494.9, "error": null,
               "curve": [{"concurrency": 1, "items_per_s": 120.3, "p50_ms": 8.1, "p90_ms": 8.9,
                          "p95_ms": 9.2, "p99_ms": 10.4}, ...]}, ...],
     "measured_at": "2026-11-24T07:58:02Z",
     "command": "python -m benchmarks tune minilm --p99-ms 50"}
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from core.errors import InvalidArgument, NotFound
from core.repository import NAME_PATTERN
from core.triton_config import atomic_write, set_batching

FORMAT = "modelpack-tuning/1"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
PROTOCOLS = ("grpc", "http")
FIX = "use the tuning.json that `python -m benchmarks tune` wrote, unedited"

_SETTINGS_KEYS = ("max_queue_delay_microseconds", "preferred_batch_size", "instance_count")
_CURVE_KEYS = ("concurrency", "items_per_s", "p50_ms", "p90_ms", "p95_ms", "p99_ms")


@dataclass(frozen=True)
class Settings:
    """What the tuner varies: Triton's dynamic batching and the instance count."""

    max_queue_delay_microseconds: int
    preferred_batch_size: tuple[int, ...]
    instance_count: int

    def label(self) -> str:
        preferred = "+".join(map(str, self.preferred_batch_size))
        delay = self.max_queue_delay_microseconds
        return f"delay={delay}us preferred={preferred} instances={self.instance_count}"

    def apply(self, config: mc.ModelConfig) -> mc.ModelConfig:
        """Set these settings on ``config`` (in place), validated against its max_batch_size."""
        return set_batching(
            config,
            preferred_batch_sizes=self.preferred_batch_size,
            max_queue_delay_us=self.max_queue_delay_microseconds,
            instance_count=self.instance_count,
        )

    def to_dict(self) -> dict:
        return {
            "max_queue_delay_microseconds": self.max_queue_delay_microseconds,
            "preferred_batch_size": list(self.preferred_batch_size),
            "instance_count": self.instance_count,
        }


@dataclass(frozen=True)
class CurvePoint:
    """One measured load level of one grid point (latencies in ms)."""

    concurrency: int
    items_per_s: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float


@dataclass(frozen=True)
class GridResult:
    settings: Settings
    items_per_s: float | None  # most throughput with p99 within the target; None: not reached or failed
    error: str | None
    curve: tuple[CurvePoint, ...]

    def to_dict(self) -> dict:
        return {
            **self.settings.to_dict(),
            "items_per_s": self.items_per_s,
            "error": self.error,
            "curve": [vars(p) for p in self.curve],
        }


@dataclass(frozen=True)
class Target:
    p99_ms: float
    workload: str
    protocol: str
    concurrency: tuple[int, ...]
    window_ms: int

    def to_dict(self) -> dict:
        return {**vars(self), "concurrency": list(self.concurrency)}


@dataclass(frozen=True)
class TuningResult:
    model: str
    version: int  # the version served while measuring
    target: Target
    chosen: Settings | None  # None: no grid point kept p99 within the target
    grid: tuple[GridResult, ...]
    measured_at: str  # UTC, TIME_FORMAT
    command: str

    def chosen_result(self) -> GridResult | None:
        return next((g for g in self.grid if self.chosen is not None and g.settings == self.chosen), None)

    def to_dict(self) -> dict:
        chosen = self.chosen_result()
        return {
            "format": FORMAT,
            "model": self.model,
            "version": self.version,
            "target": self.target.to_dict(),
            "chosen": None
            if chosen is None
            else {**chosen.settings.to_dict(), "items_per_s": chosen.items_per_s},
            "grid": [g.to_dict() for g in self.grid],
            "measured_at": self.measured_at,
            "command": self.command,
        }

    def write(self, path: str | os.PathLike) -> Path:
        """The file, checked first: what is written is what ``read`` accepts."""
        data = self.to_dict()
        from_dict(data, source=str(path))
        return atomic_write(Path(path), (json.dumps(data, indent=2) + "\n").encode("utf-8"))

    def settings_for(self, name: str, *, source: str) -> Settings:
        """The chosen settings, for entry ``name`` only."""
        if self.model != name:
            raise InvalidArgument(
                f"{source}: model: this result tunes {self.model!r}, not {name!r}; tune {name} with "
                f"`python -m benchmarks tune {name} --p99-ms X` and apply that result",
                field="model",
            )
        if self.chosen is None:
            raise InvalidArgument(
                f"{source}: chosen: null: no configuration kept p99 <= {self.target.p99_ms} ms in this run, "
                "so there is nothing to apply; tune again with a higher --p99-ms or a wider grid",
                field="chosen",
            )
        return self.chosen


def read(path: str | os.PathLike, *, flag: str = "--tuning") -> TuningResult:
    """A tuning result file, checked field by field (``InvalidArgument`` naming the field)."""
    path = Path(path)
    source = f"{flag} {path}"
    if not path.is_file():
        raise NotFound(
            f"{flag}: {path} does not exist; give the tuning.json that `python -m benchmarks tune` "
            "wrote (its path is in the command it printed)",
            field=flag,
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InvalidArgument(f"{source}: not a JSON file ({err}); {FIX}", field=flag) from None
    return from_dict(data, source=source)


# ---- checking, field by field ---------------------------------------------------------------------


def _bad(source: str, where: str, problem: str) -> InvalidArgument:
    return InvalidArgument(f"{source}: {where}: {problem}; {FIX}", field=where)


def _object(source: str, where: str, value, keys: tuple[str, ...]) -> dict:
    """A JSON object with exactly ``keys``: none unknown, none missing."""
    if not isinstance(value, dict):
        raise _bad(source, where or "(file)", f"must be a JSON object, got {_kind(value)}")
    prefix = f"{where}." if where else ""
    unknown = [k for k in value if k not in keys]
    if unknown:
        raise _bad(source, prefix + str(unknown[0]), f"unknown key (allowed: {', '.join(keys)})")
    missing = [k for k in keys if k not in value]
    if missing:
        raise _bad(source, prefix + missing[0], "missing")
    return value


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), f"{value!r}"
    )


def _integer(source: str, where: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(source, where, f"must be an integer >= {minimum}, got {_kind(value)}")
    return value


def _number(source: str, where: str, value, *, positive: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        raise _bad(
            source,
            where,
            f"must be a {'positive' if positive else 'non-negative'} number, got {_kind(value)}",
        )
    return float(value)


def _string(source: str, where: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _bad(source, where, f"must be a non-empty string, got {_kind(value)}")
    return value


def _integers(source: str, where: str, value, minimum: int, *, allow_empty: bool = False) -> tuple[int, ...]:
    if not isinstance(value, list) or (not value and not allow_empty):
        raise _bad(
            source,
            where,
            f"must be a {'' if allow_empty else 'non-empty '}list of integers, got {_kind(value)}",
        )
    return tuple(_integer(source, f"{where}[{i}]", v, minimum) for i, v in enumerate(value))


def _settings(source: str, where: str, data: dict) -> Settings:
    return Settings(
        max_queue_delay_microseconds=_integer(
            source, f"{where}.max_queue_delay_microseconds", data["max_queue_delay_microseconds"], 0
        ),
        preferred_batch_size=_integers(
            source, f"{where}.preferred_batch_size", data["preferred_batch_size"], 1, allow_empty=True
        ),
        instance_count=_integer(source, f"{where}.instance_count", data["instance_count"], 1),
    )


def _grid_result(source: str, where: str, value) -> GridResult:
    data = _object(source, where, value, (*_SETTINGS_KEYS, "items_per_s", "error", "curve"))
    score = data["items_per_s"]
    error = data["error"]
    if error is not None:
        _string(source, f"{where}.error", error)
    if not isinstance(data["curve"], list):
        raise _bad(source, f"{where}.curve", f"must be a list, got {_kind(data['curve'])}")
    curve = []
    for i, item in enumerate(data["curve"]):
        at = f"{where}.curve[{i}]"
        point = _object(source, at, item, _CURVE_KEYS)
        curve.append(
            CurvePoint(
                concurrency=_integer(source, f"{at}.concurrency", point["concurrency"], 1),
                **{k: _number(source, f"{at}.{k}", point[k]) for k in _CURVE_KEYS[1:]},
            )
        )
    return GridResult(
        settings=_settings(source, where, data),
        items_per_s=None if score is None else _number(source, f"{where}.items_per_s", score, positive=True),
        error=error,
        curve=tuple(curve),
    )


def from_dict(data, *, source: str) -> TuningResult:
    data = _object(
        source, "", data, ("format", "model", "version", "target", "chosen", "grid", "measured_at", "command")
    )
    if data["format"] != FORMAT:
        raise _bad(source, "format", f"{data['format']!r} is not {FORMAT!r}")
    model = data["model"]
    if not isinstance(model, str) or not NAME_PATTERN.fullmatch(model) or ".." in model:
        raise _bad(source, "model", f"{model!r} is not a model name")
    target_data = _object(
        source, "target", data["target"], ("p99_ms", "workload", "protocol", "concurrency", "window_ms")
    )
    if target_data["protocol"] not in PROTOCOLS:
        raise _bad(
            source, "target.protocol", f"{target_data['protocol']!r} is not one of {', '.join(PROTOCOLS)}"
        )
    target = Target(
        p99_ms=_number(source, "target.p99_ms", target_data["p99_ms"], positive=True),
        workload=_string(source, "target.workload", target_data["workload"]),
        protocol=target_data["protocol"],
        concurrency=_integers(source, "target.concurrency", target_data["concurrency"], 1),
        window_ms=_integer(source, "target.window_ms", target_data["window_ms"], 1),
    )
    if not isinstance(data["grid"], list) or not data["grid"]:
        raise _bad(source, "grid", f"must be a non-empty list, got {_kind(data['grid'])}")
    grid = tuple(_grid_result(source, f"grid[{i}]", g) for i, g in enumerate(data["grid"]))
    chosen = None
    if data["chosen"] is not None:
        chosen_data = _object(source, "chosen", data["chosen"], (*_SETTINGS_KEYS, "items_per_s"))
        chosen = _settings(source, "chosen", chosen_data)
        score = _number(source, "chosen.items_per_s", chosen_data["items_per_s"], positive=True)
        measured = next((g for g in grid if g.settings == chosen), None)
        if measured is None or measured.items_per_s != score:
            raise _bad(
                source,
                "chosen",
                f"{chosen.label()} at {score} items/s is not a grid point that met the target",
            )
    measured_at = _string(source, "measured_at", data["measured_at"])
    try:
        datetime.strptime(measured_at, TIME_FORMAT)
    except ValueError:
        raise _bad(
            source, "measured_at", f"{measured_at!r} is not a UTC time like 2026-11-24T07:58:02Z"
        ) from None
    return TuningResult(
        model=model,
        version=_integer(source, "version", data["version"], 1),
        target=target,
        chosen=chosen,
        grid=grid,
        measured_at=measured_at,
        command=_string(source, "command", data["command"]),
    )
