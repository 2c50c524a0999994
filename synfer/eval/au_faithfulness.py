"""AU faithfulness: do the generated faces show the action units they were asked for?

An AU detector (``--au-detector KIND:PATH``, loaded by ``synfer.labelers.au_detectors.load_au_detector``)
scores every generated image; the scores are compared with the AUs the dataset's index requested
(``aus``, intensities 0-5, and ``au_known``), AU by AU, over the samples where both the request and the
detector know the AU:

- occurrence: requested present = intensity > 0; detected present = score >= the threshold (the
  detector's suggested one unless ``--au-threshold``). Precision, recall and F1 per AU, and the macro
  F1 over AUs that were requested at least once; intervals from the exact multinomial bootstrap over
  samples (``synfer.eval.intervals``), with the row patterns of the whole table as cells, so the macro
  F1's interval keeps the correlation between AUs.
- intensity: Pearson's r between requested intensity and detected score (Fisher-z interval), for any
  detector (r does not care about scale); the mean absolute error only when the detector reports FACS
  intensities (``scores == "intensity"``), with its standard error.

Images reach the detector through ``synfer.eval.preprocess`` at the size its own preprocessing starts
from (OpenGraphAU: 256 px, which it centre-crops to 224 itself).

The figure is ``self-consistency`` rather than faithfulness when this detector also annotated the AUs
the model was trained on: the model may then have learnt the detector's quirks, and the detector will
find them (``synfer.eval.independence.au_detector_status``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..aus import AU_NAMES, NUM_AUS
from ..errors import ConfigError
from .intervals import CONFIDENCE, RESAMPLES, fisher_interval, multinomial_replicates, percentile_interval

SCORE_KINDS = ("probability", "intensity")
# Per-sample state of one AU, the cells of the bootstrap.
UNKNOWN, TN, FP, FN, TP = range(5)


class AUDetector(Protocol):
    """What evaluate needs of an AU detector (``synfer.labelers.au_detectors``)."""

    kind: str
    source: str
    fingerprint: str
    scores: str  # "probability" or "intensity"
    known: np.ndarray  # [41] bool: the AUs it measures
    suggested_threshold: float

    def predict(self, images):  # [B, 3, H, W] in [0, 1] -> [B, 41]
        ...


@dataclass(frozen=True)
class AUFigure:
    name: str
    n: int  # samples where request and detector both know the AU
    requested: int  # samples that asked for it
    detected: int
    precision: float | None
    recall: float | None
    f1: float | None
    f1_ci: list[float] | None
    pearson: float | None
    pearson_ci: list[float] | None
    mae: float | None
    mae_sem: float | None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class AUReport:
    per_au: dict[str, AUFigure]
    macro_f1: float | None
    macro_f1_ci: list[float] | None
    threshold: float
    scores: str
    n: int
    not_measured: tuple[str, ...]  # AUs the detector does not know
    never_requested: tuple[str, ...]  # known AUs no sample asked for (no F1)
    resamples: int
    confidence: float

    def to_dict(self) -> dict:
        return {"n": self.n, "threshold": self.threshold, "scores": self.scores, "macro_f1": self.macro_f1,
                "macro_f1_ci": self.macro_f1_ci, "per_au": {name: figure.to_dict() for name, figure in self.per_au.items()},
                "not_measured": list(self.not_measured), "never_requested": list(self.never_requested),
                "interval": {"f1": "multinomial bootstrap over samples, percentile", "pearson": "Fisher z",
                             "mae": "standard error", "resamples": self.resamples, "confidence": self.confidence}}


def _f1(tp, fp, fn):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), np.nan)


_BLOCK_ENTRIES = 2**24  # replicate draws x patterns held at once (128 MB of float64)


def _replicate_f1(patterns: np.ndarray, frequency: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Per-AU F1 of each bootstrap replicate [R, 41], drawn in blocks so that memory stays bounded."""
    indicator = {cell: (patterns == cell).astype(np.float64) for cell in (FP, FN, TP)}  # [P, 41] each
    out = np.empty((resamples, NUM_AUS))
    block = max(1, _BLOCK_ENTRIES // max(1, len(frequency)))
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        draws = multinomial_replicates(frequency, stop - start, seed, f"au-patterns-{start}").astype(np.float64)
        out[start:stop] = _f1(draws @ indicator[TP], draws @ indicator[FP], draws @ indicator[FN])
    return out


def au_faithfulness(requested, requested_known, detected, detector_known, *, scores: str, threshold: float,
                    seed: int = 0, resamples: int = RESAMPLES, confidence: float = CONFIDENCE) -> AUReport:
    """Per-AU occurrence F1 and intensity agreement between requested and detected AUs (see the module docstring)."""
    if scores not in SCORE_KINDS:
        raise ConfigError(f"unknown AU score kind {scores!r} (accepted: {', '.join(SCORE_KINDS)})")
    requested = np.asarray(requested, dtype=np.float64).reshape(-1, NUM_AUS)
    requested_known = np.asarray(requested_known, dtype=bool).reshape(-1, NUM_AUS)
    detected = np.asarray(detected, dtype=np.float64).reshape(-1, NUM_AUS)
    detector_known = np.asarray(detector_known, dtype=bool).reshape(NUM_AUS)
    if not (requested.shape == requested_known.shape == detected.shape):
        raise ConfigError(f"requested {requested.shape}, known {requested_known.shape} and detected {detected.shape} AUs differ in shape")
    usable = requested_known & detector_known[None, :] & np.isfinite(detected)
    asked, found = requested > 0, detected >= threshold
    state = np.where(usable, np.where(asked, np.where(found, TP, FN), np.where(found, FP, TN)), UNKNOWN).astype(np.int8)
    counts = np.stack([(state == cell).sum(axis=0) for cell in (TN, FP, FN, TP)], axis=1)  # [41, 4]
    tn, fp, fn, tp = counts.T
    f1 = _f1(tp, fp, fn)
    with_positives = (tp + fn) > 0
    macro = float(np.mean(f1[with_positives])) if with_positives.any() else None

    patterns, frequency = (np.unique(state, axis=0, return_counts=True) if len(state) else
                           (np.zeros((0, NUM_AUS), np.int8), np.zeros(0, np.int64)))
    macro_ci, f1_ci = None, [None] * NUM_AUS
    if resamples and len(patterns):
        replicate_f1 = _replicate_f1(patterns, frequency, resamples, seed)
        if with_positives.any():
            macro_ci = percentile_interval(np.nanmean(np.where(np.isnan(replicate_f1[:, with_positives]), 0.0,
                                                               replicate_f1[:, with_positives]), axis=1), confidence)
        f1_ci = [percentile_interval(replicate_f1[:, j], confidence) if with_positives[j] else None for j in range(NUM_AUS)]

    per_au = {}
    for j, name in enumerate(AU_NAMES):
        if not detector_known[j]:
            continue
        rows = usable[:, j]
        n = int(rows.sum())
        precision = float(tp[j] / (tp[j] + fp[j])) if tp[j] + fp[j] else (0.0 if tp[j] + fn[j] else None)
        recall = float(tp[j] / (tp[j] + fn[j])) if tp[j] + fn[j] else None
        pearson = None
        if n > 2:
            a, b = requested[rows, j], detected[rows, j]
            if a.std() > 0 and b.std() > 0:
                pearson = float(np.corrcoef(a, b)[0, 1])
        mae = sem = None
        if scores == "intensity" and n:
            errors = np.abs(requested[rows, j] - detected[rows, j])
            mae = float(errors.mean())
            sem = float(errors.std(ddof=1) / np.sqrt(n)) if n > 1 else None
        per_au[name] = AUFigure(name, n, int(tp[j] + fn[j]), int(tp[j] + fp[j]), precision, recall,
                                None if np.isnan(f1[j]) or not with_positives[j] else float(f1[j]), f1_ci[j],
                                pearson, fisher_interval(pearson, n, confidence), mae, sem)
    not_measured = tuple(name for j, name in enumerate(AU_NAMES) if not detector_known[j])
    never = tuple(name for j, name in enumerate(AU_NAMES) if detector_known[j] and not with_positives[j])
    return AUReport(per_au, macro, macro_ci, float(threshold), scores, int(requested.shape[0]), not_measured, never,
                    resamples, confidence)


DETECTOR_SIZE = 224  # what a detector is handed when it declares no input size; it resizes further itself
DEFAULT_THRESHOLDS = {"probability": 0.5, "intensity": 1.0}  # when a detector suggests none: p = 0.5, FACS trace (A)


def detector_size(detector) -> int:
    """The size a detector's own preprocessing starts from (OpenGraphAU: 256, then its centre crop of 224)."""
    resize = (getattr(detector, "preprocessing", None) or {}).get("resize")
    if isinstance(resize, int):
        return resize
    if isinstance(resize, (list, tuple)) and len(resize) == 2 and resize[0] == resize[1]:
        return int(resize[0])
    return int(getattr(detector, "input_size", None) or DETECTOR_SIZE)


class DetectorExtractor:
    """An AU detector as one of evaluate's models (``synfer.eval.extract``): pixels -> [B, 41] scores."""

    name = "au"
    dim = NUM_AUS

    def __init__(self, detector: AUDetector, resize: str = "squash"):
        from .preprocess import Preprocess

        self.detector = detector
        self.preprocess = Preprocess(detector_size(detector), resize)
        if detector.scores not in SCORE_KINDS:
            raise ConfigError(f"AU detector {detector.source} reports {detector.scores!r} scores (accepted: {', '.join(SCORE_KINDS)})")
        self.known = np.asarray(detector.known, dtype=bool).reshape(NUM_AUS)

    @property
    def threshold(self) -> tuple[float, str]:
        """The detector's suggested occurrence threshold, or the default for its score kind, and which it is."""
        suggested = getattr(self.detector, "suggested_threshold", None)
        if suggested is not None:
            return float(suggested), "the detector's suggestion"
        return DEFAULT_THRESHOLDS[self.detector.scores], f"the default for {self.detector.scores} scores"

    def record(self) -> dict:
        return {"role": "au", "kind": self.detector.kind, "fingerprint": self.detector.fingerprint,
                "scores": self.detector.scores, "known": self.known.astype(int).tolist(),
                "detector_preprocessing": getattr(self.detector, "preprocessing", None),
                "preprocessing": self.preprocess.to_dict()}

    def describe(self) -> dict:
        return {**self.record(), "source": self.detector.source, "suggested_threshold": self.detector.suggested_threshold}

    def __call__(self, pixels) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.detector.predict(pixels)
        return (out.float().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)).astype(np.float32)
