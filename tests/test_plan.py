import json
from collections import Counter

import numpy as np
import pytest

from synfer.aus import PROTOTYPE_AUS, AUVector
from synfer.errors import ConfigError, LabelError
from synfer.expressions import AFFECTNET_TRAIN_COUNTS, Expression
from synfer.synth.apportion import largest_remainder
from synfer.synth.au_sources import COOCCURRING_AUS
from synfer.synth.plan import PlanConfig, Planner, derive_seed, read_label_weights, scaled_size


def test_seed_depends_on_base_seed_and_index_only():
    assert derive_seed(0, 5) == derive_seed(0, 5)
    assert len({derive_seed(0, i) for i in range(1000)}) == 1000
    assert derive_seed(0, 5) != derive_seed(1, 5)
    assert 0 <= derive_seed(2**40, 10**9) < 2**63


def custom(weights, **kwargs):
    return PlanConfig(distribution="custom", weights=tuple(weights.items()), **kwargs)


@pytest.mark.parametrize(
    "make",
    [
        lambda n: PlanConfig(n=n, base_seed=3),
        lambda n: PlanConfig(n=n, base_seed=3, classes=7, distribution="affectnet"),
        lambda n: custom({"happy": 0.5, "sad": 0.3, "anger": 0.2}, n=n, base_seed=3),
    ],
    ids=["balanced", "affectnet", "custom"],
)
def test_plan_of_a_sample_does_not_depend_on_n_except_the_adjusted_samples(make):
    for n in (10, 97, 1001):
        small, large = Planner(make(n)), Planner(make(5000))
        same = [i for i in range(n) if i not in small.adjusted]
        assert len(small.adjusted) <= small.label_set.num_classes // 2
        assert [small.plan(i) for i in same] == [large.plan(i) for i in same]
        # An adjusted sample keeps everything but its label (and what follows from it).
        for i in small.adjusted:
            a, b = small.plan(i), large.plan(i)
            assert a.label != b.label and (a.seed, a.attributes, a.key) == (b.seed, b.attributes, b.key)


def test_balanced_and_whole_quotas_adjust_nothing():
    assert Planner(PlanConfig(n=1001)).adjusted == ()
    assert Planner(custom({"happy": 3, "sad": 1}, n=400)).adjusted == ()


def test_plans_are_pure_functions_of_the_index():
    # Any order, any subset, a fresh planner: as when shards go to other ranks or a run resumes.
    config = PlanConfig(n=200, base_seed=9, distribution="affectnet")
    in_order = [Planner(config).plan(i) for i in range(200)]
    planner = Planner(config)
    interleaved = {i: planner.plan(i) for rank in (1, 0) for i in range(rank * 7, 200, 14)}
    interleaved.update({i: planner.plan(i) for i in reversed(range(200)) if i not in interleaved})
    assert [interleaved[i] for i in range(200)] == in_order


@pytest.mark.parametrize(
    "config, expected",
    [
        (PlanConfig(n=70, classes=7), {e: 10 for e in Expression if e is not Expression.CONTEMPT}),
        (custom({"happy": 2, "surprise": 0, "sad": 1}, n=9), {Expression.HAPPY: 6, Expression.SAD: 3}),
        (custom({"happy": 0.5, "sad": 0.3, "fear": 0.2}, n=7), {Expression.HAPPY: 4, Expression.SAD: 2, Expression.FEAR: 1}),
    ],
)
def test_label_counts_match_the_distribution_exactly(config, expected):
    planner = Planner(config)
    counts = Counter(planner.plan(i).label for i in range(config.n))
    assert counts == expected
    assert {e: c for e, c in planner.counts.items() if c} == expected


def test_affectnet_distribution_counts_are_largest_remainder():
    n = 1234
    planner = Planner(PlanConfig(n=n, distribution="affectnet"))
    weights = [AFFECTNET_TRAIN_COUNTS[e] for e in Expression]
    hamilton = largest_remainder(n, weights)
    counts = Counter(int(planner.label_of(i)) for i in range(n))
    # Hamilton's counts up to the order of tied remainders, which there are none of here.
    assert [counts.get(k, 0) for k in range(8)] == hamilton.tolist()


def test_scale_sets_n_to_multiples_of_affectnet():
    assert scaled_size("1x") == 287_651 and scaled_size("1x", classes=7) == 283_901
    assert scaled_size("5x") == 5 * 287_651 and scaled_size("3", 7) == 3 * 283_901
    for bad in ("0x", "x", "1.5x", "-2x"):
        with pytest.raises(ConfigError, match="unknown scale"):
            scaled_size(bad)


def test_prototype_aus_are_jittered_prototypes_and_pure():
    planner = Planner(PlanConfig(n=4000, base_seed=1))
    plans = [planner.plan(i) for i in range(4000)]
    assert [planner.plan(i).aus for i in (5, 77, 3999)] == [plans[i].aus for i in (5, 77, 3999)]
    dropped = added = total = 0
    for plan in plans:
        active = set(plan.aus.active)
        prototype = set(PROTOTYPE_AUS[plan.label])
        if plan.label is Expression.CONTEMPT and active & {"L12", "L14"}:
            prototype = {"L12", "L14"}
        extra = active - prototype
        assert extra <= set(COOCCURRING_AUS[plan.label])
        assert len(active & prototype) >= (len(prototype) + 1) // 2
        assert all(1.0 <= plan.aus[name] <= 5.0 for name in active)
        dropped += len(prototype - active)
        added += len(extra)
        total += len(prototype)
        if plan.label is Expression.NEUTRAL:
            assert plan.aus == AUVector()
    assert 0.03 < dropped / total < 0.12  # about 10% per AU, capped at half the prototype
    assert added > 0
    intensities = np.array([plan.aus["AU12"] for plan in plans if plan.label is Expression.HAPPY and plan.aus["AU12"]])
    assert 2.5 < intensities.mean() < 3.5 and intensities.std() > 0.4
    sides = Counter(bool({"L12", "L14"} & set(p.aus.active)) for p in plans if p.label is Expression.CONTEMPT)
    assert sides[True] > 100 and sides[False] > 100


def test_fixed_aus_infer_label_and_fixed_label_wins():
    planner = Planner(PlanConfig(n=4, aus="AU1:3,AU2:3,AU5:3,AU26:3"))
    assert planner.inferred_label[0] is Expression.SURPRISE and planner.config.au_source == "fixed"
    assert planner.plan(0).aus == AUVector.parse("1,2,5,26")
    chosen = Planner(PlanConfig(n=4, aus="6,12", label=2))
    assert chosen.inferred_label is None and chosen.plan(1).label is Expression.SAD
    assert chosen.counts[Expression.SAD] == 4


def test_config_round_trips_through_json():
    for config in (
        PlanConfig(n=5, aus="AU6:3", label=1),
        custom({"happy": 0.7, "sad": 0.3}, n=10, base_seed=4),
        PlanConfig(n=3, au_source="empirical", au_table="/x/t.csv", au_table_sha256="ab"),
    ):
        assert PlanConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_config_validation():
    with pytest.raises(ConfigError):
        PlanConfig(n=0)
    with pytest.raises(LabelError):
        PlanConfig(n=1, classes=7, label=7)
    with pytest.raises(ConfigError, match="outside"):
        Planner(PlanConfig(n=3)).plan(3)
    with pytest.raises(ConfigError, match="unknown label distribution"):
        PlanConfig(n=1, distribution="zipf")
    with pytest.raises(ConfigError, match="custom"):
        PlanConfig(n=1, weights=(("happy", 1),))
    with pytest.raises(ConfigError, match="fixed label"):
        PlanConfig(n=1, label=1, distribution="affectnet")
    with pytest.raises(ConfigError, match="'fixed' AU source"):
        PlanConfig(n=1, aus="6", au_source="prototype")
    with pytest.raises(ConfigError, match="--au-table"):
        PlanConfig(n=1, au_source="empirical")
    with pytest.raises(ConfigError, match="unknown AU source"):
        PlanConfig(n=1, au_source="dreamed")
    with pytest.raises(LabelError, match="not in label set"):
        custom({"contempt": 1, "happy": 1}, n=4, classes=7)
    with pytest.raises(ConfigError, match="positive"):
        custom({"happy": 0}, n=4)
    with pytest.raises(ConfigError, match="given twice"):
        custom({"happy": 1, "1": 2}, n=4)
    with pytest.raises(ConfigError, match="nearest prototype"):
        PlanConfig(n=1, aus="6,12", distribution="affectnet")
    assert custom({"3": 1, "Happiness": 2}, n=4).weights == (("happy", 2), ("surprise", 1))


def test_read_label_weights(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"sad": 1, "1": 2.5, "anger": 0}))
    assert read_label_weights(path) == (("happy", 2.5), ("sad", 1), ("anger", 0))
    for text, fragment in (
        ("{", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"happy": "lots"}', "must be a number"),
        ('{"happy": 1, "happiness": 2}', "given twice"),
        ('{"happy": -1}', ">= 0"),
        ('{"joyous": 1}', "unknown expression"),
    ):
        path.write_text(text)
        with pytest.raises((ConfigError, LabelError), match=fragment):
            read_label_weights(path)
    with pytest.raises(ConfigError, match="cannot read"):
        read_label_weights(tmp_path / "missing.json")
