"""The plan: what sample ``i`` of a dataset is, as a pure function of the config and ``i``.

Label, AUs, subject attributes, prompt and seed of sample ``i`` depend on nothing else: not on
``n``, the batch size, the number of processes or whether the run was resumed. That is what lets any
process make any shard without talking to the others.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..aus import AUVector, nearest_expression, prototype
from ..errors import ConfigError
from ..expressions import Expression, LabelSet, get_label_set, parse_expression
from ..pipelines.prompts import PromptBuilder, SubjectAttributes
from ..data.format import sample_key

_SEED_MASK = (1 << 63) - 1


def derive_seed(base_seed: int, index: int, stream: int = 0) -> int:
    """A 63-bit seed for sample ``index`` from the dataset's base seed alone; ``stream`` separates uses."""
    state = np.random.SeedSequence([base_seed & 0xFFFFFFFFFFFFFFFF, index, stream]).generate_state(2, np.uint32)
    return ((int(state[0]) << 32) | int(state[1])) & _SEED_MASK


@dataclass(frozen=True)
class PlanConfig:
    """Everything that decides what the samples are (and nothing that only decides how they are made)."""

    n: int
    base_seed: int = 0
    classes: int = 8
    label: int | None = None  # a fixed AffectNet label for every sample
    aus: str | None = None  # fixed AUs for every sample, canonical AUVector string
    prompt: str | None = None  # coarse text added to every caption

    def __post_init__(self):
        if self.n < 1:
            raise ConfigError(f"n must be >= 1, got {self.n}")
        if self.base_seed < 0:
            raise ConfigError(f"the seed must be >= 0, got {self.base_seed}")
        label_set = get_label_set(self.classes)
        if self.label is not None:
            label_set.index(self.label)  # raises when the label is not in the set

    def to_dict(self) -> dict:
        return asdict(self)


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
        self.prompts = prompts or PromptBuilder()
        self.fixed_aus = AUVector.parse(config.aus) if config.aus else None
        self.fixed_label = None if config.label is None else parse_expression(config.label)
        self.inferred_label: tuple[Expression, float] | None = None
        if self.fixed_label is None and self.fixed_aus is not None:
            # Fixed AUs without a label: the label is the expression whose prototype is nearest.
            self.inferred_label = nearest_expression(self.fixed_aus, self.label_set.expressions)
            self.fixed_label = self.inferred_label[0]

    def label_of(self, index: int) -> Expression:
        """Fixed, or balanced: each block of K consecutive samples holds each of the K labels once."""
        if self.fixed_label is not None:
            return self.fixed_label
        k = self.label_set.num_classes
        rng = np.random.default_rng(derive_seed(self.config.base_seed, index // k, stream=1))
        return self.label_set.expressions[int(rng.permutation(k)[index % k])]

    def aus_of(self, index: int, label: Expression) -> AUVector:
        return self.fixed_aus if self.fixed_aus is not None else prototype(label)

    def plan(self, index: int) -> SamplePlan:
        if not 0 <= index < self.config.n:
            raise ConfigError(f"sample index {index} is outside 0..{self.config.n - 1}")
        label = self.label_of(index)
        aus = self.aus_of(index, label)
        attributes = SubjectAttributes.draw(self.config.base_seed, index)
        prompt = self.prompts.build(label, aus, attributes, self.config.prompt)
        return SamplePlan(index, sample_key(index), label, aus, attributes, derive_seed(self.config.base_seed, index), prompt)
