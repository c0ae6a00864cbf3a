"""Parity: compare an exported model's outputs with the source model's, output by output.

Every output that misses the tolerance is collected first, then one ``CheckFailed`` is raised with a
line per output ("- embeddings[batch=4]: max abs err 3.1e-03 > atol 1.0e-04"), so a user sees the
whole picture at once. Passing means, element-wise, ``|exported - reference| <= atol + rtol * |reference|``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from core.errors import CheckFailed, InvalidArgument

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 0.0


@dataclass
class OutputParity:
    name: str  # output name plus the case, e.g. "embeddings[batch=1]"
    max_abs_err: float
    max_rel_err: float
    passed: bool


@dataclass
class ParityReport:
    atol: float
    rtol: float
    outputs: list[OutputParity] = field(default_factory=list)
    cases: list[str] = field(default_factory=list)

    @property
    def max_abs_err(self) -> float:
        return max((o.max_abs_err for o in self.outputs), default=0.0)

    @property
    def max_rel_err(self) -> float:
        return max((o.max_rel_err for o in self.outputs), default=0.0)

    @property
    def passed(self) -> bool:
        return bool(self.outputs) and all(o.passed for o in self.outputs)

    def add(self, name: str, actual: np.ndarray, reference: np.ndarray) -> OutputParity:
        actual = np.asarray(actual, dtype=np.float64)
        reference = np.asarray(reference, dtype=np.float64)
        if actual.shape != reference.shape:
            result = OutputParity(name, float("inf"), float("inf"), False)
        else:
            diff = np.abs(actual - reference)
            rel = diff / np.maximum(np.abs(reference), 1e-12)
            finite = bool(np.all(np.isfinite(actual)))
            ok = finite and bool(np.all(diff <= self.atol + self.rtol * np.abs(reference)))
            result = OutputParity(name, float(diff.max(initial=0.0)), float(rel.max(initial=0.0)), ok)
            if not finite:
                result.max_abs_err = result.max_rel_err = float("inf")
        self.outputs.append(result)
        return result

    def to_manifest(self) -> dict:
        return {
            "max_abs_err": self.max_abs_err,
            "max_rel_err": self.max_rel_err,
            "atol": self.atol,
            "rtol": self.rtol,
            "passed": self.passed,
            "cases": list(self.cases),
            "outputs": [asdict(o) for o in self.outputs],
        }

    def raise_if_failed(self, what: str) -> None:
        failing = [o for o in self.outputs if not o.passed]
        if not self.outputs:
            raise CheckFailed(f"parity of {what}: nothing was compared")
        if failing:
            lines = "\n".join(
                f"- {o.name}: max abs err {o.max_abs_err:.3g} > atol {self.atol:.1g}"
                + (f" + rtol {self.rtol:.1g}" if self.rtol else "")
                + f" (max rel err {o.max_rel_err:.3g})"
                for o in failing
            )
            raise CheckFailed(
                f"parity of {what} failed on {len(failing)} of {len(self.outputs)} outputs; nothing published"
                f" (loosen with --atol/--rtol only if the difference is expected):\n{lines}"
            )


def check_tolerances(atol: float, rtol: float) -> tuple[float, float]:
    for flag, value in (("--atol", atol), ("--rtol", rtol)):
        if not np.isfinite(value) or value < 0:
            raise InvalidArgument(f"{flag}: must be a finite number >= 0, got {value!r}", field=flag[2:])
    return float(atol), float(rtol)
