"""The Stable Diffusion 1.5 architecture, for shape checks and parameter counts without weights.

The configs match ``stable-diffusion-v1-5``'s ``unet/``, ``vae/`` and ``text_encoder/`` folders. Built on
the ``meta`` device they take no memory, which is how tests check that synfer's adapter fits SD1.5.
"""

from __future__ import annotations

import torch

SD15_HUB_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"

SD15_UNET_CONFIG = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

SD15_VAE_CONFIG = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

SD15_TEXT_ENCODER_CONFIG = {
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "vocab_size": 49408,
}


def sd15_unet(device: str | torch.device = "meta"):
    """The SD1.5 UNet with random (or, on ``meta``, no) weights."""
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        return UNet2DConditionModel(**SD15_UNET_CONFIG)


def sd15_vae(device: str | torch.device = "meta"):
    from diffusers import AutoencoderKL

    with torch.device(device):
        return AutoencoderKL(**SD15_VAE_CONFIG)


def sd15_text_encoder(device: str | torch.device = "meta"):
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device(device):
        return CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER_CONFIG))
