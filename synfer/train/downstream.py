"""Downstream FER training, SynFER's measure of synthetic data: train a classifier on synthetic,
real or mixed images and evaluate it on real ones. Built on accelerate (one process per GPU,
mixed precision, gradient accumulation, checkpoint + resume).

The same trainer serves a second *task*, ``aus``: an AU detector (:mod:`synfer.models.au_detector`)
trained on the images' AU targets, joined from an AU table by image id
(:mod:`synfer.train.au_targets`), with a loss masked to the known slots, and measured by per-AU F1,
MAE and Pearson (:mod:`synfer.train.au_metrics`). Data streaming, accelerate, EMA, checkpoints and
exact resume are shared; :mod:`synfer.train.tasks` holds what differs.

```
RUN/
  config.json           the run's options and what its datasets held
  checkpoints/step-N/   accelerate state (model, optimizer, scheduler, RNG), EMA, trainer_state.json
  best/  last/          FER classifiers (config.json + model.safetensors) for load_classifier
                        (--task aus: AU detector folders for load_au_detector("detector:..."))
  confusion.png  curves.png
  metrics.json          best and last evaluation and the history; written last, so it marks a finished run
```

A resumed run ends with the same weights as an uninterrupted one: the data order is a function of
the seed, the epoch and the stream's shape (see :mod:`synfer.train.data`), and the RNG state comes
back with the checkpoint. Resuming therefore needs the same options, workers and process count.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from ..data.format import write_json
from ..data.readers import LAYOUTS, LabelledDataset, detect_layout, open_labelled
from ..data.run_folder import ResumeRules, RunFolder, restore_swapped
from ..devices import available_cpus
from ..errors import ConfigError
from ..eval.metrics import ClassificationMetrics
from ..expressions import get_label_set
from . import MIXED_PRECISIONS
from .checkpoints import CHECKPOINTS_DIR

MODES = ("synthetic-only", "real-only", "mixed")
TASKS = ("classification", "aus")
BEST_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
AU_BEST_METRICS = ("f1", "mae", "pearson")  # means over the AUs; MAE picks the lowest
TASK_BEST_METRICS = {"classification": BEST_METRICS, "aus": AU_BEST_METRICS}
# Options of --task aus only; a classification run's record leaves them out, as it did before there were tasks.
AU_OPTIONS = ("task", "au_table", "eval_au_table", "au_id_column", "au_threshold")
CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.json"
# Options that may change when a run resumes: they decide nothing about the weights.
RESUMABLE_CHANGES = frozenset({"out", "checkpoint_every", "keep_checkpoints", "strict", "resume"})
CURVE_POINTS = 200


@dataclass(frozen=True)
class DownstreamConfig:
    """Everything that defines a downstream training run (the options of ``synfer train-downstream``).

    ``mode`` None picks it from the datasets given (both: mixed). ``workers`` None uses every core
    this process may run on (on a resume: the run's own count, which its data order depends on).
    ``task`` ``aus`` trains an AU detector instead of a classifier: ``au_table`` gives the training
    images' AU targets (in mixed mode the real images'; default: ``aus.parquet`` beside the split's
    images, or a synfer dataset's generated AUs), ``eval_au_table`` the evaluation images',
    ``au_id_column`` the column that names the images in a CSV, ``au_threshold`` where a score counts
    as an occurrence for F1 (default: intensity 1, probability 0.5). ``best_metric`` None is the
    task's first (accuracy, or F1).
    """

    out: str
    mode: str | None = None
    synthetic: str | None = None
    synthetic_labels: str | None = None  # labels/<name>.parquet from relabel
    real: str | None = None
    real_split: str = "train"
    real_layout: str | None = None
    eval_real: str | None = None
    eval_split: str = "val"
    eval_layout: str | None = None
    synthetic_ratio: float = 0.5  # mixed: share of synthetic samples in every epoch
    classes: int = 8
    backbone: str = "resnet18"
    weights: str | None = None  # None: random init; "imagenet", a hub id or a folder
    image_size: int | None = None  # default: the backbone's input size
    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_ratio: float = 0.05
    grad_clip: float = 1.0
    label_smoothing: float = 0.1
    balanced: bool = False
    ema_decay: float | None = None
    augment: bool = True
    mixed_precision: str = "no"
    cpu: bool = False
    workers: int | None = None
    shuffle_buffer: int = 512
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    eval_every: int | None = None  # steps; None: after every epoch
    eval_batch_size: int | None = None
    best_metric: str | None = None
    crop_face: bool = False
    numbering: str | None = None
    strict: bool = False
    skip_damaged: bool = False
    seed: int = 0
    resume: bool = False
    task: str = "classification"
    au_table: str | None = None
    eval_au_table: str | None = None
    au_id_column: str | None = None
    au_threshold: float | None = None

    def __post_init__(self):
        if self.task not in TASKS:
            raise ConfigError(f"unknown --task {self.task!r} (accepted: {', '.join(TASKS)})")
        if self.task != "aus":
            given = [name for name in AU_OPTIONS[1:] if getattr(self, name) is not None]
            if given:
                raise ConfigError(f"--{given[0].replace('_', '-')} applies to --task aus only")
        if self.au_threshold is not None and not self.au_threshold > 0:
            raise ConfigError(f"--au-threshold must be positive, got {self.au_threshold}")
        if self.best_metric is None:
            object.__setattr__(self, "best_metric", TASK_BEST_METRICS[self.task][0])
        if self.mode is None:
            object.__setattr__(self, "mode", choose_mode(synthetic=self.synthetic, real=self.real))
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode {self.mode!r} (accepted: {', '.join(MODES)})")
        needs = {"synthetic-only": ("synthetic",), "real-only": ("real",), "mixed": ("synthetic", "real")}[self.mode]
        for name in needs:
            if getattr(self, name) is None:
                raise ConfigError(f"--{self.mode} needs --{name} DIR")
        for name in ("synthetic", "real"):
            if name not in needs and getattr(self, name) is not None:
                raise ConfigError(f"--{name} does not apply to --{self.mode} (use --mixed to train on both)")
        if self.mode == "synthetic-only" and self.eval_real is None:
            raise ConfigError("--synthetic-only needs --eval-real DIR: synthetic data is measured on real images")
        if self.synthetic_labels is not None and self.synthetic is None:
            raise ConfigError("--labels applies to the --synthetic dataset")
        if not 0.0 < self.synthetic_ratio < 1.0:
            raise ConfigError(f"--synthetic-ratio must lie strictly between 0 and 1, got {self.synthetic_ratio}")
        get_label_set(self.classes)
        positive = {"batch_size": self.batch_size, "grad_accum": self.grad_accum, "epochs": self.epochs,
                    "checkpoint_every": self.checkpoint_every, "keep_checkpoints": self.keep_checkpoints,
                    "shuffle_buffer": self.shuffle_buffer}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        for name in ("max_steps", "eval_every", "image_size", "eval_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"--workers must be 0 or more, got {self.workers}")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.warmup_ratio < 1 or not 0 <= self.label_smoothing < 1:
            raise ConfigError("--lr must be positive, --weight-decay >= 0, --warmup-ratio and --label-smoothing in [0, 1)")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"--ema-decay must lie strictly between 0 and 1, got {self.ema_decay}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ConfigError(f"unknown mixed precision {self.mixed_precision!r} (accepted: {', '.join(MIXED_PRECISIONS)})")
        if self.best_metric not in TASK_BEST_METRICS[self.task]:
            accepted = ", ".join(TASK_BEST_METRICS[self.task])
            raise ConfigError(f"unknown --best-metric {self.best_metric!r} for --task {self.task} (accepted: {accepted})")

    def to_dict(self) -> dict:
        data = asdict(self)
        if self.task == "classification":
            for name in AU_OPTIONS:
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> DownstreamConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def choose_mode(synthetic_only: bool = False, real_only: bool = False, mixed: bool = False, *, synthetic=None, real=None) -> str:
    """The training mode from the flags given, or from the datasets given when no flag is."""
    chosen = [name for name, flag in (("synthetic-only", synthetic_only), ("real-only", real_only), ("mixed", mixed)) if flag]
    if len(chosen) > 1:
        raise ConfigError(f"choose one of --synthetic-only, --real-only and --mixed (got {', '.join('--' + c for c in chosen)})")
    if chosen:
        return chosen[0]
    if synthetic is not None and real is not None:
        return "mixed"
    if synthetic is not None:
        return "synthetic-only"
    if real is not None:
        return "real-only"
    raise ConfigError("give training data: --synthetic-only --synthetic DATASET, --real-only --real DIR, or --mixed with both")


@dataclass
class DownstreamOutput:
    run_dir: Path
    steps: int
    best_step: int
    best: ClassificationMetrics  # AUMetrics (synfer.train.au_metrics) for --task aus
    last: ClassificationMetrics
    unreadable: int = 0
    task: str = "classification"


class TrainHooks:
    """What the trainer reports as it goes, on the main process only; the CLI draws progress bars."""

    def log(self, message: str) -> None:
        pass

    def epoch_started(self, epoch: int, epochs: int, images: int, done: int) -> None:
        pass

    def step_finished(self, step: int, images: int, loss: float) -> None:
        pass

    def epoch_finished(self, epoch: int) -> None:
        pass

    def evaluated(self, step: int, metrics: ClassificationMetrics) -> None:
        pass


# -- the run folder -------------------------------------------------------------------------------

# A resume compares the stored options with the new ones; these may change, since they decide nothing
# about the weights. `workers` left unset on a resume takes the run's own count.
RUN_RULES = ResumeRules(
    compare=("config",),
    ignore=frozenset(f"config.{name}" for name in RESUMABLE_CHANGES),
    inherit=frozenset({"config.workers"}),
)


def run_folder(out: str | Path) -> RunFolder:
    return RunFolder(out, CONFIG_NAME, "training run")


def resolved_config(config: DownstreamConfig) -> DownstreamConfig:
    """``config`` with what it leaves open filled in: on a resume from the stored run, else from the machine."""
    folder = run_folder(config.out)
    if config.resume and folder.has_record():
        stored = folder.read_record()
        merged = RUN_RULES.inherited(stored, {"config": config.to_dict()})["config"]
        config = DownstreamConfig.from_dict(merged)
    if config.workers is None:
        config = replace(config, workers=available_cpus())
    return config


def prepare_run(config: DownstreamConfig, main: bool = True) -> bool:
    """Create the run folder or check that it holds this run; True when a finished run is found.

    Only the ``main`` process changes the folder.
    """
    folder = run_folder(config.out)
    status = folder.compare({"config": config.to_dict()}, RUN_RULES)
    if status.state == "new":
        if not folder.is_empty():
            raise ConfigError(f"--out {folder.path} exists and is not a synfer training run; choose a new folder")
        if main:
            try:
                folder.path.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise ConfigError(f"cannot create --out {folder.path}: {error.strerror or error}") from None
        return False
    if not config.resume:
        raise ConfigError(f"{folder.path} already holds a training run; pass --resume to continue it, or choose another --out")
    if status.state != "same":
        details = ", ".join(f"{c.path.removeprefix('config.')}: {c.old!r} -> {c.new!r}" for c in status.changes)
        raise ConfigError(f"{folder.path} was started with other options ({details}); an exact resume needs the same ones")
    if main:
        restore_swapped(folder.path, folder.path / CHECKPOINTS_DIR)
    return (folder.path / METRICS_NAME).is_file()


# -- data ---------------------------------------------------------------------------------------------

def _open(config: DownstreamConfig, path: str, split: str, layout: str | None, labels: str | None = None) -> LabelledDataset:
    options = {"crop_face": config.crop_face, "numbering": config.numbering, "labels": labels, "skip_damaged": config.skip_damaged}
    chosen_layout = layout or detect_layout(path).name
    # Options that do not apply to this layout are left out instead of refused: one --crop-face
    # serves an AffectNet --real and a RAF-DB --eval-real alike.
    accepted = {k: v for k, v in options.items() if k in LAYOUTS[chosen_layout].options}
    return open_labelled(path, split, config.classes, layout=chosen_layout, strict=config.strict, **accepted)


def open_datasets(config: DownstreamConfig) -> tuple[list[tuple[str, LabelledDataset]], LabelledDataset]:
    """The training datasets (named by role) and the evaluation dataset."""
    train: list[tuple[str, LabelledDataset]] = []
    if config.mode in ("real-only", "mixed"):
        train.append(("real", _open(config, config.real, config.real_split, config.real_layout)))
    if config.mode in ("synthetic-only", "mixed"):
        train.append(("synthetic", _open(config, config.synthetic, "train", None, config.synthetic_labels)))
    eval_path = config.eval_real or config.real
    evaluation = _open(config, eval_path, config.eval_split, config.eval_layout if config.eval_real else config.real_layout)
    for role, dataset in train:
        same_folder = Path(dataset.root).resolve() == Path(evaluation.root).resolve()
        if same_folder and (dataset.split == evaluation.split):
            raise ConfigError(
                f"the evaluation set is the {role} training set ({evaluation.name} at {evaluation.root}); "
                "give --eval-real a held-out split or dataset"
            )
    return train, evaluation


def finished_output(run: Path) -> DownstreamOutput:
    """The result of a run that already finished, from its metrics.json."""
    data = json.loads((run / METRICS_NAME).read_text())
    task = data.get("task", "classification")
    if task == "aus":
        from .au_metrics import AUMetrics as metrics
    else:
        metrics = ClassificationMetrics
    return DownstreamOutput(
        run, int(data["last"]["step"]), int(data["best"]["step"]),
        metrics.from_dict(data["best"]), metrics.from_dict(data["last"]),
        int(data["train"]["unreadable"]), task,
    )


def train_downstream(config: DownstreamConfig, hooks: TrainHooks | None = None) -> DownstreamOutput:
    """Train and evaluate one downstream classifier; see the module docstring for the run folder."""
    from accelerate import PartialState

    config = resolved_config(config)
    hooks = hooks or TrainHooks()
    # The process layout (accelerate launch) is known before the Accelerator is built.
    main = PartialState(cpu=config.cpu).is_main_process
    if prepare_run(config, main=main):
        if main:
            hooks.log(f"{config.out} is a finished run; its results are in {Path(config.out) / METRICS_NAME}")
        return finished_output(Path(config.out))
    from .downstream_loop import DownstreamTrainer

    trainer = DownstreamTrainer(config, hooks)
    try:
        trainer.setup()
        if trainer.main:
            for role, dataset in trainer.train_sets + [("eval", trainer.eval_set)]:
                hooks.log(f"{role}: {dataset.describe()}")
                if dataset.stats.summary():
                    hooks.log(f"{role}: left out {dataset.stats.summary()}")
            saved = Path(config.out) / CONFIG_NAME
            if not saved.is_file():
                write_json(saved, trainer.describe())
        trainer.accelerator.wait_for_everyone()
        trainer.resume()
        trainer.train()
        return trainer.finish()
    finally:
        trainer.close()
