"""Rendering a world face: identity + AUs -> an RGB image, plus the masks of where each feature lies.

Layers, back to front: background, back hair, clothes and neck, ears, face, front hair, hat, brows,
eyes, cheeks, nose, mouth, glasses, earrings. Everything is drawn at ``supersample`` times the final
size with anti-aliased polygons and shrunk with area averaging; the lighting (brightness, contrast
and a linear gradient) is applied to the finished image.

"Left" and "right" are the subject's, as in FACS: the subject's left is the image's right.
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image

from ..aus import AUVector
from ..errors import ConfigError
from .canvas import RGB, Canvas, bezier, ellipse, shade
from .face import (
    DRAWN_AUS,
    LAYOUT,
    REGIONS,
    Intensities,
    draw_brows,
    draw_cheeks,
    draw_eyes,
    draw_mouth,
    draw_mouth_surroundings,
    draw_nose,
    face_outline,
    mouth_shape,
)
from .identity import (
    CLOTHES_COLOURS,
    EARRING_RGB,
    GLASSES_COLOURS,
    HAT_COLOURS,
    Identity,
)

__all__ = ["DRAWN_AUS", "REGIONS", "face_coordinates", "region_masks", "render", "render_array"]

DEFAULT_SUPERSAMPLE = 4
MIN_SIZE, MAX_SIZE = 16, 512


@lru_cache(maxsize=8)
def _grid(width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] of a ``width`` x ``width`` image, as [width, width] arrays (read-only)."""
    centres = ((np.arange(width, dtype=np.float32) + 0.5) / width) * 2 - 1
    xs, ys = np.meshgrid(centres, centres)
    xs.flags.writeable = False
    ys.flags.writeable = False
    return xs, ys


def _background(identity: Identity, width: int) -> np.ndarray:
    """The backdrop at ``width`` pixels; patterns are soft-edged, so they are computed at half that and enlarged."""
    if identity.background_pattern != "plain" and width >= 64:
        small = _background(identity, width // 2)
        return cv2.resize(small, (width, width), interpolation=cv2.INTER_LINEAR)
    xs, ys = _grid(width)
    first = np.array(identity.background_rgb, np.float32)
    second = np.array(identity.background_rgb2, np.float32)
    pattern = identity.background_pattern
    if pattern == "plain":
        return np.broadcast_to(first.astype(np.uint8), (width, width, 3)).copy()
    along = math.cos(identity.pattern_angle) * xs + math.sin(identity.pattern_angle) * ys
    if pattern == "gradient":
        weight = np.clip((along / math.sqrt(2) + 1) / 2, 0, 1)
    elif pattern == "striped":
        wave = np.sin(2 * math.pi * (along / identity.pattern_period + identity.pattern_phase[1]))
        weight = np.clip(0.5 + wave * 3, 0, 1) * 0.55  # soft-edged stripes, not full contrast
    elif pattern == "dotted":
        u = xs / identity.pattern_period + identity.pattern_phase[0]
        v = ys / identity.pattern_period + identity.pattern_phase[1]
        distance = np.hypot(u - np.round(u), v - np.round(v))
        weight = np.clip((0.24 - distance) * 12 + 0.5, 0, 1) * 0.6
    else:
        raise ConfigError(f"unknown background pattern {pattern!r}")
    mixed = first + (second - first) * weight[..., None]
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def _head(identity: Identity) -> tuple[float, float, float]:
    """Centre y and radii of the skull ellipse the hair and hat sit on."""
    return LAYOUT.face_centre, LAYOUT.face_rx * identity.face_width + 0.05, LAYOUT.face_ry * identity.face_height + 0.06


def _hairline(identity: Identity, rx: float) -> np.ndarray:
    """The front hair's lower edge from the image-right temple to the image-left one."""
    xs = np.linspace(0.5, -0.5, 13)
    if identity.hair_style == "fringe":
        ys = -0.545 + 0.012 * np.abs(np.sin(xs * 31))  # straight bangs with a ragged edge
    else:
        # hair swept away from the parting comes lower on the far side
        sweep = np.clip(-identity.parting * xs / 0.5, 0, 1) * 0.05
        ys = -0.63 + 0.05 * (xs / 0.5) ** 2 + sweep
        if identity.hair_style == "curly":
            ys = ys + 0.012 * np.cos(xs * 40)
    middle = np.stack([xs, ys], 1)
    right = np.array([[rx - 0.05, -0.1], [rx - 0.08, -0.38]])
    left = right[::-1] * np.array([-1, 1])
    return np.concatenate([right, middle, left])


def _draw_back_hair(canvas: Canvas, identity: Identity) -> None:
    cy, rx, ry = _head(identity)
    colour = identity.hair_rgb
    style = identity.hair_style
    if style == "long":
        top = ellipse(0.0, cy, rx + 0.06, ry + 0.04, 40)
        top = top[top[:, 1] <= cy]
        sides = np.array([[rx + 0.1, 0.7], [rx - 0.02, 0.86], [-(rx - 0.02), 0.86], [-(rx + 0.1), 0.7]])
        canvas.fill(np.concatenate([top[np.argsort(top[:, 0])], sides]), colour)
    elif style == "curly":
        angles = np.linspace(0, 2 * np.pi, 60, endpoint=False)
        radius = (rx + 0.13) * (1 + 0.05 * np.cos(10 * angles))
        canvas.fill(np.stack([radius * np.cos(angles), cy - 0.2 + radius * 0.92 * np.sin(angles)], 1), colour)
    elif style == "bun":
        canvas.fill(ellipse(0.0, cy - ry - 0.08, 0.17, 0.15, 24), colour)


def _draw_front_hair(canvas: Canvas, identity: Identity) -> None:
    if identity.hair_style == "bald":
        return
    cy, rx, ry = _head(identity)
    outline = ellipse(0.0, cy, rx + 0.03, ry + 0.04, 48)
    upper = outline[outline[:, 1] <= -0.08]
    upper = upper[np.argsort(upper[:, 0])]  # from the image-left side over the top to the right side
    canvas.fill(np.concatenate([upper, _hairline(identity, rx)]), identity.hair_rgb)


def _draw_hat(canvas: Canvas, identity: Identity) -> None:
    if identity.hat is None:
        return
    cy, rx, ry = _head(identity)
    colour = HAT_COLOURS[identity.hat]
    dome = ellipse(0.0, cy - 0.02, rx + 0.05, ry + 0.1, 48)
    dome = dome[dome[:, 1] <= -0.56]
    dome = dome[np.argsort(dome[:, 0])]
    canvas.fill(dome, colour)
    brim = np.array([[-(rx + 0.06), -0.66], [rx + 0.06, -0.66], [rx + 0.07, -0.545], [-(rx + 0.07), -0.545]])
    canvas.fill(brim, shade(colour, 0.78))


def _draw_body(canvas: Canvas, identity: Identity, skin: RGB) -> None:
    canvas.fill(ellipse(0.0, 1.34, 0.95, 0.44, 36), CLOTHES_COLOURS[identity.clothes])
    canvas.fill(np.array([[-0.19, 0.5], [0.19, 0.5], [0.24, 1.0], [-0.24, 1.0]]), shade(skin, 0.84))


def _draw_ears(canvas: Canvas, identity: Identity, skin: RGB) -> None:
    rx = LAYOUT.face_rx * identity.face_width
    for s in (1, -1):
        canvas.fill(ellipse(s * (rx - 0.01), -0.02, 0.075, 0.12, 20), shade(skin, 0.9))
        canvas.fill(ellipse(s * (rx + 0.005), -0.02, 0.035, 0.07, 14), shade(skin, 0.76))


def _draw_glasses(canvas: Canvas, identity: Identity) -> None:
    if identity.glasses is None:
        return
    colour = GLASSES_COLOURS[identity.glasses]
    rx = LAYOUT.face_rx * identity.face_width
    angles = np.linspace(0, 2 * np.pi, 29)
    c, s_ = np.cos(angles), np.sin(angles)
    for s in (1, -1):
        x = s * LAYOUT.eye_x + 0.165 * np.sign(c) * np.abs(c) ** 0.5
        y = LAYOUT.eye_y - 0.005 + 0.115 * np.sign(s_) * np.abs(s_) ** 0.5
        canvas.stroke(np.stack([x, y], 1), colour, 0.036)
        canvas.stroke(np.array([[s * (LAYOUT.eye_x + 0.165), -0.09], [s * (rx - 0.005), -0.1]]), colour, 0.03)
    canvas.stroke(bezier((-0.125, -0.085), (0.0, -0.12), (0.125, -0.085), 7), colour, 0.032)


def _draw_earrings(canvas: Canvas, identity: Identity) -> None:
    if not identity.earrings:
        return
    rx = LAYOUT.face_rx * identity.face_width
    for s in (1, -1):
        canvas.fill(ellipse(s * (rx + 0.005), 0.13, 0.032, 0.032, 14), EARRING_RGB)


def _light(image: np.ndarray, identity: Identity) -> np.ndarray:
    xs, ys = _grid(image.shape[0])
    gradient = identity.light_strength * (math.cos(identity.light_angle) * xs + math.sin(identity.light_angle) * ys) / math.sqrt(2)
    lit = (image.astype(np.float32) - 128.0) * identity.contrast + 128.0 + identity.brightness + gradient[..., None]
    return np.clip(np.round(lit), 0, 255).astype(np.uint8)


def _check_size(size: int, supersample: int) -> None:
    if not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"image size must be an integer in {MIN_SIZE}-{MAX_SIZE}, got {size!r}")
    if not isinstance(supersample, (int, np.integer)) or not 1 <= supersample <= 8:
        raise ConfigError(f"supersample must be an integer in 1-8, got {supersample!r}")


def render_array(identity: Identity, aus: AUVector | str, size: int = 32, supersample: int = DEFAULT_SUPERSAMPLE) -> np.ndarray:
    """The face of ``identity`` showing ``aus`` as an RGB uint8 array [size, size, 3].

    Only the slots in :data:`DRAWN_AUS` are drawn; unknown slots count as absent. Bilateral and
    one-sided slots of the same AU combine per side by taking the larger intensity.
    """
    _check_size(size, supersample)
    au = Intensities(AUVector.coerce(aus))
    canvas = Canvas(size, supersample, identity.offset, identity.tilt, identity.scale)
    canvas.image[:] = _background(identity, canvas.width)
    skin = identity.skin_rgb
    mouth = mouth_shape(identity, au)
    _draw_back_hair(canvas, identity)
    _draw_body(canvas, identity, skin)
    _draw_ears(canvas, identity, skin)
    canvas.fill(face_outline(identity, au, mouth.jaw), skin)
    _draw_front_hair(canvas, identity)
    _draw_hat(canvas, identity)
    brows = draw_brows(canvas, identity, au, skin)
    draw_cheeks(canvas, au, skin)
    draw_eyes(canvas, identity, au, skin, brows)
    draw_nose(canvas, identity, au, skin)
    draw_mouth_surroundings(canvas, identity, au, skin, mouth)
    draw_mouth(canvas, identity, au, skin, mouth)
    _draw_glasses(canvas, identity)
    _draw_earrings(canvas, identity)
    small = canvas.image if supersample == 1 else cv2.resize(canvas.image, (size, size), interpolation=cv2.INTER_AREA)
    return _light(small, identity)


def render(identity: Identity, aus: AUVector | str, size: int = 32, supersample: int = DEFAULT_SUPERSAMPLE) -> Image.Image:
    """The face of ``identity`` showing ``aus``, as an RGB PIL image of ``size`` x ``size`` (see :func:`render_array`)."""
    return Image.fromarray(render_array(identity, aus, size, supersample), "RGB")


def face_coordinates(identity: Identity, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The face coordinates (x, y) of every pixel centre of a ``size`` image of ``identity``, [size, size] each.

    x > 0 is the subject's left. This undoes the identity's pose, so a box in face coordinates is
    a mask over the rendered image that follows the head.
    """
    canvas = Canvas(size, 1, identity.offset, identity.tilt, identity.scale)
    centres = np.arange(size, dtype=np.float64) + 0.5
    px, py = np.meshgrid(centres, centres)
    pixels = np.stack([px.ravel(), py.ravel()], 1) - canvas.shift
    face = pixels @ np.linalg.inv(canvas.linear).T
    return face[:, 0].reshape(size, size), face[:, 1].reshape(size, size)


def region_masks(identity: Identity, size: int) -> dict[str, np.ndarray]:
    """Boolean [size, size] masks of the feature boxes of :data:`REGIONS`, plus ``left`` and ``right`` halves of the face."""
    x, y = face_coordinates(identity, size)
    masks = {name: (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1) for name, (x0, x1, y0, y1) in REGIONS.items()}
    inside_face = (np.abs(x) <= 0.7) & (y >= -0.8) & (y <= 1.0)
    masks["left"] = inside_face & (x > 0)
    masks["right"] = inside_face & (x < 0)
    return masks
