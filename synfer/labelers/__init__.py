"""Labelers: anything that gives class probabilities for images (FER classifiers, FERAnno), and the
ensemble rectifier that re-checks a dataset's labels with them (``synfer relabel``)."""

from .base import LABELERS, LabelBatch, Labeler, load_labeler

__all__ = ["LABELERS", "LabelBatch", "Labeler", "load_labeler"]
