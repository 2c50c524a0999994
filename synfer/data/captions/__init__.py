"""Readers for image-caption datasets (the diffusion model's training data and annotate-aus' input):
synfer datasets, Hugging Face image folders, webdataset shards and parquet files (FEText), one interface.

```python
from synfer.data.captions import open_captioned

data = open_captioned("/data/FEText")        # layout auto-detected
sample = data[0]                             # CaptionedImage(id, image, caption), decoded on access
data.ids, data.captions, data.fingerprint()
```
Ids are unique relative paths inside the dataset; AU tables (``synfer.data.au_table``) use the same ids.
See docs/formats.md, "Image-caption datasets".
"""

from __future__ import annotations

from .base import CaptionedDataset, CaptionedImage
from .layouts import CAPTION_LAYOUTS, CaptionLayout, CaptionOptions, detect_caption_layout, open_captioned, register_caption_layout

# Importing a layout module registers it; detection tries them in this order.
# isort: off
from . import synfer, imagefolder, webdataset, parquet  # noqa: F401
# isort: on

__all__ = [
    "CAPTION_LAYOUTS",
    "CaptionLayout",
    "CaptionOptions",
    "CaptionedDataset",
    "CaptionedImage",
    "detect_caption_layout",
    "open_captioned",
    "register_caption_layout",
]
