"""``SynFERPipeline``: Stable Diffusion conditioned on text and facial action units."""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from ..aus import MAX_INTENSITY, NUM_AUS, AUVector, stack
from ..errors import AUError, ConfigError
from ..models.au_adapter import AUAdapter
from .guidance import SemanticGuidance
from .inversion import LayoutInit

logger = logging.getLogger(__name__)

AUInput = AUVector | str | Sequence[AUVector | str] | torch.Tensor


@dataclass
class SynFEROutput(BaseOutput):
    """What :class:`SynFERPipeline` returns.

    Args:
        images: PIL images, a numpy array [B, H, W, 3], a tensor [B, 3, H, W], or latents for ``output_type="latent"``.
        aus: the AU vector each image was conditioned on (None where no AUs were given).
        prompts: the prompt of each image (None where ``prompt_embeds`` were given instead).
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    aus: list[AUVector | None]
    prompts: list[str | None]


class SynFERPipeline(DiffusionPipeline):
    """Text- and AU-conditioned image generation with Stable Diffusion and an :class:`AUAdapter`.

    Components: ``vae``, ``text_encoder``, ``tokenizer``, ``unet``, ``scheduler`` as in Stable Diffusion,
    and ``au_adapter`` (optional: without it the pipeline is plain text-to-image and refuses ``aus``).
    Classifier-free guidance contrasts (prompt, AUs) with (negative prompt, the adapter's null AU).
    """

    model_cpu_offload_seq = "text_encoder->au_adapter->unet->vae"
    _optional_components = ["au_adapter"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "au_embeds"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        au_adapter: AUAdapter | None = None,
    ):
        super().__init__()
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, au_adapter=au_adapter
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        if au_adapter is not None:
            au_adapter.attach(unet)

    # -- adapter management ---------------------------------------------------------------------
    def load_au_adapter(self, adapter: AUAdapter | str) -> None:
        """Replace (or add) the AU adapter; a path is loaded with ``AUAdapter.from_pretrained`` (safetensors)."""
        if not isinstance(adapter, AUAdapter):
            adapter = AUAdapter.from_pretrained(adapter, use_safetensors=True)
        self.unload_au_adapter()
        adapter.to(device=self.unet.device, dtype=self.unet.dtype)
        adapter.attach(self.unet)
        self.register_modules(au_adapter=adapter)

    def unload_au_adapter(self) -> None:
        """Detach the AU adapter and restore the bare UNet."""
        if self.au_adapter is not None:
            self.au_adapter.detach()
            self.register_modules(au_adapter=None)

    def enable_xformers_memory_efficient_attention(self, attention_op: Callable | None = None):
        super().enable_xformers_memory_efficient_attention(attention_op)
        self._reattach_adapter("xformers")

    def disable_xformers_memory_efficient_attention(self):
        super().disable_xformers_memory_efficient_attention()
        self._reattach_adapter("sdpa")

    def _reattach_adapter(self, backend: str) -> None:
        # diffusers' switch replaced every processor, the adapter's included; put them back.
        if self.au_adapter is not None:
            self.au_adapter.detach()
            self.au_adapter.set_attention_backend(backend)
            self.au_adapter.attach(self.unet)

    # -- encoding -------------------------------------------------------------------------------
    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        device: torch.device,
        num_images_per_prompt: int,
        do_classifier_free_guidance: bool,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text embeddings [B * num_images_per_prompt, tokens, dim] for the prompt and the negative prompt."""
        if prompt_embeds is None:
            prompt_embeds = self._encode_text([prompt] if isinstance(prompt, str) else list(prompt), device)
        batch_size = prompt_embeds.shape[0]
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            if negative_prompt is None:
                negatives = [""] * batch_size
            elif isinstance(negative_prompt, str):
                negatives = [negative_prompt] * batch_size
            else:
                negatives = list(negative_prompt)
            negative_prompt_embeds = self._encode_text(negatives, device)
        dtype = self.text_encoder.dtype if self.text_encoder is not None else self.unet.dtype
        prompt_embeds = prompt_embeds.to(device=device, dtype=dtype).repeat_interleave(num_images_per_prompt, dim=0)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(device=device, dtype=dtype)
            negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        return prompt_embeds, negative_prompt_embeds

    def _encode_text(self, texts: list[str], device: torch.device) -> torch.Tensor:
        tokens = self.tokenizer(
            texts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        full = self.tokenizer(texts, padding="longest", return_tensors="pt").input_ids
        if full.shape[-1] > tokens.input_ids.shape[-1]:
            logger.warning("a prompt is longer than %d tokens and was truncated", self.tokenizer.model_max_length)
        return self.text_encoder(tokens.input_ids.to(device))[0]

    def encode_aus(
        self, aus: AUInput | None, batch_size: int, num_images_per_prompt: int, device: torch.device
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, list[AUVector | None]]:
        """AU tokens for the conditional and unconditional branches, and the AU vector of each image.

        ``aus`` is one AU vector for all images, one per prompt, one per image, or a [N, 41] tensor of
        intensities (all slots known). Without ``aus`` both branches get the null AU.
        """
        total = batch_size * num_images_per_prompt
        if self.au_adapter is None:
            if aus is not None:
                raise ConfigError("this pipeline has no AU adapter, so it cannot take `aus`; load one with load_au_adapter()")
            return None, None, [None] * total
        null = self.au_adapter.null(total).to(device)
        if aus is None:
            return null, null, [None] * total
        if isinstance(aus, torch.Tensor):
            if aus.ndim != 2 or aus.shape[1] != NUM_AUS:
                raise AUError(f"an AU tensor must have shape [N, {NUM_AUS}], got {tuple(aus.shape)}")
            if not torch.isfinite(aus).all() or aus.min() < 0 or aus.max() > MAX_INTENSITY:
                raise AUError(f"AU intensities must lie in [0, {MAX_INTENSITY:g}]")
            vectors = [AUVector(row) for row in aus.detach().float().cpu().numpy()]
        elif isinstance(aus, (AUVector, str)):
            vectors = [AUVector.coerce(aus)]
        else:
            vectors = [AUVector.coerce(a) for a in aus]
        if len(vectors) == 1:
            vectors = vectors * total
        elif len(vectors) == batch_size:
            vectors = [v for v in vectors for _ in range(num_images_per_prompt)]
        elif len(vectors) != total:
            raise AUError(
                f"got {len(vectors)} AU vectors for {batch_size} prompts x {num_images_per_prompt} images; "
                f"give 1, {batch_size} or {total}"
            )
        values, known = stack(vectors)
        tokens = self.au_adapter(torch.from_numpy(values).to(device), torch.from_numpy(known).to(device))
        return tokens, null, vectors

    # -- helpers --------------------------------------------------------------------------------
    def check_inputs(
        self,
        prompt,
        height,
        width,
        negative_prompt,
        prompt_embeds,
        negative_prompt_embeds,
        callback_on_step_end_tensor_inputs,
    ) -> None:
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise ConfigError(f"height and width must be multiples of {self.vae_scale_factor}, got {height}x{width}")
        if (prompt is None) == (prompt_embeds is None):
            raise ConfigError("give exactly one of `prompt` and `prompt_embeds`")
        if prompt is not None and not isinstance(prompt, (str, list)):
            raise ConfigError(f"`prompt` must be a string or a list of strings, got {type(prompt).__name__}")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ConfigError("give at most one of `negative_prompt` and `negative_prompt_embeds`")
        batch = len(prompt) if isinstance(prompt, list) else 1 if prompt is not None else prompt_embeds.shape[0]
        if isinstance(negative_prompt, list) and len(negative_prompt) != batch:
            raise ConfigError(f"got {len(negative_prompt)} negative prompts for {batch} prompts")
        if prompt_embeds is not None and negative_prompt_embeds is not None and prompt_embeds.shape != negative_prompt_embeds.shape:
            raise ConfigError("`prompt_embeds` and `negative_prompt_embeds` must have the same shape")
        unknown = set(callback_on_step_end_tensor_inputs or []) - set(self._callback_tensor_inputs)
        if unknown:
            raise ConfigError(f"unknown callback tensor inputs {sorted(unknown)} (accepted: {self._callback_tensor_inputs})")

    def prepare_latents(self, batch_size, num_channels, height, width, dtype, device, generator, latents=None):
        shape = (batch_size, num_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ConfigError(f"got {len(generator)} generators for {batch_size} images; give one per image")
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            if tuple(latents.shape) != shape:
                raise ConfigError(f"`latents` must have shape {shape}, got {tuple(latents.shape)}")
            latents = latents.to(device=device, dtype=dtype)
        return latents * self.scheduler.init_noise_sigma

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [-1, 1] from latents, decoded in the VAE's dtype (which may differ from the UNet's).

        A float16 VAE whose config sets ``force_upcast`` (SD1.5's does, by default) decodes in float16 and
        decodes again in float32 only the images whose float16 result overflowed (a non-finite value):
        diffusers' SDXL pipelines upcast such a VAE for every image instead. Whether an image is decoded
        again depends on that image alone, not on the others in its batch.
        """
        vae = self.vae
        scaled = latents / vae.config.scaling_factor
        decoded = vae.decode(scaled.to(vae.dtype), return_dict=False)[0]
        if vae.dtype == torch.float16 and vae.config.get("force_upcast", False):
            overflowed = ~torch.isfinite(decoded).flatten(1).all(dim=1)
            if bool(overflowed.any()):
                logger.warning(
                    "%d of %d images overflowed in float16 VAE decoding; decoding them again in float32",
                    int(overflowed.sum()), len(decoded),
                )
                vae.to(dtype=torch.float32)
                try:
                    redone = vae.decode(scaled[overflowed].float(), return_dict=False)[0]
                finally:
                    vae.to(dtype=torch.float16)
                decoded = decoded.float()
                decoded[overflowed] = redone
        return decoded

    def prepare_extra_step_kwargs(self, generator, eta):
        params = set(inspect.signature(self.scheduler.step).parameters)
        kwargs = {}
        if "eta" in params:
            kwargs["eta"] = eta
        if "generator" in params:
            kwargs["generator"] = generator
        return kwargs

    def predict_noise(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        prompt_embeds: torch.Tensor,
        negative_prompt_embeds: torch.Tensor | None,
        au_embeds: torch.Tensor | None,
        null_au_embeds: torch.Tensor | None,
        guidance_scale: float,
        cross_attention_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """One UNet evaluation with classifier-free guidance over (text, AUs) vs (negative text, null AU)."""
        do_cfg = negative_prompt_embeds is not None
        latent_input = torch.cat([latents, latents]) if do_cfg else latents
        latent_input = self.scheduler.scale_model_input(latent_input, t)
        text = torch.cat([negative_prompt_embeds, prompt_embeds]) if do_cfg else prompt_embeds
        context: torch.Tensor | tuple[torch.Tensor, torch.Tensor] = text
        if au_embeds is not None:
            context = (text, torch.cat([null_au_embeds, au_embeds]) if do_cfg else au_embeds)
        noise = self.unet(
            latent_input, t, encoder_hidden_states=context, cross_attention_kwargs=cross_attention_kwargs, return_dict=False
        )[0]
        if do_cfg:
            noise_uncond, noise_cond = noise.chunk(2)
            noise = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
        return noise

    # -- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 (diffusers' own signature; never mutated)
        aus: AUInput | None = None,
        au_scale: float = 1.0,
        semantic_guidance: SemanticGuidance | None = None,
        layout: LayoutInit | None = None,
    ) -> SynFEROutput | tuple:
        """Generate images.

        Arguments up to ``callback_on_step_end_tensor_inputs`` mean what they mean in diffusers'
        ``StableDiffusionPipeline``. In addition:

        Args:
            aus: the target action units — an :class:`AUVector` (or string such as ``"6,12"``) for every
                image, a list with one per prompt or one per image, or a [N, 41] tensor of intensities.
            au_scale: weight of the AU attention in every cross-attention layer; 0 ignores the AUs exactly.
            semantic_guidance: a :class:`~synfer.pipelines.guidance.SemanticGuidance` (classifier, one target
                label per image, step size, window, ...): steers each image's text embedding toward its target.
            layout: a :class:`~synfer.pipelines.inversion.LayoutInit` (reference face(s), strength, inversion
                prompt, iterations): the references' inversion (the sampler's own: DDIM or DPM-Solver) replaces the random starting noise.

        Returns:
            :class:`SynFEROutput` (images, aus, prompts), or ``(images, aus, prompts)`` when ``return_dict`` is False.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        self.check_inputs(
            prompt, height, width, negative_prompt, prompt_embeds, negative_prompt_embeds, callback_on_step_end_tensor_inputs
        )
        if num_images_per_prompt < 1:
            raise ConfigError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")

        device = self._execution_device
        do_cfg = guidance_scale > 1.0
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, device, num_images_per_prompt, do_cfg, negative_prompt, prompt_embeds, negative_prompt_embeds
        )
        total = prompt_embeds.shape[0]
        batch_size = total // num_images_per_prompt
        au_embeds, null_au_embeds, au_vectors = self.encode_aus(aus, batch_size, num_images_per_prompt, device)
        if au_embeds is not None:
            au_embeds = au_embeds.to(prompt_embeds.dtype)
            null_au_embeds = null_au_embeds.to(prompt_embeds.dtype)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        if layout is not None and latents is not None:
            raise ConfigError("give at most one of `latents` and `layout`")
        # Drawn even when a layout image replaces them, so the generators are checked and advance alike.
        latents = self.prepare_latents(
            total, self.unet.config.in_channels, height, width, prompt_embeds.dtype, device, generator, latents
        )
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        guider = None
        if semantic_guidance is not None:
            guider = semantic_guidance.start(self, batch_size, num_images_per_prompt, num_inference_steps)
        inversion = None
        if layout is not None:
            inversion = layout.start(self, batch_size, num_images_per_prompt, num_inference_steps)

        previous_scale = self.au_adapter.au_scale if self.au_adapter is not None else None
        if self.au_adapter is not None:
            self.au_adapter.set_scale(au_scale)
        try:
            first_step = 0
            if inversion is not None:
                # Inverted under the same AU scale the sampler uses, so that the two paths match.
                latents = inversion.latents(height, width, null_au_embeds, prompt_embeds.dtype, cross_attention_kwargs)
                first_step = inversion.first_step
                timesteps = timesteps[first_step:]
            with self.progress_bar(total=len(timesteps)) as progress_bar, guider or contextlib.nullcontext():
                for i, t in enumerate(timesteps):
                    noise_inputs = (
                        latents,
                        t,
                        prompt_embeds,
                        negative_prompt_embeds if do_cfg else None,
                        au_embeds,
                        null_au_embeds,
                        guidance_scale,
                        cross_attention_kwargs,
                    )
                    if guider is not None and guider.guides(first_step + i):
                        noise_pred, prompt_embeds = guider.step(*noise_inputs)
                    else:
                        noise_pred = self.predict_noise(*noise_inputs)
                    latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]
                    if callback_on_step_end is not None:
                        state = {
                            "latents": latents,
                            "prompt_embeds": prompt_embeds,
                            "negative_prompt_embeds": negative_prompt_embeds,
                            "au_embeds": au_embeds,
                        }
                        outputs = callback_on_step_end(
                            self, i, t, {k: state[k] for k in callback_on_step_end_tensor_inputs}
                        )
                        latents = outputs.pop("latents", latents)
                        prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                        negative_prompt_embeds = outputs.pop("negative_prompt_embeds", negative_prompt_embeds)
                        au_embeds = outputs.pop("au_embeds", au_embeds)
                    progress_bar.update()
        finally:
            if self.au_adapter is not None:
                self.au_adapter.set_scale(previous_scale)

        if output_type == "latent":
            images = latents
        else:
            decoded = self.decode_latents(latents)
            images = self.image_processor.postprocess(decoded, output_type=output_type, do_denormalize=[True] * total)
        self.maybe_free_model_hooks()

        if prompt is None:
            prompts: list[str | None] = [None] * total
        else:
            prompts = [p for p in ([prompt] if isinstance(prompt, str) else prompt) for _ in range(num_images_per_prompt)]
        if not return_dict:
            return images, au_vectors, prompts
        return SynFEROutput(images=images, aus=au_vectors, prompts=prompts)
