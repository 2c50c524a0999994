"""The plan: what sample ``i`` of a dataset is, as a pure function of the config and ``i``.

Subject attributes, seed and AUs of sample ``i`` depend on nothing else: not on ``n``, the batch
size, the number of processes or whether the run was resumed. That is what lets any process make any
shard without talking to the others.

Labels follow a distribution (``balanced``, ``affectnet`` or custom weights) with *exact* counts:
Hamilton's largest-remainder apportionment of ``n``. Exact counts for every ``n`` and labels that
ignore ``n`` cannot both hold (see :mod:`synfer.synth.apportion`), so the guarantee is:

* the counts per label are exactly Hamilton's (ties between equal remainders broken by seeded lot);
* the label of sample ``i`` comes from one sequence fixed by (label set, weights, base seed), except
  for at most ``floor(K / 2)`` samples (``K`` labels with positive weight), listed in
  :attr:`Planner.adjusted`, whose labels (and so AUs and caption) also depend on ``n``. There are
  none for ``balanced`` and none whenever every quota is whole, e.g. ``affectnet`` at any ``--scale``.
* batch size, world size and resume state never enter.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..aus import AUVector, nearest_expression
from ..data.format import sample_key
from ..errors import ConfigError
from ..expressions import (
    AFFECTNET_TRAIN_COUNTS,
    Expression,
    LabelSet,
    affectnet_train_size,
    get_label_set,
    parse_expression,
)
from ..prompts import CAPTION_STYLES, DEFAULT_CAPTION_STYLE, PromptBuilder, SubjectAttributes
from ..registry import Registry
from .apportion import Apportionment, apportion, integer_weights
from .au_sources import AU_SOURCES, AUSource
from .seeds import LABEL_STREAM, PROMPT_STREAM, derive_seed

__all__ = ["PlanConfig", "Planner", "SamplePlan", "derive_seed", "normalize_label_weights", "read_label_weights", "scaled_size"]


def _balanced(label_set: LabelSet, config: PlanConfig) -> tuple[float, ...]:
    return (1,) * label_set.num_classes


def _affectnet(label_set: LabelSet, config: PlanConfig) -> tuple[float, ...]:
    return tuple(AFFECTNET_TRAIN_COUNTS[e] for e in label_set.expressions)


def _custom(label_set: LabelSet, config: PlanConfig) -> tuple[float, ...]:
    weights = dict(config.weights or ())
    for name in weights:
        label_set.index(parse_expression(name))  # raises when the label is not in the set
    return tuple(weights.get(e.label, 0) for e in label_set.expressions)


# --distribution NAME -> weights per class of the label set; a JSON file gives "custom" weights.
LABEL_DISTRIBUTIONS: Registry[Callable[[LabelSet, PlanConfig], tuple[float, ...]]] = Registry("label distribution")
LABEL_DISTRIBUTIONS.register("balanced", _balanced)
LABEL_DISTRIBUTIONS.register("affectnet", _affectnet)
LABEL_DISTRIBUTIONS.register("custom", _custom)

_SCALE = re.compile(r"^\s*(\d+)\s*x?\s*$", re.IGNORECASE)


def scaled_size(scale: str, classes: int | str = 8) -> int:
    """``"1x"`` .. ``"5x"``: that multiple of AffectNet's training size (287,651 for 8 classes, 283,901 for 7)."""
    match = _SCALE.match(str(scale))
    if match is None or int(match[1]) < 1:
        raise ConfigError(f"unknown scale {scale!r} (accepted: 1x, 2x, 3x, 4x, 5x or any positive multiple)")
    return int(match[1]) * affectnet_train_size(get_label_set(classes))


def normalize_label_weights(items) -> tuple[tuple[str, float], ...]:
    """(label, weight) pairs with labels as canonical names, in AffectNet id order; each label once."""
    weights: dict[str, float] = {}
    for key, value in items:
        name = parse_expression(key).label
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"the label weight of {key!r} must be a number, got {value!r}")
        if name in weights:
            raise ConfigError(f"label {name!r} is given twice in the label weights")
        weights[name] = value
    integer_weights(list(weights.values()))  # finite, >= 0, one positive
    return tuple(sorted(weights.items(), key=lambda item: int(parse_expression(item[0]))))


def read_label_weights(path: str | Path) -> tuple[tuple[str, float], ...]:
    """A JSON file mapping label (name or AffectNet id) to weight, e.g. ``{"happy": 2, "sad": 1}``.

    Labels the file does not name get weight 0.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise ConfigError(f"cannot read label weights {path}: {error.strerror or error}") from None
    except ValueError as error:
        raise ConfigError(f"label weights {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f'label weights {path} must be a JSON object mapping label to weight, e.g. {{"happy": 2, "sad": 1}}')
    return normalize_label_weights(data.items())


def read_prompt_file(path: str | Path) -> tuple[tuple[str, ...], str]:
    """The non-empty lines of a prompt file (UTF-8 text, one coarse text a line) and the SHA-256 of its bytes."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"prompt file {str(path)!r} does not exist")
    try:
        data = path.read_bytes()
        lines = tuple(line.strip() for line in data.decode("utf-8").splitlines() if line.strip())
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read prompt file {path}: {error}") from None
    if not lines:
        raise ConfigError(f"prompt file {path} has no non-empty lines")
    return lines, hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class PlanConfig:
    """Everything that decides what the samples are (and nothing that only decides how they are made)."""

    n: int
    base_seed: int = 0
    classes: int = 8
    label: int | None = None  # a fixed AffectNet label for every sample
    aus: str | None = None  # fixed AUs for every sample, canonical AUVector string
    prompt: str | None = None  # coarse text added to every caption
    distribution: str = "balanced"  # a key of LABEL_DISTRIBUTIONS
    weights: tuple[tuple[str, float], ...] | None = None  # "custom" only: (expression name, weight)
    au_source: str | None = None  # a key of AU_SOURCES; None: "fixed" with aus, else "prototype"
    au_table: str | None = None  # "empirical" only: the AU table file ...
    au_table_sha256: str | None = None  # ... and its content hash
    captions: str = DEFAULT_CAPTION_STYLE  # a key of synfer.prompts.CAPTION_STYLES
    prompt_file: str | None = None  # coarse texts, one per line, one drawn per sample ...
    prompt_file_sha256: str | None = None  # ... and the file's content hash

    def __post_init__(self):
        if self.n < 1:
            raise ConfigError(f"n must be >= 1, got {self.n}")
        if self.base_seed < 0:
            raise ConfigError(f"the seed must be >= 0, got {self.base_seed}")
        label_set = get_label_set(self.classes)
        if self.label is not None:
            label_set.index(self.label)  # raises when the label is not in the set
        if self.distribution not in LABEL_DISTRIBUTIONS:
            named = ", ".join(name for name in LABEL_DISTRIBUTIONS if name != "custom")
            raise ConfigError(f"unknown label distribution {self.distribution!r} (accepted: {named}, or a JSON file of weights)")
        if (self.distribution == "custom") != (self.weights is not None):
            raise ConfigError("label weights go with the 'custom' distribution, and only with it")
        if self.label is not None and self.distribution != "balanced":
            raise ConfigError("a fixed label cannot be combined with a label distribution; give one or the other")
        if self.aus is not None and self.label is None and self.distribution != "balanced":
            raise ConfigError(
                "fixed AUs without a label take the label of the nearest prototype; "
                "they cannot be combined with a label distribution (give a label, or drop the fixed AUs)"
            )
        if self.weights is not None:
            object.__setattr__(self, "weights", normalize_label_weights(self.weights))
            integer_weights(LABEL_DISTRIBUTIONS["custom"](label_set, self))
        source = self.au_source or ("fixed" if self.aus is not None else "prototype")
        object.__setattr__(self, "au_source", source)
        AU_SOURCES.check(source)
        if (source == "fixed") != (self.aus is not None):
            raise ConfigError("fixed AUs (--aus) go with the 'fixed' AU source, and only with it")
        if (source == "empirical") != (self.au_table is not None):
            raise ConfigError("an AU table (--au-table) goes with the 'empirical' AU source, and only with it")
        CAPTION_STYLES.check(self.captions)
        if source == "empirical" and not self.au_table_sha256:
            raise ConfigError("the 'empirical' AU source needs the sha256 of its table")
        if self.prompt_file is not None and self.prompt is not None:
            raise ConfigError("--prompt and --prompt-file both give the coarse text; give one of them")
        if (self.prompt_file is None) != (self.prompt_file_sha256 is None):
            raise ConfigError("a prompt file goes with the sha256 of its content")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["weights"] = dict(self.weights) if self.weights is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> PlanConfig:
        """The inverse of :meth:`to_dict` (as read back from a manifest)."""
        data = dict(data)
        if data.get("weights") is not None:
            data["weights"] = tuple(data["weights"].items())
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class SamplePlan:
    index: int
    key: str
    label: Expression
    aus: AUVector
    attributes: SubjectAttributes
    seed: int
    prompt: str


class Planner:
    """Turns a :class:`PlanConfig` into per-sample plans; the prompt builder supplies the captions."""

    def __init__(self, config: PlanConfig, prompts: PromptBuilder | None = None):
        self.config = config
        self.label_set: LabelSet = get_label_set(config.classes)
        self.prompts = prompts or PromptBuilder(style=config.captions)
        if self.prompts.style != config.captions:
            raise ConfigError(f"the plan asks for {config.captions!r} captions, the prompt builder writes {self.prompts.style!r} ones")
        self.au_source: AUSource = AU_SOURCES[config.au_source](config)
        self.coarse_texts = None
        if config.prompt_file is not None:
            self.coarse_texts, sha256 = read_prompt_file(config.prompt_file)
            if sha256 != config.prompt_file_sha256:
                raise ConfigError(f"prompt file {config.prompt_file} has changed since this plan was made (its sha256 differs)")
        self.fixed_label = None if config.label is None else parse_expression(config.label)
        self.inferred_label: tuple[Expression, float] | None = None
        if self.fixed_label is None and config.au_source == "fixed":
            # Fixed AUs without a label: the label is the expression whose prototype is nearest.
            self.inferred_label = nearest_expression(AUVector.parse(config.aus), self.label_set.expressions)
            self.fixed_label = self.inferred_label[0]
        missing = [e.label for e in self.possible_labels if not self.au_source.supports(e)]
        if missing:
            raise ConfigError(
                f"the {config.au_source} AU source has no AUs for {', '.join(missing)}; "
                "add rows with those labels to the AU table or give them weight 0"
            )

    @cached_property
    def weights(self) -> tuple[int, ...]:
        """Integer weight of each class of the label set (the fixed label alone when there is one)."""
        if self.fixed_label is not None:
            return tuple(int(e is self.fixed_label) for e in self.label_set.expressions)
        return integer_weights(LABEL_DISTRIBUTIONS[self.config.distribution](self.label_set, self.config))

    @property
    def possible_labels(self) -> list[Expression]:
        return [e for e, w in zip(self.label_set.expressions, self.weights) if w > 0]

    @cached_property
    def apportionment(self) -> Apportionment:
        """All n labels at once (about a second per million samples), computed on first use."""
        return apportion(self.weights, self.config.n, derive_seed(self.config.base_seed, 0, stream=LABEL_STREAM))

    @property
    def counts(self) -> dict[Expression, int]:
        """Samples per expression: exactly the largest-remainder apportionment of n."""
        return {e: int(c) for e, c in zip(self.label_set.expressions, self.apportionment.counts)}

    @property
    def adjusted(self) -> tuple[int, ...]:
        """The samples whose label depends on n (at most K // 2; usually none)."""
        return self.apportionment.adjusted

    def label_of(self, index: int) -> Expression:
        if self.fixed_label is not None:
            return self.fixed_label
        return self.label_set.expressions[int(self.apportionment.labels[index])]

    def aus_of(self, index: int, label: Expression) -> AUVector:
        return self.au_source(index, label)

    def coarse_of(self, index: int) -> str | None:
        """The coarse text of sample ``index``: ``--prompt``, or a line of the prompt file drawn by the sample's seed."""
        if self.coarse_texts is None:
            return self.config.prompt
        rng = np.random.default_rng(derive_seed(self.config.base_seed, index, stream=PROMPT_STREAM))
        return self.coarse_texts[int(rng.integers(len(self.coarse_texts)))]

    def plan(self, index: int) -> SamplePlan:
        if not 0 <= index < self.config.n:
            raise ConfigError(f"sample index {index} is outside 0..{self.config.n - 1}")
        label = self.label_of(index)
        aus = self.aus_of(index, label)
        attributes = SubjectAttributes.draw(self.config.base_seed, index)
        prompt = self.prompts.build(label, aus, attributes, self.coarse_of(index))
        return SamplePlan(index, sample_key(index), label, aus, attributes, derive_seed(self.config.base_seed, index), prompt)
