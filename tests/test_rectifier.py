import numpy as np
import pytest
import torch

from synfer.errors import ConfigError, LabelError
from synfer.expressions import AFFECTNET7, AFFECTNET8, Expression
from synfer.labelers.base import LABELERS, LabelBatch, load_labeler
from synfer.labelers.rectifier import POLICIES, Rectifier


class FixedLabeler:
    """Returns the same probabilities for every image."""

    kind = "fixed"

    def __init__(self, probs, label_set=AFFECTNET8, source="fixed"):
        self.probs = torch.tensor(probs, dtype=torch.float32)
        self.label_set = label_set
        self.source = source
        self.fingerprint = source

    def predict(self, batch):
        return self.probs.expand(len(batch), -1).clone()


def one_hot_ish(index, high, classes=8):
    row = np.full(classes, (1 - high) / (classes - 1))
    row[index] = high
    return row


def test_mean_policy_averages_members_and_replaces_disagreeing_targets():
    happy, sad = one_hot_ish(1, 0.9), one_hot_ish(2, 0.6)
    rectifier = Rectifier([FixedLabeler(happy), FixedLabeler(sad)], AFFECTNET8)
    out = rectifier.rectify(LabelBatch(torch.rand(3, 3, 8, 8)), targets=[1, 2, 0])
    expected = (happy + sad) / 2
    assert np.allclose(out.probs, expected[None].repeat(3, 0), atol=1e-6)
    assert out.member_probs.shape == (2, 3, 8)
    assert out.label.tolist() == [1, 1, 1]
    assert out.changed.tolist() == [False, True, True]
    assert np.allclose(out.confidence, expected.max())
    assert np.allclose(out.agreement, 0.5)  # one of the two members' argmax is the final label
    assert out.keep.all()


def test_vote_policy_majority_and_ties_by_mean_probability():
    members = np.stack(
        [
            [one_hot_ish(3, 0.5), one_hot_ish(3, 0.4)],
            [one_hot_ish(3, 0.6), one_hot_ish(5, 0.9)],
            [one_hot_ish(5, 0.99), one_hot_ish(3, 0.35)],
            [one_hot_ish(6, 0.9), one_hot_ish(5, 0.9)],
        ]
    )
    out = Rectifier([FixedLabeler(np.ones(8) / 8)] * 4, AFFECTNET8, policy="vote").decide(members, [3, 3])
    # Sample 0: surprise has 2 of 4 votes. Sample 1: a 2-2 tie between surprise and disgust, which the
    # mean probability breaks for disgust (0.9 + 0.9 against 0.4 + 0.35).
    assert out.label.tolist() == [int(Expression.SURPRISE), int(Expression.DISGUST)]
    assert out.probs[0].tolist() == pytest.approx([0, 0, 0, 0.5, 0, 0.25, 0.25, 0])
    assert out.confidence.tolist() == pytest.approx([0.5, 0.5])
    assert out.changed.tolist() == [False, True]


def test_weighted_policy_follows_the_weights():
    happy, sad = one_hot_ish(1, 0.9), one_hot_ish(2, 0.6)
    members = [FixedLabeler(happy), FixedLabeler(sad)]
    mean = Rectifier(members, AFFECTNET8).decide(np.stack([[happy], [sad]]), [0])
    weighted = Rectifier(members, AFFECTNET8, policy="weighted", weights=[1, 3]).decide(np.stack([[happy], [sad]]), [0])
    assert mean.label.tolist() == [1]
    assert weighted.label.tolist() == [2]
    assert np.allclose(weighted.probs[0], (happy + 3 * sad) / 4, atol=1e-6)


def test_min_confidence_marks_samples_not_kept():
    members = np.stack([[one_hot_ish(1, 0.9), one_hot_ish(1, 0.3)]])
    rectifier = Rectifier([FixedLabeler(np.ones(8) / 8)], AFFECTNET8, min_confidence=0.5)
    out = rectifier.decide(members, [1, 1])
    assert out.keep.tolist() == [True, False]
    assert out.label.tolist() == [1, 1]  # labelled either way; keep only says whether to train on it


def test_seven_class_ensemble_maps_indices_to_affectnet_ids():
    members = np.stack([[one_hot_ish(6, 0.9, classes=7)]])
    out = Rectifier([FixedLabeler(np.ones(7) / 7, AFFECTNET7)], AFFECTNET7).decide(members, [0])
    assert out.label.tolist() == [int(Expression.ANGER)]


def test_settings_are_checked():
    member = FixedLabeler(np.ones(8) / 8)
    with pytest.raises(LabelError, match="affectnet7"):
        Rectifier([member, FixedLabeler(np.ones(7) / 7, AFFECTNET7, source="seven")], AFFECTNET8)
    with pytest.raises(ConfigError, match="accepted: mean"):
        Rectifier([member], AFFECTNET8, policy="median")
    with pytest.raises(ConfigError, match="--weight"):
        Rectifier([member], AFFECTNET8, policy="weighted")
    with pytest.raises(ConfigError, match="--weight"):
        Rectifier([member], AFFECTNET8, weights=[1.0])
    with pytest.raises(ConfigError, match="one per labeler"):
        Rectifier([member, member], AFFECTNET8, policy="weighted", weights=[1.0])
    with pytest.raises(ConfigError, match="not all 0"):
        Rectifier([member], AFFECTNET8, policy="weighted", weights=[0.0])
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        Rectifier([member], AFFECTNET8, min_confidence=1.5)
    with pytest.raises(ConfigError, match="at least one"):
        Rectifier([], AFFECTNET8)
    assert set(POLICIES) == {"mean", "vote", "weighted"}


def test_labeler_specs_go_through_the_registry(tmp_path):
    assert {"classifier", "feranno"} <= set(LABELERS)
    assert LABELERS.parse("classifier:runs/a:b") == ("classifier", "runs/a:b")
    with pytest.raises(ConfigError, match="accepted: classifier, feranno"):
        LABELERS.parse("clip:/x")
    with pytest.raises(ConfigError, match="KIND:PATH"):
        LABELERS.parse("runs/model")
    with pytest.raises(Exception, match="not a synfer classifier"):
        load_labeler(f"classifier:{tmp_path}")
    with pytest.raises(Exception, match="not a FERAnno head"):
        load_labeler(f"feranno:{tmp_path}")


def test_classifier_labeler_probabilities_and_fingerprint():
    from synfer.labelers.base import ClassifierLabeler
    from synfer.models.classifier import create_classifier

    torch.manual_seed(0)
    model = create_classifier("tiny-resnet", "affectnet7")  # has BatchNorm step counters (0-dim tensors)
    labeler = ClassifierLabeler(model, source="mem")
    probs = labeler.predict(LabelBatch(torch.rand(3, 3, 32, 32)))
    assert probs.shape == (3, 7) and torch.allclose(probs.sum(1), torch.ones(3))
    assert labeler.label_set is AFFECTNET7
    with torch.no_grad():
        model.head.bias[0] += 1.0
    assert ClassifierLabeler(model).fingerprint != labeler.fingerprint
