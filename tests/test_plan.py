from collections import Counter

import pytest

from synfer.aus import AUVector, prototype
from synfer.errors import ConfigError, LabelError
from synfer.expressions import Expression
from synfer.synth.plan import PlanConfig, Planner, derive_seed


def test_seed_depends_on_base_seed_and_index_only():
    assert derive_seed(0, 5) == derive_seed(0, 5)
    assert len({derive_seed(0, i) for i in range(1000)}) == 1000
    assert derive_seed(0, 5) != derive_seed(1, 5)
    assert 0 <= derive_seed(2**40, 10**9) < 2**63


def test_plan_of_a_sample_does_not_depend_on_n():
    small, large = Planner(PlanConfig(n=10, base_seed=3)), Planner(PlanConfig(n=10_000, base_seed=3))
    for i in range(10):
        assert small.plan(i) == large.plan(i)


def test_balanced_labels_and_prototype_aus():
    planner = Planner(PlanConfig(n=80, classes=7))
    plans = [planner.plan(i) for i in range(70)]
    assert Counter(p.label for p in plans) == {e: 10 for e in Expression if e is not Expression.CONTEMPT}
    assert all(p.aus == prototype(p.label) for p in plans)
    assert all(p.prompt for p in plans)


def test_fixed_aus_infer_label_and_fixed_label_wins():
    planner = Planner(PlanConfig(n=4, aus="AU1:3,AU2:3,AU5:3,AU26:3"))
    assert planner.inferred_label[0] is Expression.SURPRISE
    assert planner.plan(0).aus == AUVector.parse("1,2,5,26")
    chosen = Planner(PlanConfig(n=4, aus="6,12", label=2))
    assert chosen.inferred_label is None and chosen.plan(1).label is Expression.SAD


def test_config_validation():
    with pytest.raises(ConfigError):
        PlanConfig(n=0)
    with pytest.raises(LabelError):
        PlanConfig(n=1, classes=7, label=7)
    with pytest.raises(ConfigError, match="outside"):
        Planner(PlanConfig(n=3)).plan(3)
