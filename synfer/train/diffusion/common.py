"""Set-up the UNet stages share: the base's frozen parts, the empty caption, the latent and text caches."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import ModelLoadError
from ...models.fingerprint import json_sha256, module_sha256
from ...progress import Reporter
from .cache import PREPROCESSING, TensorCache, default_cache_dir, encoder_key, fill
from .components import check_base, untrained_components
from .data import TrainingExamples, prepare_image, text_key, tokenize

CACHE_BATCH = 16


def native_resolution(base: str | Path) -> int:
    """The image size a base was made for: the UNet's sample size times the VAE's downsampling factor."""
    unet = json.loads((Path(base) / "unet" / "config.json").read_text())
    vae = json.loads((Path(base) / "vae" / "config.json").read_text())
    return int(unet.get("sample_size", 64)) * 2 ** (len(vae.get("block_out_channels", [0, 0, 0, 0])) - 1)


def check_trained_base(base: str | Path, *, needs_unet: bool, option: str = "--base") -> Path:
    """An SD-shaped base whose VAE (and, when ``needs_unet``, UNet) holds trained weights."""
    root = check_base(base, option)
    untrained = untrained_components(root)
    if "vae" in untrained:
        raise ModelLoadError(
            f"the VAE of {option} {base} is untrained (made by synfer init-model): train it with synfer train-vae and give "
            "that run's model/ folder as --base"
        )
    if needs_unet and "unet" in untrained:
        raise ModelLoadError(
            f"the UNet of {option} {base} is untrained (made by synfer init-model): train it with synfer train-lora --full, "
            "and give that run as --lora"
        )
    return root


@torch.no_grad()
def empty_text(text_encoder, tokenizer, device) -> torch.Tensor:
    """The text embedding of the empty caption [tokens, width]: what dropped captions become, as at inference."""
    return text_encoder(tokenize(tokenizer, [""]).to(device))[0][0]


@dataclass
class Caches:
    latents: TensorCache | None = None
    texts: TensorCache | None = None
    encoded_latents: int = 0
    encoded_texts: int = 0


def build_caches(examples: TrainingExamples, vae, text_encoder, tokenizer, *, cache_dir: str | None, accelerator,
                 reporter: Reporter) -> Caches:
    """Fill the latent and text caches for ``examples`` (each process encodes its share) and attach them."""
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    device = accelerator.device
    latents = TensorCache(root, "latents", encoder_key(
        kind="latents", vae=module_sha256(vae), dtype=str(vae.dtype), resolution=examples.resolution, preprocessing=PREPROCESSING,
    ))
    texts = TensorCache(root, "text", encoder_key(
        kind="text", text_encoder=module_sha256(text_encoder), tokenizer=json_sha256(tokenizer.get_vocab()), dtype=str(text_encoder.dtype),
        max_length=tokenizer.model_max_length,
    ))
    flips = (False, True) if examples.random_flip else (False,)
    wanted = {examples.latent_key(j, flip): (j, flip) for j in range(len(examples)) for flip in flips}
    captions = {text_key(c): c for c in [*examples.captions, ""]}
    processes, rank = accelerator.num_processes, accelerator.process_index
    mine_latents = latents.missing(wanted)[rank::processes]
    mine_texts = texts.missing(captions)[rank::processes]

    def encode_images(keys: list[str]) -> torch.Tensor:
        pixels = torch.stack([
            prepare_image(examples.dataset[examples.positions[wanted[k][0]]].image, examples.resolution, wanted[k][1]) for k in keys
        ])
        return vae.encode(pixels.to(device=device, dtype=vae.dtype)).latent_dist.parameters

    def encode_texts(keys: list[str]) -> torch.Tensor:
        return text_encoder(tokenize(tokenizer, [captions[k] for k in keys]).to(device))[0]

    total = len(mine_latents) + len(mine_texts)
    caches = Caches(latents, texts)
    with reporter.progress("caching latents", total=total, unit="item", show=accelerator.is_local_main_process and total > 0) as advance:
        caches.encoded_latents = fill(latents, mine_latents, encode_images, CACHE_BATCH, advance)
        caches.encoded_texts = fill(texts, mine_texts, encode_texts, CACHE_BATCH * 4, advance)
    accelerator.wait_for_everyone()
    latents.refresh()
    texts.refresh()
    examples.latents, examples.texts = latents, texts
    return caches
