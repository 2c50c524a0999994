"""``synfer generate``: make a synthetic FER dataset (the format is in docs/formats.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..data.format import IMAGE_FORMATS
from ..pipelines.schedulers import SCHEDULERS
from ..pipelines.speed import VAE_DTYPES
from ..pipelines.steering import NORMALIZATIONS
from ..prompts import CAPTION_STYLES
from ..synth.au_sources import AU_SOURCES
from ..synth.generate import MODEL_ENV
from ..synth.generate import GenerateConfig as C
from ..synth.plan import LABEL_DISTRIBUTIONS
from . import app
from ._common import RichReporter, console, quiet_libraries

_MODEL_HELP = "Model: a synfer folder, a Stable Diffusion 1.5 folder (with --adapter), a hub id, 'world' (trained, shipped) or 'tiny'."
_DISTRIBUTIONS = ", ".join(name for name in LABEL_DISTRIBUTIONS if name != "custom")


@app.command()
def generate(
    out: Path = typer.Option(..., "--out", "-o", help="Dataset folder to create, resume, or grow (a larger --n)."),
    n: int = typer.Option(C.n, "--n", help="Number of samples (overrides --scale)."),
    scale: str = typer.Option(
        C.scale, "--scale", help="Nx: N times AffectNet's training size (1x = 287,651 for 8 classes, 283,901 for 7; SynFER used 1x-5x)."
    ),
    model: str = typer.Option(C.model, "--model", "-m", envvar=MODEL_ENV, help=_MODEL_HELP),
    adapter: Path = typer.Option(C.adapter, "--adapter", help="AU adapter folder (replaces the model's own)."),
    aus: str = typer.Option(C.aus, "--aus", help="AUs for every sample, e.g. '6,12', 'AU6:2.5,AU12:4', 'L12,R14'."),
    label: str = typer.Option(C.label, "--label", help="Expression for every sample (name or AffectNet id)."),
    prompt: str = typer.Option(C.prompt, "--prompt", help="Coarse text added to every caption."),
    prompt_file: Path = typer.Option(
        C.prompt_file, "--prompt-file", help="Coarse texts, one a line (e.g. captions without expression words); each sample draws one."
    ),
    classes: int = typer.Option(C.classes, "--classes", help="Label set: 8 (AffectNet-8) or 7 (no contempt)."),
    distribution: str = typer.Option(
        C.distribution, "--distribution", help=f"Labels: {_DISTRIBUTIONS} (default balanced), or a JSON file {{label: weight}}."
    ),
    au_source: str = typer.Option(
        C.au_source, "--au-source", help=f"AUs per sample: {AU_SOURCES.choices()} (default prototype; empirical needs --au-table)."
    ),
    au_table: Path = typer.Option(C.au_table, "--au-table", help="Parquet/CSV of real AU vectors with a 'label' column (empirical AUs)."),
    batch_size: str = typer.Option(
        str(C.batch_size), "--batch-size",
        help="Images per batch, or auto: on CUDA the largest that fits (found on the first batches), elsewhere by free memory.",
    ),
    steps: int = typer.Option(C.steps, "--steps", help="Denoising steps."),
    guidance_scale: float = typer.Option(C.guidance_scale, "--guidance-scale", help="Classifier-free guidance scale."),
    au_scale: float = typer.Option(C.au_scale, "--au-scale", help="Weight of the AU attention (0 ignores the AUs)."),
    seed: int = typer.Option(C.seed, "--seed", help="Base seed; sample i's seed derives from it and i."),
    height: int = typer.Option(C.height, "--height", help="Image height (default: the model's native size)."),
    width: int = typer.Option(C.width, "--width", help="Image width (default: the model's native size)."),
    device: str = typer.Option(C.device, "--device", help="auto, cpu, cuda, cuda:N or mps."),
    dtype: str = typer.Option(C.dtype, "--dtype", help="auto (float16 on CUDA), float32, float16 or bfloat16."),
    image_format: str = typer.Option(C.image_format, "--format", help=", ".join(IMAGE_FORMATS) + "."),
    shard_size: int = typer.Option(C.shard_size, "--shard-size", help="Samples per shard."),
    negative_prompt: str = typer.Option(
        C.negative_prompt, "--negative-prompt", help="Replaces the caption style's negative prompt (plain: none)."
    ),
    overwrite: bool = typer.Option(C.overwrite, "--overwrite", help="Replace a dataset made with another config."),
    wait_timeout: float = typer.Option(
        C.wait_timeout, "--wait-timeout", help="Seconds ranks > 0 wait for rank 0's manifest (multi-process runs)."
    ),
    guidance_model: Path = typer.Option(
        C.guidance_model, "--guidance-model", help="FER classifier folder: steer each sample toward its label (semantic guidance)."
    ),
    sg_step_size: float = typer.Option(C.sg_step_size, "--sg-step-size", help="Guidance step size (lambda)."),
    sg_window: str = typer.Option(C.sg_window, "--sg-window", help="Guided part of the schedule, START:END fractions."),
    sg_every: int = typer.Option(C.sg_every, "--sg-every", help="Guide every k-th step of the window."),
    sg_normalize: str = typer.Option(C.sg_normalize, "--sg-normalize", help=f"Gradient normalisation: {NORMALIZATIONS.choices()}."),
    sg_decoder: str = typer.Option(C.sg_decoder, "--sg-decoder", help="Decoder for guidance: vae, or an AutoencoderTiny folder."),
    sg_reuse_prediction: bool = typer.Option(
        C.sg_reuse_prediction, "--sg-reuse-prediction", help="Cheaper guided steps: updates act one step later (see README)."
    ),
    layout_dir: Path = typer.Option(
        C.layout_dir, "--layout-dir", help="Reference faces: each sample starts from one's inversion (ddim; dpm-solver++ below strength 1)."
    ),
    layout_strength: float = typer.Option(C.layout_strength, "--layout-strength", help="Fraction of the schedule inverted, in (0, 1]."),
    layout_iterations: int = typer.Option(C.layout_iterations, "--layout-iterations", help="Fixed-point refinements per inversion step."),
    captions: str = typer.Option(
        C.captions, "--captions", help=f"Caption style: {CAPTION_STYLES.choices()} (plain: --prompt and the expression, for models "
        "trained on captions of their own kind, such as the world's)."
    ),
    scheduler: str = typer.Option(
        C.scheduler, "--scheduler", help=f"Sampler: {SCHEDULERS.choices()} (model: the model's own; dpm-solver++ needs fewer steps)."
    ),
    compile: bool = typer.Option(
        C.compile, "--compile", help="torch.compile the UNet (faster on a GPU after minutes of compiling; recorded: may change last bits)."
    ),
    channels_last: bool = typer.Option(
        C.channels_last, "--channels-last", help="Channels-last convolutions in UNet and VAE (recorded: may change last bits)."
    ),
    vae_dtype: str = typer.Option(
        C.vae_dtype, "--vae-dtype",
        help=f"VAE dtype: {VAE_DTYPES.choices()} (model: as --dtype; float16 redoes an overflowing image in float32).",
    ),
    writer_threads: int = typer.Option(
        C.writer_threads, "--writer-threads", help="Threads encoding images beside sampling (0: inline; shards are the same)."
    ),
) -> None:
    """Generate a synthetic facial-expression dataset (sharded, resumable, one process per GPU under accelerate)."""
    from ..synth.generate import generate as run

    options = {k: v for k, v in locals().items() if k != "run"}
    config = C(**{k: str(v) if isinstance(v, Path) else v for k, v in options.items()})
    quiet_libraries()
    result = run(config, RichReporter())
    who = f"rank {result.rank}/{result.world_size}: " if result.world_size > 1 else ""
    console.print(
        f"{who}{result.out}: {result.samples} samples in {len(result.made_shards) + len(result.skipped_shards)} shards; "
        f"made {result.made} now ({result.rate:.2f} img/s), {len(result.skipped_shards)} shards were already done"
        + ("; dataset complete, card written" if result.complete else "")
    )
