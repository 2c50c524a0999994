"""Facial action units: the 41-slot table, ``AUVector``, parsing, prototypes and importers.

The slot order is OpenGraphAU's, so its 41 outputs map one to one. Intensities follow FACS:
0 is absent and A..E are 1..5. A slot can also be *unknown* (a source that does not measure
that AU); unknown is carried in a mask and never confused with absent.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import AUError
from .expressions import Expression


@dataclass(frozen=True)
class ActionUnit:
    """One slot of the table: its name, FACS number, side and a plain-words phrase for prompts."""

    name: str
    number: int
    side: str  # "" for bilateral, "left" or "right"
    facs_name: str
    phrase: str


def _bilateral(number: int, facs_name: str, phrase: str) -> ActionUnit:
    return ActionUnit(f"AU{number}", number, "", facs_name, phrase)


_BILATERAL = [
    _bilateral(1, "Inner Brow Raiser", "inner brows raised"),
    _bilateral(2, "Outer Brow Raiser", "outer brows raised"),
    _bilateral(4, "Brow Lowerer", "brows lowered and drawn together"),
    _bilateral(5, "Upper Lid Raiser", "upper eyelids raised, eyes wide open"),
    _bilateral(6, "Cheek Raiser", "cheeks raised"),
    _bilateral(7, "Lid Tightener", "eyelids tightened"),
    _bilateral(9, "Nose Wrinkler", "nose wrinkled"),
    _bilateral(10, "Upper Lip Raiser", "upper lip raised"),
    _bilateral(11, "Nasolabial Deepener", "nasolabial folds deepened"),
    _bilateral(12, "Lip Corner Puller", "lip corners pulled up"),
    _bilateral(13, "Sharp Lip Puller", "lip corners pulled up sharply"),
    _bilateral(14, "Dimpler", "dimples at the mouth corners"),
    _bilateral(15, "Lip Corner Depressor", "lip corners pulled down"),
    _bilateral(16, "Lower Lip Depressor", "lower lip pulled down"),
    _bilateral(17, "Chin Raiser", "chin raised"),
    _bilateral(18, "Lip Pucker", "lips puckered"),
    _bilateral(19, "Tongue Show", "tongue showing"),
    _bilateral(20, "Lip Stretcher", "lips stretched sideways"),
    _bilateral(22, "Lip Funneler", "lips funnelled"),
    _bilateral(23, "Lip Tightener", "lips tightened"),
    _bilateral(24, "Lip Pressor", "lips pressed together"),
    _bilateral(25, "Lips Part", "lips parted"),
    _bilateral(26, "Jaw Drop", "jaw dropped"),
    _bilateral(27, "Mouth Stretch", "mouth stretched wide open"),
    _bilateral(32, "Lip Bite", "lip bitten"),
    _bilateral(38, "Nostril Dilator", "nostrils flared"),
    _bilateral(39, "Nostril Compressor", "nostrils compressed"),
]
_BY_NUMBER = {au.number: au for au in _BILATERAL}
_LATERAL = [
    ActionUnit(
        f"{side[0].upper()}{number}",
        number,
        side,
        f"{side.capitalize()} {_BY_NUMBER[number].facs_name}",
        f"{side} {_BY_NUMBER[number].phrase}",
    )
    for number in (1, 2, 4, 6, 10, 12, 14)
    for side in ("left", "right")
]

AU_TABLE: tuple[ActionUnit, ...] = tuple(_BILATERAL + _LATERAL)
AU_NAMES: tuple[str, ...] = tuple(au.name for au in AU_TABLE)
NUM_AUS = len(AU_TABLE)
AU_INDEX: dict[str, int] = {name: i for i, name in enumerate(AU_NAMES)}

# For each slot, the slot that holds its AU in the horizontally flipped image: left and right swap.
MIRRORED_SLOTS: tuple[int, ...] = tuple(
    AU_INDEX[f"{'R' if au.side == 'left' else 'L'}{au.number}"] if au.side else slot for slot, au in enumerate(AU_TABLE)
)

MAX_INTENSITY = 5.0
DEFAULT_PRESENT_INTENSITY = 3.0  # FACS "C" (marked): what a bare "6,12" or a binary "present" means
FACS_LETTERS = {"A": 1.0, "B": 2.0, "C": 3.0, "D": 4.0, "E": 5.0}

_TOKEN = re.compile(
    r"^(?:AU)?(?P<side>[LR])?0*(?P<number>\d+)(?P<letter>[A-E])?(?::(?P<value>[^:]+))?$", re.IGNORECASE
)


def _accepted() -> str:
    return (
        f"accepted AUs: {', '.join(AU_NAMES)}; write e.g. '6,12', 'AU6:2.5,AU12:4', 'L12,R14', "
        f"'AU12C' (FACS A-E), 'AU9:?' (unknown) or 'none'; intensities 0-{MAX_INTENSITY:g}"
    )


def _format_value(value: float) -> str:
    return np.format_float_positional(np.float32(value), unique=True, trim="-")


class AUVector:
    """41 AU intensities in [0, 5] plus a mask of which slots are known.

    Equality compares both intensities and mask. Unknown slots always hold intensity 0.
    """

    __slots__ = ("_values", "_known")

    def __init__(self, values: Sequence[float] | np.ndarray | None = None, known: Sequence[bool] | np.ndarray | None = None):
        vals = np.zeros(NUM_AUS, np.float32) if values is None else np.asarray(values, dtype=np.float32).copy()
        mask = np.ones(NUM_AUS, bool) if known is None else np.asarray(known, dtype=bool).copy()
        if vals.shape != (NUM_AUS,) or mask.shape != (NUM_AUS,):
            raise AUError(f"an AU vector has {NUM_AUS} slots; got values {vals.shape} and mask {mask.shape}")
        if not np.all(np.isfinite(vals)) or vals.min() < 0 or vals.max() > MAX_INTENSITY:
            raise AUError(f"AU intensities must lie in [0, {MAX_INTENSITY:g}]; got min {vals.min()} max {vals.max()}")
        vals[~mask] = 0.0
        vals.flags.writeable = False
        mask.flags.writeable = False
        self._values = vals
        self._known = mask

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, intensities: Mapping[str, float], unknown: Iterable[str] = ()) -> AUVector:
        """From ``{"AU6": 2.5, "R14": 1}``; names listed in ``unknown`` are marked unknown."""
        values = np.zeros(NUM_AUS, np.float32)
        known = np.ones(NUM_AUS, bool)
        for name, value in intensities.items():
            values[_slot(name)] = _check_intensity(value, name)
        for name in unknown:
            known[_slot(name)] = False
        return cls(values, known)

    @classmethod
    def parse(cls, text: str, present_intensity: float = DEFAULT_PRESENT_INTENSITY) -> AUVector:
        """Parse ``"6,12"``, ``"AU6:2.5,AU12:4"``, ``"L12,R14"``, ``"AU12C"``, ``"AU9:?"`` or ``"none"``.

        Items are separated by commas, ``+`` or spaces. An AU without an intensity gets
        ``present_intensity``. Slots not mentioned are known and absent.
        """
        if not isinstance(text, str) or not text.strip():
            raise AUError(f"empty AU specification; {_accepted()}")
        if text.strip().lower() == "none":
            return cls()
        present_intensity = _check_intensity(present_intensity, "present_intensity")
        values: dict[int, float | None] = {}  # None = unknown
        normalised = re.sub(r"\s*:\s*", ":", text.strip())
        for item in (t for t in re.split(r"[,+\s]+", normalised) if t):
            match = _TOKEN.match(item)
            if match is None:
                raise AUError(f"cannot read AU {item!r}; {_accepted()}")
            slot = _slot(f"{match['side'] or 'AU'}{int(match['number'])}", original=item)
            value: float | None
            if match["letter"] and match["value"]:
                raise AUError(f"AU {item!r} gives its intensity twice; {_accepted()}")
            if match["letter"]:
                value = FACS_LETTERS[match["letter"].upper()]
            elif match["value"] is None:
                value = present_intensity
            elif match["value"].strip() == "?":
                value = None
            elif match["value"].strip().upper() in FACS_LETTERS:
                value = FACS_LETTERS[match["value"].strip().upper()]
            else:
                try:
                    value = float(match["value"])
                except ValueError:
                    raise AUError(f"cannot read the intensity of {item!r}; {_accepted()}") from None
                value = _check_intensity(value, item)
            if slot in values and values[slot] != value:
                raise AUError(f"{AU_NAMES[slot]} is given twice with different intensities in {text!r}")
            values[slot] = value
        intensities = np.zeros(NUM_AUS, np.float32)
        known = np.ones(NUM_AUS, bool)
        for slot, value in values.items():
            if value is None:
                known[slot] = False
            else:
                intensities[slot] = value
        return cls(intensities, known)

    @classmethod
    def coerce(cls, value: AUVector | str | Mapping[str, float]) -> AUVector:
        """Accept an ``AUVector``, a string for :meth:`parse` or a mapping for :meth:`from_dict`."""
        if isinstance(value, AUVector):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, Mapping):
            return cls.from_dict(value)
        raise AUError(f"cannot make an AU vector from {type(value).__name__}; {_accepted()}")

    # -- views ------------------------------------------------------------------------------
    @property
    def values(self) -> np.ndarray:
        """Intensities, float32 [41], read-only; 0 where unknown."""
        return self._values

    @property
    def known(self) -> np.ndarray:
        """Known mask, bool [41], read-only."""
        return self._known

    @property
    def active(self) -> list[str]:
        """Names of the known AUs with intensity above 0, in table order."""
        return [AU_NAMES[i] for i in np.flatnonzero(self._values > 0)]

    @property
    def unknown(self) -> list[str]:
        return [AU_NAMES[i] for i in np.flatnonzero(~self._known)]

    def __getitem__(self, name: str) -> float | None:
        """The intensity of ``name`` (``"AU6"``, ``"6"``, ``"L12"``), or None if unknown."""
        slot = _slot(name)
        return float(self._values[slot]) if self._known[slot] else None

    def to_dict(self) -> dict[str, float]:
        """Active AUs and their intensities."""
        return {name: float(self._values[AU_INDEX[name]]) for name in self.active}

    def format(self) -> str:
        """The canonical string: ``"AU6:3,AU12:3"``, unknown slots as ``"AU9:?"``; ``"none"`` when empty."""
        items = [f"{name}:{_format_value(self._values[AU_INDEX[name]])}" for name in self.active]
        items += [f"{name}:?" for name in self.unknown]
        return ",".join(items) if items else "none"

    def __str__(self) -> str:
        return self.format()

    def __repr__(self) -> str:
        return f"AUVector({self.format()!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AUVector):
            return NotImplemented
        return bool(np.array_equal(self._values, other._values) and np.array_equal(self._known, other._known))

    def __hash__(self) -> int:
        return hash((self._values.tobytes(), self._known.tobytes()))

    def replace(self, **intensities: float) -> AUVector:
        """A copy with some slots set, e.g. ``v.replace(AU6=2.0, R14=1.0)``."""
        values = self._values.copy()
        known = self._known.copy()
        for name, value in intensities.items():
            slot = _slot(name)
            values[slot] = _check_intensity(value, name)
            known[slot] = True
        return AUVector(values, known)

    def similarity(self, other: AUVector) -> float:
        """Weighted Jaccard over slots known in both: sum(min) / sum(max); 1.0 when both are empty."""
        both = self._known & other._known
        a, b = self._values[both], other._values[both]
        denominator = float(np.maximum(a, b).sum())
        return 1.0 if denominator == 0 else float(np.minimum(a, b).sum()) / denominator


def stack(vectors: Sequence[AUVector]) -> tuple[np.ndarray, np.ndarray]:
    """Intensities [B, 41] float32 and known mask [B, 41] bool for a batch."""
    if not vectors:
        return np.zeros((0, NUM_AUS), np.float32), np.zeros((0, NUM_AUS), bool)
    return np.stack([v.values for v in vectors]), np.stack([v.known for v in vectors])


def _slot(name: str, original: str | None = None) -> int:
    key = str(name).strip().upper()
    if key.isdigit():
        key = f"AU{int(key)}"
    match = re.fullmatch(r"(AU|L|R)0*(\d+)", key)
    if match is not None:
        key = f"{match[1]}{int(match[2])}"
    if key not in AU_INDEX:
        raise AUError(f"unknown AU {original or name!r}; {_accepted()}")
    return AU_INDEX[key]


def _check_intensity(value: float, what: str) -> float:
    value = float(value)
    if not math.isfinite(value) or not 0.0 <= value <= MAX_INTENSITY:
        raise AUError(f"intensity {value:g} of {what!r} is out of range; {_accepted()}")
    return value


# -- prototypes ------------------------------------------------------------------------------
# Prior AU configurations per expression (EMFACS-style prototypes). They seed sampling; they are not labels.
PROTOTYPE_AUS: dict[Expression, tuple[str, ...]] = {
    Expression.NEUTRAL: (),
    Expression.HAPPY: ("AU6", "AU12"),
    Expression.SAD: ("AU1", "AU4", "AU15"),
    Expression.SURPRISE: ("AU1", "AU2", "AU5", "AU26"),
    Expression.FEAR: ("AU1", "AU2", "AU4", "AU5", "AU7", "AU20", "AU26"),
    Expression.DISGUST: ("AU9", "AU15", "AU16"),
    Expression.ANGER: ("AU4", "AU5", "AU7", "AU23"),
    Expression.CONTEMPT: ("R12", "R14"),
}


def prototype(expression: Expression | int, intensity: float = DEFAULT_PRESENT_INTENSITY) -> AUVector:
    """The expression's prototype AUs, each at ``intensity``."""
    names = PROTOTYPE_AUS[Expression(int(expression))]
    return AUVector.from_dict(dict.fromkeys(names, intensity))


def nearest_expression(
    aus: AUVector, candidates: Iterable[Expression] = tuple(Expression)
) -> tuple[Expression, float]:
    """The candidate whose prototype is most similar to ``aus`` (weighted Jaccard), and that similarity.

    Ties go to the lower AffectNet id, so the answer is deterministic.
    """
    best, best_score = None, -1.0
    for expression in sorted(candidates):
        score = prototype(expression).similarity(aus)
        if score > best_score:
            best, best_score = expression, score
    if best is None:
        raise AUError("nearest_expression needs at least one candidate expression")
    return best, best_score


# -- importers ------------------------------------------------------------------------------
def from_openface(row: Mapping[str, float], present_intensity: float = DEFAULT_PRESENT_INTENSITY) -> AUVector:
    """One OpenFace 2 CSV row (``AU06_r`` intensities 0-5, ``AU06_c`` presence 0/1).

    ``_r`` wins where both exist; AUs OpenFace does not measure are unknown.
    """
    columns = {str(k).strip(): v for k, v in row.items()}
    values = np.zeros(NUM_AUS, np.float32)
    known = np.zeros(NUM_AUS, bool)
    for slot, au in enumerate(AU_TABLE):
        if au.side:
            continue
        base = f"AU{au.number:02d}"
        if f"{base}_r" in columns:
            values[slot] = np.clip(float(columns[f"{base}_r"]), 0.0, MAX_INTENSITY)
            known[slot] = True
        elif f"{base}_c" in columns:
            values[slot] = present_intensity if float(columns[f"{base}_c"]) >= 0.5 else 0.0
            known[slot] = True
    return AUVector(values, known)


def from_pyfeat(
    row: Mapping[str, float], threshold: float = 0.5, present_intensity: float = DEFAULT_PRESENT_INTENSITY
) -> AUVector:
    """One py-feat row (``AU06`` detection probabilities in [0, 1]); present above ``threshold``."""
    columns = {str(k).strip(): v for k, v in row.items()}
    values = np.zeros(NUM_AUS, np.float32)
    known = np.zeros(NUM_AUS, bool)
    for slot, au in enumerate(AU_TABLE):
        key = f"AU{au.number:02d}"
        if not au.side and key in columns:
            known[slot] = True
            values[slot] = present_intensity if float(columns[key]) >= threshold else 0.0
    return AUVector(values, known)


def from_opengraphau(
    probabilities: Sequence[float], threshold: float = 0.5, present_intensity: float = DEFAULT_PRESENT_INTENSITY
) -> AUVector:
    """OpenGraphAU's 41 probabilities (same slot order as synfer); present above ``threshold``."""
    probs = np.asarray(probabilities, dtype=np.float32)
    if probs.shape != (NUM_AUS,):
        raise AUError(f"OpenGraphAU gives {NUM_AUS} probabilities; got shape {probs.shape}")
    return AUVector(np.where(probs >= threshold, present_intensity, 0.0))
