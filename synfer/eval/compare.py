"""Two evaluations side by side (``synfer evaluate --compare A B``): every figure both have, and which is better.

Figures are only comparable when both evaluations measured them the same way: the same backbone
weights, the same judge, the same real reference. :func:`compare_evaluations` names every setting that
differs between the two (``caveats``), so that a table of numbers never hides that it compares unlike
things.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .evaluate import EvaluateResult, Figure

# Settings and records that make two figures incomparable when they differ.
_COMPARABLE = {
    "real reference": lambda m: (m["real"].get("path"), m["real"].get("split"), m["real"].get("crop"), m["real"].get("n_valid")),
    "label set": lambda m: m.get("label_set"),
    "judge weights": lambda m: (m.get("judge") or {}).get("fingerprint"),
    "AU detector weights": lambda m: ((m.get("au") or {}).get("detector") or {}).get("fingerprint"),
}


@dataclass(frozen=True)
class Row:
    name: str
    a: Figure | None
    b: Figure | None

    @property
    def better(self) -> str | None:
        """``"A"``, ``"B"``, ``"="`` or None (no direction, or a figure missing)."""
        if self.a is None or self.b is None or self.a.value is None or self.b.value is None:
            return None
        direction = self.a.better or self.b.better
        if direction is None:
            return None
        if self.a.value == self.b.value:
            return "="
        a_wins = self.a.value < self.b.value if direction == "lower" else self.a.value > self.b.value
        return "A" if a_wins else "B"


@dataclass(frozen=True)
class Comparison:
    a: EvaluateResult
    b: EvaluateResult
    rows: list[Row]
    caveats: list[str]


def compare_evaluations(a: str | Path | EvaluateResult, b: str | Path | EvaluateResult) -> Comparison:
    first = a if isinstance(a, EvaluateResult) else EvaluateResult.load(a)
    second = b if isinstance(b, EvaluateResult) else EvaluateResult.load(b)
    fa, fb = first.figures(), second.figures()
    names = list(fa) + [name for name in fb if name not in fa]
    caveats = []
    for what, read in _COMPARABLE.items():
        if read(first.metrics) != read(second.metrics):
            caveats.append(f"the {what} differs")
    for name in sorted(set(first.metrics.get("features", {})) & set(second.metrics.get("features", {}))):
        one, other = first.metrics["features"][name], second.metrics["features"][name]
        for key, what in (("fingerprint", "weights"), ("preprocessing", "preprocessing"), ("dtype", "dtype")):
            if one.get(key) != other.get(key):
                caveats.append(f"the {name} backbone's {what} {'differ' if what == 'weights' else 'differs'}")
    return Comparison(first, second, [Row(name, fa.get(name), fb.get(name)) for name in names], caveats)
