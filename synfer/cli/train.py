"""``synfer train-downstream``: what is the synthetic data worth? Train a FER classifier, test it on real faces.

With ``--task aus`` the same trainer makes an AU detector from images and an AU table.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..data.readers import LAYOUTS
from ..models.backbone_specs import BACKBONES
from ..train import MIXED_PRECISIONS
from ..train.downstream import TASK_BEST_METRICS, TASKS
from ..train.downstream import DownstreamConfig as C
from . import app
from ._common import RateColumn, console, err_console, quiet_libraries

_DATA_HELP = "AffectNet (CSV or NPY layout), RAF-DB, FER2013, an image folder per expression, or a synfer dataset."


class _RichHooks:
    """A rich progress bar per epoch (images, loss, rate, ETA) and one line per evaluation.

    It has the methods of ``synfer.train.downstream.TrainHooks`` without importing it, so that
    ``synfer --help`` does not load torch.
    """

    def __init__(self):
        self.progress: Progress | None = None
        self.task = None

    def log(self, message: str) -> None:
        err_console.print(message, highlight=False, soft_wrap=True)

    def epoch_started(self, epoch: int, epochs: int, images: int, done: int) -> None:
        self.close()
        self.progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            RateColumn("img"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err_console,
        )
        self.progress.start()
        self.task = self.progress.add_task(f"epoch {epoch + 1}/{epochs}", total=images, completed=done, loss="-")

    def step_finished(self, step: int, images: int, loss: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=images, loss=f"{loss:.4f}")

    def epoch_finished(self, epoch: int) -> None:
        self.close()

    def evaluated(self, step: int, metrics) -> None:
        summary = metrics.summary()
        if "accuracy" in summary:
            line = (f"step {step}: accuracy {summary['accuracy']:.4f}, balanced accuracy {summary['balanced_accuracy']:.4f}, "
                    f"macro-F1 {summary['macro_f1']:.4f}")
        else:
            line = f"step {step}: {_au_summary(summary)}"
        (self.progress.console if self.progress is not None else err_console).print(line, highlight=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _figure(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _au_summary(summary: dict) -> str:
    return f"mean F1 {_figure(summary['f1'])}, MAE {_figure(summary['mae'])}, Pearson {_figure(summary['pearson'])}"


_BEST_HELP = "; ".join(f"{task}: {', '.join(names)}" for task, names in TASK_BEST_METRICS.items())


@app.command("train-downstream")
def train_downstream(
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (config, checkpoints, best/ and last/ classifiers, metrics)."),
    synthetic_only: bool = typer.Option(False, "--synthetic-only", help="Train on --synthetic only."),
    real_only: bool = typer.Option(False, "--real-only", help="Train on --real only."),
    mixed: bool = typer.Option(False, "--mixed", help="Train on --real and --synthetic together."),
    synthetic: str = typer.Option(C.synthetic, "--synthetic", help="A synfer dataset folder."),
    labels: str = typer.Option(
        C.synthetic_labels, "--labels", help="Use labels/NAME.parquet from synfer relabel (its keep flag drops samples)."
    ),
    real: str = typer.Option(C.real, "--real", help=f"Real training data: {_DATA_HELP}"),
    real_split: str = typer.Option(C.real_split, "--real-split", help="Split of --real to train on."),
    real_layout: str = typer.Option(C.real_layout, "--real-layout", help=f"Layout of --real: {LAYOUTS.choices()} (default: detected)."),
    eval_real: str = typer.Option(C.eval_real, "--eval-real", help=f"Evaluation data (default: --real's --eval-split): {_DATA_HELP}"),
    eval_split: str = typer.Option(
        C.eval_split, "--eval-split", help="Split to evaluate on (val; test for RAF-DB and FER2013's private test)."
    ),
    eval_layout: str = typer.Option(C.eval_layout, "--eval-layout", help="Layout of --eval-real (default: detected)."),
    synthetic_ratio: float = typer.Option(C.synthetic_ratio, "--synthetic-ratio", help="--mixed: share of synthetic images in each epoch."),
    classes: int = typer.Option(C.classes, "--classes", help="8 (AffectNet-8) or 7 (no contempt: dropped from every dataset)."),
    backbone: str = typer.Option(C.backbone, "--backbone", help=f"{BACKBONES.choices()} (tiny-* for tests)."),
    weights: str = typer.Option(C.weights, "--weights", help="imagenet, a hub id or a folder; random init when left out."),
    image_size: int = typer.Option(C.image_size, "--image-size", help="Input size (default: the backbone's)."),
    epochs: int = typer.Option(C.epochs, "--epochs"),
    max_steps: int = typer.Option(C.max_steps, "--max-steps", help="Stop after this many optimizer steps (overrides --epochs)."),
    batch_size: int = typer.Option(C.batch_size, "--batch-size", help="Images per batch per process."),
    grad_accum: int = typer.Option(C.grad_accum, "--grad-accum", help="Batches per optimizer step."),
    lr: float = typer.Option(C.lr, "--lr", help="Peak AdamW learning rate (linear warm-up, then cosine)."),
    weight_decay: float = typer.Option(C.weight_decay, "--weight-decay"),
    warmup_ratio: float = typer.Option(C.warmup_ratio, "--warmup-ratio", help="Share of the steps spent warming up."),
    label_smoothing: float = typer.Option(C.label_smoothing, "--label-smoothing"),
    balanced: bool = typer.Option(C.balanced, "--balanced", help="Class-balanced sampling (with replacement)."),
    ema_decay: float = typer.Option(C.ema_decay, "--ema", help="Keep an EMA of the weights with this decay; it is evaluated and saved."),
    augment: bool = typer.Option(C.augment, "--augment/--no-augment", help="kornia crop, flip, affine, colour jitter, erasing."),
    mixed_precision: str = typer.Option(C.mixed_precision, "--mixed-precision", help=", ".join(MIXED_PRECISIONS) + "."),
    cpu: bool = typer.Option(C.cpu, "--cpu", help="Train on the CPU even when a GPU is present."),
    workers: int = typer.Option(C.workers, "--workers", help="DataLoader worker processes that decode images (default: one per core)."),
    shuffle_buffer: int = typer.Option(C.shuffle_buffer, "--shuffle-buffer", help="Samples a synfer shard reader shuffles among."),
    checkpoint_every: int = typer.Option(C.checkpoint_every, "--checkpoint-every", help="Optimizer steps between checkpoints."),
    keep_checkpoints: int = typer.Option(C.keep_checkpoints, "--keep-checkpoints"),
    eval_every: int = typer.Option(C.eval_every, "--eval-every", help="Steps between evaluations (default: every epoch)."),
    eval_batch_size: int = typer.Option(C.eval_batch_size, "--eval-batch-size"),
    best_metric: str = typer.Option(C.best_metric, "--best-metric", help=f"Picks best/ ({_BEST_HELP}; default: the first)."),
    crop_face: bool = typer.Option(C.crop_face, "--crop-face", help="AffectNet CSV layout: crop each image to its face box."),
    numbering: str = typer.Option(C.numbering, "--numbering", help="Image folders named by number: affectnet, rafdb or fer2013 codes."),
    strict: bool = typer.Option(C.strict, "--strict", help="Fail on missing or unreadable images instead of counting them."),
    skip_damaged: bool = typer.Option(
        C.skip_damaged, "--skip-damaged", help="Leave out (and count) synfer shards whose tar is damaged instead of refusing."
    ),
    seed: int = typer.Option(C.seed, "--seed", min=0),
    resume: bool = typer.Option(C.resume, "--resume", help="Continue the run in --out from its latest checkpoint."),
    task: str = typer.Option(
        C.task, "--task", help=f"{' or '.join(TASKS)}: a FER classifier, or an AU detector trained on AU targets (0-5 or 0-1)."
    ),
    au_table: str = typer.Option(
        C.au_table, "--au-table", help="aus: AU targets of the training images (in --mixed: the real ones), joined by id: an AU table "
        "(annotate-aus, world make) or a CSV/parquet of OpenFace, py-feat or per-AU columns (default: aus.parquet beside the images, "
        "or a synfer dataset's own AUs).",
    ),
    eval_au_table: str = typer.Option(C.eval_au_table, "--eval-au-table", help="aus: AU targets of the evaluation images (same defaults)."),
    au_id_column: str = typer.Option(
        C.au_id_column, "--au-id-column", help="aus: the CSV column naming each row's image (default: id or file_name)."
    ),
    au_threshold: float = typer.Option(
        C.au_threshold, "--au-threshold", help="aus: scores at or above it are occurrences, for F1 (default: intensity 1, probability 0.5)."
    ),
) -> None:
    """Train a FER classifier (or with --task aus an AU detector) on synthetic, real or mixed data; evaluate it on real images."""
    from ..train.downstream import choose_mode
    from ..train.downstream import train_downstream as run_training

    config = C(
        out=str(out), mode=choose_mode(synthetic_only, real_only, mixed, synthetic=synthetic, real=real), synthetic=synthetic,
        synthetic_labels=labels, real=real, real_split=real_split, real_layout=real_layout, eval_real=eval_real,
        eval_split=eval_split, eval_layout=eval_layout, synthetic_ratio=synthetic_ratio, classes=classes,
        backbone=backbone, weights=weights, image_size=image_size, epochs=epochs, max_steps=max_steps,
        batch_size=batch_size, grad_accum=grad_accum, lr=lr, weight_decay=weight_decay, warmup_ratio=warmup_ratio,
        label_smoothing=label_smoothing, balanced=balanced, ema_decay=ema_decay, augment=augment,
        mixed_precision=mixed_precision, cpu=cpu, workers=workers, shuffle_buffer=shuffle_buffer,
        checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints, eval_every=eval_every,
        eval_batch_size=eval_batch_size, best_metric=best_metric, crop_face=crop_face, numbering=numbering,
        strict=strict, skip_damaged=skip_damaged, seed=seed, resume=resume, task=task, au_table=au_table,
        eval_au_table=eval_au_table, au_id_column=au_id_column, au_threshold=au_threshold,
    )
    quiet_libraries()
    hooks = _RichHooks()
    try:
        result = run_training(config, hooks)
    except KeyboardInterrupt:
        hooks.close()
        err_console.print(f"interrupted: rerun with --resume to continue {out} from its latest checkpoint")
        raise typer.Exit(130) from None
    finally:
        hooks.close()
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return
    best, last = result.best.summary(), result.last.summary()
    if result.task == "aus":
        console.print(
            f"{out}: {result.steps} steps; best (step {result.best_step}) {_au_summary(best)}; last {_au_summary(last)}"
            + (f"; {result.unreadable} unreadable images skipped" if result.unreadable else ""),
            highlight=False,
            soft_wrap=True,
        )
        return
    console.print(
        f"{out}: {result.steps} steps; best (step {result.best_step}) accuracy {best['accuracy']:.4f}, "
        f"balanced accuracy {best['balanced_accuracy']:.4f}, macro-F1 {best['macro_f1']:.4f}; "
        f"last accuracy {last['accuracy']:.4f}" + (f"; {result.unreadable} unreadable images skipped" if result.unreadable else ""),
        highlight=False,
        soft_wrap=True,
    )
