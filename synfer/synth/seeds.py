"""Per-sample seeds: every random choice about sample ``i`` derives from (base seed, i, stream) alone."""

from __future__ import annotations

import numpy as np

_SEED_MASK = (1 << 63) - 1

# One stream per use, so that the draws for one purpose never shift those for another.
IMAGE_STREAM = 0  # the diffusion noise of the image
LABEL_STREAM = 1  # tie-breaks in the order of labels
AU_STREAM = 2  # AU jitter, or the row drawn from an AU table
PROMPT_STREAM = 3  # the line drawn from a prompt file


def derive_seed(base_seed: int, index: int, stream: int = IMAGE_STREAM) -> int:
    """A 63-bit seed for sample ``index`` from the dataset's base seed alone; ``stream`` separates uses."""
    state = np.random.SeedSequence([base_seed & 0xFFFFFFFFFFFFFFFF, index, stream]).generate_state(2, np.uint32)
    return ((int(state[0]) << 32) | int(state[1])) & _SEED_MASK
