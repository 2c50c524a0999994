"""Semantic guidance: a FER classifier steers each image's text embedding toward its target expression.

While denoising, at the steps of a window near the end of the schedule, the classifier judges the
clean image the model currently predicts, and the *conditional text embedding* of each image moves
down the gradient of the cross-entropy toward that image's target label (SynFER, Eq. 6):

    x0 = (x_t - sqrt(1 - a_t) * eps(x_t, t, c, AUs)) / sqrt(a_t)
    c <- c - step_size * g / ||g||,    g = d CE(classifier(decode(x0)), target) / d c

The UNet, the decoder and the classifier are frozen for the duration; only a detached copy of ``c``
asks for gradients, and ``torch.autograd.grad`` (never ``backward``) takes them, so no parameter ever
receives a ``.grad`` and each step's graph is gone when the step returns.

Order and cost. By default a guided step first updates ``c`` from a conditional-only pass (with a
graph back to ``c``), then runs the step's ordinary batched classifier-free-guidance pass with the
updated ``c``: update, then denoise. The extra work is one conditional forward and one backward; the
step's own noise prediction is the very call an unguided step makes, so ``step_size=0`` reproduces
unguided sampling bit for bit, and the graph spans the conditional half of the batch only.

``reuse_prediction=True`` saves that conditional forward: the step runs an unconditional pass and
the conditional pass with a graph, updates ``c`` from the latter and uses both for the step itself,
so the updated ``c`` takes effect from the next step on, and ``step_size=0`` matches unguided
sampling to float rounding only (two half-batch passes round differently from one batched pass).

Measured on the tiny preset (20 steps, batch 4, CPU time, one thread; tiny decoder every 2nd step /
VAE every step of the default window): update-then-denoise 1.26x / 1.61x unguided, reuse 1.20x /
1.44x. A third order, one CFG pass with a graph reused for the step, cost 1.27x / 1.61x with twice
the graph memory and was dropped.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError, ModelLoadError, first_line
from ..expressions import Expression
from .steering import NORMALIZATIONS, VAE_DECODER, check_guidance, guided_steps

logger = logging.getLogger(__name__)

# The predicted clean latent from the model output, per scheduler prediction type (a = alpha_bar_t).
_PREDICTED_ORIGINAL: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "epsilon": lambda x, out, a: (x - (1 - a).sqrt() * out) / a.sqrt(),
    "v_prediction": lambda x, out, a: a.sqrt() * x - (1 - a).sqrt() * out,
    "sample": lambda x, out, a: out,
}


def predicted_original(scheduler, sample: torch.Tensor, model_output: torch.Tensor, t) -> torch.Tensor:
    """x0 predicted at timestep ``t`` by a variance-preserving scheduler (DDIM, PNDM, DDPM, DPM-Solver)."""
    alpha = scheduler.alphas_cumprod[int(t)].to(device=sample.device, dtype=torch.float32)
    x0 = _PREDICTED_ORIGINAL[scheduler.config.prediction_type](sample.float(), model_output.float(), alpha)
    return x0.to(sample.dtype)


def check_scheduler(scheduler) -> None:
    """Guidance forms x0 from alpha_bar_t, which needs latents in the variance-preserving form."""
    prediction = getattr(scheduler.config, "prediction_type", "epsilon")
    if not hasattr(scheduler, "alphas_cumprod") or float(scheduler.init_noise_sigma) != 1.0:
        raise ConfigError(
            f"semantic guidance needs a variance-preserving scheduler (DDIM, PNDM, DDPM, DPM-Solver), "
            f"not {type(scheduler).__name__}; e.g. pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)"
        )
    if prediction not in _PREDICTED_ORIGINAL:
        raise ConfigError(f"unknown prediction type {prediction!r} (accepted: {', '.join(_PREDICTED_ORIGINAL)})")


def load_decoder(path: str | os.PathLike) -> nn.Module:
    """An ``AutoencoderTiny`` (e.g. TAESD) from a local folder or hub id, safetensors only."""
    from diffusers import AutoencoderTiny

    from .loading import is_hub_id

    source = os.fspath(path)
    local = Path(source).expanduser()
    if not local.is_dir() and (local.exists() or not is_hub_id(source)):
        raise ModelLoadError(f"guidance decoder folder {source!r} does not exist (give vae, an AutoencoderTiny folder or a hub id)")
    try:
        return AutoencoderTiny.from_pretrained(
            str(local) if local.is_dir() else source,
            use_safetensors=True,
            local_files_only=local.is_dir() or bool(os.environ.get("HF_HUB_OFFLINE")),
        ).eval()
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"could not load the guidance decoder from {os.fspath(path)!r}: {first_line(error)}") from None


@dataclass
class SemanticGuidance:
    """How to steer images toward their target expressions; pass it as ``semantic_guidance=`` to the pipeline.

    Args:
        classifier: a FER classifier (:class:`synfer.models.classifier.FERClassifier`): images
            [B, 3, H, W] in [0, 1] to logits over its ``label_set``; it resizes and normalises itself.
        target_labels: one AffectNet label per image (or per prompt, or one for all); required at call time.
        step_size: lambda, the distance each guided step moves the (normalised) embedding.
        window: the part of the schedule that is guided, as fractions ``(start, end)`` of the steps;
            step ``i`` of ``N`` is in it when ``start <= i / N < end`` (``end=1`` takes the last step).
        every: guide every ``every``-th step of the window, starting with its first.
        normalize: ``global`` (L2 over the whole embedding of an image) or ``per_token``.
        decoder: ``"vae"`` (the pipeline's VAE), a path to an ``AutoencoderTiny``, or such a module.
        max_images_per_pass: at most this many images per differentiable pass, to bound memory.
        gradient_checkpointing: keep fewer activations for the backward pass and recompute them: the
            decoder's and classifier's, and the UNet's block by block (diffusers' own checkpointing,
            switched on for the call only). Costs about one more UNet pass per guided step.
        reuse_prediction: take the guided step's noise from the guidance passes themselves instead of
            a separate CFG pass with the updated embedding: cheaper, one step of lag (see above).
    """

    classifier: nn.Module
    target_labels: Sequence[int | Expression] | None = None
    step_size: float = 0.1
    window: tuple[float, float] = (0.6, 1.0)
    every: int = 1
    normalize: str = "global"
    decoder: str | os.PathLike | nn.Module = VAE_DECODER
    max_images_per_pass: int | None = None
    gradient_checkpointing: bool = False
    reuse_prediction: bool = False

    def __post_init__(self):
        self.window = check_guidance(self.step_size, self.window, self.every, self.normalize, self.max_images_per_pass)
        if not callable(getattr(self.classifier, "target_indices", None)):
            raise ConfigError("the guidance classifier must be a FER classifier (see synfer.models.classifier)")
        if isinstance(self.decoder, (str, os.PathLike)) and os.fspath(self.decoder) != VAE_DECODER:
            self.decoder = load_decoder(self.decoder)
        if self.target_labels is not None:
            self.classifier.target_indices(self.target_labels)  # a label outside the classifier's set is an error

    def with_targets(self, target_labels: Sequence[int | Expression]) -> SemanticGuidance:
        """The same settings with other target labels (the loaded modules are shared, not copied)."""
        return dataclasses.replace(self, target_labels=list(target_labels))

    def guided_steps(self, num_steps: int) -> list[int]:
        """Indices of the guided steps in a schedule of ``num_steps`` steps."""
        return guided_steps(self.window, self.every, num_steps)

    def to_dict(self) -> dict:
        """The settings that decide the images, with content hashes of the classifier and decoder weights."""
        from ..models.fingerprint import module_sha256

        classifier = {"class": type(self.classifier).__name__, "sha256": module_sha256(self.classifier)}
        for name in ("backbone_name", "input_size"):
            if hasattr(self.classifier, name):
                classifier[name.removesuffix("_name")] = getattr(self.classifier, name)
        if hasattr(self.classifier, "label_set"):
            classifier["label_set"] = self.classifier.label_set.name
        decoder: str | dict = VAE_DECODER
        if isinstance(self.decoder, nn.Module):
            decoder = {"class": type(self.decoder).__name__, "sha256": module_sha256(self.decoder)}
        return {
            "step_size": self.step_size,
            "window": list(self.window),
            "every": int(self.every),
            "normalize": self.normalize,
            "reuse_prediction": self.reuse_prediction,
            "decoder": decoder,
            "classifier": classifier,
        }

    def start(self, pipe, batch_size: int, num_images_per_prompt: int, num_steps: int) -> Guider:
        """A :class:`Guider` for one pipeline call (checks targets and scheduler before any work)."""
        return Guider(self, pipe, batch_size, num_images_per_prompt, num_steps)


class Guider:
    """The guidance of one pipeline call: which steps are guided, and the embedding update itself.

    Use as a context manager around the denoising loop: it freezes the UNet, the decoder and the
    classifier (no ``requires_grad``, eval mode) and restores their state afterwards.
    """

    def __init__(self, config: SemanticGuidance, pipe, batch_size: int, num_images_per_prompt: int, num_steps: int):
        if config.target_labels is None:
            raise ConfigError("semantic guidance needs target_labels: one AffectNet label per image")
        check_scheduler(pipe.scheduler)
        total = batch_size * num_images_per_prompt
        targets = config.classifier.target_indices(config.target_labels)
        if len(targets) == 1:
            targets = targets.repeat(total)
        elif len(targets) == batch_size:
            targets = targets.repeat_interleave(num_images_per_prompt)
        elif len(targets) != total:
            raise ConfigError(
                f"got {len(targets)} guidance target labels for {batch_size} prompts x {num_images_per_prompt} "
                f"images; give 1, {batch_size} or {total}"
            )
        self.config = config
        self.pipe = pipe
        self.targets = targets
        self.steps = frozenset(config.guided_steps(num_steps))
        self.decoder = pipe.vae if isinstance(config.decoder, str) else config.decoder
        self.normalize = NORMALIZATIONS[config.normalize]
        self._saved: list[tuple[nn.Module, bool, list[nn.Parameter]]] = []
        self._checkpointing_switched_on = False

    # -- freezing ---------------------------------------------------------------------------------
    def __enter__(self) -> Guider:
        modules = [self.pipe.unet, self.decoder, self.config.classifier]
        if getattr(self.pipe, "au_adapter", None) is not None:
            modules.append(self.pipe.au_adapter)
        for module in dict.fromkeys(modules):  # the same module listed twice is saved once
            trainable = [p for p in module.parameters() if p.requires_grad]
            self._saved.append((module, module.training, trainable))
            module.requires_grad_(False)
            module.eval()
        unet = self.pipe.unet
        supported = getattr(unet, "_supports_gradient_checkpointing", False)
        if self.config.gradient_checkpointing and supported and not unet.is_gradient_checkpointing:
            unet.enable_gradient_checkpointing()  # acts only where gradients are on: the guided passes
            self._checkpointing_switched_on = True
        return self

    def __exit__(self, *exc) -> None:
        if self._checkpointing_switched_on:
            self.pipe.unet.disable_gradient_checkpointing()
            self._checkpointing_switched_on = False
        for module, training, trainable in reversed(self._saved):
            module.train(training)
            for parameter in trainable:
                parameter.requires_grad_(True)
        self._saved.clear()

    # -- the guided step --------------------------------------------------------------------------
    def guides(self, step: int) -> bool:
        return step in self.steps

    def step(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        prompt_embeds: torch.Tensor,
        negative_prompt_embeds: torch.Tensor | None,
        au_embeds: torch.Tensor | None,
        null_au_embeds: torch.Tensor | None,
        guidance_scale: float,
        cross_attention_kwargs: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A guided step's noise prediction and the updated conditional embeddings (all detached)."""
        total = latents.shape[0]
        size = self.config.max_images_per_pass or total
        moved, conditional = [], []
        for start in range(0, total, size):
            part = slice(start, min(start + size, total))
            au = None if au_embeds is None else au_embeds[part]
            embeds, noise = self._update(latents[part], t, prompt_embeds[part], au, cross_attention_kwargs, self.targets[part])
            moved.append(embeds)
            conditional.append(noise)
        moved = torch.cat(moved)
        if not self.config.reuse_prediction:
            noise = self.pipe.predict_noise(
                latents, t, moved, negative_prompt_embeds, au_embeds, null_au_embeds, guidance_scale, cross_attention_kwargs
            )
            return noise, moved
        noise = torch.cat(conditional)
        if negative_prompt_embeds is not None:
            unconditional = self.pipe.predict_noise(
                latents, t, negative_prompt_embeds, None, null_au_embeds, null_au_embeds, 1.0, cross_attention_kwargs
            )
            noise = unconditional + guidance_scale * (noise - unconditional)
        return noise, moved

    def _update(self, latents, t, prompt_embeds, au_embeds, cross_attention_kwargs, targets):
        """Moved embeddings and the conditional noise prediction they were judged by."""
        with torch.enable_grad():
            embeds = prompt_embeds.detach().requires_grad_(True)
            noise = self.pipe.predict_noise(latents, t, embeds, None, au_embeds, au_embeds, 1.0, cross_attention_kwargs)
            x0 = predicted_original(self.pipe.scheduler, latents, noise, t)
            if self.config.gradient_checkpointing:
                logits = checkpoint(self._score, x0, use_reentrant=False)
            else:
                logits = self._score(x0)
            # A sum, not a mean: each image's gradient is its own loss's, whatever else shares the pass.
            loss = F.cross_entropy(logits.float(), targets.to(logits.device), reduction="sum")
            (grad,) = torch.autograd.grad(loss, embeds)
        grad = grad.float()
        finite = torch.isfinite(grad).flatten(1).all(dim=1)
        if not finite.all():
            # Half precision can overflow in the backward pass; such an image keeps its embedding this step.
            logger.warning("semantic guidance: a non-finite gradient for %d image(s); their embeddings stay put", int((~finite).sum()))
            grad = torch.where(finite.view(-1, *([1] * (grad.ndim - 1))), grad, torch.zeros_like(grad))
        direction = self.normalize(grad).to(prompt_embeds.dtype)
        return (prompt_embeds - self.config.step_size * direction).detach(), noise.detach()

    def _score(self, x0: torch.Tensor) -> torch.Tensor:
        """Classifier logits for the images the latents ``x0`` decode to (differentiably)."""
        decoder, classifier = self.decoder, self.config.classifier
        latents = x0.to(decoder.dtype) / decoder.config.scaling_factor
        images = decoder.decode(latents, return_dict=False)[0]
        images = (images.float() / 2 + 0.5).clamp(0, 1)
        parameter = next(classifier.parameters())
        return classifier(images.to(device=parameter.device, dtype=parameter.dtype))
