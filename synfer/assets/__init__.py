"""Trained models that ship with synfer, by name: ``--model world``, the world's judge and AU detector.

All three were made by ``make world`` (benchmarks/world.py) with synfer's own commands on the procedural
world, and are small enough to keep in the repository; ``world/MODEL_CARD.md`` records the commands
and the hashes. They draw cartoon faces of that world, not photographs: an instrument for checking
the method (docs/world.md), and the model ``make demo`` uses.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelLoadError

ASSETS = Path(__file__).resolve().parent

# name -> folder under synfer/assets
SHIPPED = {
    "world": "world/model",  # a synfer model folder (SynFERPipeline)
    "world-judge": "world/judge",  # a FER classifier folder (load_classifier)
    "world-au-detector": "world/au_detector",  # an AU detector folder (load_au_detector "detector:")
}


def shipped_path(name: str) -> Path:
    """The folder of the shipped model ``name``; an error when this install lacks it."""
    if name not in SHIPPED:
        raise ModelLoadError(f"no shipped model {name!r} (shipped: {', '.join(SHIPPED)})")
    folder = ASSETS / SHIPPED[name]
    if not folder.is_dir():
        raise ModelLoadError(f"the shipped model {name!r} is missing from this install (expected {folder}); reinstall synfer")
    return folder


def resolve_model(name: str) -> str:
    """``name`` itself, or the folder of the shipped model it names."""
    return str(shipped_path(name)) if name in SHIPPED else name
