"""Readers for labelled FER datasets: AffectNet (CSV and NPY layouts), RAF-DB, FER2013, image
folders and synfer datasets, all with labels as AffectNet expressions.

```python
from synfer.data.readers import open_labelled

val = open_labelled("/data/AffectNet", split="val", classes=7)   # layout auto-detected
for sample in val:                                                # LabelledImage(image, label, source)
    ...
```
"""

from __future__ import annotations

from .base import LabelledDataset, LabelledImage, ReadStats, UnreadableImage
from .layouts import LAYOUTS, Layout, detect_layout, open_labelled, register_layout

# Importing a reader module registers its layouts; detection tries them in this order.
# isort: off
from . import synfer, affectnet, rafdb, fer2013, folder  # noqa: F401
# isort: on

__all__ = [
    "LAYOUTS",
    "Layout",
    "LabelledDataset",
    "LabelledImage",
    "ReadStats",
    "UnreadableImage",
    "detect_layout",
    "open_labelled",
    "register_layout",
]
