"""Helpers shared by the tests (imported as ``from helpers import ...``; pytest puts tests/ on the path)."""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Autouse in every test module that imports it: one intra-op thread for the module's tests.

    Tiny models run thousands of small kernels; with two threads on a busy machine they wait on each
    other far longer than they compute.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Training options that keep a tiny diffusion training run to seconds: small batches, no validation grids.
FAST_TRAINING = dict(batch_size=4, validation_every=0, validation_inference_steps=2, validation_seeds=(0,), log_every=1)


def generators(*seeds):
    """One CPU generator per image, seeded: an image then depends on its own seed only."""
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def tiny_base_folder(path):
    """The tiny model's components written as a Stable Diffusion folder (no adapter): a base for the training stages."""
    from diffusers import StableDiffusionPipeline

    from synfer.models.tiny import tiny_components

    components = tiny_components(seed=0)
    components.pop("au_adapter")
    pipe = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def captioned_folder(path, n=8, size=32, seed=0):
    """An image folder with metadata.jsonl captions: n images of a few flat colours with noise, captioned by colour."""
    import json

    import numpy as np
    from PIL import Image

    colours = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200), "yellow": (220, 200, 40)}
    rng = np.random.default_rng(seed)
    (path / "faces").mkdir(parents=True, exist_ok=True)
    with open(path / "metadata.jsonl", "w") as handle:
        for i in range(n):
            name = list(colours)[i % len(colours)]
            pixels = np.clip(np.array(colours[name]) + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(path / "faces" / f"{i:03d}.png")
            handle.write(json.dumps({"file_name": f"faces/{i:03d}.png", "text": f"a {name} face"}) + "\n")
    return path
