"""What each diffusion stage minimises, as ``nn.Module`` tasks: ``task(batch, generator) -> (loss, logs)``.

:class:`UNetTask` (train-lora: LoRA or full), :class:`AdapterTask` (train-adapter) and
:class:`VAETask` (train-vae). The loop prepares the task with accelerate, so under DDP the forward
pass that touches the trainable weights runs through the wrapper, as DDP requires, and under mixed
precision inside autocast. Every random draw of a step (posterior sample, noise, timesteps,
condition dropout, AU noise) comes from the step's ``generator``, so a step is a function of its
batch and its seed, with or without a latent cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...aus import MAX_INTENSITY

LOGVAR_RANGE = (-30.0, 20.0)  # diffusers' DiagonalGaussianDistribution clamps the log-variance the same way


def sample_posterior(moments: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A draw from the VAE posterior whose mean and log-variance are stacked along channels: [B, 2C, h, w] -> [B, C, h, w]."""
    mean, logvar = moments.float().chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(*LOGVAR_RANGE))
    return mean + std * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)


def scale_latents(latents: torch.Tensor, vae_config) -> torch.Tensor:
    shift = getattr(vae_config, "shift_factor", None)
    if shift is not None:
        latents = latents - shift
    return latents * vae_config.scaling_factor


def snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023): min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v-prediction."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps)
    weights = torch.clamp(snr, max=gamma)
    if scheduler.config.prediction_type == "v_prediction":
        return weights / (snr + 1)
    return weights / snr


def diffusion_loss(predict, latents: torch.Tensor, scheduler, generator: torch.Generator, *, noise_offset: float = 0.0,
                   min_snr_gamma: float | None = None) -> torch.Tensor:
    """The denoising loss of ``predict(noisy_latents, timesteps)`` on ``latents``, Stable Diffusion's training objective."""
    batch, channels = latents.shape[:2]
    device = latents.device
    noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
    if noise_offset:
        noise = noise + noise_offset * torch.randn((batch, channels, 1, 1), generator=generator, device=device, dtype=latents.dtype)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator, device=device).long()
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"cannot train a {prediction_type!r} scheduler (epsilon and v_prediction are supported)")
    prediction = predict(noisy, timesteps)
    if min_snr_gamma is None:
        return F.mse_loss(prediction.float(), target.float())
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=list(range(1, prediction.ndim)))
    return (per_sample * snr_weights(scheduler, timesteps, min_snr_gamma).to(per_sample.device)).mean()


def dropout_masks(batch_size: int, generator: torch.Generator, device, drop_text: float, drop_aus: float, drop_both: float):
    """Exclusive condition dropout per sample (IP-Adapter's recipe): which samples lose their text, their AUs, or both.

    One uniform draw per sample: [0, t) text only, [t, t + a) AUs only, [t + a, t + a + b) both.
    Returns (text dropped, AUs dropped) as bool tensors.
    """
    u = torch.rand((batch_size,), generator=generator, device=device)
    text_only = u < drop_text
    aus_only = (u >= drop_text) & (u < drop_text + drop_aus)
    both = (u >= drop_text + drop_aus) & (u < drop_text + drop_aus + drop_both)
    return text_only | both, aus_only | both


def noisy_intensities(aus: torch.Tensor, known: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Present AUs (known, > 0) plus N(0, sigma), clipped to 0-5; absent and unknown slots stay as they are."""
    if sigma <= 0:
        return aus
    noise = sigma * torch.randn(aus.shape, generator=generator, device=aus.device, dtype=aus.dtype)
    present = known & (aus > 0)
    return torch.where(present, (aus + noise).clamp(0.0, MAX_INTENSITY), aus)


class _DiffusionTask(nn.Module):
    """Latents and text embeddings of a batch, from the cache or from the frozen VAE and text encoder."""

    def __init__(self, unet, vae_config, scheduler, *, vae=None, text_encoder=None, empty_text: torch.Tensor,
                 noise_offset: float = 0.0, min_snr_gamma: float | None = None):
        super().__init__()
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.vae_config = vae_config
        self.scheduler = scheduler
        self.noise_offset = noise_offset
        self.min_snr_gamma = min_snr_gamma
        self.register_buffer("empty_text", empty_text, persistent=False)

    def latents(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        moments = batch.get("latent_moments")
        if moments is None:
            with torch.no_grad():
                pixels = batch["pixel_values"].to(dtype=self.vae.dtype)
                moments = self.vae.encode(pixels).latent_dist.parameters
        return scale_latents(sample_posterior(moments, generator), self.vae_config)

    def text(self, batch: dict) -> torch.Tensor:
        embeds = batch.get("text_embeds")
        if embeds is None:
            with torch.no_grad():
                embeds = self.text_encoder(batch["input_ids"])[0]
        return embeds

    def denoising_loss(self, predict, latents, generator):
        return diffusion_loss(predict, latents, self.scheduler, generator, noise_offset=self.noise_offset, min_snr_gamma=self.min_snr_gamma)


class UNetTask(_DiffusionTask):
    """train-lora: the UNet (its LoRA layers, or all of it) learns to denoise the captioned images.

    ``caption_dropout`` replaces that share of the captions by the empty caption, which classifier-free
    guidance contrasts with at inference.
    """

    def __init__(self, unet, vae_config, scheduler, *, caption_dropout: float = 0.0, **kwargs):
        super().__init__(unet, vae_config, scheduler, **kwargs)
        self.caption_dropout = caption_dropout

    def forward(self, batch: dict, generator: torch.Generator):
        latents = self.latents(batch, generator)
        text = self.text(batch)
        dropped = torch.zeros(latents.shape[0], dtype=torch.bool, device=latents.device)
        if self.caption_dropout:
            dropped = torch.rand((latents.shape[0],), generator=generator, device=latents.device) < self.caption_dropout
            text = torch.where(dropped[:, None, None], self.empty_text.to(text.dtype).expand_as(text), text)

        def predict(noisy, timesteps):
            return self.unet(noisy, timesteps, encoder_hidden_states=text).sample

        loss = self.denoising_loss(predict, latents, generator)
        return loss, {"dropped_text": dropped.sum()}


class AdapterTask(_DiffusionTask):
    """train-adapter: the frozen UNet reads AU tokens through the adapter; only the adapter learns.

    Per sample, exclusively: the caption becomes "" (``drop_text``), the AU tokens become the adapter's
    learned null tokens (``drop_aus``, exactly what the pipeline feeds the unconditional branch), or
    both (``drop_both``). Present AU intensities get N(0, ``au_noise``) first.
    """

    def __init__(self, unet, adapter, vae_config, scheduler, *, drop_text: float = 0.05, drop_aus: float = 0.05,
                 drop_both: float = 0.05, au_noise: float = 0.0, **kwargs):
        super().__init__(unet, vae_config, scheduler, **kwargs)
        self.adapter = adapter
        self.drop_text, self.drop_aus, self.drop_both = drop_text, drop_aus, drop_both
        self.au_noise = au_noise
        adapter.attach(unet)

    def forward(self, batch: dict, generator: torch.Generator):
        latents = self.latents(batch, generator)
        text = self.text(batch)
        size, device = latents.shape[0], latents.device
        aus = noisy_intensities(batch["aus"].float(), batch["known"], self.au_noise, generator)
        text_dropped, aus_dropped = dropout_masks(size, generator, device, self.drop_text, self.drop_aus, self.drop_both)
        text = torch.where(text_dropped[:, None, None], self.empty_text.to(text.dtype).expand_as(text), text)
        tokens = self.adapter(aus, batch["known"])
        tokens = torch.where(aus_dropped[:, None, None], self.adapter.null(size).to(tokens.dtype), tokens)

        def predict(noisy, timesteps):
            return self.unet(noisy, timesteps, encoder_hidden_states=(text, tokens)).sample

        loss = self.denoising_loss(predict, latents, generator)
        return loss, {"dropped_text": text_dropped.sum(), "dropped_aus": aus_dropped.sum()}


def image_gradients(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return images[..., :, 1:] - images[..., :, :-1], images[..., 1:, :] - images[..., :-1, :]


class VAETask(nn.Module):
    """train-vae: reconstruction (L1 or MSE per pixel) + KL + optional edge loss, from one posterior draw."""

    def __init__(self, vae, *, kl_weight: float = 1e-6, reconstruction: str = "l1", edge_weight: float = 0.0):
        super().__init__()
        self.vae = vae
        self.kl_weight = kl_weight
        self.reconstruction = reconstruction
        self.edge_weight = edge_weight

    def forward(self, batch: dict, generator: torch.Generator):
        images = batch["pixel_values"]
        moments = self.vae.encode(images).latent_dist.parameters
        mean, logvar = moments.float().chunk(2, dim=1)
        logvar = logvar.clamp(*LOGVAR_RANGE)
        latents = sample_posterior(moments, generator)
        decoded = self.vae.decode(latents.to(images.dtype)).sample.float()
        target = images.float()
        if self.reconstruction == "l1":
            rec = F.l1_loss(decoded, target)
        else:
            rec = F.mse_loss(decoded, target)
        # KL to N(0, 1), summed over the latent and divided by the pixel count: Stable Diffusion's ratio of the two terms.
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum() / target.numel()
        loss = rec + self.kl_weight * kl
        if self.edge_weight:
            (dx, dy), (tx, ty) = image_gradients(decoded), image_gradients(target)
            loss = loss + self.edge_weight * (F.l1_loss(dx, tx) + F.l1_loss(dy, ty))
        return loss, {"reconstruction": rec.detach(), "kl": kl.detach()}
