"""Architectures for bases trained from scratch (``synfer init-model --preset NAME``).

Each preset gives the configs of a UNet, an AutoencoderKL, a CLIP text encoder (its vocabulary size
comes from the tokenizer) and a noise scheduler. ``world32`` is sized for the procedural world on a
CPU: 32x32 images, an f=2 autoencoder (16x16x4 latents, 0.8M parameters) and a 4.6M-parameter UNet
whose attention runs at 8x8 and 4x4 only. ``tiny`` is :mod:`synfer.models.tiny`'s architecture (the
test preset). Entries are functions, so listing the names loads nothing.
"""

from __future__ import annotations

from ...registry import Registry

PRESETS: Registry = Registry("model preset")

# The noise schedule of Stable Diffusion 1.5 (scaled-linear betas, 1000 steps, epsilon prediction).
SD_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


@PRESETS.register("world32")
def world32() -> dict:
    text_width = 64
    return {
        "resolution": 32,
        "unet": {
            "sample_size": 16,
            "in_channels": 4,
            "out_channels": 4,
            "block_out_channels": [32, 64, 128],
            "layers_per_block": 1,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "cross_attention_dim": text_width,
            "attention_head_dim": 8,
            "norm_num_groups": 16,
        },
        "vae": {
            "sample_size": 32,
            "in_channels": 3,
            "out_channels": 3,
            "block_out_channels": [32, 64],
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
            "latent_channels": 4,
            "layers_per_block": 2,
            "norm_num_groups": 32,
        },
        "text_encoder": {
            "hidden_size": text_width,
            "intermediate_size": 4 * text_width,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "projection_dim": text_width,
        },
        "scheduler": dict(SD_SCHEDULER),
    }


@PRESETS.register("tiny")
def tiny() -> dict:
    from ...models.tiny import tiny_components

    parts = tiny_components(seed=0)
    text = parts["text_encoder"].config
    return {
        "resolution": 32,
        "unet": {k: v for k, v in parts["unet"].config.items() if not k.startswith("_")},
        "vae": {k: v for k, v in parts["vae"].config.items() if not k.startswith("_")},
        "text_encoder": {
            "hidden_size": text.hidden_size,
            "intermediate_size": text.intermediate_size,
            "num_hidden_layers": text.num_hidden_layers,
            "num_attention_heads": text.num_attention_heads,
            "max_position_embeddings": text.max_position_embeddings,
            "projection_dim": text.projection_dim,
        },
        "scheduler": {"_class_name": "DDIMScheduler", **{k: v for k, v in parts["scheduler"].config.items() if not k.startswith("_")}},
    }
