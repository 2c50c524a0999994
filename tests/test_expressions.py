import pytest

from synfer.errors import LabelError
from synfer.expressions import (
    AFFECTNET7,
    AFFECTNET8,
    Expression,
    from_fer2013,
    from_rafdb,
    get_label_set,
    parse_expression,
    to_fer2013,
    to_rafdb,
)


def test_affectnet_ids():
    assert [(e.value, e.label) for e in Expression] == [
        (0, "neutral"), (1, "happy"), (2, "sad"), (3, "surprise"),
        (4, "fear"), (5, "disgust"), (6, "anger"), (7, "contempt"),
    ]


def test_label_sets():
    assert AFFECTNET8.num_classes == 8 and AFFECTNET7.num_classes == 7
    assert Expression.CONTEMPT not in AFFECTNET7
    assert all(AFFECTNET7.index(e) == int(e) for e in AFFECTNET7.expressions)
    with pytest.raises(LabelError, match="not in label set"):
        AFFECTNET7.index(Expression.CONTEMPT)
    assert get_label_set(7) is AFFECTNET7 and get_label_set("affectnet8") is AFFECTNET8
    with pytest.raises(LabelError, match="accepted"):
        get_label_set(6)


@pytest.mark.parametrize(
    "raf, name", [(1, "surprise"), (2, "fear"), (3, "disgust"), (4, "happy"), (5, "sad"), (6, "anger"), (7, "neutral")]
)
def test_rafdb_table(raf, name):
    assert from_rafdb(raf).label == name
    assert to_rafdb(from_rafdb(raf)) == raf


@pytest.mark.parametrize(
    "fer, name", [(0, "anger"), (1, "disgust"), (2, "fear"), (3, "happy"), (4, "sad"), (5, "surprise"), (6, "neutral")]
)
def test_fer2013_table(fer, name):
    assert from_fer2013(fer).label == name
    assert to_fer2013(from_fer2013(fer)) == fer


def test_contempt_has_no_rafdb_or_fer_label():
    with pytest.raises(LabelError, match="accepted"):
        to_rafdb(Expression.CONTEMPT)
    with pytest.raises(LabelError):
        to_fer2013(Expression.CONTEMPT)
    with pytest.raises(LabelError):
        from_rafdb(0)


@pytest.mark.parametrize("value, expected", [("happy", 1), ("Happiness", 1), ("6", 6), (7, 7), ("angry", 6)])
def test_parse_expression(value, expected):
    assert parse_expression(value) == expected


@pytest.mark.parametrize("value", ["joyous", "8", "-1", ""])
def test_parse_expression_rejects(value):
    with pytest.raises(LabelError, match="accepted: 0=neutral"):
        parse_expression(value)
