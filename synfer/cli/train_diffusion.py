"""``synfer init-model``, ``train-vae``, ``train-lora``, ``train-adapter``, ``build-model``: make a synfer model.

Each command builds its config (``synfer.train.diffusion.config``: defaults, checks and messages live
there) and calls the stage's library function with the rich reporter. The options of the one
training loop are declared once, below, and given to the three training commands.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import Any

import typer

from ..train.diffusion.config import (
    AU_POLICIES,
    LR_SCHEDULES,
    PRECISIONS,
    RECONSTRUCTION_LOSSES,
    TRACKERS,
    AdapterConfig,
    BuildModelConfig,
    InitModelConfig,
    LoraConfig,
    VaeConfig,
)
from ..train.diffusion.presets import PRESETS
from . import app
from ._common import RichReporter, console, err_console, quiet_libraries

_DATA = ("Image-caption data: a parquet file or folder (FEText), an image folder with metadata.jsonl or .txt captions, a webdataset, "
         "a synfer dataset.")
_BASE = "A Stable-Diffusion-shaped folder (SD1.5, a synfer model, or synfer init-model's output)."
_LORA = "A train-lora run (its LoRA is fused, or its --full unet/ replaces the base's), or a pytorch_lora_weights.safetensors."


def _default(cls, name: str):
    for f in fields(cls):
        if f.name == name:
            if f.default is not MISSING:
                return f.default
            return ...
    raise KeyError(name)


def _comma_ints(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        from ..errors import ConfigError

        raise ConfigError(f"cannot read {text!r}: give whole numbers separated by commas, e.g. 0,1,2") from None


def _comma_words(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(t for t in text.replace(" ", "").split(",") if t)


# (field, type, flags, help, converter from the command line's value to the config's): the shared loop options.
Spec = tuple[str, Any, tuple[str, ...], str, Callable | None]
LOOP: list[Spec] = [
    ("out", str, ("--out", "-o"), "Run folder (record, metrics.jsonl, validation grids, checkpoints, outputs).", None),
    ("data", str, ("--data",), _DATA, None),
    ("data_layout", str | None, ("--data-layout",), "Force the data layout (default: detected).", None),
    ("image_column", str, ("--image-column",), "Parquet/webdataset image column.", None),
    ("caption_column", str, ("--caption-column",), "Caption column (image folders: metadata's text or caption).", None),
    ("id_column", str | None, ("--id-column",), "Column with unique image ids (default: file paths).", None),
    ("resolution", int | None, ("--resolution",), "Training image size (default: the base's native size, SD1.5: 512).", None),
    ("random_flip", bool, ("--random-flip",), "Mirror half the images (the adapter also swaps left/right AUs).", None),
    ("batch_size", int, ("--batch-size",), "Images per batch per process.", None),
    ("gradient_accumulation_steps", int, ("--gradient-accumulation-steps",), "Batches per optimizer step.", None),
    ("learning_rate", float, ("--learning-rate", "--lr"), "Peak AdamW learning rate.", None),
    ("lr_scheduler", str, ("--lr-scheduler",), f"{', '.join(LR_SCHEDULES)} (after --lr-warmup-steps of linear warm-up).", None),
    ("lr_warmup_steps", int, ("--lr-warmup-steps",), "Steps of linear warm-up.", None),
    ("adam_weight_decay", float, ("--weight-decay",), "AdamW weight decay.", None),
    ("max_grad_norm", float, ("--max-grad-norm",), "Clip the gradient norm of the trainable weights to this (0: no clipping).", None),
    ("max_train_steps", int | None, ("--max-train-steps",), "Optimizer steps (overrides --num-train-epochs).", None),
    ("num_train_epochs", int, ("--num-train-epochs", "--epochs"), "Passes over the data.", None),
    ("mixed_precision", str, ("--mixed-precision",), f"{', '.join(PRECISIONS)} (auto: bf16/fp16 on a GPU, no on the CPU).", None),
    ("ema_decay", float | None, ("--ema-decay",), "Keep an EMA of the trainable weights (validated and saved), e.g. 0.999.", None),
    ("validation_every", int, ("--validation-every",), "Steps between validation grids (0: only at the end).", None),
    ("validation_seeds", str, ("--validation-seeds",), "Seeds of the validation images, e.g. 0,1.", _comma_ints),
    ("validation_inference_steps", int, ("--validation-inference-steps",), "Sampling steps of validation images.", None),
    ("validation_guidance_scale", float, ("--validation-guidance-scale",), "Classifier-free guidance of validation images.", None),
    ("checkpoint_every", int, ("--checkpoint-every",), "Steps between checkpoints.", None),
    ("keep_checkpoints", int, ("--keep-checkpoints",), "Checkpoints kept (older ones are deleted).", None),
    ("log_every", int, ("--log-every",), "Steps between rows of metrics.jsonl.", None),
    ("report_to", str, ("--report-to",), f"{', '.join(TRACKERS)}: also log through accelerate's tracker.", None),
    ("workers", int, ("--workers",), "DataLoader processes that decode images.", None),
    ("seed", int, ("--seed",), "Seed of the data order, noise, dropout and initialisation.", None),
    ("cpu", bool, ("--cpu",), "Train on the CPU even when a GPU is present.", None),
    ("resume", bool, ("--resume",), "Continue the run in --out from its latest checkpoint (the same options are required).", None),
]
UNET: list[Spec] = [
    ("base", str, ("--base",), _BASE, None),
    ("min_snr_gamma", float | None, ("--snr-gamma",), "Min-SNR-gamma loss weighting (5 is the paper's).", None),
    ("noise_offset", float, ("--noise-offset",), "Noise offset (e.g. 0.05): darker and brighter images become reachable.", None),
    ("gradient_checkpointing", bool, ("--gradient-checkpointing",), "Recompute UNet activations in the backward pass (less memory).", None),
    ("cache_latents", bool, ("--cache-latents",), "Encode images and captions once, into safetensors shards reused across runs.", None),
    ("cache_dir", str | None, ("--cache-dir",),
     "Where --cache-latents keeps its shards (default $SYNFER_CACHE/diffusion or ~/.cache/synfer/diffusion).", None),
]


def _signature(cls, specs: list[Spec]) -> tuple[inspect.Signature, dict]:
    parameters, annotations = [], {}
    for name, kind, flags, help_text, _ in specs:
        default = _default(cls, name)
        if kind is bool:
            default = bool(default) if default is not ... else False
        if name == "validation_seeds":
            default = ",".join(str(s) for s in default)
        if kind == (list[str] | None):
            default = None  # a repeatable option; left out, the config's default counts
        elif isinstance(default, tuple):
            default = ",".join(default)
        option = typer.Option(default, *flags, help=help_text, show_default=default not in (None, ...))
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind))
        annotations[name] = kind
    return inspect.Signature(parameters), annotations


def _command(name: str, cls, specs: list[Spec], run: Callable[[Any], None], doc: str):
    """Register ``synfer NAME`` whose options are ``specs``; ``run(config)`` gets the config built from them."""
    converters = {spec[0]: spec[4] for spec in specs if spec[4] is not None}

    def command(**options) -> None:
        values = {k: converters[k](v) if k in converters and v is not None else v for k, v in options.items()}
        run(cls(**{k: v for k, v in values.items() if v is not None or _default(cls, k) is None}))

    signature, annotations = _signature(cls, specs)
    command.__signature__ = signature
    command.__annotations__ = {**annotations, "return": None}
    command.__doc__ = doc
    command.__name__ = name.replace("-", "_")
    app.command(name)(command)
    return command


def _main_process() -> bool:
    """Whether this is the process that speaks (one line per run, not one per GPU, under accelerate launch)."""
    from accelerate import PartialState

    return PartialState().is_main_process


def _interrupted(out: str) -> None:
    err_console.print(f"interrupted: rerun with --resume to continue {out} from its latest checkpoint")
    raise typer.Exit(130)


# -- init-model -----------------------------------------------------------------------------------------

INIT: list[Spec] = [
    ("out", str, ("--out", "-o"), "Folder for the untrained base.", None),
    ("preset", str, ("--preset",), f"Architecture: {PRESETS.choices()}.", None),
    ("captions", str | None, ("--captions",), "Caption data (or a .txt file, one caption a line): the tokenizer's vocabulary.", None),
    ("data_layout", str | None, ("--data-layout",), "Force the caption data's layout.", None),
    ("caption_column", str, ("--caption-column",), "Caption column of the caption data.", None),
    ("unet_config", str | None, ("--unet-config",), "JSON overriding the preset's UNet config.", None),
    ("vae_config", str | None, ("--vae-config",), "JSON overriding the preset's AutoencoderKL config.", None),
    ("text_config", str | None, ("--text-config",), "JSON overriding the preset's text encoder config.", None),
    ("seed", int, ("--seed",), "Seed of the random weights.", None),
    ("overwrite", bool, ("--overwrite",), "Replace a non-empty --out.", None),
]


def _run_init(config: InitModelConfig) -> None:
    from ..train.diffusion.new_base import init_model

    quiet_libraries()
    result = init_model(config, RichReporter())
    console.print(f"{result.out}: untrained base at {result.resolution}px; next: synfer train-vae --base {result.out} --data ...")


_command("init-model", InitModelConfig, INIT, _run_init,
         "Write an untrained Stable-Diffusion-shaped base (UNet, VAE, frozen text encoder, caption tokenizer) to train from scratch.")


# -- train-vae ------------------------------------------------------------------------------------------

VAE: list[Spec] = LOOP + [
    ("base", str, ("--base",), _BASE, None),
    ("init", str | None, ("--init",), "An AutoencoderKL config (file or folder): start from random weights.", None),
    ("kl_weight", float, ("--kl-weight",), "Weight of the KL term (Stable Diffusion's 1e-6).", None),
    ("reconstruction", str, ("--reconstruction",), f"Per-pixel loss: {', '.join(RECONSTRUCTION_LOSSES)}.", None),
    ("edge_weight", float, ("--edge-weight",), "Weight of an L1 loss on image differences (sharper edges).", None),
    ("val_data", str | None, ("--val-data",), "Held-out images for PSNR/MAE (default: a --val-fraction of --data).", None),
    ("val_fraction", float, ("--val-fraction",), "Share of --data held out (by id) when --val-data is not given.", None),
    ("val_images", int, ("--val-images",), "Held-out images measured at each validation.", None),
    ("scaling_images", int, ("--scaling-images",), "Training images that measure the latent scaling factor.", None),
]


def _run_vae(config: VaeConfig) -> None:
    from ..train.diffusion.vae import train_vae

    quiet_libraries()
    try:
        result = train_vae(config, RichReporter())
    except KeyboardInterrupt:
        _interrupted(config.out)
    if not _main_process():
        return
    quality = f"held-out PSNR {result.psnr:.2f} dB, MAE {result.mae:.4f}" if result.psnr is not None else "no held-out images"
    console.print(f"{result.out}: {result.steps} steps; {quality}; scaling factor {result.scaling_factor:.5f}; "
                  f"base with this VAE: {result.model}")


_command("train-vae", VaeConfig, VAE, _run_vae,
         "Train (or fine-tune) the base's autoencoder; reports reconstruction PSNR/MAE and writes RUN/model, the base with it.")


# -- train-lora -----------------------------------------------------------------------------------------

LORA: list[Spec] = LOOP + UNET + [
    ("rank", int, ("--rank",), "LoRA rank.", None),
    ("lora_alpha", float | None, ("--lora-alpha",), "LoRA alpha (default: the rank, scale 1).", None),
    ("target_modules", str, ("--target-modules",), "UNet modules that get LoRA layers, comma-separated.", _comma_words),
    ("full", bool, ("--full",), "Train the whole UNet instead of a LoRA.", None),
    ("init", str | None, ("--init",), "A UNet config (file or folder): start from random weights (needs --full).", None),
    ("caption_dropout", float | None, ("--caption-dropout",), "Share of captions replaced by '' (default: 0.1 from scratch, else 0).",
     None),
    ("merge", bool, ("--merge",), "Also write RUN/pipeline: the base with the trained UNet.", None),
    ("validation_prompts", list[str] | None, ("--validation-prompt",), "Validation prompt (repeat; default: 4 captions).", tuple),
]


def _run_lora(config: LoraConfig) -> None:
    from ..train.diffusion.lora import train_lora

    quiet_libraries()
    try:
        result = train_lora(config, RichReporter())
    except KeyboardInterrupt:
        _interrupted(config.out)
    if not _main_process():
        return
    loss = f", final loss {result.final_loss:.4f}" if result.final_loss is not None else ""
    console.print(f"{result.out}: {result.steps} steps{loss}; weights {result.weights}"
                  + (f"; merged pipeline {result.pipeline}" if result.pipeline else ""))


_command("train-lora", LoraConfig, LORA, _run_lora,
         "SynFER's stage 1: the UNet learns face captions (LoRA on the attention projections, or --full).")


# -- train-adapter --------------------------------------------------------------------------------------

ADAPTER: list[Spec] = LOOP + UNET + [
    ("lora", str | None, ("--lora",), _LORA, None),
    ("aus", str | None, ("--aus",), "An annotate-aus run folder or AU table (default: DATA/aus.parquet if present).", None),
    ("num_tokens", int, ("--num-tokens",), "AU tokens per image.", None),
    ("hidden_dim", int, ("--hidden-dim",), "Width of the AU encoder's MLP.", None),
    ("init_adapter", str | None, ("--init-adapter",), "Start from this adapter folder instead of a new one.", None),
    ("drop_text", float, ("--drop-text",), "Share of samples whose caption becomes '' (IP-Adapter: 0.05).", None),
    ("drop_aus", float, ("--drop-aus",), "Share whose AUs become the learned null tokens.", None),
    ("drop_both", float, ("--drop-both",), "Share that lose both (all three are exclusive).", None),
    ("au_noise", float, ("--au-noise",), "Std of Gaussian noise on present AU intensities (FineFace: 0.2).", None),
    ("au_policy", str, ("--au-policy",), f"Scores to intensities: {', '.join(AU_POLICIES)}.", None),
    ("au_threshold", float | None, ("--au-threshold",), "Threshold policy: cut-off (default: the table's suggested one, else 0.5).", None),
    ("present_intensity", float, ("--present-intensity",), "Threshold policy: intensity of a present AU.", None),
    ("validation_prompt", str | None, ("--validation-prompt",), "Prompt of the AU sweep grid (default: the first caption).", None),
    ("validation_aus", list[str] | None, ("--validation-aus",), "An AU set swept 0..5 in the grid (repeat).", tuple),
]


def _run_adapter(config: AdapterConfig) -> None:
    from ..train.diffusion.adapter import train_adapter

    quiet_libraries()
    try:
        result = train_adapter(config, RichReporter())
    except KeyboardInterrupt:
        _interrupted(config.out)
    if not _main_process():
        return
    loss = f", final loss {result.final_loss:.4f}" if result.final_loss is not None else ""
    console.print(f"{result.out}: {result.steps} steps on {result.images} images ({result.left_out} without AUs left out){loss}; "
                  f"adapter {result.adapter}")


_command("train-adapter", AdapterConfig, ADAPTER, _run_adapter,
         "SynFER's stage 2: train the AU adapter on the frozen (LoRA-fused) UNet from images, captions and an AU table.")


# -- build-model ----------------------------------------------------------------------------------------

BUILD: list[Spec] = [
    ("base", str, ("--base",), _BASE, None),
    ("lora", str | None, ("--lora",), _LORA, None),
    ("adapter", str, ("--adapter",), "A train-adapter run folder (or an au_adapter folder).", None),
    ("out", str, ("--out", "-o"), "The model folder to write.", None),
    ("overwrite", bool, ("--overwrite",), "Replace a non-empty --out.", None),
    ("allow_mismatch", bool, ("--allow-mismatch",), "Build even when the adapter was trained with another base or LoRA.", None),
]


def _run_build(config: BuildModelConfig) -> None:
    from ..train.diffusion.build import build_model

    quiet_libraries()
    result = build_model(config, RichReporter())
    console.print(f"{result.out}: synfer model; generate with: synfer generate --model {result.out} --n 16 --out DATASET")


_command("build-model", BuildModelConfig, BUILD, _run_build,
         "Fuse the LoRA into the base, add the AU adapter, and write a model folder for synfer generate --model.")
