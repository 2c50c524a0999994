"""Classification metrics from a confusion matrix: accuracy, balanced accuracy, macro-F1, per class.

Conventions follow scikit-learn: a class never predicted has precision 0; balanced accuracy is the
mean recall over classes that occur in the targets; macro-F1 averages over classes that occur in
the targets or the predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def confusion_matrix(targets: Sequence[int], predictions: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts [true class, predicted class]."""
    targets, predictions = np.asarray(targets, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    if targets.shape != predictions.shape:
        raise ValueError(f"{targets.shape[0]} targets but {predictions.shape[0]} predictions")
    if targets.size and (min(targets.min(), predictions.min()) < 0 or max(targets.max(), predictions.max()) >= num_classes):
        raise ValueError(f"class indices must lie in 0..{num_classes - 1}")
    return np.bincount(targets * num_classes + predictions, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)


@dataclass(frozen=True, eq=False)
class ClassificationMetrics:
    labels: tuple[str, ...]
    confusion: np.ndarray  # [true, predicted] counts

    @classmethod
    def from_predictions(cls, targets, predictions, labels: Sequence[str]) -> ClassificationMetrics:
        return cls(tuple(labels), confusion_matrix(targets, predictions, len(labels)))

    @property
    def n(self) -> int:
        return int(self.confusion.sum())

    @property
    def support(self) -> np.ndarray:
        return self.confusion.sum(axis=1)

    @property
    def precision(self) -> np.ndarray:
        return _ratio(np.diag(self.confusion).astype(float), self.confusion.sum(axis=0).astype(float))

    @property
    def recall(self) -> np.ndarray:
        return _ratio(np.diag(self.confusion).astype(float), self.support.astype(float))

    @property
    def f1(self) -> np.ndarray:
        p, r = self.precision, self.recall
        return _ratio(2 * p * r, p + r)

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / self.n) if self.n else 0.0

    @property
    def balanced_accuracy(self) -> float:
        present = self.support > 0
        return float(self.recall[present].mean()) if present.any() else 0.0

    @property
    def macro_f1(self) -> float:
        seen = (self.support > 0) | (self.confusion.sum(axis=0) > 0)
        return float(self.f1[seen].mean()) if seen.any() else 0.0

    def summary(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "balanced_accuracy": self.balanced_accuracy, "macro_f1": self.macro_f1}

    def to_dict(self) -> dict:
        return {
            **self.summary(),
            "n": self.n,
            "per_class": {
                label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                for label, p, r, f, s in zip(self.labels, self.precision, self.recall, self.f1, self.support)
            },
            "labels": list(self.labels),
            "confusion_matrix": self.confusion.astype(int).tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> ClassificationMetrics:
        return cls(tuple(data["labels"]), np.asarray(data["confusion_matrix"], dtype=np.int64))
