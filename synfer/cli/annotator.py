"""``synfer train-annotator``: train a FERAnno head on real labelled faces."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import DatasetError
from . import app
from ._common import console, err_console, progress_bar, quiet_libraries

_MODEL_HELP = "Diffusion model whose UNet is read: a synfer folder, an SD1.5 folder (with --adapter), a hub id, or 'tiny'."


@app.command("train-annotator")
def train_annotator_command(
    real: Path = typer.Option(..., "--real", help="Folder of real labelled faces (AffectNet, RAF-DB, FER2013, image folders)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the trained head (config.json + safetensors)."),
    model: str = typer.Option(None, "--model", "-m", envvar="SYNFER_MODEL", help=_MODEL_HELP),
    adapter: Path = typer.Option(None, "--adapter", help="AU adapter folder (replaces the model's own)."),
    classes: int = typer.Option(8, "--classes", help="Label set: 8 (AffectNet-8) or 7 (no contempt)."),
    val_split: str = typer.Option(None, "--val-split", help="Also report accuracy on this split of --real (e.g. val)."),
    cache: Path = typer.Option(None, "--cache", help="Cache UNet features here as shards; reruns skip the UNet."),
    epochs: int = typer.Option(30, "--epochs", min=1),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Head training batch size."),
    learning_rate: float = typer.Option(3e-4, "--lr", help="AdamW learning rate (cosine schedule)."),
    hidden_dim: int = typer.Option(256, "--hidden-dim", min=1, help="Width of the fusion block."),
    timestep: int = typer.Option(1, "--timestep", help="Diffusion timestep the latents are noised to."),
    blocks: str = typer.Option("auto", "--blocks", help="Decoder blocks to read, e.g. 1,2,3 (auto: all with cross-attention)."),
    pool_size: int = typer.Option(2, "--pool-size", help="Each block's features are pooled to N x N tokens."),
    attention_size: int = typer.Option(8, "--attention-size", help="Each attention map is pooled to N x N."),
    prompt: str = typer.Option(None, "--prompt", help="Neutral caption for the UNet pass."),
    resolution: int = typer.Option(None, "--resolution", help="Image size for the VAE (default: the model's native size)."),
    feature_batch_size: int = typer.Option(16, "--feature-batch-size", min=1, help="Images per UNet pass."),
    mixed_precision: str = typer.Option("no", "--mixed-precision", help="Head training precision: no, fp16 or bf16."),
    dtype: str = typer.Option("auto", "--dtype", help="Diffusion model dtype: auto (float16 on CUDA), float32, ..."),
    cpu: bool = typer.Option(False, "--cpu", help="Run on the CPU even when a GPU is available."),
    seed: int = typer.Option(0, "--seed", min=0),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out folder."),
) -> None:
    """Train FERAnno's fusion + head on real labelled images (the diffusion model stays frozen)."""
    from ..expressions import get_label_set
    from ..labelers.feranno import DEFAULT_PROMPT, FeatureConfig, FERAnnoFeatureExtractor, parse_blocks
    from ..models.loading import load_pipeline, resolve_model_name
    from ..train.annotator import AnnotatorTrainConfig, save_annotator, train_annotator

    # Cheap checks first: a typo should not cost a model load.
    features = FeatureConfig(
        up_blocks=parse_blocks(blocks),
        timestep=timestep,
        pool_size=pool_size,
        attention_size=attention_size,
        prompt=prompt or DEFAULT_PROMPT,
        resolution=resolution,
    )
    train_config = AnnotatorTrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        hidden_dim=hidden_dim,
        seed=seed,
        mixed_precision=mixed_precision,
        feature_batch_size=feature_batch_size,
    )
    get_label_set(classes)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise DatasetError(f"--out {out} exists and is not empty; choose a new folder or pass --overwrite")
    model_name = resolve_model_name(model)

    from ..data.readers import open_labelled

    train_items = open_labelled(real, split="train", classes=classes)
    val_items = open_labelled(real, split=val_split, classes=classes) if val_split else None

    from accelerate import Accelerator

    quiet_libraries()
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=cpu)
    pipe = load_pipeline(model_name, adapter, device=accelerator.device, dtype=dtype, seed=seed)
    local = Path(model_name).expanduser()
    model_info = {
        "name": str(local.resolve()) if local.exists() else model_name,
        "adapter": str(adapter.resolve()) if adapter else None,
        "seed": seed,
    }
    extractor = FERAnnoFeatureExtractor(pipe, features, model=model_info)

    def show_epoch(entry: dict) -> None:
        scores = ", ".join(f"{k} {v:.4f}" for k, v in entry.items() if k != "epoch")
        err_console.print(f"epoch {entry['epoch']}/{epochs}: {scores}", highlight=False)

    total = len(train_items) + (len(val_items) if val_items is not None else 0)
    with progress_bar("features", total=total) as advance:
        output = train_annotator(
            extractor,
            train_items,
            train_items.label_set,
            train_config,
            val_items=val_items,
            cache_dir=cache,
            accelerator=accelerator,
            on_features=advance,
            on_epoch=show_epoch,
        )
    if accelerator.is_main_process:
        save_annotator(output, out, train_config, overwrite=overwrite)
        last = output.history[-1]
        summary = f"train accuracy {last['train_accuracy']:.3f}"
        if "val_accuracy" in last:
            summary += f", {val_split} accuracy {last['val_accuracy']:.3f}"
        console.print(
            f"{out}: FERAnno head for {model_name} over {train_items.label_set.name}, "
            f"{output.train_size} training images ({output.extracted} through the UNet now); {summary}"
        )
