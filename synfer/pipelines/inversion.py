"""Layout initialisation: start sampling from a real face's inversion instead of random noise.

SynFER inverts a randomly chosen real face to the starting noise so that each generated face keeps a
natural layout (pose, framing, proportions) while the prompt and AUs decide the rest. The reference
is encoded with the pipeline's VAE and run *up* the schedule the sampler will run down, with the
sampler's own inverse from diffusers (``DDIMInverseScheduler`` for DDIM,
``DPMSolverMultistepInverseScheduler`` for DPM-Solver), conditioned on an inversion prompt (empty by
default) and the adapter's null AU, without classifier-free guidance (guidance makes the inversion
diverge).

``strength`` is the fraction of the schedule that is inverted: 1.0 inverts all the way to x_T;
lower values stop part-way and sampling continues from there (SDEdit-like), keeping more of the
reference. The sampler must step through the noise levels the inversion passed and start where it
stopped (see :func:`layout_mismatch`).
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, DPMSolverMultistepInverseScheduler, DPMSolverMultistepScheduler

from ..errors import ConfigError, DatasetError
from .steering import check_layout, inverted_steps

REFERENCE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# Separates the reference choice from every other use of a sample's seed.
_REFERENCE_STREAM = 0x1A7
# DPM-Solver options that place its noise levels away from the timestep grid; its inverse does not retrace them.
_SIGMA_SPACINGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas")


def inverse_scheduler(scheduler, num_steps: int, device: torch.device | str | None = None):
    """The inverse of ``scheduler``'s sampler with its noise schedule, set to ``num_steps``.

    DPM-Solver inverts with ``DPMSolverMultistepInverseScheduler`` (the same solver run upwards, so the
    sampler retraces its path); every other scheduler with ``DDIMInverseScheduler``.
    """
    kind = DPMSolverMultistepInverseScheduler if isinstance(scheduler, DPMSolverMultistepScheduler) else DDIMInverseScheduler
    try:
        inverse = kind.from_config(scheduler.config)
        inverse.set_timesteps(num_steps, device=device)
    except ValueError as error:
        raise ConfigError(f"cannot invert with this scheduler's config: {error}") from None
    return inverse


def _inverted_levels(inverse) -> list[int]:
    """The noise level (a training timestep) the latents sit at after 1, 2, ..., n steps of ``inverse``."""
    if isinstance(inverse, DPMSolverMultistepInverseScheduler):
        # Its step i moves from sigmas[i] to sigmas[i + 1]: sigmas[0] is the clean latents' level and the last
        # sigma the noisiest timestep's, which is not a timestep of the grid.
        return [int(t) for t in inverse.timesteps[1:]] + [int(inverse.noisiest_timestep)]
    return [int(t) for t in inverse.timesteps]  # DDIM's inverse step at t lands at t


def layout_mismatch(scheduler, num_steps: int, steps: int | None = None) -> str | None:
    """Why sampling with ``scheduler`` cannot continue from an inversion of ``steps`` of ``num_steps`` steps, or None.

    The sampler must visit the noise levels the inversion passed, and start where it stopped. That holds
    for ``DDIMScheduler`` and for ``DPMSolverMultistepScheduler`` on the timestep grid; not for e.g. PNDM,
    whose schedule repeats a timestep, or Euler, whose latents are not in the variance-preserving form.
    DPM-Solver with 'leading' spacing starts below the noisiest level its inversion ends at, so there it
    retraces any strength below 1. ``steps`` defaults to the whole schedule.
    """
    name = type(scheduler).__name__
    steps = num_steps if steps is None else steps
    if not hasattr(scheduler, "alphas_cumprod") or float(scheduler.init_noise_sigma) != 1.0:
        return f"{name} does not sample variance-preserving latents, which an inversion gives"
    spaced = [key for key in _SIGMA_SPACINGS if scheduler.config.get(key)]
    if spaced:
        return f"{name} with {spaced[0]} samples noise levels off the timestep grid its inversion runs on"
    try:
        levels = _inverted_levels(inverse_scheduler(scheduler, num_steps))
    except ConfigError as error:
        return str(error)
    sampling = type(scheduler).from_config(scheduler.config)  # a copy: the caller's scheduler keeps its state
    sampling.set_timesteps(num_steps)
    starts = [int(t) for t in sampling.timesteps.flip(0)]  # the level each step starts from, least noisy first
    if len(starts) != len(levels) or levels[:-1] != starts[:-1]:
        return f"{name} samples other noise levels than its inversion passes at {num_steps} steps"
    if steps == num_steps and levels[-1] != starts[-1]:
        spacing = scheduler.config.get("timestep_spacing")
        return (f"the inversion ends at timestep {levels[-1]} and {name} starts at {starts[-1]} ({spacing!r} spacing); "
                "invert less than the whole schedule (strength below 1)")
    return None


def layout_compatible(scheduler, num_steps: int, steps: int | None = None) -> bool:
    """Whether sampling with ``scheduler`` can continue from an inversion (:func:`layout_mismatch` finds nothing)."""
    return layout_mismatch(scheduler, num_steps, steps) is None


def use_layout_scheduler(pipe, num_steps: int, steps: int | None = None) -> str | None:
    """Make ``pipe`` sample with a DDIM scheduler (same config) unless its own one can continue from the inversion.

    Returns the name of the scheduler it replaced, or None when nothing changed.
    """
    if layout_compatible(pipe.scheduler, num_steps, steps):
        return None
    replaced = type(pipe.scheduler).__name__
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    reason = layout_mismatch(scheduler, num_steps, steps)
    if reason:
        raise ConfigError(f"cannot build a DDIM schedule matching its inversion from the {replaced} config: {reason}")
    pipe.scheduler = scheduler
    return replaced


def _per_image(items: list, batch_size: int, num_images_per_prompt: int, what: str) -> list:
    total = batch_size * num_images_per_prompt
    if len(items) == 1:
        return items * total
    if len(items) == batch_size:
        return [item for item in items for _ in range(num_images_per_prompt)]
    if len(items) == total:
        return items
    raise ConfigError(f"got {len(items)} {what} for {batch_size} prompts x {num_images_per_prompt} images; give 1, {batch_size} or {total}")


def encode_images(pipe, images, batch_size: int, num_images_per_prompt: int, height: int, width: int, device, dtype) -> torch.Tensor:
    """Scaled VAE latents (the distribution's mode, no sampling) of one reference per image.

    ``images``: a PIL image, a list of them (1, one per prompt, or one per image), or what diffusers'
    ``VaeImageProcessor`` accepts (numpy arrays, tensors [B, 3, H, W] in [0, 1]).
    """
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        images = list(images.unbind(0))
    elif isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    items = [item.convert("RGB") if isinstance(item, PIL.Image.Image) else item for item in items]
    items = _per_image(items, batch_size, num_images_per_prompt, "layout images")
    if all(isinstance(item, torch.Tensor) for item in items):
        pixels = pipe.image_processor.preprocess(torch.stack(items), height=height, width=width)
    else:
        pixels = pipe.image_processor.preprocess(items, height=height, width=width)
    pixels = pixels.to(device=device, dtype=pipe.vae.dtype)
    encoded = pipe.vae.encode(pixels)
    # AutoencoderKL gives a distribution (take its mode: no sampling noise); AutoencoderTiny gives latents.
    latents = encoded.latent_dist.mode() if hasattr(encoded, "latent_dist") else encoded.latents
    return (latents * pipe.vae.config.scaling_factor).to(dtype)


def invert(
    pipe,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    au_embeds: torch.Tensor | None,
    num_steps: int,
    steps: int,
    cross_attention_kwargs: dict[str, Any] | None = None,
    iterations: int = 0,
) -> torch.Tensor:
    """Run clean ``latents`` up the first ``steps`` of the sampler's inverse schedule of ``num_steps`` (no CFG).

    The result sits at the noise level of the sampler's step ``num_steps - steps``. Inversion predicts
    the noise of step k -> k+1 at x_k, where sampling will predict it at x_{k+1}; the mismatch
    compounds over the schedule. ``iterations`` > 0 refines each step as a fixed point
    (x_{k+1} = inverse_step(eps(x_{k+1}), x_k), as in Pan et al. 2023, "Effective real image editing
    with accelerated iterative diffusion inversion"), one extra UNet pass per iteration, which makes
    sampling retrace the inversion much more closely.
    """
    check_layout(1.0, iterations)
    inverse = inverse_scheduler(pipe.scheduler, num_steps, device=latents.device)
    for t in inverse.timesteps[:steps]:
        # DPM-Solver's inverse is multistep: a step records the noise it was given, so a refined step is redone
        # from the state before the first try (DDIM's inverse keeps no state; the copy costs nothing there).
        before = copy.deepcopy(inverse) if iterations else None
        noise = pipe.predict_noise(latents, t, prompt_embeds, None, au_embeds, au_embeds, 1.0, cross_attention_kwargs)
        following = inverse.step(noise, t, latents, return_dict=False)[0]
        for _ in range(iterations):
            inverse = copy.deepcopy(before)
            noise = pipe.predict_noise(following, t, prompt_embeds, None, au_embeds, au_embeds, 1.0, cross_attention_kwargs)
            following = inverse.step(noise, t, latents, return_dict=False)[0]
        latents = following
    return latents


@dataclass(frozen=True)
class LayoutInit:
    """Layout initialisation for one pipeline call; pass it as ``layout=`` to the pipeline.

    Args:
        images: the reference face(s): one image, or a list with one per prompt or per image (PIL images,
            numpy arrays or [3, H, W] tensors in [0, 1], as diffusers' ``VaeImageProcessor`` takes them).
        strength: the fraction of the schedule inverted; 1.0 starts from x_T, less keeps more of the reference.
        prompt: the prompt the inversion is conditioned on (empty by default).
        iterations: fixed-point refinements per inversion step (0: plain inversion); each costs one more
            UNet pass per step and brings the sampler's path closer to the inverted one.
    """

    images: Any = None
    strength: float = 1.0
    prompt: str = ""
    iterations: int = 0

    def __post_init__(self):
        object.__setattr__(self, "strength", check_layout(self.strength, self.iterations))

    def with_images(self, images) -> LayoutInit:
        """The same settings with other reference images."""
        return replace(self, images=images)

    def start(self, pipe, batch_size: int, num_images_per_prompt: int, num_steps: int) -> LayoutRun:
        """A :class:`LayoutRun` for one pipeline call; checks the settings against the schedule first.

        Call after ``pipe.scheduler.set_timesteps(num_steps)``.
        """
        if self.images is None:
            raise ConfigError("layout initialisation needs reference images (LayoutInit(images=...))")
        steps = inverted_steps(num_steps, self.strength)
        reason = layout_mismatch(pipe.scheduler, num_steps, steps)
        if reason:
            raise ConfigError(
                f"layout initialisation cannot continue: {reason}; or sample with "
                "pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)"
            )
        return LayoutRun(self, pipe, batch_size, num_images_per_prompt, num_steps, steps)


@dataclass
class LayoutRun:
    """The inversion of one pipeline call: which steps are inverted, and the inverted starting latents."""

    layout: LayoutInit
    pipe: Any
    batch_size: int
    num_images_per_prompt: int
    num_steps: int
    steps: int  # inverted steps

    @property
    def first_step(self) -> int:
        """The first sampling step to run: sampling continues with ``scheduler.timesteps[first_step:]``."""
        return self.num_steps - self.steps

    def latents(
        self,
        height: int,
        width: int,
        null_au_embeds: torch.Tensor | None,
        dtype: torch.dtype,
        cross_attention_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """Starting latents inverted from the reference images, at the noise level of :attr:`first_step`."""
        pipe, layout = self.pipe, self.layout
        device = pipe._execution_device
        clean = encode_images(pipe, layout.images, self.batch_size, self.num_images_per_prompt, height, width, device, dtype)
        embeds = pipe.encode_prompt(layout.prompt, device, clean.shape[0], False)[0].to(dtype)
        return invert(pipe, clean, embeds, null_au_embeds, self.num_steps, self.steps, cross_attention_kwargs, layout.iterations)


def pick_reference(references: Sequence[Path], seed: int) -> Path:
    """The reference face of the sample with this seed: a pure function of the seed and the sorted list."""
    if not references:
        raise ConfigError("there are no reference faces to choose from")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, _REFERENCE_STREAM])
    return references[int(rng.integers(len(references)))]


def list_references(folder: str | os.PathLike) -> list[Path]:
    """The images (png, jpg, webp) under ``folder``, recursively, in a fixed order."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"layout folder {str(folder)!r} does not exist or is not a folder")
    found = sorted(
        (p for p in root.rglob("*") if p.suffix.lower() in REFERENCE_SUFFIXES and p.is_file()),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not found:
        raise ConfigError(f"layout folder {str(folder)!r} holds no images (accepted: {', '.join(REFERENCE_SUFFIXES)})")
    return found


@dataclass(frozen=True)
class LayoutReferences:
    """A folder of reference faces; sample ``i`` is laid out like the face its seed picks.

    Args:
        folder: the images (searched recursively; png, jpg, jpeg, webp).
        strength, prompt, iterations: the :class:`LayoutInit` settings every sample uses.
    """

    folder: Path
    strength: float = 1.0
    prompt: str = ""
    iterations: int = 0
    references: tuple[Path, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "strength", check_layout(self.strength, self.iterations))
        object.__setattr__(self, "folder", Path(self.folder))
        object.__setattr__(self, "references", tuple(list_references(self.folder)))

    def check_steps(self, num_steps: int) -> None:
        """Refuse a strength that inverts no step of a ``num_steps`` schedule."""
        inverted_steps(num_steps, self.strength)

    def reference_for(self, seed: int) -> Path:
        return pick_reference(self.references, seed)

    def image_for(self, seed: int) -> PIL.Image.Image:
        path = self.reference_for(seed)
        try:
            with PIL.Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, ValueError) as error:
            raise DatasetError(f"cannot read layout reference {path}: {error}") from None

    def for_seeds(self, seeds: Sequence[int]) -> LayoutInit:
        """The layout of a batch: each sample's reference (by its seed) with this folder's settings."""
        return LayoutInit([self.image_for(seed) for seed in seeds], self.strength, self.prompt, self.iterations)

    def to_dict(self) -> dict:
        """What decides the samples: settings and a fingerprint of the listing (relative names and sizes).

        The folder's own path is left out: the same faces moved elsewhere make the same samples.
        Hashing every reference's pixels would cost a read of the whole folder, hence names and sizes.
        """
        digest = hashlib.sha256()
        for path in self.references:
            digest.update(f"{path.relative_to(self.folder).as_posix()}\0{path.stat().st_size}\n".encode())
        return {
            "strength": self.strength,
            "prompt": self.prompt,
            "iterations": self.iterations,
            "references": len(self.references),
            "listing_sha256": digest.hexdigest(),
        }
