"""``synfer train-annotator``: train a FERAnno head on real labelled faces."""

from __future__ import annotations

from pathlib import Path

import typer

from ..labelers.feranno.config import FeatureConfig as F
from ..labelers.feranno.config import parse_blocks
from ..synth.generate import MODEL_ENV
from ..train import MIXED_PRECISIONS
from ..train.annotator import AnnotatorConfig as C
from ..train.annotator import HeadTrainingConfig as H
from . import app
from ._common import RichReporter, console, quiet_libraries

_MODEL_HELP = "Diffusion model whose UNet is read: a synfer folder, an SD1.5 folder (with --adapter), a hub id, or 'tiny'."


@app.command("train-annotator")
def train_annotator_command(
    real: Path = typer.Option(..., "--real", help="Folder of real labelled faces (AffectNet, RAF-DB, FER2013, image folders)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the trained head (config.json + safetensors)."),
    model: str = typer.Option(C.model, "--model", "-m", envvar=MODEL_ENV, help=_MODEL_HELP),
    adapter: Path = typer.Option(C.adapter, "--adapter", help="AU adapter folder (replaces the model's own)."),
    classes: int = typer.Option(C.classes, "--classes", help="Label set: 8 (AffectNet-8) or 7 (no contempt)."),
    val_split: str = typer.Option(C.val_split, "--val-split", help="Also report accuracy on this split of --real (e.g. val)."),
    cache: Path = typer.Option(C.cache, "--cache", help="Cache UNet features here as shards; reruns skip the UNet."),
    epochs: int = typer.Option(H.epochs, "--epochs"),
    batch_size: int = typer.Option(H.batch_size, "--batch-size", help="Head training batch size."),
    learning_rate: float = typer.Option(H.learning_rate, "--lr", help="AdamW learning rate (cosine schedule)."),
    hidden_dim: int = typer.Option(H.hidden_dim, "--hidden-dim", help="Width of the fusion block."),
    timestep: int = typer.Option(F.timestep, "--timestep", help="Diffusion timestep the latents are noised to."),
    blocks: str = typer.Option("auto", "--blocks", help="Decoder blocks to read, e.g. 1,2,3 (auto: all with cross-attention)."),
    pool_size: int = typer.Option(F.pool_size, "--pool-size", help="Each block's features are pooled to N x N tokens."),
    attention_size: int = typer.Option(F.attention_size, "--attention-size", help="Each attention map is pooled to N x N."),
    prompt: str = typer.Option(F.prompt, "--prompt", help="Neutral caption for the UNet pass."),
    resolution: int = typer.Option(F.resolution, "--resolution", help="Image size for the VAE (default: the model's native size)."),
    feature_batch_size: int = typer.Option(H.feature_batch_size, "--feature-batch-size", help="Images per UNet pass."),
    mixed_precision: str = typer.Option(
        H.mixed_precision, "--mixed-precision", help=f"Head training precision: {', '.join(MIXED_PRECISIONS)}."
    ),
    dtype: str = typer.Option(C.dtype, "--dtype", help="Diffusion model dtype: auto (float16 on CUDA), float32, ..."),
    cpu: bool = typer.Option(C.cpu, "--cpu", help="Run on the CPU even when a GPU is available."),
    seed: int = typer.Option(H.seed, "--seed"),
    overwrite: bool = typer.Option(C.overwrite, "--overwrite", help="Replace an existing --out folder."),
) -> None:
    """Train FERAnno's fusion + head on real labelled images (the diffusion model stays frozen)."""
    from ..train.annotator import train_annotator

    features = F(
        up_blocks=parse_blocks(blocks), timestep=timestep, pool_size=pool_size, attention_size=attention_size,
        prompt=prompt, resolution=resolution,
    )
    training = H(
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, hidden_dim=hidden_dim, seed=seed,
        mixed_precision=mixed_precision, feature_batch_size=feature_batch_size,
    )
    config = C(
        str(real), str(out), model, str(adapter) if adapter else None, classes, val_split, str(cache) if cache else None,
        features, training, dtype, cpu, overwrite,
    )
    quiet_libraries()
    result = train_annotator(config, RichReporter())
    fit = result.fit
    last = fit.history[-1]
    summary = f"train accuracy {last['train_accuracy']:.3f}"
    if "val_accuracy" in last:
        summary += f", {val_split} accuracy {last['val_accuracy']:.3f}"
    console.print(
        f"{out}: FERAnno head for {result.model} over {result.label_set}, "
        f"{fit.train_size} training images ({fit.extracted} through the UNet now); {summary}"
    )
