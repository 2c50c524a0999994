"""Labelers: FER classifiers, the FERAnno diffusion-feature annotator and the ensemble rectifier."""

from .classifier import FERClassifier, create_classifier, load_classifier

__all__ = ["FERClassifier", "create_classifier", "load_classifier"]
