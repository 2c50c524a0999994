"""``init_model()``: an untrained, Stable-Diffusion-shaped base to train from scratch; what ``synfer init-model`` runs.

```
BASE/  model_index.json, unet/ (random), vae/ (random), text_encoder/ (random, stays frozen), tokenizer/ (the
       captions' vocabulary), scheduler/ (SD1.5's noise schedule), synfer_init.json (what is untrained, the configs)
```

The text encoder is never trained: a frozen random CLIP text model still maps each caption to a
distinct, deterministic sequence of vectors, which the UNet learns to read, as the tiny test model
does. The UNet and the VAE are listed as untrained in ``synfer_init.json`` until ``train-vae``
(its ``RUN/model/``) and ``train-lora --full`` (its ``--merge`` pipeline) replace them; the stages
refuse to build on them before that.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ...data.run_folder import RunFolder, replace_dir
from ...progress import Reporter, SilentReporter
from .components import INIT_MARKER, load_config_file
from .config import InitModelConfig


@dataclass
class InitResult:
    out: Path
    parameters: dict[str, int]
    vocabulary: int
    resolution: int


def read_captions(path: str, layout: str | None = None, caption_column: str = "caption") -> list[str]:
    """Captions from a text file (one a line) or an image-caption dataset."""
    file = Path(path)
    if file.is_file() and file.suffix in (".txt", ".text"):
        return [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    from .data import dataset_captions, open_training_data

    return dataset_captions(open_training_data(path, layout=layout, caption_column=caption_column))


def init_model(config: InitModelConfig, reporter: Reporter | None = None) -> InitResult:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .presets import PRESETS
    from .tokenizer import caption_tokenizer

    reporter = reporter or SilentReporter()
    preset = PRESETS[config.preset]()
    for part, override in (("unet", config.unet_config), ("vae", config.vae_config), ("text_encoder", config.text_config)):
        if override is not None:
            preset[part] = {**preset[part], **load_config_file(override, part)}
    captions = read_captions(config.captions, config.data_layout, config.caption_column) if config.captions else []
    if captions or config.preset != "tiny":
        tokenizer = caption_tokenizer(captions)
    else:
        from ...models.tiny import tiny_tokenizer

        tokenizer = tiny_tokenizer()
    if preset["unet"]["cross_attention_dim"] != preset["text_encoder"]["hidden_size"]:
        preset["unet"]["cross_attention_dim"] = preset["text_encoder"]["hidden_size"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        unet = UNet2DConditionModel(**preset["unet"])
        vae = AutoencoderKL(**preset["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, **preset["text_encoder"],
        ))
    scheduler = DDIMScheduler.from_config({k: v for k, v in preset["scheduler"].items() if not k.startswith("_")})
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    out = Path(config.out)
    tmp = RunFolder.temporary(out)
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    parameters = {name: sum(p.numel() for p in module.parameters()) for name, module in
                  (("unet", unet), ("vae", vae), ("text_encoder", text_encoder))}
    resolution = int(unet.config.sample_size) * 2 ** (len(vae.config.block_out_channels) - 1)
    info = {
        "format": "synfer-init",
        "untrained": ["unet", "vae"],
        "frozen_random": ["text_encoder"],
        "preset": config.preset,
        "seed": config.seed,
        "resolution": resolution,
        "parameters": parameters,
        "vocabulary": len(tokenizer),
        "captions": config.captions,
        "configs": {k: preset[k] for k in ("unet", "vae", "text_encoder", "scheduler")},
    }
    (tmp / INIT_MARKER).write_text(json.dumps(info, indent=2, sort_keys=True, default=list) + "\n")
    replace_dir(tmp, out)
    reporter.log(f"{out}: untrained {config.preset} base, {resolution}px, UNet {parameters['unet'] / 1e6:.1f}M, "
                 f"VAE {parameters['vae'] / 1e6:.1f}M, text encoder {parameters['text_encoder'] / 1e6:.2f}M (frozen), "
                 f"{len(tokenizer)} tokens")
    return InitResult(out, parameters, len(tokenizer), resolution)
