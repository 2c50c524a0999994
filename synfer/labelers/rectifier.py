"""The ensemble label rectifier: several labelers vote on every synthetic image's label.

A generated image does not always show the expression it was asked for. Each ensemble member (a
FERAnno head, a FER classifier, ...) gives probabilities over the dataset's label set; a *policy*
combines them into one ensemble distribution and one ensemble label. Per sample:

- the ensemble agrees with the target label: the target is kept;
- it disagrees: the label becomes the ensemble's (``changed``);
- its confidence is under ``min_confidence``: ``keep`` is false (the sample is still labelled).

Defaults, and why: ``mean`` is SynFER's rule (average the members' probabilities, take the argmax).
``min_confidence`` is off, so nothing is dropped unless asked: member probabilities are rarely
calibrated, and a threshold that suits one ensemble silently removes whole classes with another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, LabelError
from ..expressions import LabelSet
from ..registry import Registry
from .base import LabelBatch, Labeler

DEFAULT_POLICY = "mean"


@dataclass
class EnsembleVote:
    """A policy's decision for a batch: ensemble probabilities [B, K], class indices [B], confidence [B]."""

    probs: np.ndarray
    index: np.ndarray
    confidence: np.ndarray


Policy = Callable[[np.ndarray, np.ndarray], EnsembleVote]
POLICIES: Registry[Policy] = Registry("policy")  # policy(member_probs [M, B, K], weights [M]) -> EnsembleVote


def _argmax_vote(probs: np.ndarray) -> EnsembleVote:
    index = probs.argmax(axis=1)
    return EnsembleVote(probs, index, probs[np.arange(len(index)), index])


@POLICIES.register("mean")
def mean_policy(member_probs: np.ndarray, weights: np.ndarray) -> EnsembleVote:
    """SynFER's rule: the members' probabilities averaged, then the argmax."""
    return _argmax_vote(member_probs.mean(axis=0))


@POLICIES.register("weighted")
def weighted_policy(member_probs: np.ndarray, weights: np.ndarray) -> EnsembleVote:
    """The weighted average of the members' probabilities (weights normalised to sum 1), then the argmax."""
    return _argmax_vote(np.tensordot(weights / weights.sum(), member_probs, axes=1))


@POLICIES.register("vote")
def vote_policy(member_probs: np.ndarray, weights: np.ndarray) -> EnsembleVote:
    """Majority of the members' argmaxes; a tie goes to the tied class with the highest mean probability.

    The ensemble distribution is the vote share of each class and the confidence the winner's share.
    """
    members, batch, classes = member_probs.shape
    votes = np.zeros((batch, classes))
    np.add.at(votes, (np.arange(batch)[None, :].repeat(members, 0), member_probs.argmax(axis=2)), 1.0)
    mean = member_probs.mean(axis=0)
    # Among the classes with the most votes, the one with the highest mean probability.
    tied = votes == votes.max(axis=1, keepdims=True)
    index = np.where(tied, mean, -np.inf).argmax(axis=1)
    shares = votes / members
    return EnsembleVote(shares, index, shares[np.arange(batch), index])


def check_settings(
    policy: str, weights: Sequence[float] | None, members: int, min_confidence: float | None
) -> np.ndarray | None:
    """Validate the ensemble settings (before any model loads); returns the weights as an array."""
    POLICIES.check(policy)
    if (policy == "weighted") != (weights is not None):
        raise ConfigError("give --weight once per labeler with --policy weighted, and only with it")
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        if len(weights) != members:
            raise ConfigError(f"got {len(weights)} weights for {members} labelers; give one per labeler")
        if not np.all(np.isfinite(weights)) or (weights < 0).any() or weights.sum() <= 0:
            raise ConfigError("labeler weights must be finite, >= 0, and not all 0")
    if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
        raise ConfigError(f"--min-confidence must lie in [0, 1], got {min_confidence}")
    return weights


@dataclass
class RectifiedBatch:
    """The rectifier's output for a batch (arrays of length B unless said otherwise).

    Args:
        member_probs: [M, B, K] each member's probabilities over the label set.
        probs: [B, K] the ensemble's distribution (the policy's).
        target: AffectNet ids the samples were generated for.
        label: the final AffectNet ids (the target where the ensemble agrees, the ensemble's otherwise).
        confidence: the ensemble's probability (or vote share) of its own label.
        agreement: the fraction of members whose argmax is the final label.
        changed: label != target.
        keep: False where the confidence is under ``min_confidence``.
    """

    member_probs: np.ndarray
    probs: np.ndarray
    target: np.ndarray
    label: np.ndarray
    confidence: np.ndarray
    agreement: np.ndarray
    changed: np.ndarray
    keep: np.ndarray


class Rectifier:
    """Combine ``labelers`` with a policy and decide every sample's final label.

    Args:
        labelers: ensemble members; all must speak ``label_set``.
        label_set: the dataset's label set.
        policy: a name in :data:`POLICIES` (``mean``, ``vote``, ``weighted``).
        weights: one non-negative weight per labeler, for ``weighted`` (and only for it).
        min_confidence: samples whose ensemble confidence is below it get ``keep=False``; None keeps all.
    """

    def __init__(
        self,
        labelers: Sequence[Labeler],
        label_set: LabelSet,
        policy: str = DEFAULT_POLICY,
        weights: Sequence[float] | None = None,
        min_confidence: float | None = None,
    ):
        if not labelers:
            raise ConfigError("the ensemble needs at least one labeler (--labeler KIND:PATH)")
        for labeler in labelers:
            if labeler.label_set != label_set:
                raise LabelError(
                    f"labeler {labeler.kind}:{labeler.source} predicts {labeler.label_set.name} "
                    f"({labeler.label_set.num_classes} classes) but the dataset uses {label_set.name} "
                    f"({label_set.num_classes} classes)"
                )
        weights = check_settings(policy, weights, len(labelers), min_confidence)
        self.labelers = list(labelers)
        self.label_set = label_set
        self.policy = policy
        self.weights = weights if weights is not None else np.ones(len(labelers))
        self.min_confidence = min_confidence

    def settings(self) -> dict:
        """What decides the output, for file metadata."""
        return {
            "policy": self.policy,
            "weights": self.weights.tolist() if self.policy == "weighted" else None,
            "min_confidence": self.min_confidence,
            "label_set": self.label_set.name,
            "labels": self.label_set.names,
        }

    def rectify(self, batch: LabelBatch, targets: Sequence[int]) -> RectifiedBatch:
        """Run every member on ``batch`` and decide the final labels; ``targets`` are AffectNet ids."""
        member_probs = np.stack([labeler.predict(batch).numpy().astype(np.float64) for labeler in self.labelers])
        expected = (len(batch), self.label_set.num_classes)
        for labeler, probs in zip(self.labelers, member_probs):
            if probs.shape != expected:
                raise ConfigError(f"labeler {labeler.kind}:{labeler.source} returned {probs.shape}, expected {expected}")
        return self.decide(member_probs, targets)

    def decide(self, member_probs: np.ndarray, targets: Sequence[int]) -> RectifiedBatch:
        """The decision rule on given member probabilities [M, B, K]."""
        vote = POLICIES[self.policy](member_probs, self.weights)
        target = np.asarray([int(t) for t in targets], dtype=np.int64)
        ids = np.asarray([int(e) for e in self.label_set.expressions], dtype=np.int64)
        # Agreeing keeps the target and disagreeing replaces it with the ensemble's label: either way
        # the final label is the ensemble's, and `changed` records which case it was.
        label = ids[vote.index]
        agreement = (member_probs.argmax(axis=2) == vote.index[None, :]).mean(axis=0)
        keep = np.ones(len(target), dtype=bool) if self.min_confidence is None else vote.confidence >= self.min_confidence
        return RectifiedBatch(
            member_probs=member_probs.astype(np.float32),
            probs=vote.probs.astype(np.float32),
            target=target,
            label=label,
            confidence=vote.confidence.astype(np.float32),
            agreement=agreement.astype(np.float32),
            changed=label != target,
            keep=keep,
        )
