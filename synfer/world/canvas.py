"""A supersampled drawing surface in face coordinates, and the small geometry helpers the face is built from.

Face coordinates: the image spans [-1, 1] in x (to the image's right, the subject's left) and y
(downwards); the face is centred near the origin in its own upright frame. The head pose (offset,
tilt, scale) maps face coordinates to image coordinates, and the canvas maps those to pixels of an
image ``supersample`` times the final size. Every shape is an anti-aliased polygon drawn with
sub-pixel precision, so downsampling gives soft, bold features rather than one-pixel lines.

Pixel ``i`` covers [i, i + 1) and its centre is ``i + 0.5``; x = -1 is the left edge of pixel 0 and
x = 1 the right edge of the last pixel. That makes the mirror x -> -x exactly the image flip.
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

RGB = tuple[int, int, int]
SHIFT = 4  # fractional bits of polygon vertices handed to OpenCV (1/16 pixel)
_ONE = 1 << SHIFT


def mix(a: RGB, b: RGB, t: float) -> RGB:
    """``a`` blended toward ``b`` by ``t`` in [0, 1]."""
    t = min(max(float(t), 0.0), 1.0)
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b))  # type: ignore[return-value]


def shade(colour: RGB, factor: float) -> RGB:
    return tuple(int(min(255, max(0, round(c * factor)))) for c in colour)  # type: ignore[return-value]


@lru_cache(maxsize=64)
def _unit_circle(n: int) -> np.ndarray:
    angles = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    circle = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    circle.flags.writeable = False
    return circle


@lru_cache(maxsize=64)
def _bezier_weights(n: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)
    weights = np.stack([(1 - t) ** 2, 2 * (1 - t) * t, t**2], axis=1)
    weights.flags.writeable = False
    return weights


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28) -> np.ndarray:
    """``n`` points on an axis-aligned ellipse, [n, 2]."""
    return _unit_circle(n) * (rx, ry) + (cx, cy)


def arc(cx: float, cy: float, rx: float, ry: float, start: float, stop: float, n: int = 12) -> np.ndarray:
    """Points on an elliptical arc from angle ``start`` to ``stop`` (radians; y points down)."""
    angles = np.linspace(start, stop, n)
    return np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], axis=1)


def bezier(p0, p1, p2, n: int = 12) -> np.ndarray:
    """A quadratic Bezier curve through ``p0`` and ``p2`` pulled toward ``p1``, [n, 2]."""
    return _bezier_weights(n) @ np.array([p0, p1, p2], dtype=np.float64)


def ribbon(centre: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """A filled band of the given widths around a centre line: a polygon [2n, 2]."""
    # central differences inside, one-sided at the ends (what np.gradient does, without its overhead)
    tangent = np.empty_like(centre)
    tangent[1:-1] = centre[2:] - centre[:-2]
    tangent[0] = centre[1] - centre[0]
    tangent[-1] = centre[-1] - centre[-2]
    tangent /= np.maximum(np.sqrt((tangent**2).sum(axis=1, keepdims=True)), 1e-9)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1) * (np.asarray(widths)[:, None] / 2)
    return np.concatenate([centre + normal, (centre - normal)[::-1]])


class Canvas:
    """An RGB uint8 image of ``size * supersample`` pixels that draws shapes given in face coordinates."""

    def __init__(self, size: int, supersample: int, offset=(0.0, 0.0), tilt_degrees: float = 0.0, scale: float = 1.0):
        self.size = size
        self.width = size * supersample
        half = self.width / 2
        angle = math.radians(tilt_degrees)
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        # pixel = A @ face + b, with pixel coordinates measured from the image's top-left corner
        self.linear = half * scale * rotation
        self.shift = np.array([(offset[0] + 1.0) * half, (offset[1] + 1.0) * half])
        self.pixels_per_unit = half * scale
        self.image = np.zeros((self.width, self.width, 3), np.uint8)

    def to_pixels(self, points: np.ndarray) -> np.ndarray:
        """Face coordinates [n, 2] to pixel coordinates [n, 2] (floats, pixel centres at i + 0.5)."""
        return np.asarray(points, dtype=np.float64) @ self.linear.T + self.shift

    def _fixed(self, points: np.ndarray) -> np.ndarray:
        # OpenCV puts pixel i's centre at i, so subtract half a pixel before going to fixed point.
        return np.round((self.to_pixels(points) - 0.5) * _ONE).astype(np.int32)

    def fill(self, points: np.ndarray, colour: RGB) -> None:
        cv2.fillPoly(self.image, [self._fixed(points)], colour, cv2.LINE_AA, SHIFT)

    def fill_many(self, polygons: list[np.ndarray], colour: RGB) -> None:
        cv2.fillPoly(self.image, [self._fixed(p) for p in polygons], colour, cv2.LINE_AA, SHIFT)

    def stroke(self, points: np.ndarray, colour: RGB, width: float) -> None:
        """A line of ``width`` face units along ``points``, drawn as a filled ribbon with round ends."""
        points = np.asarray(points, dtype=np.float64)
        self.fill(ribbon(points, np.full(len(points), width)), colour)
        caps = _unit_circle(10) * (width / 2)
        self.fill(caps + points[0], colour)
        self.fill(caps + points[-1], colour)
