"""Exact label counts whose labels stay put when the dataset grows.

Two things are wanted of the labels of an ``n``-sample dataset with class weights ``w``:

1. the counts are exactly the largest-remainder (Hamilton) apportionment of ``n`` by ``w``;
2. the label of sample ``i`` does not depend on ``n``.

No rule has both for every ``n``: Hamilton's counts are not monotone in ``n`` (the Alabama paradox),
so no single sequence of labels has Hamilton's counts at every prefix. synfer keeps (1) exactly and
(2) for all but a bounded, known handful of samples:

* :func:`quota_sequence` builds one label sequence ``S`` from the weights and a seed alone, with
  Tijdeman's chairman assignment (earliest deadline first). Every prefix of ``S`` is *within quota*:
  after ``t`` samples, class ``k`` has ``floor(t w_k / W)`` or ``ceil(t w_k / W)`` of them.
* :func:`apportion` takes ``S[:n]`` and relabels the fewest samples that turn its counts into
  Hamilton's. Both count vectors are within quota, so they differ only in which classes with a
  fractional quota were rounded up: at most ``floor(K / 2)`` samples change (``K`` classes with a
  positive weight), each the last sample before ``n`` of a class that ``S`` rounded up and Hamilton
  did not. Hamilton breaks ties between equal remainders in favour of ``S``, so nothing changes when
  every quota ``n w_k / W`` is whole or when all remainders are equal (equal weights).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..errors import ConfigError

# Float weights are read as the nearest fraction with at most this denominator, so that 0.1 means 1/10.
MAX_DENOMINATOR = 10**6


def integer_weights(weights: Sequence[float | int | Fraction]) -> tuple[int, ...]:
    """The smallest non-negative integers in the proportions of ``weights``."""
    fractions = []
    for weight in weights:
        if isinstance(weight, bool) or not isinstance(weight, (int, float, Fraction)):
            raise ConfigError(f"a label weight must be a number, got {weight!r}")
        if not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"label weights must be finite and >= 0, got {weight!r}")
        fractions.append(Fraction(weight).limit_denominator(MAX_DENOMINATOR))
    if not any(fractions):
        raise ConfigError("at least one label weight must be positive")
    scale = math.lcm(*(f.denominator for f in fractions))
    integers = [int(f * scale) for f in fractions]
    divisor = math.gcd(*integers)
    return tuple(i // divisor for i in integers)


def largest_remainder(n: int, weights: Sequence[int], prefer: Sequence[bool] | None = None) -> np.ndarray:
    """Hamilton's apportionment of ``n`` by integer ``weights``.

    Every class gets the floor of its quota; the seats left go to the largest remainders. Equal
    remainders go first to the classes with ``prefer[k]``, then to the lower class index.
    """
    total = sum(weights)
    floors = [n * w // total for w in weights]
    remainders = [n * w % total for w in weights]  # numerators over `total`: compared exactly
    prefer = [False] * len(weights) if prefer is None else list(prefer)
    order = sorted(range(len(weights)), key=lambda k: (-remainders[k], not prefer[k], k))
    counts = np.array(floors, dtype=np.int64)
    for k in order[: n - sum(floors)]:
        counts[k] += 1
    return counts


def quota_sequence(weights: Sequence[int], length: int, seed: int = 0) -> np.ndarray:
    """The first ``length`` labels of the within-quota sequence for integer ``weights``.

    Class ``k``'s ``j``-th sample is a unit job that may run at step ``t`` (1-based) once
    ``t w_k / W >= j + d`` and is due by ``t w_k / W <= j + 1 - d``, with ``d = 1 / (2K - 2)``;
    running the released job with the earliest due time meets every due time (Tijdeman, "The chairman
    assignment problem", 1980), so ``|count_k(t) - t w_k / W| <= 1 - d < 1`` for every prefix.
    Equal due times (equal weights make many) are broken by seeded random priorities, so the order of
    classes within a round is shuffled. The result for ``length`` is a prefix of the result for any
    longer length.
    """
    weights = [int(w) for w in weights]
    sequence = np.empty(length, dtype=np.int16)
    active = [k for k, w in enumerate(weights) if w > 0]
    if not active:
        raise ConfigError("at least one label weight must be positive")
    if len(active) == 1:
        sequence.fill(active[0])
        return sequence
    total = sum(weights)
    spread = 2 * len(active) - 2  # 1 / d
    lcm = math.lcm(*(weights[k] for k in active))
    due_scale = {k: lcm // weights[k] for k in active}

    def release(k: int, j: int) -> int:  # the first step at which t w_k / W >= j + d
        return -(-total * (spread * j + 1) // (spread * weights[k]))

    def due(k: int, j: int) -> int:  # (j + 1 - d) W / w_k, scaled to a common integer denominator
        return (spread * (j + 1) - 1) * due_scale[k]

    priorities = {
        k: np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, k])).random(
            length * weights[k] // total + 2
        ).tolist()
        for k in active
    }
    counts = dict.fromkeys(active, 0)
    waiting = [(release(k, 0), k) for k in active]  # each class's next job, by release step
    heapq.heapify(waiting)
    ready: list[tuple[int, float, int]] = []
    for t in range(1, length + 1):
        while waiting and waiting[0][0] <= t:
            _, k = heapq.heappop(waiting)
            heapq.heappush(ready, (due(k, counts[k]), priorities[k][counts[k]], k))
        if not ready:  # impossible: the deficits sum to 1, so one of them is >= 1/K >= d
            raise RuntimeError(f"quota sequence has no class to schedule at step {t}")
        _, _, k = heapq.heappop(ready)
        sequence[t - 1] = k
        counts[k] += 1
        heapq.heappush(waiting, (release(k, counts[k]), k))
    return sequence


@dataclass(frozen=True)
class Apportionment:
    """Labels (class indices) of samples ``0..n-1`` and which of them differ from the quota sequence."""

    labels: np.ndarray
    counts: np.ndarray
    adjusted: tuple[int, ...]  # the samples relabelled to reach Hamilton's counts; they depend on n


def apportion(weights: Sequence[int], n: int, seed: int = 0) -> Apportionment:
    """Labels for ``n`` samples: the quota sequence, made to have exactly Hamilton's counts."""
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    labels = quota_sequence(weights, n, seed)
    have = np.bincount(labels, minlength=len(weights))
    floors = np.array([n * w // sum(weights) for w in weights])
    target = largest_remainder(n, weights, prefer=have > floors)
    # Over-represented classes give up their last samples before n, in index order, to the under-represented.
    surplus = sorted(
        i for k in np.flatnonzero(have > target) for i in np.flatnonzero(labels == k)[-(have[k] - target[k]) :]
    )
    deficit = [k for k in np.flatnonzero(have < target) for _ in range(target[k] - have[k])]
    for i, k in zip(surplus, deficit):
        labels[i] = k
    labels.flags.writeable = False
    return Apportionment(labels, target, tuple(int(i) for i in surplus))
