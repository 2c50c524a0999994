"""The settings of the two ways to steer an image, and their rules, in one light module.

Semantic guidance (:mod:`synfer.pipelines.guidance`) and layout initialisation
(:mod:`synfer.pipelines.inversion`) are each passed to the pipeline as one object. Their settings
are checked here, without torch, so that ``synfer generate`` can refuse a bad ``--sg-window`` or
``--layout-strength`` before any model loads, with the same message the library gives.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..registry import Registry

if TYPE_CHECKING:
    import torch

VAE_DECODER = "vae"


def _normalize_global(grad: torch.Tensor) -> torch.Tensor:
    """Each image's gradient divided by its L2 norm over the whole embedding (tokens x dim), as in the paper."""
    norm = grad.flatten(1).norm(dim=1).clamp_min(_tiny(grad))
    return grad / norm.view(-1, *([1] * (grad.ndim - 1)))


def _normalize_per_token(grad: torch.Tensor) -> torch.Tensor:
    """Each token's gradient divided by its own L2 norm: every token moves by the same distance."""
    return grad / grad.norm(dim=-1, keepdim=True).clamp_min(_tiny(grad))


def _tiny(grad: torch.Tensor) -> float:
    import torch  # imported on call: this module is read by the command line, which loads no torch

    return torch.finfo(grad.dtype).tiny


# --sg-normalize NAME -> how a gradient becomes a unit step.
NORMALIZATIONS: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry("guidance normalization")
NORMALIZATIONS.register("global", _normalize_global)
NORMALIZATIONS.register("per_token", _normalize_per_token)


def parse_window(text: str) -> tuple[float, float]:
    """``"0.6:1.0"`` -> (0.6, 1.0); the range itself is checked by :func:`check_guidance`."""
    parts = str(text).split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        return float(parts[0]), float(parts[1])
    except ValueError:
        raise ConfigError(f"the guidance window must be START:END fractions such as 0.6:1.0, got {text!r}") from None


def check_guidance(step_size: float, window, every: int, normalize: str, max_images_per_pass: int | None = None) -> tuple[float, float]:
    """Validate semantic-guidance settings; returns the window as two floats."""
    if not math.isfinite(float(step_size)) or step_size < 0:
        raise ConfigError(f"the guidance step size must be a finite number >= 0, got {step_size}")
    try:
        start, end = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ConfigError(f"the guidance window must be two fractions (start, end), got {window!r}") from None
    if not 0.0 <= start < end <= 1.0:
        raise ConfigError(f"the guidance window must satisfy 0 <= start < end <= 1, got {start:g}:{end:g}")
    if int(every) != every or every < 1:
        raise ConfigError(f"guidance every must be an integer >= 1, got {every}")
    NORMALIZATIONS.check(normalize)
    if max_images_per_pass is not None and max_images_per_pass < 1:
        raise ConfigError(f"max_images_per_pass must be >= 1, got {max_images_per_pass}")
    return start, end


def guided_steps(window: tuple[float, float], every: int, num_steps: int) -> list[int]:
    """Indices of the guided steps in a schedule of ``num_steps`` steps.

    Step ``i`` of ``N`` is in the window when ``start <= i / N < end``; every ``every``-th of them is guided.
    """
    start, end = window
    # The tolerance keeps e.g. 0.7 * 10 (7.000000000000001 in binary floating point) from skipping step 7.
    first, stop = (math.ceil(fraction * num_steps - 1e-9) for fraction in (start, end))
    return list(range(first, stop, int(every)))


def check_layout(strength: float, iterations: int) -> float:
    """Validate layout-initialisation settings; returns the strength as a float."""
    if not 0.0 < strength <= 1.0:
        raise ConfigError(f"layout strength must be in (0, 1], got {strength}")
    if int(iterations) != iterations or iterations < 0:
        raise ConfigError(f"layout iterations must be >= 0, got {iterations}")
    return float(strength)


def inverted_steps(num_steps: int, strength: float) -> int:
    """How many steps of an ``num_steps`` schedule a layout ``strength`` inverts (as diffusers' img2img)."""
    steps = min(int(num_steps * check_layout(strength, 0)), num_steps)
    if steps < 1:
        raise ConfigError(f"layout strength {strength} inverts none of {num_steps} steps; raise the strength or the steps")
    return steps
