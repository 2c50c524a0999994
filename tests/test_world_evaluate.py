"""``synfer evaluate`` tells a trained model from random weights on every metric it reports.

The world benchmark's trained model (``--model world``) and the random-weight ``tiny`` model each
generate a small balanced dataset; both are measured by ``evaluate`` against held-out faces of a
world neither was trained on (seed 7), with the shipped judge (features and expression accuracy) and
the shipped AU detector, both trained on another world than the generator, and the two evaluations
are set side by side by ``compare_evaluations`` (what ``synfer evaluate --compare`` prints). If the
metric code, a figure's direction, the shared image path or the plumbing between generate and
evaluate breaks, the trained model stops winning somewhere.
"""

from __future__ import annotations

import pytest

from synfer.assets import shipped_path

N = 64  # generated faces per model, 8 per expression
# What each figure's direction should be, written out here so that a flipped ``better`` fails too.
LOWER_IS_BETTER = ("fd/classifier", "kid/classifier", "per_class_kid/classifier", "au/mean_mae")
HIGHER_IS_BETTER = ("precision/classifier", "recall/classifier", "density/classifier", "coverage/classifier",
                    "judge/accuracy", "judge/balanced_accuracy", "au/macro_f1", "au/mean_pearson")
# Read against the real reference, not ranked: diversity has no better direction on its own.
UNRANKED = ("diversity/classifier", "diversity_real/classifier", "judge/real_accuracy", "judge/real_balanced_accuracy")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from synfer import EvaluateConfig, GenerateConfig, evaluate, generate
    from synfer.world import WorldConfig, make_world

    root = tmp_path_factory.mktemp("rank")
    real = root / "real"
    make_world(WorldConfig(n=300, seed=7, splits=(0.2, 0.0, 0.8)), real)  # 240 test faces, 30 per expression
    judge = f"classifier:{shipped_path('world-judge')}"
    found = {}
    # The world model draws identity captions of its training faces; tiny's toy tokenizer cannot take them.
    prompts = {"world": {"captions": "plain", "prompt_file": str(shipped_path("world").parent / "prompts.txt")}, "tiny": {}}
    for model in ("world", "tiny"):
        dataset = root / model
        generate(GenerateConfig(out=str(dataset), model=model, n=N, distribution="balanced", scheduler="dpm-solver++", steps=10,
                                guidance_scale=5.0, seed=0, device="cpu", batch_size=32, shard_size=64, **prompts[model]))
        found[model] = evaluate(EvaluateConfig(dataset=str(dataset), real=str(real), real_split="test", out=str(root / f"eval-{model}"),
                                               features=(judge,), judge=judge,
                                               au_detector=f"detector:{shipped_path('world-au-detector')}", kid_subset_size=N,
                                               kid_min_per_class=8, bootstrap_resamples=10, interval_resamples=50, device="cpu",
                                               workers=1))
        assert not any(found[model].flagged.values()), found[model].flagged  # independent judge and detector: nothing dependent
    return found


@pytest.fixture(scope="module")
def comparison(results):
    from synfer.eval.compare import compare_evaluations

    return compare_evaluations(results["world"], results["tiny"])


def test_the_two_evaluations_are_comparable(comparison):
    assert comparison.caveats == []  # same reference, judge and AU detector


@pytest.mark.parametrize("name", LOWER_IS_BETTER + HIGHER_IS_BETTER)
def test_the_trained_model_wins_on(comparison, name):
    row = {row.name: row for row in comparison.rows}[name]
    assert row.better == "A", {"world": row.a.value, "tiny": row.b.value}


def test_every_reported_figure_declares_the_expected_direction(results):
    figures = results["world"].figures()
    declared = {name: figure.better for name, figure in figures.items()}
    expected = {**dict.fromkeys(LOWER_IS_BETTER, "lower"), **dict.fromkeys(HIGHER_IS_BETTER, "higher"), **dict.fromkeys(UNRANKED)}
    assert declared == expected
