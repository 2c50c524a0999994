"""AU detection metrics per slot: occurrence F1 at a threshold, MAE and Pearson correlation of the scores.

They are computed from sums (counts, errors, moments, true/false positives), so that processes add
their sums and the result does not depend on how the evaluation set was split. A slot counts only
where the target is known (and the detector was trained on it); a figure that is undefined on the
data (F1 with no positive target or prediction, Pearson with a constant target or prediction) is
None and left out of the means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..aus import AU_NAMES, NUM_AUS

# Rows of the statistics array, per slot.
STATS = ("n", "abs_error", "sum_prediction", "sum_target", "sum_prediction2", "sum_target2", "sum_product", "tp", "fp", "fn")
SUMMARY = ("f1", "mae", "pearson")
LOWER_IS_BETTER = frozenset({"mae"})


def au_statistics(predictions: np.ndarray, targets: np.ndarray, mask: np.ndarray, threshold: float) -> np.ndarray:
    """The sums [len(STATS), 41] of a batch: ``predictions`` and ``targets`` [B, 41], ``mask`` [B, 41] where both count."""
    p, t = np.asarray(predictions, np.float64), np.asarray(targets, np.float64)
    m = np.asarray(mask, bool)
    w = m.astype(np.float64)
    predicted, actual = (p >= threshold) & m, (t >= threshold) & m
    return np.stack([
        w.sum(0), (np.abs(p - t) * w).sum(0), (p * w).sum(0), (t * w).sum(0), (p * p * w).sum(0), (t * t * w).sum(0),
        (p * t * w).sum(0), (predicted & actual).sum(0), (predicted & ~actual).sum(0), (~predicted & actual).sum(0),
    ])  # fmt: skip


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


@dataclass(frozen=True, eq=False)
class AUMetrics:
    """Per-slot sums (see :data:`STATS`) and what they were measured with."""

    stats: np.ndarray  # [len(STATS), 41]
    threshold: float
    scores: str  # "intensity" or "probability"
    images: int = 0

    def _row(self, name: str) -> np.ndarray:
        return self.stats[STATS.index(name)]

    @property
    def slots(self) -> list[int]:
        """The slots measured: those with at least one known target."""
        return [int(s) for s in np.flatnonzero(self._row("n") > 0)]

    def slot(self, slot: int) -> dict:
        n, abs_error, sp, st, spp, stt, spt, tp, fp, fn = (float(v) for v in self.stats[:, slot])
        mae = abs_error / n if n else None
        cov, var_p, var_t = n * spt - sp * st, n * spp - sp * sp, n * stt - st * st
        # A variance that is rounding noise (constant predictions or targets) leaves Pearson undefined.
        defined = n >= 2 and var_p > 1e-9 * max(1.0, n * spp) and var_t > 1e-9 * max(1.0, n * stt)
        pearson = max(-1.0, min(1.0, cov / math.sqrt(var_p * var_t))) if defined else None
        f1 = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else None
        return {
            "n": int(n),
            "support": int(tp + fn),  # known targets at or above the threshold
            "f1": f1,
            "precision": tp / (tp + fp) if (tp + fp) else None,
            "recall": tp / (tp + fn) if (tp + fn) else None,
            "mae": mae,
            "pearson": pearson,
        }

    def per_au(self) -> dict[str, dict]:
        return {AU_NAMES[s]: self.slot(s) for s in self.slots}

    def summary(self) -> dict[str, float | None]:
        """Means over the measured slots: F1 (occurrence at the threshold), MAE and Pearson of the scores."""
        per = [self.slot(s) for s in self.slots]
        return {name: _mean([p[name] for p in per]) for name in SUMMARY}

    def to_dict(self) -> dict:
        return {
            **self.summary(),
            "images": int(self.images),
            "threshold": self.threshold,
            "scores": self.scores,
            "per_au": self.per_au(),
            "statistics": {"rows": list(STATS), "values": self.stats.tolist()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> AUMetrics:
        stats = np.asarray(data["statistics"]["values"], dtype=np.float64).reshape(len(STATS), NUM_AUS)
        return cls(stats, float(data["threshold"]), data["scores"], int(data.get("images", 0)))


def better(name: str, score: float | None, best: float | None) -> bool:
    """Whether ``score`` beats ``best`` on summary figure ``name`` (None, undefined, never wins)."""
    if score is None:
        return False
    if best is None:
        return True
    return score < best if name in LOWER_IS_BETTER else score > best
