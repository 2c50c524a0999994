from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synfer.errors import ConfigError
from synfer.expressions import AFFECTNET7, AFFECTNET8, AFFECTNET_TRAIN_COUNTS
from synfer.synth.apportion import apportion, integer_weights, largest_remainder, quota_sequence

weights_strategy = st.lists(st.integers(0, 60), min_size=1, max_size=8).filter(lambda w: sum(w) > 0)


def prefix_counts(sequence, k):
    return np.cumsum(np.eye(k, dtype=np.int64)[sequence], axis=0)


def hamilton_by_hand(n, weights):
    """Textbook Hamilton: floors, then the largest exact remainders (ties: any order)."""
    quotas = [Fraction(n * w, sum(weights)) for w in weights]
    floors = [int(q) for q in quotas]
    return quotas, floors


@settings(max_examples=60, deadline=None)
@given(weights=weights_strategy, length=st.integers(1, 400), seed=st.integers(0, 2**32))
def test_every_prefix_of_the_sequence_is_within_quota(weights, length, seed):
    sequence = quota_sequence(weights, length, seed)
    counts = prefix_counts(sequence, len(weights))
    t = np.arange(1, length + 1)[:, None]
    ideal = t * np.array(weights) / sum(weights)
    active = sum(w > 0 for w in weights)
    bound = 1 - 1 / (2 * active - 2) if active > 1 else 0
    assert np.abs(counts - ideal).max() <= bound + 1e-9
    assert all(counts[-1][k] == 0 for k, w in enumerate(weights) if w == 0)


@settings(max_examples=60, deadline=None)
@given(weights=weights_strategy, n=st.integers(1, 300), longer=st.integers(0, 300), seed=st.integers(0, 2**32))
def test_counts_are_hamilton_and_labels_ignore_n_except_the_adjusted(weights, n, longer, seed):
    small, large = apportion(weights, n, seed), apportion(weights, n + longer, seed)
    counts = np.bincount(small.labels, minlength=len(weights))
    assert counts.tolist() == small.counts.tolist()
    # Hamilton: floor or floor + 1 of each quota, and every class rounded up has a remainder at least
    # as large as every class rounded down.
    quotas, floors = hamilton_by_hand(n, weights)
    assert counts.sum() == n
    up = [k for k in range(len(weights)) if counts[k] == floors[k] + 1]
    down = [k for k in range(len(weights)) if counts[k] == floors[k]]
    assert len(up) + len(down) == len(weights)
    if up and down:
        assert min(quotas[k] - floors[k] for k in up) >= max(quotas[k] - floors[k] for k in down)
    # The label of i is the same for both sizes, except the few samples rounding touched.
    assert len(small.adjusted) <= sum(w > 0 for w in weights) // 2
    differ = set(np.flatnonzero(small.labels != large.labels[:n]).tolist())
    assert differ <= set(small.adjusted) | set(large.adjusted)
    sequence = quota_sequence(weights, n, seed)
    assert set(np.flatnonzero(small.labels != sequence).tolist()) == set(small.adjusted)


def test_affectnet_weights_at_1x_reproduce_affectnet_counts_with_no_adjustment():
    for label_set, size in ((AFFECTNET8, 287_651), (AFFECTNET7, 283_901)):
        weights = [AFFECTNET_TRAIN_COUNTS[e] for e in label_set.expressions]
        result = apportion(weights, size, seed=1)
        assert result.counts.tolist() == weights and result.adjusted == ()
    # and 2x is two of them, extending 1x sample for sample
    weights = [AFFECTNET_TRAIN_COUNTS[e] for e in AFFECTNET8.expressions]
    double = apportion(weights, 2 * 287_651, seed=1)
    assert double.counts.tolist() == [2 * w for w in weights] and double.adjusted == ()
    assert np.array_equal(double.labels[:287_651], apportion(weights, 287_651, seed=1).labels)


def test_equal_weights_never_adjust_and_shuffle_each_round():
    for n in (1, 7, 8, 13, 100):
        assert apportion([1] * 8, n, seed=3).adjusted == ()
    labels = apportion([1] * 8, 80, seed=3).labels
    rounds = labels.reshape(10, 8)
    assert all(sorted(r) == list(range(8)) for r in rounds.tolist())
    assert len({tuple(r) for r in rounds.tolist()}) > 1  # the order within a round is shuffled
    assert not np.array_equal(labels, apportion([1] * 8, 80, seed=4).labels)


def test_an_alabama_paradox_case_is_resolved_by_one_adjusted_sample():
    # Hamilton gives class 2 one seat at n=10 and none at n=11 (the classic paradox).
    weights = [6, 6, 2]
    assert largest_remainder(10, weights).tolist() == [4, 4, 2]
    assert largest_remainder(11, weights).tolist() == [5, 5, 1]
    small, large = apportion(weights, 10, seed=0), apportion(weights, 11, seed=0)
    assert small.counts.tolist() == [4, 4, 2] and large.counts.tolist() == [5, 5, 1]
    # No single sequence has both counts as prefixes, so one of the two must relabel a sample; one is enough.
    assert len(small.adjusted) + len(large.adjusted) >= 1 and max(len(small.adjusted), len(large.adjusted)) == 1


def test_largest_remainder_prefers_the_given_classes_on_ties():
    assert largest_remainder(2, [1, 1, 1, 1]).tolist() == [1, 1, 0, 0]
    assert largest_remainder(2, [1, 1, 1, 1], prefer=[False, True, False, True]).tolist() == [0, 1, 0, 1]
    assert largest_remainder(10, [5, 3, 2]).tolist() == [5, 3, 2]
    assert largest_remainder(7, [1, 1, 1]).tolist() == [3, 2, 2]


def test_integer_weights():
    assert integer_weights([0.5, 0.25, 0.25]) == (2, 1, 1)
    assert integer_weights([0.1, 0.2, 0]) == (1, 2, 0)
    assert integer_weights([6, 4]) == (3, 2) and integer_weights([74_874, 134_415]) == (24_958, 44_805)
    for bad in ([0, 0], [-1, 2], [float("nan"), 1], ["a", 1], [True, 1]):
        with pytest.raises(ConfigError):
            integer_weights(bad)
