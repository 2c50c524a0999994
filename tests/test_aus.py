import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from synfer.aus import (
    AU_NAMES,
    AU_TABLE,
    DEFAULT_PRESENT_INTENSITY,
    NUM_AUS,
    PROTOTYPE_AUS,
    AUVector,
    from_openface,
    from_opengraphau,
    from_pyfeat,
    nearest_expression,
    prototype,
    stack,
)
from synfer.errors import AUError, SynferError
from synfer.expressions import AFFECTNET7, Expression

OPENGRAPHAU_ORDER = [
    "AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU10", "AU11", "AU12", "AU13", "AU14", "AU15", "AU16", "AU17", "AU18",
    "AU19", "AU20", "AU22", "AU23", "AU24", "AU25", "AU26", "AU27", "AU32", "AU38", "AU39",
    "L1", "R1", "L2", "R2", "L4", "R4", "L6", "R6", "L10", "R10", "L12", "R12", "L14", "R14",
]


def test_table_is_opengraphau_order_with_a_phrase_for_every_slot():
    assert NUM_AUS == 41
    assert list(AU_NAMES) == OPENGRAPHAU_ORDER
    assert all(au.phrase and au.facs_name for au in AU_TABLE)
    assert len({au.phrase for au in AU_TABLE}) == NUM_AUS


def test_parse_plain_list_uses_present_intensity_and_marks_rest_known_absent():
    v = AUVector.parse("6,12")
    assert v.to_dict() == {"AU6": DEFAULT_PRESENT_INTENSITY, "AU12": DEFAULT_PRESENT_INTENSITY}
    assert v.known.all()
    assert AUVector.parse("6,12", present_intensity=1.5)["AU12"] == 1.5


@pytest.mark.parametrize(
    "text, expected",
    [
        ("AU6:2.5,AU12:4", {"AU6": 2.5, "AU12": 4.0}),
        ("L12,R14", {"L12": 3.0, "R14": 3.0}),
        ("au06 + AU12E", {"AU6": 3.0, "AU12": 5.0}),
        ("AU4:B, 7 : 1", {"AU4": 2.0, "AU7": 1.0}),
        ("6,6", {"AU6": 3.0}),
        ("AU6:0", {}),
        ("none", {}),
    ],
)
def test_parse_accepted_forms(text, expected):
    assert AUVector.parse(text).to_dict() == expected


def test_unknown_marker_sets_mask_not_zero():
    v = AUVector.parse("AU6:2,AU9:?")
    assert v["AU9"] is None and v.unknown == ["AU9"]
    assert v["AU6"] == 2.0 and v["AU1"] == 0.0
    assert v != AUVector.parse("AU6:2")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("AU3", "unknown AU"),
        ("L5", "unknown AU"),
        ("AU6:7", "out of range"),
        ("AU6:-1", "out of range"),
        ("AU6:nan", "out of range"),
        ("AU6:x", "cannot read"),
        ("6:2,6:3", "twice"),
        ("AU12C:3", "twice"),
        ("smile", "cannot read"),
    ],
)
def test_bad_specs_raise_one_line_errors_that_list_what_is_accepted(text, fragment):
    with pytest.raises(AUError) as info:
        AUVector.parse(text)
    message = str(info.value)
    assert isinstance(info.value, SynferError)
    assert fragment in message and "\n" not in message
    if fragment != "twice":
        assert "AU1, AU2" in message and "R14" in message


intensities = st.floats(min_value=0.0, max_value=5.0, allow_nan=False, width=32)


@st.composite
def au_vectors(draw):
    values = draw(st.lists(intensities, min_size=NUM_AUS, max_size=NUM_AUS))
    known = draw(st.lists(st.booleans(), min_size=NUM_AUS, max_size=NUM_AUS))
    return AUVector(values, known)


@given(au_vectors())
def test_format_then_parse_round_trips(vector):
    assert AUVector.parse(vector.format()) == vector


@given(st.dictionaries(st.sampled_from(AU_NAMES), st.floats(0.25, 5.0, width=32), min_size=1))
def test_parse_then_format_is_canonical(mapping):
    text = ",".join(f"{name}:{value!r}" for name, value in mapping.items())
    vector = AUVector.parse(text)
    assert AUVector.parse(vector.format()).format() == vector.format()
    assert set(vector.active) == set(mapping)


def test_vector_is_immutable_and_validated():
    v = AUVector.parse("6")
    with pytest.raises(ValueError):
        v.values[0] = 1.0
    with pytest.raises(AUError):
        AUVector(np.full(NUM_AUS, 6.0))
    with pytest.raises(AUError):
        AUVector(np.zeros(40))


def test_stack_and_replace():
    a, b = AUVector.parse("6,12"), AUVector.parse("AU9:?")
    values, known = stack([a, b])
    assert values.shape == (2, NUM_AUS) and known.dtype == bool
    assert not known[1, AU_NAMES.index("AU9")]
    assert b.replace(AU9=2.0)["AU9"] == 2.0


def test_prototypes_follow_design():
    assert prototype(Expression.HAPPY).active == ["AU6", "AU12"]
    assert prototype(Expression.CONTEMPT).active == ["R12", "R14"]
    assert prototype(Expression.NEUTRAL).active == []
    assert set(PROTOTYPE_AUS) == set(Expression)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("6,12", Expression.HAPPY),
        ("1,2,5,26", Expression.SURPRISE),
        ("1,2", Expression.SURPRISE),
        ("9,15,16", Expression.DISGUST),
        ("R12,R14", Expression.CONTEMPT),
        ("none", Expression.NEUTRAL),
        ("4,5,7,23", Expression.ANGER),
    ],
)
def test_nearest_expression(text, expected):
    assert nearest_expression(AUVector.parse(text))[0] is expected


def test_nearest_expression_respects_candidates():
    assert nearest_expression(AUVector.parse("R12,R14"), AFFECTNET7.expressions)[0] is not Expression.CONTEMPT


def test_importers_keep_unknown_separate_from_absent():
    openface = from_openface({"AU06_r": 2.5, "AU12_r": 4.0, "AU12_c": 1, "AU45_r": 1.0, "AU04_c": 1})
    assert openface["AU6"] == 2.5 and openface["AU12"] == 4.0
    assert openface["AU4"] == DEFAULT_PRESENT_INTENSITY
    assert openface["AU1"] is None and openface["L12"] is None  # not measured
    pyfeat = from_pyfeat({"AU06": 0.9, "AU12": 0.2})
    assert pyfeat["AU6"] == DEFAULT_PRESENT_INTENSITY and pyfeat["AU12"] == 0.0 and pyfeat["AU9"] is None
    probabilities = np.zeros(NUM_AUS)
    probabilities[AU_NAMES.index("R14")] = 0.8
    assert from_opengraphau(probabilities).active == ["R14"]
    with pytest.raises(AUError):
        from_opengraphau([0.5] * 12)
