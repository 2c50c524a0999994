"""Expression label sets and the mappings between datasets.

AffectNet's ids are synfer's canonical labels. Every other dataset maps into them through the
explicit tables below; nothing elsewhere in synfer should hard-code another dataset's numbering.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from .errors import LabelError


class Expression(IntEnum):
    """The eight AffectNet expressions, with AffectNet's ids."""

    NEUTRAL = 0
    HAPPY = 1
    SAD = 2
    SURPRISE = 3
    FEAR = 4
    DISGUST = 5
    ANGER = 6
    CONTEMPT = 7

    @property
    def label(self) -> str:
        """The lower-case name used on the command line, in files and in prompts."""
        return self.name.lower()


# Names people use for the same expression in other datasets and papers.
_ALIASES: dict[str, Expression] = {
    "happiness": Expression.HAPPY,
    "happily": Expression.HAPPY,
    "joy": Expression.HAPPY,
    "sadness": Expression.SAD,
    "surprised": Expression.SURPRISE,
    "fearful": Expression.FEAR,
    "afraid": Expression.FEAR,
    "disgusted": Expression.DISGUST,
    "angry": Expression.ANGER,
    "contemptuous": Expression.CONTEMPT,
    "calm": Expression.NEUTRAL,
}


@dataclass(frozen=True)
class LabelSet:
    """An ordered set of expressions; class index ``i`` of a classifier means ``expressions[i]``."""

    name: str
    expressions: tuple[Expression, ...]

    @property
    def num_classes(self) -> int:
        return len(self.expressions)

    @property
    def names(self) -> list[str]:
        return [e.label for e in self.expressions]

    def __contains__(self, expression: object) -> bool:
        return expression in self.expressions

    def index(self, expression: Expression | int) -> int:
        """The class index of ``expression`` (an AffectNet id) in this set."""
        expression = Expression(int(expression))
        if expression not in self.expressions:
            raise LabelError(
                f"{expression.label!r} is not in label set {self.name!r} (accepted: {', '.join(self.names)})"
            )
        return self.expressions.index(expression)

    def expression(self, index: int) -> Expression:
        """The expression at class index ``index``."""
        if not 0 <= index < self.num_classes:
            raise LabelError(f"class index {index} is out of range for {self.name!r} (0..{self.num_classes - 1})")
        return self.expressions[index]


AFFECTNET8 = LabelSet("affectnet8", tuple(Expression))
AFFECTNET7 = LabelSet("affectnet7", tuple(e for e in Expression if e is not Expression.CONTEMPT))

LABEL_SETS: dict[str, LabelSet] = {s.name: s for s in (AFFECTNET8, AFFECTNET7)}


def get_label_set(name_or_classes: str | int) -> LabelSet:
    """``"affectnet8"``, ``"affectnet7"``, ``8`` or ``7``."""
    key = str(name_or_classes).lower()
    if key in ("8", "7"):
        key = f"affectnet{key}"
    if key not in LABEL_SETS:
        raise LabelError(f"unknown label set {name_or_classes!r} (accepted: 7, 8, {', '.join(LABEL_SETS)})")
    return LABEL_SETS[key]


def parse_expression(value: str | int | Expression) -> Expression:
    """An expression from its name, a common alias, or its AffectNet id."""
    if isinstance(value, Expression):
        return value
    text = str(value).strip().lower()
    if text.lstrip("-").isdigit():
        number = int(text)
        if number in Expression._value2member_map_:
            return Expression(number)
    else:
        if text.upper() in Expression.__members__:
            return Expression[text.upper()]
        if text in _ALIASES:
            return _ALIASES[text]
    accepted = ", ".join(f"{e.value}={e.label}" for e in Expression)
    raise LabelError(f"unknown expression {value!r} (accepted: {accepted})")


# RAF-DB basic emotion labels (EmoLabel/list_patition_label.txt): 1-based, its own order.
RAFDB_TO_AFFECTNET: dict[int, Expression] = {
    1: Expression.SURPRISE,
    2: Expression.FEAR,
    3: Expression.DISGUST,
    4: Expression.HAPPY,
    5: Expression.SAD,
    6: Expression.ANGER,
    7: Expression.NEUTRAL,
}

# FER2013 (fer2013.csv, "emotion" column).
FER2013_TO_AFFECTNET: dict[int, Expression] = {
    0: Expression.ANGER,
    1: Expression.DISGUST,
    2: Expression.FEAR,
    3: Expression.HAPPY,
    4: Expression.SAD,
    5: Expression.SURPRISE,
    6: Expression.NEUTRAL,
}

AFFECTNET_TO_RAFDB: dict[Expression, int] = {v: k for k, v in RAFDB_TO_AFFECTNET.items()}
AFFECTNET_TO_FER2013: dict[Expression, int] = {v: k for k, v in FER2013_TO_AFFECTNET.items()}


def _lookup(table: dict, key, source: str):
    try:
        return table[key]
    except KeyError:
        accepted = ", ".join(str(k) for k in table)
        raise LabelError(f"{source} has no label {key!r} (accepted: {accepted})") from None


def from_rafdb(label: int) -> Expression:
    return _lookup(RAFDB_TO_AFFECTNET, int(label), "RAF-DB")


def to_rafdb(expression: Expression | int) -> int:
    return _lookup(AFFECTNET_TO_RAFDB, Expression(int(expression)), "RAF-DB")


def from_fer2013(label: int) -> Expression:
    return _lookup(FER2013_TO_AFFECTNET, int(label), "FER2013")


def to_fer2013(expression: Expression | int) -> int:
    return _lookup(AFFECTNET_TO_FER2013, Expression(int(expression)), "FER2013")


# Images per expression in AffectNet's manually annotated training set (Mollahosseini et al., 2017):
# the "affectnet" label distribution and the unit of `synfer generate --scale`.
AFFECTNET_TRAIN_COUNTS: dict[Expression, int] = {
    Expression.NEUTRAL: 74_874,
    Expression.HAPPY: 134_415,
    Expression.SAD: 25_459,
    Expression.SURPRISE: 14_090,
    Expression.FEAR: 6_378,
    Expression.DISGUST: 3_803,
    Expression.ANGER: 24_882,
    Expression.CONTEMPT: 3_750,
}


def affectnet_train_size(label_set: LabelSet) -> int:
    """AffectNet's training images over ``label_set``: 287,651 for 8 classes, 283,901 for 7."""
    return sum(AFFECTNET_TRAIN_COUNTS[e] for e in label_set.expressions)
