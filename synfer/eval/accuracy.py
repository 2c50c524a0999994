"""Expression accuracy as a judge sees it: accuracy, balanced accuracy, per-class recall and the confusion matrix.

SynFER reports the share of generated faces a FER classifier assigns to the expression they were made
for (55.14% for SynFER, 20.06% for plain SD). Here the same is computed for the generated set and for
the real reference: the judge's accuracy on real faces is the ceiling a generated set can reach with
that judge, and a generated figure means little without it.

The judge's prediction is its argmax over the classes of the evaluation's label set: an 8-class judge
on a 7-class dataset never "predicts" contempt (the masked classes are recorded). Intervals come from
the exact multinomial bootstrap of ``synfer.eval.intervals``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..expressions import Expression, LabelSet
from .intervals import CONFIDENCE, RESAMPLES, multinomial_replicates, percentile_interval
from .metrics import ClassificationMetrics


def restricted_predictions(scores: np.ndarray, classes: tuple[Expression, ...], label_set: LabelSet) -> np.ndarray:
    """Class indices of ``label_set`` from a judge's scores [N, K] over ``classes`` (argmax among the set's classes)."""
    scores = np.asarray(scores, dtype=np.float64)
    columns = [classes.index(e) for e in label_set.expressions]
    return np.argmax(scores[:, columns], axis=1) if len(scores) else np.zeros(0, dtype=np.int64)


def _recalls(confusion: np.ndarray) -> np.ndarray:
    """Per-class recall of a stack of confusion matrices [..., K, K]; NaN for a class with no sample."""
    support = confusion.sum(axis=-1)
    diagonal = np.diagonal(confusion, axis1=-2, axis2=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, diagonal / np.maximum(support, 1), np.nan)


@dataclass(frozen=True, eq=False)
class JudgeFigures:
    """A judge's figures on one side (``generated`` or ``real``), each with a bootstrap interval."""

    side: str
    metrics: ClassificationMetrics
    accuracy_ci: list[float] | None
    balanced_accuracy_ci: list[float] | None
    recall_ci: dict[str, list[float] | None]
    masked: tuple[str, ...]
    resamples: int
    confidence: float

    @property
    def accuracy(self) -> float:
        return self.metrics.accuracy

    @property
    def balanced_accuracy(self) -> float:
        return self.metrics.balanced_accuracy

    def to_dict(self) -> dict:
        data = self.metrics.to_dict()
        for label, entry in data["per_class"].items():
            entry["recall_ci"] = self.recall_ci.get(label)
        return {"side": self.side, "n": self.metrics.n, "accuracy": self.accuracy, "accuracy_ci": self.accuracy_ci,
                "balanced_accuracy": self.balanced_accuracy, "balanced_accuracy_ci": self.balanced_accuracy_ci,
                "macro_f1": data["macro_f1"], "per_class": data["per_class"], "labels": data["labels"],
                "confusion_matrix": data["confusion_matrix"], "masked_judge_classes": list(self.masked),
                "interval": {"method": "multinomial bootstrap, percentile", "resamples": self.resamples,
                             "confidence": self.confidence}}


def judge_figures(side: str, targets: np.ndarray, scores: np.ndarray, classes: tuple[Expression, ...], label_set: LabelSet,
                  *, seed: int = 0, resamples: int = RESAMPLES, confidence: float = CONFIDENCE) -> JudgeFigures:
    """Figures of a judge's ``scores`` against ``targets`` (AffectNet ids, each in ``label_set``)."""
    targets = np.asarray([label_set.index(int(t)) for t in np.asarray(targets).tolist()], dtype=np.int64)
    predictions = restricted_predictions(scores, classes, label_set)
    metrics = ClassificationMetrics.from_predictions(targets, predictions, label_set.names)
    present = metrics.support > 0
    accuracy_ci = balanced_ci = None
    recall_ci: dict[str, list[float] | None] = dict.fromkeys(label_set.names)
    if metrics.n and resamples:
        stack = multinomial_replicates(metrics.confusion, resamples, seed, f"judge-{side}")
        accuracy_ci = percentile_interval(np.trace(stack, axis1=1, axis2=2) / stack.sum(axis=(1, 2)), confidence)
        recalls = _recalls(stack)
        # Balanced accuracy over the classes the sample holds, as sklearn: a replicate that drew no sample
        # of a rare class averages over the classes it did draw.
        drawn = np.where(np.isnan(recalls[:, present]), 0.0, recalls[:, present])
        counted = (~np.isnan(recalls[:, present])).sum(axis=1)
        balanced_ci = percentile_interval(drawn.sum(axis=1) / np.maximum(counted, 1), confidence)
        for i, label in enumerate(label_set.names):
            if present[i]:
                recall_ci[label] = percentile_interval(recalls[:, i], confidence)
    masked = tuple(e.label for e in classes if e not in label_set.expressions)
    return JudgeFigures(side, metrics, accuracy_ci, balanced_ci, recall_ci, masked, resamples, confidence)
