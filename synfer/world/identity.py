"""Who a world face is: everything about it that is not an action unit, drawn from one seed.

An :class:`Identity` fixes face shape, skin, hair, eyes, brows, accessories, background, a small
head pose and the lighting. It is drawn by :meth:`Identity.draw` from a seed alone, so a world
sample is reproducible from (world seed, sample index) and nothing else. Every choice is a named
option from a small fixed list, so that captions (:mod:`synfer.world.caption`) can name it.

Sides follow FACS: "left" is the subject's left, which is the image's right. :meth:`Identity.mirrored`
is the same person seen in a mirror: the pose, the hair parting and the background pattern swap
sides, so that rendering the mirrored identity with the mirrored AUs gives the mirror image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

RGB = tuple[int, int, int]

SKIN_TONES: dict[str, tuple[RGB, ...]] = {
    "light": ((247, 218, 196), (240, 205, 178), (236, 200, 170)),
    "medium": ((222, 178, 140), (210, 165, 125), (226, 186, 150)),
    "tan": ((190, 140, 100), (180, 128, 90), (198, 150, 108)),
    "dark": ((128, 86, 58), (110, 72, 48), (140, 96, 66)),
}
HAIR_COLOURS: dict[str, RGB] = {
    "black": (30, 26, 26),
    "brown": (96, 60, 36),
    "blond": (222, 188, 110),
    "red": (176, 76, 36),
    "grey": (150, 150, 150),
    "white": (236, 236, 230),
}
# short, long, fringe (bangs over the forehead), curly (a round mass), bun (on top), bald.
HAIR_STYLES = ("short", "long", "fringe", "curly", "bun", "bald")
EYE_COLOURS: dict[str, RGB] = {"brown": (84, 50, 26), "dark": (34, 24, 20), "blue": (52, 96, 160), "green": (60, 116, 70)}
EYE_SHAPES = ("round", "almond")
FACE_SHAPES = ("round", "oval", "long", "square")
BACKGROUND_COLOURS: dict[str, RGB] = {
    "blue": (96, 140, 206),
    "green": (110, 176, 110),
    "red": (200, 90, 86),
    "yellow": (226, 204, 96),
    "purple": (150, 110, 186),
    "grey": (150, 150, 156),
    "orange": (230, 150, 80),
    "teal": (70, 160, 160),
}
BACKGROUND_PATTERNS = ("plain", "gradient", "striped", "dotted")
CLOTHES_COLOURS: dict[str, RGB] = {
    "white": (232, 232, 232),
    "black": (40, 40, 44),
    "blue": (50, 80, 160),
    "red": (170, 40, 50),
    "green": (50, 120, 70),
    "yellow": (220, 190, 60),
}
HAT_COLOURS: dict[str, RGB] = {"red": (180, 40, 44), "blue": (40, 70, 150), "black": (34, 34, 38), "green": (50, 110, 60)}
GLASSES_COLOURS: dict[str, RGB] = {"black": (25, 25, 28), "brown": (90, 56, 30), "red": (170, 36, 40)}
EARRING_RGB: RGB = (232, 196, 70)

# Chances of the optional items; an identity wears each independently.
GLASSES_CHANCE = 0.25
HAT_CHANCE = 0.15
EARRINGS_CHANCE = 0.2

# Pose and lighting ranges: small, so that the expression stays the largest visible change.
MAX_OFFSET = 0.06  # of the image's half-size
MAX_TILT_DEGREES = 8.0
SCALE_RANGE = (0.98, 1.1)
BRIGHTNESS_RANGE = (-18.0, 18.0)  # added to 0-255 pixel values
CONTRAST_RANGE = (0.85, 1.12)
MAX_GRADIENT = 24.0  # a linear light gradient across the image, in pixel values


def _pick(rng: np.random.Generator, options):
    options = list(options)
    return options[int(rng.integers(len(options)))]


def _jitter(rng: np.random.Generator, colour: RGB, amount: float) -> RGB:
    return tuple(int(np.clip(c + rng.uniform(-amount, amount), 0, 255)) for c in colour)  # type: ignore[return-value]


def _mirror_angle(angle: float) -> float:
    """The direction (cos a, sin a) with its x component negated, in [0, 2 pi)."""
    return (math.pi - angle) % (2 * math.pi)


@dataclass(frozen=True)
class Identity:
    """Everything about a world face except its AUs. Lengths are in units of the image's half-size."""

    seed: int
    # face: width and height scales, jaw squareness (0 tapered, 1 square), its caption word
    face_width: float
    face_height: float
    jaw: float
    face_shape: str
    skin_tone: str
    skin_rgb: RGB
    lip_rgb: RGB
    hair_style: str
    hair_colour: str
    hair_rgb: RGB
    parting: int  # +1: the hair parts on the subject's left (image right), -1: on the right
    eye_shape: str
    eye_size: float
    eye_colour: str
    iris_rgb: RGB
    brow_thickness: float
    brow_rgb: RGB
    nose_width: float
    mouth_width: float
    glasses: str | None  # frame colour name, or None
    hat: str | None  # hat colour name, or None
    earrings: bool
    clothes: str
    background: str  # colour name
    background_pattern: str
    background_rgb: RGB
    background_rgb2: RGB
    pattern_angle: float  # radians: direction of the stripes / gradient
    pattern_period: float
    pattern_phase: tuple[float, float]
    # pose: image-plane offset, tilt (degrees, positive turns the face clockwise on screen), scale
    offset: tuple[float, float]
    tilt: float
    scale: float
    # lighting, applied to the finished image
    brightness: float
    contrast: float
    light_angle: float
    light_strength: float

    @classmethod
    def draw(cls, seed: int) -> Identity:
        """The identity of ``seed``: the same seed always gives the same identity."""
        rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, 0x1D]))
        face_width = float(rng.uniform(0.9, 1.08))
        face_height = float(rng.uniform(0.94, 1.06))
        jaw = float(rng.uniform(0.0, 1.0))
        ratio = face_height / face_width
        if jaw > 0.7:
            face_shape = "square"
        elif ratio > 1.06:
            face_shape = "long"
        elif ratio < 0.96:
            face_shape = "round"
        else:
            face_shape = "oval"
        skin_tone = _pick(rng, SKIN_TONES)
        skin = _jitter(rng, _pick(rng, SKIN_TONES[skin_tone]), 6)
        lip = tuple(int(v) for v in np.clip(np.array(skin) * np.array([0.82, 0.52, 0.52]) + np.array([20, 0, 6]), 0, 255))
        hair_style = _pick(rng, HAIR_STYLES)
        hair_colour = _pick(rng, HAIR_COLOURS)
        hair = _jitter(rng, HAIR_COLOURS[hair_colour], 8)
        # Brows are dark enough to read on any skin: a darkened hair colour, never lighter than mid-brown.
        brow_base = np.array(hair) * 0.55 if hair_colour not in ("blond", "grey", "white") else np.array((110, 80, 56))
        brow = tuple(int(v) for v in np.clip(brow_base * (0.6 if skin_tone == "dark" else 1.0), 0, 255))
        eye_colour = _pick(rng, EYE_COLOURS)
        background = _pick(rng, BACKGROUND_COLOURS)
        second = _pick(rng, [name for name in BACKGROUND_COLOURS if name != background])
        pattern = _pick(rng, BACKGROUND_PATTERNS)
        return cls(
            seed=int(seed),
            face_width=face_width,
            face_height=face_height,
            jaw=jaw,
            face_shape=face_shape,
            skin_tone=skin_tone,
            skin_rgb=skin,
            lip_rgb=lip,  # type: ignore[arg-type]
            hair_style=hair_style,
            hair_colour=hair_colour,
            hair_rgb=hair,
            parting=int(rng.choice((-1, 1))),
            eye_shape=_pick(rng, EYE_SHAPES),
            eye_size=float(rng.uniform(0.9, 1.12)),
            eye_colour=eye_colour,
            iris_rgb=EYE_COLOURS[eye_colour],
            brow_thickness=float(rng.uniform(0.85, 1.25)),
            brow_rgb=brow,  # type: ignore[arg-type]
            nose_width=float(rng.uniform(0.85, 1.2)),
            mouth_width=float(rng.uniform(0.92, 1.08)),
            glasses=_pick(rng, GLASSES_COLOURS) if rng.random() < GLASSES_CHANCE else None,
            hat=_pick(rng, HAT_COLOURS) if rng.random() < HAT_CHANCE else None,
            earrings=bool(rng.random() < EARRINGS_CHANCE),
            clothes=_pick(rng, CLOTHES_COLOURS),
            background=background,
            background_pattern=pattern,
            background_rgb=_jitter(rng, BACKGROUND_COLOURS[background], 10),
            background_rgb2=_jitter(rng, BACKGROUND_COLOURS[second], 10),
            pattern_angle=float(rng.uniform(0, 2 * math.pi)),
            pattern_period=float(rng.uniform(0.22, 0.4)),
            pattern_phase=(float(rng.uniform(0, 1)), float(rng.uniform(0, 1))),
            offset=(float(rng.uniform(-MAX_OFFSET, MAX_OFFSET)), float(rng.uniform(-MAX_OFFSET, MAX_OFFSET))),
            tilt=float(rng.uniform(-MAX_TILT_DEGREES, MAX_TILT_DEGREES)),
            scale=float(rng.uniform(*SCALE_RANGE)),
            brightness=float(rng.uniform(*BRIGHTNESS_RANGE)),
            contrast=float(rng.uniform(*CONTRAST_RANGE)),
            light_angle=float(rng.uniform(0, 2 * math.pi)),
            light_strength=float(rng.uniform(0, MAX_GRADIENT)),
        )

    def mirrored(self) -> Identity:
        """The same face seen in a mirror: pose, parting, pattern and light swap left and right."""
        phase_x, phase_y = self.pattern_phase
        return replace(
            self,
            parting=-self.parting,
            offset=(-self.offset[0], self.offset[1]),
            tilt=-self.tilt,
            pattern_angle=_mirror_angle(self.pattern_angle),
            pattern_phase=((-phase_x) % 1.0, phase_y),
            light_angle=_mirror_angle(self.light_angle),
        )
