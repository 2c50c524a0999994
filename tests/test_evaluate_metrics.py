"""The figures evaluate adds to the statistics core: judge accuracy with intervals, AU faithfulness, independence, the cache."""

import json

import numpy as np
import pytest

from synfer.aus import AU_INDEX, NUM_AUS
from synfer.errors import DatasetError
from synfer.eval.accuracy import judge_figures, restricted_predictions
from synfer.eval.au_faithfulness import au_faithfulness
from synfer.eval.feature_cache import Chunk, FeatureCache
from synfer.eval.independence import au_detector_status, dependence, recorded_models
from synfer.eval.intervals import fisher_interval, multinomial_replicates
from synfer.expressions import AFFECTNET7, AFFECTNET8, Expression

HASH_A, HASH_B = "a" * 64, "b" * 64


def one_hot(indices, k):
    scores = np.zeros((len(indices), k))
    scores[np.arange(len(indices)), indices] = 1.0
    return scores


def test_judge_figures_match_a_direct_count_and_their_intervals_hold_them():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 8, 400)
    predicted = np.where(rng.random(400) < 0.6, targets, rng.integers(0, 8, 400))
    figures = judge_figures("generated", targets, one_hot(predicted, 8), AFFECTNET8.expressions, AFFECTNET8, seed=1)
    assert figures.accuracy == pytest.approx(np.mean(predicted == targets))
    recalls = [np.mean(predicted[targets == k] == k) for k in range(8)]
    assert figures.balanced_accuracy == pytest.approx(np.mean(recalls))
    low, high = figures.accuracy_ci
    assert low < figures.accuracy < high and high - low < 0.15
    assert figures.balanced_accuracy_ci[0] < figures.balanced_accuracy < figures.balanced_accuracy_ci[1]
    assert figures.metrics.confusion.sum() == 400 and figures.metrics.confusion[2, 2] == np.sum((targets == 2) & (predicted == 2))
    data = figures.to_dict()
    assert data["per_class"]["sad"]["recall"] == pytest.approx(recalls[2]) and data["per_class"]["sad"]["recall_ci"] is not None


def test_an_eight_class_judge_on_a_seven_class_set_never_predicts_contempt():
    # The judge's strongest class is contempt for every image; on affectnet7 the runner-up counts.
    scores = np.zeros((3, 8))
    scores[:, int(Expression.CONTEMPT)] = 10.0
    scores[:, int(Expression.HAPPY)] = 5.0
    assert restricted_predictions(scores, AFFECTNET8.expressions, AFFECTNET7).tolist() == [AFFECTNET7.index(Expression.HAPPY)] * 3
    figures = judge_figures("real", [1, 1, 2], scores, AFFECTNET8.expressions, AFFECTNET7, resamples=0)
    assert figures.accuracy == pytest.approx(2 / 3) and figures.masked == ("contempt",) and figures.accuracy_ci is None


def test_the_multinomial_bootstrap_has_the_sample_bootstraps_spread():
    # Resampling 200 Bernoulli(0.3) outcomes: the replicates' std is sqrt(p (1 - p) / n).
    draws = multinomial_replicates(np.array([60, 140]), 4000, seed=0, key="x")
    assert draws.sum(axis=1).tolist() == [200] * 4000
    assert np.std(draws[:, 0] / 200) == pytest.approx(np.sqrt(0.3 * 0.7 / 200), rel=0.05)
    low, high = fisher_interval(0.5, 103)
    assert low < 0.5 < high and fisher_interval(0.5, 3) is None


def au_table(n=300, seed=0):
    rng = np.random.default_rng(seed)
    requested = np.where(rng.random((n, NUM_AUS)) < 0.3, rng.uniform(1, 5, (n, NUM_AUS)), 0.0)
    return requested, np.ones((n, NUM_AUS), dtype=bool)


def test_au_faithfulness_of_a_perfect_detector_is_perfect_and_of_a_blind_one_is_not():
    requested, known = au_table()
    detector_known = np.ones(NUM_AUS, dtype=bool)
    perfect = au_faithfulness(requested, known, requested, detector_known, scores="intensity", threshold=0.5, resamples=200)
    assert perfect.macro_f1 == pytest.approx(1.0)
    figure = perfect.per_au["AU12"]
    assert figure.f1 == 1.0 and figure.pearson == pytest.approx(1.0) and figure.mae == 0.0 and figure.n == 300
    blind = au_faithfulness(requested, known, np.zeros_like(requested), detector_known, scores="probability", threshold=0.5,
                            resamples=200)
    assert blind.macro_f1 == 0.0 and blind.per_au["AU12"].recall == 0.0 and blind.per_au["AU12"].mae is None


def test_au_faithfulness_counts_only_what_request_and_detector_both_know():
    requested, known = au_table()
    detected = np.ones_like(requested)  # "everything present"
    known[:100, AU_INDEX["AU6"]] = False  # the first 100 samples did not say whether they want AU6
    detector_known = np.ones(NUM_AUS, dtype=bool)
    detector_known[AU_INDEX["AU9"]] = False
    report = au_faithfulness(requested, known, detected, detector_known, scores="probability", threshold=0.5, resamples=300)
    assert "AU9" not in report.per_au and "AU9" in report.not_measured
    au6 = report.per_au["AU6"]
    asked = int((requested[100:, AU_INDEX["AU6"]] > 0).sum())
    assert au6.n == 200 and au6.requested == asked and au6.detected == 200
    assert au6.f1 == pytest.approx(2 * asked / (200 + asked))  # precision asked/200, recall 1
    assert au6.f1_ci[0] < au6.f1 < au6.f1_ci[1]
    assert report.macro_f1_ci[0] < report.macro_f1 < report.macro_f1_ci[1]


def test_recorded_models_find_the_guide_and_every_relabel_member(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "labels").mkdir()
    table = pa.table({"key": ["000000000"]}).replace_schema_metadata(
        {b"synfer": json.dumps({"members": [{"kind": "classifier", "source": "runs/x", "fingerprint": HASH_B}]}).encode()})
    pq.write_table(table, tmp_path / "labels" / "ensemble.parquet")
    manifest = {"render": {"guidance": {"classifier": {"sha256": HASH_A}}}, "model": {"guidance_model": "runs/guide"}}
    recorded = recorded_models(tmp_path, manifest)
    assert [m.role for m in recorded] == ["guidance classifier", "relabel member"]
    assert [m.role for m in dependence(HASH_B, recorded)] == ["relabel member"]
    assert "ensemble.parquet" in str(dependence(HASH_B, recorded)[0])
    assert dependence("c" * 64, recorded) == []


def test_au_detector_status_reads_training_json_and_says_unknown_without_it(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    manifest = {"model": {"name": str(model)}, "plan": {}}
    assert au_detector_status(HASH_A, manifest).status == "unknown"
    (model / "training.json").write_text(json.dumps({"base": {"sha256": "c" * 64}}))
    assert au_detector_status(HASH_A, manifest).status == "unknown"  # nothing says which detector made the AUs
    # What build-model writes: the AU table's own hash, and the source record annotate-aus gave it.
    table = {"path": "aus.parquet", "sha256": "c" * 64, "scores": "probability",
             "source": {"detector": "opengraphau", "weights_sha256": HASH_B}}
    (model / "training.json").write_text(json.dumps({"inputs": {"au_table": table}}))
    assert au_detector_status(HASH_A, manifest).status == "independent"
    status = au_detector_status(HASH_B, manifest)
    assert status.status == "self-consistency" and "inputs.au_table.source.weights_sha256" in status.evidence[0]
    assert au_detector_status("c" * 64, manifest).status == "self-consistency"  # a hash equal to the detector's counts anywhere
    assert au_detector_status(HASH_A, {"model": {"name": "tiny"}}).status == "unknown"
    # A separately given adapter run folder: its au_adapter/training.json (train-adapter's) is read too.
    (model / "training.json").unlink()
    adapter = tmp_path / "adapter-run" / "au_adapter"
    adapter.mkdir(parents=True)
    (adapter / "training.json").write_text(json.dumps({"aus": table}))
    with_adapter = {"model": {"name": str(model), "adapter": str(adapter.parent)}, "plan": {}}
    assert au_detector_status(HASH_B, with_adapter).status == "self-consistency"


def test_cache_parts_are_reused_only_with_their_identity_and_entries_split_by_model(tmp_path):
    cache = FeatureCache(tmp_path)
    entry = cache.entry({"kind": "real", "path": "/r"}, {"role": "features", "kind": "dinov2", "fingerprint": HASH_A}).open()
    chunk = Chunk("rows-000000", "id-1", np.arange(3))
    assert entry.load(chunk) is None
    entry.save(chunk, np.ones((3, 4)), np.array([True, False, True]))
    values, valid = entry.load(chunk)
    assert values.dtype == np.float32 and values.shape == (3, 4) and valid.tolist() == [True, False, True]
    assert entry.load(Chunk("rows-000000", "id-2", np.arange(3))) is None  # other images under the same name
    other = cache.entry({"kind": "real", "path": "/r"}, {"role": "features", "kind": "dinov2", "fingerprint": HASH_B}).open()
    assert other.folder != entry.folder and other.load(chunk) is None
    with pytest.raises(DatasetError):
        entry.save(chunk, np.ones((2, 4)), np.ones(2, dtype=bool))
