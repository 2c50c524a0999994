"""``synfer evaluate``: how good a synthetic dataset is (distribution metrics, an independent judge, AU faithfulness)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..data.readers import LAYOUTS
from ..eval.evaluate import REAL_CROPS
from ..eval.evaluate import EvaluateConfig as C
from ..eval.feature_backbones import FEATURE_BACKBONES
from ..eval.judges import JUDGES, OUTPUT_RULES
from ..eval.preprocess import RESIZE_MODES
from . import app
from ._common import RichReporter, console, quiet_libraries

_FEATURES_HELP = (f"A feature backbone, KIND:PATH ({FEATURE_BACKBONES.choices()}; a bare PATH is dinov2), from a local path; "
                  "repeat for several. dinov2 is better practice, inception gives FIDs comparable with published ones.")
_JUDGE_HELP = (f"The judge of expression accuracy, KIND:PATH ({JUDGES.choices()}): classifier:DIR is a synfer classifier folder, "
               "onnx:FILE an ONNX FER model (with --judge-classes). It must not be the guidance classifier or a relabel member.")


def _opt_tuple(values: list[str] | None) -> tuple[str, ...]:
    return tuple(values) if values else ()


@app.command()
def evaluate(
    paths: list[Path] = typer.Argument(None, metavar="DATASET", help="A dataset folder written by synfer generate "
                                       "(with --compare: two evaluation folders)."),
    real: str = typer.Option(None, "--real", help="The real reference: AffectNet, RAF-DB, FER2013 or an image folder per expression."),
    out: Path = typer.Option(None, "--out", "-o", help="Evaluation folder (metrics.json, CSVs, plots)."),
    real_split: str = typer.Option(C.real_split, "--real-split", help="The split of --real to compare with (val: what papers report)."),
    real_layout: str = typer.Option(C.real_layout, "--real-layout", help=f"Force the layout of --real ({LAYOUTS.choices()})."),
    real_crop: str = typer.Option(
        C.real_crop, "--real-crop",
        help=f"{' or '.join(REAL_CROPS)}: whole real images, or AffectNet's face boxes.",
    ),
    numbering: str = typer.Option(
        C.numbering, "--numbering",
        help="Folder layout with numeric class folders: whose codes (affectnet, rafdb, fer2013).",
    ),
    labels: str = typer.Option(
        C.labels, "--labels",
        help="Judge against labels/NAME.parquet from synfer relabel (keep=false rows left out) instead of the planned labels.",
    ),
    features: list[str] = typer.Option(None, "--features", "-f", help=_FEATURES_HELP),
    feature_size: int = typer.Option(C.feature_size, "--feature-size", help="DINOv2 input size (default 224)."),
    resize: str = typer.Option(
        C.resize, "--resize",
        help=f"{' or '.join(RESIZE_MODES)}: how every image is brought to a model's input size.",
    ),
    judge: str = typer.Option(C.judge, "--judge", help=_JUDGE_HELP),
    judge_classes: str = typer.Option(
        C.judge_classes, "--judge-classes",
        help="onnx judge: its output order, e.g. anger,contempt,disgust,fear,happy,neutral,sad,surprise.",
    ),
    judge_size: int = typer.Option(C.judge_size, "--judge-size", help="onnx judge: input size when the model does not fix it."),
    judge_mean: str = typer.Option(None, "--judge-mean", help="onnx judge: R,G,B mean for inputs in [0, 1] (default ImageNet's)."),
    judge_std: str = typer.Option(None, "--judge-std", help="onnx judge: R,G,B std (default ImageNet's)."),
    judge_outputs: str = typer.Option(
        C.judge_outputs, "--judge-outputs",
        help=f"{' or '.join(OUTPUT_RULES)}: first takes the first K outputs (models with extra valence/arousal outputs).",
    ),
    allow_dependent_judge: bool = typer.Option(
        C.allow_dependent_judge, "--allow-dependent-judge",
        help="Measure with a judge that guided or relabelled the dataset; its figures are marked 'dependent'.",
    ),
    au_detector: str = typer.Option(
        C.au_detector, "--au-detector",
        help="An AU detector, KIND:PATH (opengraphau:FILE, detector:DIR): per-AU F1 and intensity agreement with the requested AUs.",
    ),
    au_threshold: float = typer.Option(
        C.au_threshold, "--au-threshold",
        help="Detected-present threshold (default: the detector's suggestion).",
    ),
    layout_dir: str = typer.Option(C.layout_dir, "--layout-dir", help="Where the dataset's layout references lie now, if they moved."),
    drop_layout_references: bool = typer.Option(
        C.drop_layout_references, "--drop-layout-references",
        help="Leave layout references found in --real out of the reference (and count them) instead of refusing.",
    ),
    max_generated: int = typer.Option(C.max_generated, "--max-generated", help="Use the first N generated samples."),
    max_real: int = typer.Option(C.max_real, "--max-real", help="Use a seeded random subset of N real images."),
    bootstrap_resamples: int = typer.Option(
        C.bootstrap_resamples, "--bootstrap-resamples",
        help="FD bootstrap replicates (0: no interval).",
    ),
    interval_resamples: int = typer.Option(
        C.interval_resamples, "--interval-resamples",
        help="Bootstrap replicates for accuracy and F1 intervals.",
    ),
    kid_subsets: int = typer.Option(C.kid_subsets, "--kid-subsets"),
    kid_subset_size: int = typer.Option(C.kid_subset_size, "--kid-subset-size"),
    kid_min_per_class: int = typer.Option(
        C.kid_min_per_class, "--kid-min-per-class",
        help="Classes with fewer images on either side get no per-class KID.",
    ),
    samples_per_class: int = typer.Option(C.samples_per_class, "--samples-per-class", help="Images per side and class in samples.png."),
    batch_size: int = typer.Option(C.batch_size, "--batch-size"),
    workers: int = typer.Option(C.workers, "--workers", help="Decoding threads (default: the cores, at most 8)."),
    device: str = typer.Option(C.device, "--device", help="auto, cpu, cuda, cuda:N or mps."),
    dtype: str = typer.Option(C.dtype, "--dtype", help="Backbone precision: float32 (default), float16 or bfloat16 (GPUs)."),
    cache: str = typer.Option(
        C.cache, "--cache",
        help="Feature cache folder (default $SYNFER_CACHE/features or ~/.cache/synfer/features).",
    ),
    seed: int = typer.Option(C.seed, "--seed"),
    overwrite: bool = typer.Option(C.overwrite, "--overwrite", help="Replace an evaluation in --out made with other settings."),
    compare: bool = typer.Option(
        False, "--compare",
        help="synfer evaluate --compare EVAL_A EVAL_B: two finished evaluations side by side.",
    ),
) -> None:
    """Measure a dataset against real faces: FD/KID/precision-recall per class, a judge's accuracy, AU faithfulness."""
    from ..errors import ConfigError

    paths = list(paths or [])
    if compare:
        if len(paths) != 2 or real is not None or out is not None:
            raise ConfigError("--compare takes two evaluation folders (synfer evaluate --compare EVAL_A EVAL_B), no --real or --out")
        _print_comparison(*paths)
        return
    if len(paths) != 1 or real is None or out is None:
        raise ConfigError("give one DATASET, --real DIR and --out DIR (or --compare EVAL_A EVAL_B)")
    dataset = paths[0]
    config = C(
        str(dataset), real, str(out), real_split=real_split, real_layout=real_layout, real_crop=real_crop, numbering=numbering,
        labels=labels, features=_opt_tuple(features), feature_size=feature_size, resize=resize, judge=judge,
        judge_classes=judge_classes, judge_size=judge_size, judge_mean=judge_mean, judge_std=judge_std,
        judge_outputs=judge_outputs, allow_dependent_judge=allow_dependent_judge, au_detector=au_detector,
        au_threshold=au_threshold, layout_dir=layout_dir, drop_layout_references=drop_layout_references,
        max_generated=max_generated, max_real=max_real, bootstrap_resamples=bootstrap_resamples,
        interval_resamples=interval_resamples, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size,
        kid_min_per_class=kid_min_per_class, samples_per_class=samples_per_class, batch_size=batch_size, workers=workers,
        device=device, dtype=dtype, cache=cache, seed=seed, overwrite=overwrite,
    )
    from ..eval.evaluate import evaluate as run

    quiet_libraries()
    result = run(config, RichReporter())
    _print_result(result)


def _format(figure) -> str:
    if figure is None or figure.value is None:
        return "-"
    text = f"{figure.value:.4g}"
    if figure.ci:
        text += f" [{figure.ci[0]:.4g}, {figure.ci[1]:.4g}]"
    elif figure.std is not None:
        text += f" ± {figure.std:.2g}"
    return text


def _print_result(result) -> None:
    metrics = result.metrics
    table = Table(title=f"evaluation of {metrics['generated']['path']} against {metrics['real']['path']} ({metrics['real']['split']})")
    for column in ("figure", "value [95% CI] / ± std", "better", "flags"):
        table.add_column(column, justify="right" if column.startswith("value") else "left")
    for name, figure in result.figures().items():
        table.add_row(name, _format(figure), figure.better or "", ", ".join(figure.flags))
    console.print(table)
    generated, real = metrics["generated"], metrics["real"]
    computed = "; ".join(f"{side} " + ", ".join(f"{name} {count}" for name, count in models.items())
                         for side, models in result.computed.items() if models)
    real_part = real.get("note") or f"{real['n_valid']} real images"
    console.print(f"{generated['n_valid']} generated images ({generated['labels']} labels); {real_part}; "
                  f"images computed now (the rest from the cache): {computed}")
    if metrics.get("au"):
        status = metrics["au"]["status"]
        console.print(f"AU detector: {status['status']} ({status['reason']})")
    if metrics["flags"]["dependent"]:
        console.print("[yellow]dependent:[/] the judge guided or relabelled this dataset; its accuracy is not an independent measure")
    console.print(f"wrote {result.out}: {', '.join(metrics.get('files', []))}")


def _print_comparison(a: Path, b: Path) -> None:
    from ..eval.compare import compare_evaluations

    comparison = compare_evaluations(a, b)
    table = Table(title="evaluations side by side")
    for column in ("figure", f"A: {a}", f"B: {b}", "better", "flags"):
        table.add_column(column, justify="left" if column in ("figure", "better", "flags") else "right")
    for row in comparison.rows:
        flags = sorted(set((row.a.flags if row.a else ()) + (row.b.flags if row.b else ())))
        table.add_row(row.name, _format(row.a), _format(row.b), row.better or "", ", ".join(flags))
    console.print(table)
    for caveat in comparison.caveats:
        console.print(f"[yellow]not comparable as they stand:[/] {caveat}")
