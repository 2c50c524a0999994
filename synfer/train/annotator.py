"""``train_annotator()``: train a FERAnno head on real labelled faces; what ``synfer train-annotator`` runs.

```python
from synfer import AnnotatorConfig, train_annotator

train_annotator(AnnotatorConfig(real="/data/RAF-DB", out="runs/anno", model="/models/synfer", val_split="test"))
```

The UNet, VAE and text encoder stay frozen; the features go through them once (and can be cached,
see :mod:`synfer.train.annotator_fit`), then only the head trains. The head folder is written aside
and swapped into place complete.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.run_folder import RunFolder, replace_dir
from ..errors import ConfigError, DatasetError
from ..expressions import get_label_set
from ..labelers.feranno.config import FeatureConfig
from ..progress import Reporter, SilentReporter
from . import MIXED_PRECISIONS, make_accelerator

if TYPE_CHECKING:
    from ..labelers.feranno import FERAnnoHead


@dataclass(frozen=True)
class HeadTrainingConfig:
    """Head size and optimisation settings of ``synfer train-annotator`` (the features' settings are a FeatureConfig)."""

    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 3e-4
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    label_smoothing: float = 0.1
    hidden_dim: int = 256
    num_heads: int = 4
    dropout: float = 0.1
    seed: int = 0
    mixed_precision: str = "no"
    feature_batch_size: int = 16
    cache_shard_size: int = 1024

    def __post_init__(self):
        for name in ("epochs", "batch_size", "hidden_dim", "num_heads", "feature_batch_size", "cache_shard_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', ' ')} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.warmup_fraction < 1 or not 0 <= self.label_smoothing < 1 or not 0 <= self.dropout < 1:
            raise ConfigError("warmup fraction, label smoothing and dropout must lie in [0, 1)")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ConfigError(f"unknown mixed precision {self.mixed_precision!r} (accepted: {', '.join(MIXED_PRECISIONS)})")


@dataclass(frozen=True)
class AnnotatorConfig:
    """Everything ``synfer train-annotator`` takes.

    Args:
        real: a folder of real labelled faces (any layout ``open_labelled`` reads); its train split trains.
        out: the head folder to write.
        model, adapter: the diffusion model whose UNet is read (as ``synfer generate --model``).
        val_split: also report accuracy on this split of ``real``.
        cache: cache the UNet features here; a rerun (or another head on the same images) skips the UNet.
        features, training: how the UNet is read; how the head trains.
        dtype, cpu: the diffusion model's dtype; run on the CPU even when a GPU is there.
    """

    real: str
    out: str
    model: str | None = None
    adapter: str | None = None
    classes: int = 8
    val_split: str | None = None
    cache: str | None = None
    features: FeatureConfig = field(default_factory=FeatureConfig)
    training: HeadTrainingConfig = field(default_factory=HeadTrainingConfig)
    dtype: str = "auto"
    cpu: bool = False
    overwrite: bool = False

    def __post_init__(self):
        get_label_set(self.classes)
        folder = RunFolder(self.out, "training.json", "FERAnno head")
        if not folder.is_empty() and not self.overwrite:
            raise DatasetError(f"--out {self.out} exists and is not empty; choose a new folder or pass --overwrite")


@dataclass
class AnnotatorOutput:
    """What :func:`train_annotator` wrote and how the head did (``fit`` holds the training history)."""

    out: Path
    fit: HeadTrainingOutput
    model: str
    label_set: str
    seconds: float = 0.0


@dataclass
class HeadTrainingOutput:
    """A trained head and how it got there.

    Args:
        head: the trained :class:`FERAnnoHead` (on the CPU, in eval mode).
        history: one entry per epoch: loss, train accuracy and, with validation items, val accuracy.
        train_size, val_size: images seen.
        class_counts: training images per class name.
        extracted: images that went through the UNet in this call (the rest came from the cache).
    """

    head: FERAnnoHead
    history: list[dict] = field(default_factory=list)
    train_size: int = 0
    val_size: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)
    extracted: int = 0

    @property
    def val_accuracy(self) -> float | None:
        return self.history[-1].get("val_accuracy") if self.history else None


def train_annotator(config: AnnotatorConfig, reporter: Reporter | None = None) -> AnnotatorOutput:
    """Read the real faces, load the diffusion model, fit the head and write its folder."""
    from ..data.readers import open_labelled
    from ..labelers.feranno import FERAnnoFeatureExtractor
    from ..pipelines.loading import load_pipeline, resolve_model_name
    from .annotator_fit import fit_head

    reporter = reporter or SilentReporter()
    model_name = resolve_model_name(config.model)
    train_items = open_labelled(config.real, split="train", classes=config.classes)
    val_items = open_labelled(config.real, split=config.val_split, classes=config.classes) if config.val_split else None

    accelerator = make_accelerator(mixed_precision=config.training.mixed_precision, cpu=config.cpu)
    seed = config.training.seed
    pipe = load_pipeline(model_name, config.adapter, device=accelerator.device, dtype=config.dtype, seed=seed)
    local = Path(model_name).expanduser()
    model_info = {
        "name": str(local.resolve()) if local.exists() else model_name,
        "adapter": str(Path(config.adapter).resolve()) if config.adapter else None,
        "seed": seed,
    }
    extractor = FERAnnoFeatureExtractor(pipe, config.features, model=model_info)

    def show_epoch(entry: dict) -> None:
        scores = ", ".join(f"{k} {v:.4f}" for k, v in entry.items() if k != "epoch")
        reporter.log(f"epoch {entry['epoch']}/{config.training.epochs}: {scores}")

    total = len(train_items) + (len(val_items) if val_items is not None else 0)
    start = time.perf_counter()
    with reporter.progress("features", total=total) as advance:
        fit = fit_head(
            extractor,
            train_items,
            train_items.label_set,
            config.training,
            val_items=val_items,
            cache_dir=config.cache,
            accelerator=accelerator,
            on_features=advance,
            on_epoch=show_epoch,
        )
    output = AnnotatorOutput(Path(config.out), fit, model_name, train_items.label_set.name, time.perf_counter() - start)
    if accelerator.is_main_process:
        save_annotator(fit, config.out, config.training, overwrite=config.overwrite)
    accelerator.free_memory()
    return output


def save_annotator(output: HeadTrainingOutput, out: str | Path, config: HeadTrainingConfig, overwrite: bool = False) -> Path:
    """Write the head folder (config.json + safetensors) and ``training.json``; the folder appears complete or not at all."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise DatasetError(f"--out {out} exists and is not empty; choose a new folder or pass --overwrite")
    from ..plots import plot_curves

    tmp = RunFolder.temporary(out)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        output.head.save_pretrained(tmp, safe_serialization=True)
        summary = {
            "train": asdict(config),
            "history": output.history,
            "train_size": output.train_size,
            "val_size": output.val_size,
            "class_counts": output.class_counts,
        }
        (tmp / "training.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        curves = {
            metric.replace("_", " "): [(e["epoch"], e[metric]) for e in output.history if metric in e]
            for metric in ("loss", "train_accuracy", "val_accuracy")
        }
        plot_curves(curves, tmp / "training.png", title="FERAnno head", xlabel="epoch")
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DatasetError(f"cannot write --out {out}: {error.strerror or error}") from None
    replace_dir(tmp, out)  # swapped in only now that it is complete
    return out
