"""The diffusion training stages: SynFER's stage 1 (train-lora) and stage 2 (train-adapter), and what a
base trained from scratch needs besides (init-model, train-vae), on one training loop; then build-model.

One library function per stage, each taking one frozen config (:mod:`.config`) and returning a result::

    init_model(InitModelConfig(...))    -> InitResult      (synfer init-model)
    train_vae(VaeConfig(...))           -> VaeResult       (synfer train-vae)
    train_lora(LoraConfig(...))         -> LoraResult      (synfer train-lora)
    train_adapter(AdapterConfig(...))   -> AdapterResult   (synfer train-adapter)
    build_model(BuildModelConfig(...))  -> BuildResult     (synfer build-model)

The configs load no torch; the functions and their modules load it on first use.
"""

from __future__ import annotations

import importlib

from .config import AdapterConfig, BuildModelConfig, InitModelConfig, LoraConfig, TrainOptions, VaeConfig

_LAZY = {
    "init_model": ".new_base",
    "InitResult": ".new_base",
    "train_vae": ".vae",
    "VaeResult": ".vae",
    "train_lora": ".lora",
    "LoraResult": ".lora",
    "train_adapter": ".adapter",
    "AdapterResult": ".adapter",
    "build_model": ".build",
    "BuildResult": ".build",
    "DiffusionTrainer": ".loop",
    "StageParts": ".loop",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AdapterConfig", "BuildModelConfig", "InitModelConfig", "LoraConfig", "TrainOptions", "VaeConfig", *_LAZY]
