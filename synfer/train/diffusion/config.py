"""The options of the diffusion training stages, one frozen config per command.

``synfer init-model`` (:class:`InitModelConfig`), ``synfer train-vae`` (:class:`VaeConfig`),
``synfer train-lora`` (:class:`LoraConfig`), ``synfer train-adapter`` (:class:`AdapterConfig`) and
``synfer build-model`` (:class:`BuildModelConfig`). The three training configs share
:class:`TrainOptions`, the options of the one training loop (:mod:`synfer.train.diffusion.loop`).
Every default, check and message lives here and runs when a config is built, before any model
loads; this module imports no torch, so the command line can read the defaults at start-up.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ...errors import ConfigError
from .. import MIXED_PRECISIONS

PRECISIONS = ("auto",) + MIXED_PRECISIONS  # auto: bf16 (else fp16) on a GPU, no on the CPU
LR_SCHEDULES = ("constant", "cosine")
TRACKERS = {"none": (), "tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}
AU_POLICIES = ("auto", "intensity", "threshold", "scale")
RECONSTRUCTION_LOSSES = ("l1", "mse")
DEFAULT_LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
DEFAULT_VALIDATION_AUS = ("AU6,AU12", "AU1,AU4,AU15", "AU1,AU2,AU5,AU26", "AU4,AU5,AU7,AU23")


def _positive(config, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"--{name.replace('_', '-')} must be a whole number of at least 1, got {value!r}")


def _fraction(name: str, value: float, *, upper_open: bool = True) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0.0 and (value < 1.0 if upper_open else value <= 1.0)):
        raise ConfigError(f"--{name.replace('_', '-')} must be a fraction in [0, 1), got {value!r}")


def tracker_packages(report_to: str) -> tuple[str, ...]:
    """The packages one of which ``--report-to`` needs (an unknown tracker is the usual one-line error)."""
    if report_to not in TRACKERS:
        raise ConfigError(f"unknown --report-to {report_to!r} (accepted: {', '.join(TRACKERS)})")
    return TRACKERS[report_to]


def check_tracker(report_to: str) -> None:
    """A clear line when the tracker's package is missing (accelerate would silently drop the tracker)."""
    packages = tracker_packages(report_to)
    if packages and not any(importlib.util.find_spec(name) is not None for name in packages):
        raise ConfigError(f"--report-to {report_to} needs the {packages[0]} package, which is not installed: pip install {packages[0]}")


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """The options of the one diffusion training loop, shared by train-vae, train-lora and train-adapter.

    ``resolution`` None is the base model's native size (SD1.5: 512). ``max_train_steps`` wins over
    ``num_train_epochs``. ``mixed_precision`` "auto" is bf16 (fp16 where bf16 is missing) on a GPU and
    "no" on the CPU; trainable weights stay float32 in every case. ``cache_dir`` None is
    ``$SYNFER_CACHE/diffusion`` or ``~/.cache/synfer/diffusion``, shared by runs on the same data.
    """

    out: str
    data: str | None = None
    data_layout: str | None = None
    image_column: str = "image"
    caption_column: str = "caption"
    id_column: str | None = None
    resolution: int | None = None
    random_flip: bool = False
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    max_train_steps: int | None = None
    num_train_epochs: int = 1
    mixed_precision: str = "auto"
    ema_decay: float | None = None
    cache_latents: bool = False
    cache_dir: str | None = None
    validation_every: int = 500
    validation_seeds: tuple[int, ...] = (0, 1)
    validation_inference_steps: int = 25
    validation_guidance_scale: float = 7.5
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    report_to: str = "none"
    workers: int = 0
    seed: int = 0
    cpu: bool = False
    resume: bool = False

    def __post_init__(self):
        object.__setattr__(self, "validation_seeds", tuple(int(s) for s in self.validation_seeds))
        if not str(self.out).strip():
            raise ConfigError("--out must name a run folder")
        _positive(self, "batch_size", "gradient_accumulation_steps", "max_train_steps", "num_train_epochs", "checkpoint_every",
                  "keep_checkpoints", "log_every", "validation_inference_steps", "resolution")
        if self.resolution is not None and self.resolution % 8:
            raise ConfigError(f"--resolution must be a multiple of 8, got {self.resolution}")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ConfigError(f"--learning-rate must be a positive number, got {self.learning_rate!r}")
        if self.lr_scheduler not in LR_SCHEDULES:
            raise ConfigError(f"unknown --lr-scheduler {self.lr_scheduler!r} (accepted: {', '.join(LR_SCHEDULES)})")
        if self.lr_warmup_steps < 0 or self.validation_every < 0 or self.workers < 0:
            raise ConfigError("--lr-warmup-steps, --validation-every and --workers must be 0 or more")
        if not 0 <= self.adam_beta1 < 1 or not 0 <= self.adam_beta2 < 1 or self.adam_weight_decay < 0 or self.adam_epsilon <= 0:
            raise ConfigError("AdamW needs betas in [0, 1), a weight decay >= 0 and a positive epsilon")
        if not (self.max_grad_norm >= 0 and math.isfinite(self.max_grad_norm)):
            raise ConfigError(f"--max-grad-norm must be 0 (no clipping) or positive, got {self.max_grad_norm!r}")
        if self.mixed_precision not in PRECISIONS:
            raise ConfigError(f"unknown --mixed-precision {self.mixed_precision!r} (accepted: {', '.join(PRECISIONS)})")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"--ema-decay must lie strictly between 0 and 1, got {self.ema_decay}")
        if not self.validation_seeds:
            raise ConfigError("--validation-seeds needs at least one seed")
        if self.seed < 0:
            raise ConfigError(f"--seed must be 0 or more, got {self.seed}")
        check_tracker(self.report_to)

    # Options that decide nothing about the weights a run ends with: they may change on --resume.
    RESUMABLE = ("out", "resume", "checkpoint_every", "keep_checkpoints", "log_every", "report_to", "workers", "validation_every",
                 "validation_seeds", "validation_inference_steps", "validation_guidance_scale", "validation_prompts",
                 "validation_aus", "validation_prompt", "cache_dir", "cache_latents")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known})


@dataclass(frozen=True, kw_only=True)
class DiffusionOptions(TrainOptions):
    """What the UNet stages add: the noise objective's options and the base model.

    ``min_snr_gamma`` weights each timestep's loss by min(SNR, gamma) / SNR (Hang et al. 2023; 5 is
    their choice); ``noise_offset`` adds offset * N(0, 1) per image and channel to the noise (lets a
    model make darker and brighter images); ``gradient_checkpointing`` recomputes the UNet's
    activations in the backward pass (less memory, about a third more time).
    """

    base: str
    min_snr_gamma: float | None = None
    noise_offset: float = 0.0
    gradient_checkpointing: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.data is None:
            raise ConfigError("--data is needed: an image-caption dataset (parquet, image folder, webdataset or synfer dataset)")
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0:
            raise ConfigError(f"--snr-gamma must be positive, got {self.min_snr_gamma}")
        if not 0 <= self.noise_offset < 1:
            raise ConfigError(f"--noise-offset must lie in [0, 1), got {self.noise_offset}")


@dataclass(frozen=True, kw_only=True)
class LoraConfig(DiffusionOptions):
    """``synfer train-lora``: SynFER's stage 1, the UNet learns face captions.

    LoRA (``rank``, ``lora_alpha`` (None: = rank), ``target_modules``) on the UNet's attention
    projections, or ``full`` fine-tuning. ``init`` (a UNet ``config.json`` or a folder holding one)
    starts the UNet from that config with random weights, which needs ``full``. ``caption_dropout``
    None is 0.1 for a UNet trained from scratch (its classifier-free guidance needs an unconditional
    model) and 0 for fine-tuning. ``merge`` also writes ``RUN/pipeline/``, the base with the trained UNet.
    """

    rank: int = 4
    lora_alpha: float | None = None
    target_modules: tuple[str, ...] = DEFAULT_LORA_TARGETS
    full: bool = False
    init: str | None = None
    caption_dropout: float | None = None
    merge: bool = False
    validation_prompts: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        object.__setattr__(self, "validation_prompts", tuple(self.validation_prompts))
        super().__post_init__()
        _positive(self, "rank")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise ConfigError(f"--lora-alpha must be positive, got {self.lora_alpha}")
        if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
            raise ConfigError("--target-modules needs at least one module name such as to_q, to_k, to_v, to_out.0")
        if self.init is not None and not self.full:
            raise ConfigError("--init starts the UNet from random weights, so it trains the whole UNet: add --full")
        if self.init is not None and not Path(self.init).exists():
            raise ConfigError(f"--init {self.init} does not exist (give a UNet config.json or a folder with one)")
        if self.caption_dropout is not None:
            _fraction("caption_dropout", self.caption_dropout)


@dataclass(frozen=True, kw_only=True)
class AdapterConfig(DiffusionOptions):
    """``synfer train-adapter``: SynFER's stage 2, the AU adapter learns AUs while the UNet stays frozen.

    ``lora``: a train-lora run (its LoRA is fused into the base UNet, or its fully trained ``unet/``
    replaces it), a folder with ``pytorch_lora_weights.safetensors``, or that file. ``aus``: an
    annotate-aus run folder (its ``aus.parquet``) or an AU table file; None uses ``DATA/aus.parquet``
    when there is one (``synfer world make`` writes it).

    Classifier-free-guidance dropout is exclusive per sample (IP-Adapter's recipe): ``drop_text``
    (the caption becomes ""), ``drop_aus`` (the AU tokens become the adapter's learned null tokens,
    as at inference) and ``drop_both``. ``au_noise``: N(0, sigma) added to present AUs, then clipped to
    0-5 (FineFace uses 0.2). ``au_policy``: how scores become intensities: ``intensity`` (as they are),
    ``threshold`` (at ``au_threshold``, default the table's suggested one, else 0.5, to
    ``present_intensity``), ``scale`` (probabilities x 5); ``auto`` is ``intensity`` for intensity
    tables and ``threshold`` for probabilities.
    """

    lora: str | None = None
    aus: str | None = None
    num_tokens: int = 4
    hidden_dim: int = 1024
    init_adapter: str | None = None
    drop_text: float = 0.05
    drop_aus: float = 0.05
    drop_both: float = 0.05
    au_noise: float = 0.2
    au_policy: str = "auto"
    au_threshold: float | None = None
    present_intensity: float = 3.0
    validation_prompt: str | None = None
    validation_aus: tuple[str, ...] = DEFAULT_VALIDATION_AUS

    def __post_init__(self):
        object.__setattr__(self, "validation_aus", tuple(self.validation_aus))
        super().__post_init__()
        _positive(self, "num_tokens", "hidden_dim")
        for name in ("drop_text", "drop_aus", "drop_both"):
            _fraction(name, getattr(self, name))
        if self.drop_text + self.drop_aus + self.drop_both >= 1:
            raise ConfigError("--drop-text, --drop-aus and --drop-both are exclusive shares of the samples and must sum to less than 1")
        if not (self.au_noise >= 0 and math.isfinite(self.au_noise)):
            raise ConfigError(f"--au-noise must be 0 or a positive standard deviation, got {self.au_noise}")
        if self.au_policy not in AU_POLICIES:
            raise ConfigError(f"unknown --au-policy {self.au_policy!r} (accepted: {', '.join(AU_POLICIES)})")
        if self.au_threshold is not None and not 0 < self.au_threshold <= 5:
            raise ConfigError(f"--au-threshold must lie in (0, 5], got {self.au_threshold}")
        if not 0 < self.present_intensity <= 5:
            raise ConfigError(f"--present-intensity must lie in (0, 5], got {self.present_intensity}")
        if not self.validation_aus:
            raise ConfigError("--validation-aus needs at least one AU set such as '6,12'")
        from ...aus import AUVector

        for spec in self.validation_aus:
            AUVector.parse(spec)


@dataclass(frozen=True, kw_only=True)
class VaeConfig(TrainOptions):
    """``synfer train-vae``: train (or fine-tune) the base's AutoencoderKL; a from-scratch base needs one.

    Loss: ``reconstruction`` (l1 or mse per pixel) + ``kl_weight`` x KL (summed over the latent and
    divided by the pixel count, Stable Diffusion's ratio; 1e-6 is its weight) + ``edge_weight`` x L1
    between the images' horizontal and vertical differences (sharper edges without a perceptual
    network). Held-out images (``val_data``, else a ``val_fraction`` of ``data`` chosen by id) give
    reconstruction PSNR and MAE. ``init``: an AutoencoderKL config (file or folder) to start from
    random weights instead of the base's VAE.
    """

    base: str
    init: str | None = None
    kl_weight: float = 1e-6
    reconstruction: str = "l1"
    edge_weight: float = 0.0
    val_data: str | None = None
    val_fraction: float = 0.05
    val_images: int = 256
    scaling_images: int = 512

    def __post_init__(self):
        super().__post_init__()
        if self.data is None:
            raise ConfigError("--data is needed: a folder (or parquet, webdataset) of images to reconstruct")
        if self.cache_latents:
            raise ConfigError("--cache-latents does not apply to train-vae: the autoencoder itself is what trains")
        if self.reconstruction not in RECONSTRUCTION_LOSSES:
            raise ConfigError(f"unknown --reconstruction {self.reconstruction!r} (accepted: {', '.join(RECONSTRUCTION_LOSSES)})")
        if self.kl_weight < 0 or self.edge_weight < 0:
            raise ConfigError("--kl-weight and --edge-weight must be 0 or more")
        _fraction("val_fraction", self.val_fraction)
        _positive(self, "val_images", "scaling_images")
        if self.init is not None and not Path(self.init).exists():
            raise ConfigError(f"--init {self.init} does not exist (give an AutoencoderKL config.json or a folder with one)")


@dataclass(frozen=True, kw_only=True)
class BuildModelConfig:
    """``synfer build-model``: base + LoRA (fused) + AU adapter -> one synfer model folder.

    ``lora``: as for train-adapter (None: the base UNet as it is). ``adapter``: a train-adapter run
    or an ``au_adapter`` folder. The adapter run records the base and LoRA it was trained with; other
    ones are refused unless ``allow_mismatch``.
    """

    base: str
    adapter: str
    out: str
    lora: str | None = None
    overwrite: bool = False
    allow_mismatch: bool = False

    def __post_init__(self):
        for name in ("base", "adapter"):
            if not Path(getattr(self, name)).exists():
                raise ConfigError(f"--{name} {getattr(self, name)} does not exist")
        if self.lora is not None and not Path(self.lora).exists():
            raise ConfigError(f"--lora {self.lora} does not exist")
        out = Path(self.out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not self.overwrite:
            raise ConfigError(f"--out {self.out} exists and is not empty; choose a new folder or pass --overwrite")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class InitModelConfig:
    """``synfer init-model``: write an untrained Stable-Diffusion-shaped base folder for training from scratch.

    ``preset`` chooses the architecture (see :mod:`synfer.train.diffusion.presets`); ``unet_config``,
    ``vae_config``, ``text_config`` (JSON files) override parts of it. ``captions`` (a caption dataset
    or a text file, one caption a line) gives the tokenizer its vocabulary: every word of the captions
    and of synfer's prompt builder becomes one token. The text encoder is a small random CLIP text
    model that stays frozen; the UNet and VAE are random until train-vae and train-lora --full train them.
    """

    out: str
    preset: str = "world32"
    captions: str | None = None
    data_layout: str | None = None
    caption_column: str = "caption"
    unet_config: str | None = None
    vae_config: str | None = None
    text_config: str | None = None
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self):
        from .presets import PRESETS

        PRESETS.check(self.preset)
        for name in ("captions", "unet_config", "vae_config", "text_config"):
            value = getattr(self, name)
            if value is not None and not Path(value).exists():
                raise ConfigError(f"--{name.replace('_', '-')} {value} does not exist")
        if self.seed < 0:
            raise ConfigError(f"--seed must be 0 or more, got {self.seed}")
        out = Path(self.out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not self.overwrite:
            raise ConfigError(f"--out {self.out} exists and is not empty; choose a new folder or pass --overwrite")

    def to_dict(self) -> dict:
        return asdict(self)
