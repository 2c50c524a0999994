"""Trainers, kept apart from the library they train: downstream classifiers and FERAnno heads."""

MIXED_PRECISIONS = ("no", "fp16", "bf16")  # what accelerate's Accelerator(mixed_precision=...) accepts
