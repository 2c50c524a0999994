"""Helpers shared by the tests (imported as ``from helpers import ...``; pytest puts tests/ on the path)."""

import torch


def generators(*seeds):
    """One CPU generator per image, seeded: an image then depends on its own seed only."""
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]
