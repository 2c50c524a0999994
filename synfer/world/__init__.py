"""The procedural-face world: cartoon faces whose action units are known exactly.

An instrument, not a substitute for real faces: synfer's whole chain (autoencoder, UNet, AU
adapter, classifiers, AU detector) can be trained on a small CPU on a world, and SynFER's claims
measured against ground truth that no real dataset has.

```python
from synfer.world import Identity, render, WorldConfig, make_world

face = render(Identity.draw(7), "AU6:3,AU12:4", size=32)    # a PIL image
make_world(WorldConfig(n=10_000, seed=0), "worlds/w0")      # train/val/test folders + AU tables
```
Sides follow FACS: "left" is the subject's left, the image's right.
"""

from __future__ import annotations

from .caption import caption, caption_vocabulary
from .face import DRAWN_AUS, REGIONS
from .identity import Identity
from .make import (
    WorldConfig,
    WorldResult,
    WorldSample,
    make_world,
    plan_world,
    read_world,
    world_state,
)
from .render import face_coordinates, region_masks, render, render_array

__all__ = [
    "DRAWN_AUS",
    "REGIONS",
    "Identity",
    "WorldConfig",
    "WorldResult",
    "WorldSample",
    "caption",
    "caption_vocabulary",
    "face_coordinates",
    "make_world",
    "plan_world",
    "read_world",
    "region_masks",
    "render",
    "render_array",
    "world_state",
]
