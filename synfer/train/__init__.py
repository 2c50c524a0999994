"""Trainers, kept apart from the library they train: downstream classifiers and FERAnno heads."""

from __future__ import annotations

from ..errors import ConfigError, first_line

MIXED_PRECISIONS = ("no", "fp16", "bf16")  # what accelerate's Accelerator(mixed_precision=...) accepts


def make_accelerator(**kwargs):
    """An ``accelerate.Accelerator``; its refusals (e.g. a second precision in one process) as one-line errors.

    accelerate keeps one process-wide state and documents no way to reset it: a process trains with
    one mixed-precision setting, and another setting needs another process.
    """
    from accelerate import Accelerator

    try:
        return Accelerator(**kwargs)
    except ValueError as error:
        raise ConfigError(f"cannot set up training: {first_line(error)}") from None
