"""Validation images of the diffusion stages, saved as grid PNGs under ``RUN/validation/``.

* train-lora: one row per prompt, one column per seed, the same prompts and seeds at every validation.
* train-adapter: one prompt and one seed throughout; one row per AU set, its intensity swept 0..5
  across the row, so a person sees at a glance whether (and how smoothly) the AUs act.
* train-vae: held-out originals over their reconstructions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...data.format import atomic_path

SWEEP_INTENSITIES = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)
GAP = 2


def image_grid(rows: Sequence[Sequence[Image.Image]], gap: int = GAP) -> Image.Image:
    """The images laid out row by row on a white ground (all cells take the first image's size)."""
    width, height = rows[0][0].size
    columns = max(len(r) for r in rows)
    grid = Image.new("RGB", (columns * width + (columns - 1) * gap, len(rows) * height + (len(rows) - 1) * gap), "white")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            grid.paste(image.convert("RGB").resize((width, height)), (c * (width + gap), r * (height + gap)))
    return grid


def save_grid(grid: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return path


def validation_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "validation" / f"step-{step:08d}.png"


def make_pipeline(unet, vae, text_encoder, tokenizer, scheduler, adapter=None):
    """A SynFERPipeline around the modules being trained (nothing is copied)."""
    from ...pipelines.pipeline_synfer import SynFERPipeline

    pipe = SynFERPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, au_adapter=adapter)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(pipe, prompts: list[str], seeds: list[int], resolution: int, steps: int, guidance: float, device, **kwargs):
    generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
    latents = torch.stack([
        torch.randn((pipe.unet.config.in_channels, resolution // pipe.vae_scale_factor, resolution // pipe.vae_scale_factor),
                    generator=g) for g in generators
    ]).to(device=device, dtype=pipe.unet.dtype)
    return pipe(prompts, height=resolution, width=resolution, num_inference_steps=steps, guidance_scale=guidance,
                latents=latents, output_type="pil", **kwargs).images


def prompt_grid(pipe, prompts: Sequence[str], seeds: Sequence[int], resolution: int, steps: int, guidance: float, device) -> Image.Image:
    """One row per prompt, one column per seed (fixed starting noise per seed, drawn on the CPU)."""
    rows = []
    for prompt in prompts:
        rows.append(_generate(pipe, [prompt] * len(seeds), list(seeds), resolution, steps, guidance, device))
    return image_grid(rows)


def au_sweep_grid(pipe, prompt: str, seed: int, au_sets: Sequence[str], resolution: int, steps: int, guidance: float, device,
                  intensities: Sequence[float] = SWEEP_INTENSITIES) -> Image.Image:
    """One row per AU set, its AUs at each of ``intensities`` across the row; one prompt, one seed."""
    from ...aus import AUVector

    rows = []
    for spec in au_sets:
        active = AUVector.parse(spec).active
        vectors = [AUVector.from_dict(dict.fromkeys(active, value)) for value in intensities]
        rows.append(_generate(pipe, [prompt] * len(vectors), [seed] * len(vectors), resolution, steps, guidance, device, aus=vectors))
    return image_grid(rows)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """[-1, 1] tensors [B, 3, H, W] as PIL images."""
    array = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in array]
