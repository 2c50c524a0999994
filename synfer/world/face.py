"""The face: geometry of brows, eyes, nose, cheeks and mouth as functions of the AU intensities, and drawing.

Every AU moves a feature by an amount proportional to its intensity (0 absent, 5 strongest), large
enough to read at 32x32: the brows and lip corners travel several pixels at intensity 5. All lengths
are face coordinates (see :mod:`synfer.world.canvas`). ``s`` is a side: +1 is the subject's left
(the image's right), -1 the subject's right, as in FACS.

The neutral layout is fixed (:data:`LAYOUT`); identities scale parts of it. :data:`REGIONS` are the
boxes, in the same coordinates, where each feature lives: tests and analyses use them as masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..aus import AU_INDEX, AUVector
from .canvas import RGB, Canvas, arc, bezier, ellipse, mix, ribbon, shade
from .identity import Identity

SIDES = (1, -1)  # +1: the subject's left (image right); -1: the subject's right (image left)

# The slots this world draws. Every other slot is unknown in the world's ground truth.
DRAWN_AUS: tuple[str, ...] = (
    "AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU10", "AU11", "AU12", "AU14", "AU15", "AU16", "AU17",
    "AU20", "AU23", "AU24", "AU25", "AU26", "AU27", "AU38", "AU39",
    "L1", "R1", "L2", "R2", "L4", "R4", "L6", "R6", "L10", "R10", "L12", "R12", "L14", "R14",
)  # fmt: skip
LATERAL_NUMBERS = (1, 2, 4, 6, 10, 12, 14)


@dataclass(frozen=True)
class Layout:
    """Where the neutral features sit (face coordinates)."""

    face_centre: float = 0.03
    face_rx: float = 0.62
    face_ry: float = 0.80
    brow_y: float = -0.26
    brow_inner_x: float = 0.105
    brow_outer_x: float = 0.47
    brow_top_limit: float = -0.50  # raised brows stop below the hairline
    eye_x: float = 0.29
    eye_y: float = -0.06
    nose_tip_y: float = 0.21
    mouth_y: float = 0.45
    mouth_half_width: float = 0.245


LAYOUT = Layout()

# Feature boxes (x0, x1, y0, y1) in face coordinates, covering where each feature can move (neighbours overlap).
REGIONS: dict[str, tuple[float, float, float, float]] = {
    "brows": (-0.58, 0.58, -0.52, -0.12),
    "eyes": (-0.48, 0.48, -0.32, 0.06),
    "nose": (-0.16, 0.16, -0.08, 0.30),
    "cheeks": (-0.55, 0.55, 0.05, 0.30),
    "mouth": (-0.45, 0.45, 0.30, 0.72),
    "chin": (-0.45, 0.45, 0.58, 1.05),
}

MOUTH_INSIDE: RGB = (74, 24, 32)
TEETH: RGB = (242, 238, 226)
SCLERA: RGB = (246, 246, 242)
LASH: RGB = (36, 26, 24)
PUPIL: RGB = (12, 10, 10)
BLUSH: RGB = (224, 96, 96)


class Intensities:
    """AU intensities read from an AU vector; slots the world does not draw read as 0."""

    def __init__(self, aus: AUVector):
        drawn = np.zeros(len(aus.values), bool)
        drawn[[AU_INDEX[name] for name in DRAWN_AUS]] = True
        self._values = np.where(drawn, aus.values, 0.0).astype(np.float64)

    def __call__(self, name: str) -> float:
        return float(self._values[AU_INDEX[name]])

    def side(self, number: int, s: int) -> float:
        """The intensity of AU ``number`` on side ``s``: the larger of the bilateral and the one-sided slot."""
        bilateral = self(f"AU{number}")
        if number not in LATERAL_NUMBERS:
            return bilateral
        return max(bilateral, self(f"{'L' if s > 0 else 'R'}{number}"))


_EYE_T = np.linspace(-1.0, 1.0, 15)
_MOUTH_T = np.linspace(-1.0, 1.0, 21)
_BROW_TAPER = np.linspace(1.0, 0.6, 12)
_OUTLINE = ellipse(0.0, 0.0, 1.0, 1.0, 48)


def _profile(t: np.ndarray, power: float) -> np.ndarray:
    return np.clip(1.0 - t**2, 0.0, 1.0) ** power


# -- brows --------------------------------------------------------------------------------------------------
def brow_centreline(identity: Identity, au: Intensities, s: int) -> tuple[np.ndarray, np.ndarray]:
    """The brow's centre line from its inner to its outer end, and its widths along it."""
    i1, i2, i4, i9 = au.side(1, s), au.side(2, s), au.side(4, s), au("AU9")
    y = LAYOUT.brow_y
    inner = np.array([s * (LAYOUT.brow_inner_x - 0.013 * i4), y - 0.034 * i1 + 0.028 * i4 + 0.006 * i9])
    outer = np.array([s * LAYOUT.brow_outer_x, y - 0.030 * i2 + 0.010 * i4])
    arch = max(0.045 + 0.010 * i2 + 0.004 * i1 - 0.009 * i4 - 0.002 * i9, -0.01)
    control = inner + 0.4 * (outer - inner) - np.array([0.0, 2 * arch])
    centre = bezier(inner, control, outer, 12)
    widths = 0.085 * identity.brow_thickness * _BROW_TAPER
    centre[:, 1] = np.maximum(centre[:, 1], LAYOUT.brow_top_limit + widths / 2)
    return centre, widths


def draw_brows(canvas: Canvas, identity: Identity, au: Intensities, skin: RGB) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Both brows and the frown furrows of AU4; returns each side's brow x positions and lower edge (the lids stay under it)."""
    lines = {}
    for s in SIDES:
        centre, widths = brow_centreline(identity, au, s)
        lines[s] = (centre, widths)
        i4 = au.side(4, s)
        if i4 > 0:  # vertical furrows between the brows
            x = s * 0.04
            top = centre[0, 1] + 0.03
            canvas.stroke(np.array([[x + s * 0.006, top], [x, top + 0.11]]), mix(skin, shade(skin, 0.5), 0.15 * i4), 0.03)
    for s in SIDES:
        centre, widths = lines[s]
        canvas.fill(ribbon(centre, widths), identity.brow_rgb)
        canvas.fill(ellipse(centre[0, 0], centre[0, 1], widths[0] / 2, widths[0] / 2, 10), identity.brow_rgb)
    return {s: (centre[:, 0], centre[:, 1] + widths / 2) for s, (centre, widths) in lines.items()}


# -- eyes ---------------------------------------------------------------------------------------------------
def eye_lids(identity: Identity, au: Intensities, s: int, brow_bottom: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x positions across the eye and the upper and lower lid curves there."""
    i5, i6, i7, i9 = au("AU5"), au.side(6, s), au("AU7"), au("AU9")
    size = identity.eye_size
    cx, cy = s * LAYOUT.eye_x, LAYOUT.eye_y
    half_width = 0.14 * size
    round_eye = identity.eye_shape == "round"
    upper_height = (0.085 if round_eye else 0.07) * size + 0.030 * i5 - 0.009 * i7 - 0.005 * i6 - 0.004 * i9
    upper_height = min(upper_height, cy - brow_bottom - 0.025)  # the lid stops under the brow
    lower_height = 0.05 * size - 0.0095 * i7 - 0.004 * i9
    crescent = 0.017 * i6  # the cheek pushes the lower lid up into a crescent
    t = _EYE_T
    x = cx + s * half_width * t  # from the inner corner (t=-1) to the outer one
    upper = cy - upper_height * _profile(t, 0.5 if round_eye else 0.75)
    lower = cy + lower_height * _profile(t, 0.6) - crescent * _profile(t, 0.7)
    lower = np.maximum(lower, upper + 0.006 * _profile(t, 0.5))
    return x, upper, lower


def draw_eyes(canvas: Canvas, identity: Identity, au: Intensities, skin: RGB, brows: dict) -> None:
    for s in SIDES:
        brow_x, brow_bottom = brows[s]
        order = np.argsort(brow_x)
        bottom = float(np.interp(s * LAYOUT.eye_x, brow_x[order], brow_bottom[order]))
        x, upper, lower = eye_lids(identity, au, s, bottom)
        outline = np.concatenate([np.stack([x, upper], 1), np.stack([x, lower], 1)[::-1]])
        canvas.fill(outline, SCLERA)
        # iris and pupil, clipped to the opening: clamp each circle point between the lids at its x
        radius = (0.072 if identity.eye_shape == "round" else 0.064) * identity.eye_size
        cx, cy = s * LAYOUT.eye_x, LAYOUT.eye_y - 0.004
        order = np.argsort(x)
        for r, colour in ((radius, identity.iris_rgb), (radius * 0.48, PUPIL)):
            circle = ellipse(cx, cy, r, r, 24)
            top = np.interp(circle[:, 0], x[order], upper[order])
            low = np.interp(circle[:, 0], x[order], lower[order])
            circle[:, 1] = np.clip(circle[:, 1], top, np.maximum(low, top))
            canvas.fill(circle, colour)
        canvas.stroke(np.stack([x, upper], 1), LASH, 0.036)
        i7 = au("AU7")  # a tightened lower lid is a straight, raised, heavier line
        canvas.stroke(np.stack([x, lower], 1)[2:-2], mix(shade(skin, 0.72), LASH, 0.1 * i7), 0.02 + 0.005 * i7)
        i6 = au.side(6, s)
        if i6 > 0:  # the crease under the raised lower lid
            crease = np.stack([x, lower + 0.045], 1)[3:-3]
            canvas.stroke(crease, mix(skin, shade(skin, 0.55), 0.14 * i6), 0.024)


def draw_cheeks(canvas: Canvas, au: Intensities, skin: RGB) -> None:
    """AU6 lifts and rounds the cheeks: a flush that rises with intensity."""
    for s in SIDES:
        i6 = au.side(6, s)
        if i6 > 0:
            canvas.fill(ellipse(s * 0.37, 0.17 - 0.014 * i6, 0.125, 0.08, 20), mix(skin, BLUSH, min(0.1 * i6, 0.6)))


# -- nose -----------------------------------------------------------------------------------------------------
def nose_width(identity: Identity, au: Intensities) -> float:
    return 0.075 * identity.nose_width * (1 + 0.06 * au("AU9") + 0.05 * au("AU38") - 0.04 * au("AU39"))


def nose_tip_y(au: Intensities) -> float:
    return LAYOUT.nose_tip_y - 0.012 * au("AU9") - 0.003 * (au.side(10, 1) + au.side(10, -1))


def draw_nose(canvas: Canvas, identity: Identity, au: Intensities, skin: RGB) -> None:
    i9 = au("AU9")
    width, tip = nose_width(identity, au), nose_tip_y(au)
    line = shade(skin, 0.68)
    outline = np.array([[-width, tip - 0.04], [-width * 1.08, tip + 0.002], [-width * 0.5, tip + 0.03], [0.0, tip + 0.034],
                        [width * 0.5, tip + 0.03], [width * 1.08, tip + 0.002], [width, tip - 0.04]])  # fmt: skip
    canvas.stroke(outline, line, 0.026)
    nostril = 0.024 * (1 + 0.16 * au("AU38") - 0.1 * au("AU39"))
    for s in SIDES:
        canvas.fill(ellipse(s * width * 0.62, tip + 0.008, nostril, 0.016, 14), shade(skin, 0.42))
    if i9 > 0:  # wrinkles across the bridge
        colour = mix(skin, shade(skin, 0.45), 0.17 * i9)
        for y in (-0.02, 0.035, 0.09):
            canvas.stroke(bezier((-0.075, y + 0.005), (0.0, y - 0.02), (0.075, y + 0.005), 7), colour, 0.028)


# -- mouth ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mouth:
    """The mouth's curves across its width (t from -1, image left, to 1, image right) and the jaw opening."""

    t: np.ndarray
    x: np.ndarray
    upper_outer: np.ndarray
    upper_inner: np.ndarray
    lower_inner: np.ndarray
    lower_outer: np.ndarray
    teeth_upper: np.ndarray
    teeth_lower: np.ndarray
    corners: dict  # side -> (x, y)
    jaw: float
    line_width: float


def mouth_shape(identity: Identity, au: Intensities) -> Mouth:
    i15, i16, i17, i20 = au("AU15"), au("AU16"), au("AU17"), au("AU20")
    i23, i24, i25, i26, i27 = au("AU23"), au("AU24"), au("AU25"), au("AU26"), au("AU27")
    jaw = 0.042 * i26 + 0.05 * i27
    half_width = LAYOUT.mouth_half_width * identity.mouth_width
    corners = {}
    for s in SIDES:
        i10, i12, i14 = au.side(10, s), au.side(12, s), au.side(14, s)
        dx = 0.014 * i12 + 0.034 * i20 - 0.02 * i14 - 0.004 * i15 - 0.02 * i23 - 0.3 * jaw - 0.012 * i27
        dy = -0.05 * i12 + 0.034 * i15 + 0.008 * i20 - 0.014 * i14 + 0.010 * i17 - 0.006 * i10 + 0.45 * jaw
        corners[s] = (s * max(half_width + dx, 0.09), LAYOUT.mouth_y + dy)
    t = _MOUTH_T
    w = (t + 1) / 2  # 0 at the image-left corner (subject's right), 1 at the image-right one
    right_half = t < 0  # each half of the lip line follows its own corner, so a one-sided AU stays on its side
    (xr, yr), (xl, yl) = corners[-1], corners[1]
    x = np.where(right_half, -t * xr, t * xl)
    centre_y = LAYOUT.mouth_y - 0.006 * i17 + 0.4 * jaw
    lip_line = centre_y + (np.where(right_half, yr, yl) - centre_y) * (1 - _profile(t, 0.8))

    def per_side(f) -> np.ndarray:  # a quantity that differs per side, blended across the mouth
        return f(-1) + (f(1) - f(-1)) * w

    press = max(0.0, 1.0 - 0.17 * i24)
    gap = 0.013 * i25
    up_open = (0.3 * gap + 0.10 * jaw) * press + per_side(lambda s: 0.014 * au.side(10, s))
    low_open = max(0.0, (0.7 * gap + 0.9 * jaw + 0.02 * i16) * press - 0.006 * i17)
    opening = _profile(t, max(0.55 - 0.07 * i20 - 0.03 * i16, 0.15))
    upper_inner = lip_line - up_open * opening
    lower_inner = lip_line + low_open * opening
    thin = max(0.12, 1.0 - 0.19 * i23 - 0.13 * i24 - 0.05 * i20)
    lip_profile = _profile(t, 0.6)
    upper_outer = upper_inner - (0.048 * thin + per_side(lambda s: 0.012 * au.side(10, s))) * lip_profile
    lower_outer = lower_inner + (0.064 * thin + 0.012 * i16) * lip_profile
    upper_teeth = min(0.022 + 0.006 * (per_side(lambda s: au.side(10, s) + au.side(12, s)) + i20).max(), 0.06)
    teeth_upper = np.minimum(upper_inner + upper_teeth * _profile(t * 1.1, 0.3), lower_inner)
    lower_teeth = min(0.008 * (i16 + i20), 0.05)
    teeth_lower = np.maximum(lower_inner - lower_teeth * _profile(t * 1.15, 0.3), upper_inner)
    return Mouth(t, x, upper_outer, upper_inner, lower_inner, lower_outer, teeth_upper, teeth_lower, corners, jaw,
                 0.026 + 0.006 * i24)  # fmt: skip


def draw_mouth(canvas: Canvas, identity: Identity, au: Intensities, skin: RGB, mouth: Mouth) -> None:
    def path(ys: np.ndarray) -> np.ndarray:
        return np.stack([mouth.x, ys], 1)

    # tightened and pressed lips lose their colour as well as their fullness
    lips = mix(identity.lip_rgb, skin, min(0.08 * (au("AU23") + au("AU24")), 0.6))
    canvas.fill(np.concatenate([path(mouth.upper_outer), path(mouth.lower_outer)[::-1]]), lips)
    if np.any(mouth.lower_inner - mouth.upper_inner > 0.004):
        canvas.fill(np.concatenate([path(mouth.upper_inner), path(mouth.lower_inner)[::-1]]), MOUTH_INSIDE)
        if np.any(mouth.teeth_upper - mouth.upper_inner > 0.004):
            canvas.fill(np.concatenate([path(mouth.upper_inner), path(mouth.teeth_upper)[::-1]]), TEETH)
        if np.any(mouth.lower_inner - mouth.teeth_lower > 0.004):
            canvas.fill(np.concatenate([path(mouth.teeth_lower), path(mouth.lower_inner)[::-1]]), TEETH)
    middle = (mouth.upper_inner + mouth.lower_inner) / 2
    canvas.stroke(path(middle), shade(identity.lip_rgb, 0.45), mouth.line_width)


def draw_mouth_surroundings(canvas: Canvas, identity: Identity, au: Intensities, skin: RGB, mouth: Mouth) -> None:
    """Nasolabial folds (AU11, and AU9, AU10, AU12 deepen them), dimples (AU14) and the chin crease (AU17)."""
    width, tip = nose_width(identity, au), nose_tip_y(au)
    for s in SIDES:
        corner_x, corner_y = mouth.corners[s]
        strength = min(0.18 * au("AU11") + 0.06 * au.side(12, s) + 0.07 * au.side(10, s) + 0.05 * au("AU9"), 0.9)
        if strength > 0:
            fold = bezier((s * (width + 0.04), tip - 0.02), (s * (width + 0.16), tip + 0.1), (corner_x + s * 0.05, corner_y + 0.05), 10)
            canvas.stroke(fold, mix(skin, shade(skin, 0.55), strength), 0.026)
        i14 = au.side(14, s)
        if i14 > 0:
            centre_x = corner_x + s * 0.012
            start, stop = (-1.2, 1.2) if s > 0 else (np.pi - 1.2, np.pi + 1.2)
            dimple = mix(skin, shade(skin, 0.4), 0.26 * i14)
            canvas.stroke(arc(centre_x, corner_y, 0.045 + 0.005 * i14, 0.05 + 0.005 * i14, start, stop, 9), dimple, 0.034)
    i17 = au("AU17")
    if i17 > 0:
        y = float(mouth.lower_outer[len(mouth.t) // 2]) + 0.075
        canvas.stroke(bezier((-0.12, y - 0.015), (0.0, y + 0.03), (0.12, y - 0.015), 9), mix(skin, shade(skin, 0.5), 0.16 * i17), 0.03)


def face_outline(identity: Identity, au: Intensities, jaw_opening: float) -> np.ndarray:
    """The face's outline: an upper half-ellipse and a jaw that is tapered or square and drops with AU26/27."""
    rx = LAYOUT.face_rx * identity.face_width
    top = LAYOUT.face_ry * identity.face_height
    bottom = top + 0.75 * jaw_opening - 0.01 * au("AU17")
    c, s = _OUTLINE[:, 0], _OUTLINE[:, 1]
    lower = s > 0
    exponent = 1.0 - 0.45 * identity.jaw
    taper = 0.16 * (1 - identity.jaw)
    x = np.where(lower, rx * np.sign(c) * np.abs(c) ** exponent * (1 - taper * s**2), rx * c)
    y = np.where(lower, bottom * s, top * s) + LAYOUT.face_centre
    return np.stack([x, y], 1)
