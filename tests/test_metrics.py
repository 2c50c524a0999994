import numpy as np
import pytest

from synfer.eval.metrics import ClassificationMetrics, confusion_matrix


def test_confusion_matrix_counts_true_rows_and_predicted_columns():
    matrix = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    with pytest.raises(ValueError, match="0..2"):
        confusion_matrix([3], [0], 3)
    with pytest.raises(ValueError, match="predictions"):
        confusion_matrix([0, 1], [0], 3)


def test_metrics_by_hand():
    # true: a a a a b b c ; predicted: a a a b b a a   (class c is never predicted)
    metrics = ClassificationMetrics.from_predictions([0, 0, 0, 0, 1, 1, 2], [0, 0, 0, 1, 1, 0, 0], ["a", "b", "c"])
    assert metrics.n == 7
    assert metrics.accuracy == pytest.approx(4 / 7)
    assert metrics.recall.tolist() == pytest.approx([3 / 4, 1 / 2, 0.0])
    assert metrics.precision.tolist() == pytest.approx([3 / 5, 1 / 2, 0.0])
    f1_a = 2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4)
    assert metrics.f1.tolist() == pytest.approx([f1_a, 0.5, 0.0])
    assert metrics.balanced_accuracy == pytest.approx((3 / 4 + 1 / 2 + 0) / 3)
    assert metrics.macro_f1 == pytest.approx((f1_a + 0.5 + 0) / 3)
    data = metrics.to_dict()
    assert data["per_class"]["b"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert data["confusion_matrix"] == [[3, 1, 0], [1, 1, 0], [1, 0, 0]]
    again = ClassificationMetrics.from_dict(data)
    assert again.summary() == metrics.summary() and again.labels == ("a", "b", "c")


def test_absent_classes_do_not_drag_the_averages_down():
    # Class c neither occurs nor is predicted: like scikit-learn, it is left out of both averages.
    metrics = ClassificationMetrics.from_predictions([0, 1, 1], [0, 1, 0], ["a", "b", "c"])
    assert metrics.balanced_accuracy == pytest.approx((1 + 0.5) / 2)
    assert metrics.macro_f1 == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert ClassificationMetrics(("a",), np.zeros((1, 1), dtype=int)).summary() == {
        "accuracy": 0.0, "balanced_accuracy": 0.0, "macro_f1": 0.0,
    }
