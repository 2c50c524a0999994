"""FERAnno's feature extractor: one noised UNet pass per image, read by an :class:`AttentionRecorder`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from ...errors import ConfigError
from ...models.fingerprint import json_sha256, module_sha256
from .config import FeatureConfig
from .recorder import AttentionRecorder, FERAnnoFeatures, cross_attention_blocks


class FERAnnoFeatureExtractor:
    """One noised UNet pass per image; returns :class:`FERAnnoFeatures`.

    Args:
        pipe: a :class:`~synfer.pipelines.pipeline_synfer.SynFERPipeline` (or any pipeline with vae,
            text_encoder, tokenizer, unet, scheduler and optionally au_adapter). It is only read.
        config: :class:`FeatureConfig`.
        model: how to load ``pipe`` again (``{"name", "adapter", "seed"}``, as ``load_pipeline`` takes
            them); saved with a head so that ``FERAnno.from_pretrained`` can rebuild the extractor.
    """

    def __init__(self, pipe, config: FeatureConfig = FeatureConfig(), model: dict | None = None):
        self.pipe = pipe
        unet = pipe.unet
        with_attention = cross_attention_blocks(unet)
        blocks = config.up_blocks if config.up_blocks is not None else tuple(with_attention)
        for index in blocks:
            if not 0 <= index < len(unet.up_blocks):
                raise ConfigError(f"decoder block {index} does not exist (this UNet has blocks 0..{len(unet.up_blocks) - 1})")
        if not set(blocks) & set(with_attention):
            raise ConfigError(
                f"decoder blocks {list(blocks)} have no cross-attention, so there are no attention maps to read "
                f"(blocks with cross-attention: {with_attention})"
            )
        resolution = config.resolution or unet.config.sample_size * pipe.vae_scale_factor
        if resolution % pipe.vae_scale_factor:
            raise ConfigError(f"resolution must be a multiple of {pipe.vae_scale_factor}, got {resolution}")
        # The DDPM forward process with the model's own beta schedule: how the UNet saw noised latents in
        # training, independent of the sampler the pipeline is set up with.
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        steps = self.noise_scheduler.config.num_train_timesteps
        if config.timestep >= steps:
            raise ConfigError(f"the FERAnno timestep must be below {steps}, got {config.timestep}")
        self.config = FeatureConfig(**{**config.to_dict(), "up_blocks": tuple(blocks), "resolution": resolution})
        self.model = dict(model or {})
        self._attention_blocks = [b for b in blocks if b in with_attention]
        self._text: torch.Tensor | None = None
        self._spec: dict | None = None

    # -- shapes --------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.unet.dtype

    @property
    def feature_dims(self) -> list[int]:
        return [self.pipe.unet.up_blocks[b].resnets[-1].out_channels for b in self.config.up_blocks]

    @property
    def num_attention_tokens(self) -> int:
        adapter = self.pipe.au_adapter
        return self.pipe.tokenizer.model_max_length + (adapter.config.num_tokens if adapter is not None else 0)

    @property
    def attention_dim(self) -> int:
        return len(self._attention_blocks) * self.config.attention_size**2

    def spec(self) -> dict:
        """Everything that decides the features: settings, shapes, model identity and weight hashes."""
        if self._spec is None:
            adapter = self.pipe.au_adapter
            self._spec = {
                "config": self.config.to_dict(),
                "model": self.model,
                "dtype": str(self.dtype).removeprefix("torch."),
                "unet_sha256": module_sha256(self.pipe.unet),
                "au_adapter_sha256": module_sha256(adapter) if adapter is not None else None,
                "text_encoder_sha256": module_sha256(self.pipe.text_encoder),
                "vae_sha256": module_sha256(self.pipe.vae),
                "feature_dims": self.feature_dims,
                "feature_tokens": self.config.pool_size**2,
                "attention_tokens": self.num_attention_tokens,
                "attention_dim": self.attention_dim,
            }
        return self._spec

    def fingerprint(self) -> str:
        return json_sha256(self.spec())

    # -- the pass ------------------------------------------------------------------------------
    @torch.no_grad()
    def prompt_embeds(self) -> torch.Tensor:
        """The neutral prompt's text embeddings [1, tokens, dim] (encoded once)."""
        if self._text is None:
            tokens = self.pipe.tokenizer(
                [self.config.prompt],
                padding="max_length",
                max_length=self.pipe.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            self._text = self.pipe.text_encoder(tokens.input_ids.to(self.pipe.text_encoder.device))[0]
        return self._text.to(device=self.device, dtype=self.dtype)

    def _au_tokens(self, batch: int, aus: torch.Tensor | None, known: torch.Tensor | None) -> torch.Tensor | None:
        adapter = self.pipe.au_adapter
        if adapter is None:
            return None
        null = adapter.null(batch)
        if not self.config.use_aus or aus is None:
            return null
        known = torch.ones_like(aus, dtype=torch.bool) if known is None else known.bool()
        known = known.to(adapter.device)
        tokens = adapter(aus.to(adapter.device), known)
        # An image with no known AU at all is treated as unconditioned, as in classifier-free guidance.
        return torch.where(known.any(dim=1)[:, None, None], tokens, null)

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] at the extractor's resolution (float32)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"expected images [B, 3, H, W] in [0, 1], got {tuple(images.shape)}")
        size = self.config.resolution
        images = images.float()
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return images

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Latents of images [B, 3, H, W] in [0, 1] (the distribution's mode: no sampling noise)."""
        images = self.resize(images.to(device=self.pipe.vae.device))
        pixels = (images * 2 - 1).to(self.pipe.vae.dtype)
        latents = self.pipe.vae.encode(pixels).latent_dist.mode()
        return latents * self.pipe.vae.config.scaling_factor

    @torch.no_grad()
    def __call__(
        self, images: torch.Tensor, aus: torch.Tensor | None = None, au_known: torch.Tensor | None = None
    ) -> FERAnnoFeatures:
        """Features of images [B, 3, H, W] in [0, 1]; ``aus`` [B, 41] intensities with ``au_known`` [B, 41]."""
        latents = self.encode_latents(images).to(self.dtype)
        batch = latents.shape[0]
        generator = torch.Generator("cpu").manual_seed(self.config.noise_seed)
        noise = torch.randn(latents.shape[1:], generator=generator).expand_as(latents)
        timesteps = torch.full((batch,), self.config.timestep, dtype=torch.long)
        noisy = self.noise_scheduler.add_noise(latents.float(), noise.to(latents.device), timesteps.to(latents.device))
        text = self.prompt_embeds().expand(batch, -1, -1)
        au_tokens = self._au_tokens(batch, aus, au_known)
        context = text if au_tokens is None else (text, au_tokens.to(self.dtype))

        recorder = AttentionRecorder(self.pipe.unet, self.config.up_blocks, self.config.pool_size, self.config.attention_size)
        adapter = self.pipe.au_adapter
        previous_scale = adapter.au_scale if adapter is not None else None
        try:
            if adapter is not None:
                adapter.set_scale(self.config.au_scale)
            with recorder.installed():
                self.pipe.unet(noisy.to(self.dtype), timesteps.to(latents.device), encoder_hidden_states=context, return_dict=False)
        finally:
            if adapter is not None:
                adapter.set_scale(previous_scale)
        return recorder.result()
