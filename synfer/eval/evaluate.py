"""``evaluate()``: how good a synthetic dataset is, measured against real faces with independent models.

```python
from synfer.eval.evaluate import EvaluateConfig, evaluate

result = evaluate(EvaluateConfig("runs/balanced", real="/data/AffectNet", out="runs/eval",
                                 features=("dinov2:/models/dinov2-large",), judge="classifier:/models/fer-judge"))
result.value("fd/dinov2"), result.value("judge/accuracy"), result.figures()
```

What it measures (docs/evaluation.md):

- distribution metrics (``synfer.eval.distribution``) in the feature space of each ``--features``
  backbone (DINOv2 by default; Inception for comparison with published FIDs; CLIP): FD with a bootstrap
  interval, FD-infinity from 5,000 generated samples, KID, precision / recall / density / coverage,
  KID per class and within-class diversity;
- expression accuracy by an independent ``--judge`` on the generated set and on the real reference
  (its ceiling), refused when the judge's weights are ones that guided or relabelled the dataset unless
  ``allow_dependent_judge``, and then marked ``dependent`` everywhere;
- with ``--au-detector``, AU faithfulness (``synfer.eval.au_faithfulness``), marked ``self-consistency``
  when the detector annotated the model's training AUs.

The real reference is checked first: it must not hold the layout references of the generated samples
(``synfer.eval.reference``), and face crops or whole images are one explicit choice. Every model's
outputs are cached per (images, model fingerprint, preprocessing) (``synfer.eval.feature_cache``).
The evaluation folder (docs/formats.md, "Evaluation") is built aside and swapped in whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import ConfigError, DatasetError
from ..progress import Reporter, SilentReporter
from .feature_backbones import FEATURE_BACKBONES, parse_feature_spec
from .judges import JUDGES, JudgeOptions
from .preprocess import check_resize_mode

METRICS_NAME = "metrics.json"
RECORD_NAME = "evaluation.json"
EVALUATION_FORMAT = "synfer-evaluation"
EVALUATION_VERSION = 1
REAL_CROPS = ("whole", "face")
DTYPES = ("float32", "float16", "bfloat16")
# Settings that do not change any figure: a rerun that differs only in them refreshes the folder.
NOT_COMPARED = frozenset({"out", "overwrite", "workers", "batch_size", "cache", "device"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def _positive(value, option: str, minimum: int = 1) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise ConfigError(f"{option} must be an integer >= {minimum}, got {value!r}")


def _triple(value, option: str):
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        numbers = tuple(float(v) for v in items)
    except ValueError:
        raise ConfigError(f"{option} takes three numbers R,G,B, got {value!r}") from None
    if len(numbers) != 3:
        raise ConfigError(f"{option} takes three numbers R,G,B, got {value!r}")
    return numbers


@dataclass(frozen=True)
class EvaluateConfig:
    """Everything ``synfer evaluate`` takes; see ``synfer evaluate --help`` for each option.

    ``features``: ``KIND:PATH`` backbones (a bare path is DINOv2). ``judge``: ``classifier:DIR`` or
    ``onnx:FILE`` (with ``judge_classes``). ``au_detector``: ``KIND:PATH`` for
    ``synfer.labelers.au_detectors.load_au_detector``. At least one of the three is needed.
    """

    dataset: str
    real: str
    out: str
    real_split: str = "val"
    real_layout: str | None = None
    real_crop: str = "whole"
    numbering: str | None = None
    labels: str | None = None
    features: tuple[str, ...] = ()
    feature_size: int | None = None
    resize: str = "squash"
    judge: str | None = None
    judge_classes: str | None = None
    judge_size: int | None = None
    judge_mean: tuple[float, float, float] | None = None
    judge_std: tuple[float, float, float] | None = None
    judge_outputs: str = "exact"
    allow_dependent_judge: bool = False
    au_detector: str | None = None
    au_threshold: float | None = None
    layout_dir: str | None = None
    drop_layout_references: bool = False
    max_generated: int | None = None
    max_real: int | None = None
    bootstrap_resamples: int = 100
    interval_resamples: int = 1000
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    kid_min_per_class: int = 50
    samples_per_class: int = 6
    batch_size: int = 64
    workers: int | None = None
    device: str = "auto"
    dtype: str = "float32"
    cache: str | None = None
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self):
        object.__setattr__(self, "features", tuple(self.features or ()))
        object.__setattr__(self, "judge_mean", _triple(self.judge_mean, "--judge-mean"))
        object.__setattr__(self, "judge_std", _triple(self.judge_std, "--judge-std"))
        if not (self.features or self.judge or self.au_detector):
            raise ConfigError("nothing to measure: give --features KIND:PATH, --judge KIND:PATH and/or --au-detector KIND:PATH")
        kinds = [parse_feature_spec(spec)[0] for spec in self.features]
        if len(set(kinds)) != len(kinds):
            raise ConfigError(f"give each feature backbone kind once (got {', '.join(kinds)}; kinds: {FEATURE_BACKBONES.accepted()})")
        if self.feature_size is not None and "dinov2" not in kinds:
            raise ConfigError("--feature-size sets the input size of dinov2 backbones; the other kinds have their own")
        if self.judge is not None:
            kind, _ = JUDGES.parse(self.judge)
            if kind != "onnx" and (self.judge_classes or self.judge_size or self.judge_mean or self.judge_std):
                raise ConfigError("--judge-classes, --judge-size, --judge-mean and --judge-std are for onnx: judges; "
                                  "a classifier: judge declares them in its config.json")
            self.judge_options()
        elif self.allow_dependent_judge or self.judge_classes:
            raise ConfigError("--allow-dependent-judge and --judge-classes apply to a --judge")
        if self.au_detector is not None:
            kind, sep, path = str(self.au_detector).partition(":")
            if not (kind and sep and path):
                raise ConfigError(f"an AU detector is given as KIND:PATH (e.g. opengraphau:FILE, detector:DIR), got {self.au_detector!r}")
        elif self.au_threshold is not None:
            raise ConfigError("--au-threshold applies to an --au-detector")
        if self.au_threshold is not None and not self.au_threshold >= 0:
            raise ConfigError(f"--au-threshold must be >= 0, got {self.au_threshold}")
        if self.real_crop not in REAL_CROPS:
            raise ConfigError(f"unknown --real-crop {self.real_crop!r} (accepted: {', '.join(REAL_CROPS)})")
        check_resize_mode(self.resize)
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown --dtype {self.dtype!r} (accepted: {', '.join(DTYPES)})")
        if self.dtype != "float32" and self.device == "cpu":
            raise ConfigError(f"--dtype {self.dtype} is for GPUs; on the CPU features are computed in float32")
        if self.labels is not None and not _NAME.match(self.labels):
            raise ConfigError(f"--labels {self.labels!r} must name a file labels/NAME.parquet (letters, digits, '-', '_')")
        for name in ("max_generated", "max_real", "kid_subsets", "batch_size", "samples_per_class"):
            _positive(getattr(self, name), f"--{name.replace('_', '-')}")
        _positive(self.feature_size, "--feature-size", 8)
        _positive(self.judge_size, "--judge-size", 8)
        _positive(self.kid_subset_size, "--kid-subset-size", 2)
        _positive(self.kid_min_per_class, "--kid-min-per-class", 2)
        _positive(self.bootstrap_resamples, "--bootstrap-resamples", 0)
        _positive(self.interval_resamples, "--interval-resamples", 0)
        _positive(self.workers, "--workers", 1)
        _positive(self.seed, "--seed", 0)
        for name in ("dataset", "real"):
            if not Path(getattr(self, name)).exists():
                raise DatasetError(f"--{name if name == 'real' else 'dataset'} {getattr(self, name)!r} does not exist")
        if Path(self.out).resolve() in (Path(self.dataset).resolve(), Path(self.real).resolve()):
            raise ConfigError("--out must be a folder of its own, not the dataset or the real reference")

    def judge_options(self) -> JudgeOptions:
        classes = tuple(c for c in self.judge_classes.split(",") if c.strip()) if self.judge_classes else None
        return JudgeOptions(classes, self.judge_size, self.judge_mean, self.judge_std, self.judge_outputs, self.resize)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["features"] = list(self.features)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> EvaluateConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["features"] = tuple(values.get("features") or ())
        return cls(**values)


# -- the result ------------------------------------------------------------------------------------


FIGURE_ORDER = ("fd", "fd_infinity", "kid", "per_class_kid", "precision", "recall", "density", "coverage", "diversity",
                "diversity_real", "judge/accuracy", "judge/balanced_accuracy", "judge/real_accuracy",
                "judge/real_balanced_accuracy", "au/macro_f1", "au/mean_pearson", "au/mean_mae")


def figure_order(name: str) -> tuple[int, str]:
    """Sort key: distribution figures by metric (then backbone), then the judge's, then the AU figures."""
    metric = name.rsplit("/", 1)[0] if not name.startswith(("judge/", "au/")) else name
    return (FIGURE_ORDER.index(metric) if metric in FIGURE_ORDER else len(FIGURE_ORDER), name)


@dataclass(frozen=True)
class Figure:
    """One headline number: its value, interval or std, which way is better, and its flags."""

    name: str
    value: float | None
    ci: list[float] | None = None
    std: float | None = None
    better: str | None = None  # "lower", "higher", or None (read against the real figure)
    flags: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"value": self.value, "ci": self.ci, "std": self.std, "better": self.better, "flags": list(self.flags)}

    @classmethod
    def from_dict(cls, name: str, data: dict) -> Figure:
        return cls(name, data.get("value"), data.get("ci"), data.get("std"), data.get("better"), tuple(data.get("flags") or ()))


@dataclass
class EvaluateResult:
    """An evaluation: the folder, every figure (``metrics``: the content of metrics.json) and what was computed."""

    out: Path
    metrics: dict
    computed: dict = field(default_factory=dict)  # side -> model -> images computed now (the rest came from the cache)
    seconds: float = 0.0

    def figures(self) -> dict[str, Figure]:
        """Every headline figure by name (``fd/dinov2``, ``judge/accuracy``, ``au/macro_f1``...), in reading order."""
        found = self.metrics.get("figures", {})
        return {name: Figure.from_dict(name, found[name]) for name in sorted(found, key=figure_order)}

    def value(self, name: str) -> float | None:
        figures = self.metrics.get("figures", {})
        if name not in figures:
            raise KeyError(f"no figure {name!r} in {self.out} (figures: {', '.join(figures)})")
        return figures[name]["value"]

    @property
    def flagged(self) -> dict[str, list[str]]:
        return self.metrics.get("flags", {})

    @classmethod
    def load(cls, out: str | Path) -> EvaluateResult:
        """A finished evaluation folder, read back."""
        path = Path(out) / METRICS_NAME
        if not path.is_file():
            raise DatasetError(f"{out} holds no finished evaluation (no {METRICS_NAME}); make one with synfer evaluate")
        try:
            metrics = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise DatasetError(f"cannot read {path}: {error}") from None
        if metrics.get("format") != EVALUATION_FORMAT:
            raise DatasetError(f"{path} is not a synfer evaluation (format {metrics.get('format')!r})")
        return cls(Path(out), metrics, metrics.get("cache", {}).get("computed", {}))


# -- the stage -------------------------------------------------------------------------------------


def evaluate(config: EvaluateConfig, reporter: Reporter | None = None, *,
             load_au_detector: Callable | None = None) -> EvaluateResult:
    """Measure the dataset ``config`` names (see the module docstring); returns the figures, also in ``config.out``.

    ``load_au_detector(spec, device)`` loads ``config.au_detector`` (default:
    :func:`synfer.labelers.au_detectors.load_au_detector`; tests pass a stand-in).
    """
    from .run import run_evaluation

    return run_evaluation(config, reporter or SilentReporter(), load_au_detector)


def record_of(config: EvaluateConfig) -> dict:
    """What an evaluation folder's ``evaluation.json`` holds: the settings, compared on a rerun."""
    return {"format": EVALUATION_FORMAT, "version": EVALUATION_VERSION, "config": config.to_dict()}
