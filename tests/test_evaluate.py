"""synfer evaluate end to end: tiny generated datasets against small real folders, through the library and the CLI."""

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_evaluate_models import HSEMOTION_ORDER, save_classifier, save_colour_judge_onnx, save_dinov2
from typer.testing import CliRunner

from synfer import GenerateConfig, generate
from synfer.cli import app
from synfer.data.dataset import SynferDataset
from synfer.data.readers import open_labelled
from synfer.errors import DatasetError, ModelLoadError
from synfer.eval.evaluate import EvaluateConfig, EvaluateResult, evaluate
from synfer.eval.feature_backbones import load_feature_backbone
from synfer.eval.frechet import FeatureStats, frechet_distance
from synfer.eval.preprocess import Preprocess
from synfer.models.classifier import load_classifier

from fer_layouts import write_affectnet_csv, write_folder, write_synfer

runner = CliRunner()
N = 16  # generated samples of the tiny dataset, in two shards


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    tiny = {"model": "tiny", "steps": 2, "batch_size": 8, "device": "cpu"}
    generate(GenerateConfig(out=str(root / "data"), n=N, shard_size=8, **tiny))
    write_folder(root / "real", per_class=3, splits=("val",))
    judge = save_classifier(root / "judge")
    generate(GenerateConfig(out=str(root / "guided"), n=8, guidance_model=str(judge), **tiny))
    generate(GenerateConfig(out=str(root / "laid"), n=8, layout_dir=str(root / "real" / "val"), **tiny))
    write_synfer(root / "coloured", per_class=3, shard_size=8)
    return {"root": root, "data": root / "data", "real": root / "real", "judge": judge, "guided": root / "guided",
            "laid": root / "laid", "coloured": root / "coloured", "dinov2": save_dinov2(root / "dinov2"),
            "onnx": save_colour_judge_onnx(root / "colour.onnx")}


def config(world, tmp_path, dataset="data", **options):
    defaults = {"features": (f"dinov2:{world['dinov2']}",), "cache": str(tmp_path / "cache"), "kid_min_per_class": 2,
                "device": "cpu", "workers": 2, "bootstrap_resamples": 20, "interval_resamples": 200, "out": str(tmp_path / "eval")}
    return EvaluateConfig(str(world[dataset]), str(world["real"]), **{**defaults, **options})


def cli(*args):
    return runner.invoke(app, ["evaluate", *map(str, args)])


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def direct_features(backbone, images):
    return backbone(Preprocess.batch([backbone.preprocess.array(image) for image in images]))


def test_figures_are_the_statistics_of_features_computed_directly(world, tmp_path):
    result = evaluate(config(world, tmp_path, judge=f"classifier:{world['judge']}"))
    dataset = SynferDataset(world["data"])
    generated = [sample.image for sample in dataset]
    planned = [sample.meta["label"] for sample in dataset]
    real = list(open_labelled(world["real"], split="val"))
    backbone = load_feature_backbone(f"dinov2:{world['dinov2']}")
    fake, true = direct_features(backbone, generated), direct_features(backbone, [s.image for s in real])
    expected_fd = frechet_distance(FeatureStats.from_features(true), FeatureStats.from_features(fake))
    assert result.value("fd/dinov2") == pytest.approx(expected_fd, rel=1e-6)
    low, high = result.figures()["fd/dinov2"].ci
    assert low < high

    classifier = load_classifier(world["judge"])
    with torch.no_grad():
        predicted = classifier(Preprocess.batch([Preprocess(classifier.input_size).array(image) for image in generated])).argmax(1)
    assert result.value("judge/accuracy") == pytest.approx(np.mean(predicted.numpy() == np.asarray(planned)))

    out = tmp_path / "eval"
    for name in ("metrics.json", "evaluation.json", "per_class.csv", "judge_confusion.csv", "judge_confusion.png",
                 "judge_confusion_real.png", "kid_per_class_dinov2.png", "samples.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["schema_version"] == 1 and metrics["synfer_version"] and metrics["settings"]["judge"].startswith("classifier:")
    assert metrics["features"]["dinov2"]["files"]["model.safetensors"] == backbone.files["model.safetensors"]
    assert metrics["judge"]["fingerprint"] == result.metrics["judge"]["fingerprint"] and metrics["judge"]["dependent"] is False
    rows = {row["class"]: row for row in read_csv(out / "per_class.csv")}
    counts = dataset.manifest["label_counts"]
    assert {label: int(row["n_generated"]) for label, row in rows.items()} == counts
    assert {int(row["n_real"]) for row in rows.values()} == {3}
    confusion = read_csv(out / "judge_confusion.csv")
    generated_rows = [row for row in confusion if row["side"] == "generated"]
    assert sum(int(v) for row in generated_rows for k, v in row.items() if k.startswith("predicted_")) == N
    assert EvaluateResult.load(out).figures() == result.figures()


def test_the_real_side_comes_from_the_cache_and_a_changed_backbone_is_computed_again(world, tmp_path):
    first = evaluate(config(world, tmp_path))
    assert first.computed == {"generated": {"dinov2": N}, "real": {"dinov2": 24}}
    other = evaluate(config(world, tmp_path, dataset="coloured", out=str(tmp_path / "eval-coloured")))
    assert other.computed == {"generated": {"dinov2": 24}, "real": {"dinov2": 0}}
    again = evaluate(config(world, tmp_path))
    assert again.computed == {"generated": {"dinov2": 0}, "real": {"dinov2": 0}}
    assert again.value("fd/dinov2") == first.value("fd/dinov2")
    changed = save_dinov2(tmp_path / "dinov2-b", seed=1)
    moved = evaluate(config(world, tmp_path, features=(f"dinov2:{changed}",), out=str(tmp_path / "eval-b")))
    assert moved.computed == {"generated": {"dinov2": N}, "real": {"dinov2": 24}}
    assert moved.value("fd/dinov2") != first.value("fd/dinov2")
    save_dinov2(changed, seed=2)  # new weights under the same path
    again_changed = evaluate(config(world, tmp_path, features=(f"dinov2:{changed}",), out=str(tmp_path / "eval-b")))
    assert again_changed.computed["real"] == {"dinov2": 24}


def test_a_grown_dataset_computes_only_its_new_shards(world, tmp_path):
    # fer_layouts plans class-major within each round, so 3 rounds extend 2 rounds by one shard, the first two unchanged.
    write_synfer(tmp_path / "grow", per_class=2, shard_size=8)
    world = {**world, "grow": tmp_path / "grow"}
    assert evaluate(config(world, tmp_path, dataset="grow")).computed["generated"] == {"dinov2": 16}
    shutil.rmtree(tmp_path / "grow")
    write_synfer(tmp_path / "grow", per_class=3, shard_size=8)
    assert evaluate(config(world, tmp_path, dataset="grow")).computed["generated"] == {"dinov2": 8}


def test_an_independent_onnx_judge_reads_the_coloured_faces_right_on_both_sides(world, tmp_path):
    out = tmp_path / "eval"
    result = cli(world["coloured"], "--real", world["real"], "--out", out, "--judge", f"onnx:{world['onnx']}",
                 "--judge-classes", ",".join(HSEMOTION_ORDER), "--judge-mean", "0,0,0", "--judge-std", "1,1,1",
                 "--cache", tmp_path / "cache", "--device", "cpu", "--interval-resamples", "100")
    assert result.exit_code == 0, result.output
    assert "judge/accuracy" in result.output
    loaded = EvaluateResult.load(out)
    assert loaded.value("judge/accuracy") == 1.0 and loaded.value("judge/real_accuracy") == 1.0
    for row in read_csv(out / "judge_confusion.csv"):
        assert int(row[f"predicted_{row['true']}"]) == 3
    assert not (out / "kid_per_class_dinov2.png").exists()  # no backbone: no distribution figures


def test_a_judge_that_guided_the_dataset_is_refused_then_marked_dependent_everywhere(world, tmp_path):
    out = tmp_path / "eval"
    args = [world["guided"], "--real", world["real"], "--out", out, "--features", f"dinov2:{world['dinov2']}",
            "--judge", f"classifier:{world['judge']}", "--cache", tmp_path / "cache", "--device", "cpu", "--kid-min-per-class", "2"]
    refused = cli(*args)
    assert refused.exit_code == 2 and refused.output.count("\n") == 1, refused.output
    assert "guidance classifier" in refused.output and "--allow-dependent-judge" in refused.output
    assert not out.exists() or not (out / "metrics.json").exists()

    allowed = cli(*args, "--allow-dependent-judge")
    assert allowed.exit_code == 0, allowed.output
    assert "dependent" in allowed.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["judge"]["dependent"] and metrics["judge"]["dependent_on"][0]["role"] == "guidance classifier"
    assert metrics["figures"]["judge/accuracy"]["flags"] == ["dependent"] and "judge/accuracy" in metrics["flags"]["dependent"]
    assert metrics["figures"]["fd/dinov2"]["flags"] == []
    assert {row["flags"] for row in read_csv(out / "judge_confusion.csv") if row["side"] == "generated"} == {"dependent"}
    assert {row["judge_flags"] for row in read_csv(out / "per_class.csv")} == {"dependent"}


def test_a_judge_that_relabelled_the_dataset_is_refused(world, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    made = runner.invoke(app, ["relabel", str(data), "--labeler", f"classifier:{world['judge']}", "--name", "ens"])
    assert made.exit_code == 0, made.output
    other = save_classifier(tmp_path / "other", seed=5)
    args = [data, "--real", world["real"], "--out", tmp_path / "eval", "--cache", tmp_path / "cache", "--device", "cpu"]
    refused = cli(*args, "--judge", f"classifier:{world['judge']}")
    assert refused.exit_code == 2 and "relabel member" in refused.output and "ens.parquet" in refused.output
    relabelled = cli(*args, "--judge", f"classifier:{other}", "--labels", "ens")
    assert relabelled.exit_code == 0, relabelled.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["generated"]["labels"] == "labels/ens.parquet" and metrics["judge"]["dependent"] is False


def test_layout_references_in_the_real_set_are_found_by_content_and_refused_or_dropped(world, tmp_path):
    with pytest.raises(DatasetError, match="layout references the generated samples were made from"):
        evaluate(config(world, tmp_path, dataset="laid"))
    # The same faces under other names and folders are found too.
    renamed = tmp_path / "renamed"
    for i, path in enumerate(sorted((world["real"] / "val").rglob("*.png"))):
        target = renamed / "val" / path.parent.name / f"copy_{i}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    moved = {**world, "real": renamed}
    with pytest.raises(DatasetError, match="layout references"):
        evaluate(config(moved, tmp_path, dataset="laid"))
    result = evaluate(config(moved, tmp_path, dataset="laid", drop_layout_references=True))
    check = result.metrics["real"]["layout_references"]
    assert check["recorded"] and check["method"] == "file sha256" and 1 <= check["used"] <= 8  # one per sample at most
    assert check["found"] == check["dropped"] == check["used"]
    assert result.metrics["real"]["n_valid"] == 24 - check["dropped"]
    assert sum(result.metrics["real"]["per_class_n"].values()) == 24 - check["dropped"]
    # Without layout references recorded, nothing is checked.
    assert evaluate(config(world, tmp_path, out=str(tmp_path / "plain"))).metrics["real"]["layout_references"]["recorded"] is False


def test_face_crops_and_whole_images_are_an_explicit_choice(world, tmp_path):
    affectnet = write_affectnet_csv(tmp_path / "affectnet", per_class=2)
    crops = {}
    for crop in ("whole", "face"):
        result = evaluate(EvaluateConfig(str(world["coloured"]), str(affectnet), str(tmp_path / crop), real_crop=crop,
                                         features=(f"dinov2:{world['dinov2']}",), cache=str(tmp_path / "cache"), device="cpu",
                                         kid_min_per_class=2, bootstrap_resamples=0))
        assert result.metrics["real"]["crop"] == crop and result.metrics["real"]["n_valid"] == 16
        crops[crop] = result
    assert crops["whole"].value("fd/dinov2") != crops["face"].value("fd/dinov2")
    assert crops["face"].computed["real"] == {"dinov2": 16}  # another variant, another cache entry
    refused = cli(world["data"], "--real", world["real"], "--out", tmp_path / "x", "--features", f"dinov2:{world['dinov2']}",
                  "--real-crop", "face")
    assert refused.exit_code == 2 and "face boxes" in refused.output


def test_au_faithfulness_with_a_trained_detector_and_with_a_registered_fake(world, tmp_path):
    from synfer.aus import NUM_AUS
    from synfer.labelers.au_detectors import load_au_detector
    from synfer.models.au_detector import create_au_detector

    torch.manual_seed(0)
    create_au_detector("tiny-resnet", scores="probability").save_pretrained(tmp_path / "au")
    result = evaluate(config(world, tmp_path, features=(), au_detector=f"detector:{tmp_path / 'au'}"),
                      load_au_detector=load_au_detector)
    rows = read_csv(tmp_path / "eval" / "au.csv")
    assert len(rows) == NUM_AUS and {int(row["n"]) for row in rows} == {N}
    assert result.metrics["au"]["status"]["status"] == "unknown"  # the tiny model has no training.json
    assert (tmp_path / "eval" / "au_f1.png").is_file()

    class EverythingPresent:
        kind, source, fingerprint, scores, suggested_threshold = "fake", "fake", "f" * 64, "probability", 0.5
        known = np.ones(NUM_AUS, dtype=bool)
        preprocessing = {"resize": 32}

        def predict(self, images):
            return torch.ones(images.shape[0], NUM_AUS)

    report = evaluate(config(world, tmp_path, features=(), au_detector=f"fake:{tmp_path}", out=str(tmp_path / "fake")),
                      load_au_detector=lambda spec, device: EverythingPresent()).metrics["au"]["report"]
    index = SynferDataset(world["data"]).index(["aus"])
    asked = (np.asarray(index.column("aus").to_pylist()) > 0).sum(axis=0)
    for name, entry in report["per_au"].items():
        from synfer.aus import AU_INDEX

        r = int(asked[AU_INDEX[name]])
        assert entry["requested"] == r and entry["detected"] == N
        assert entry["f1"] == (pytest.approx(2 * r / (N + r)) if r else None)

    # The same dataset as if made from a model folder whose training AUs this detector annotated.
    model, data = tmp_path / "model", tmp_path / "data"
    model.mkdir()
    (model / "training.json").write_text(json.dumps({"inputs": {"au_table": {"source": {"weights_sha256": "f" * 64}}}}))
    shutil.copytree(world["data"], data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["model"]["name"] = str(model)
    (data / "manifest.json").write_text(json.dumps(manifest))
    marked = evaluate(config({**world, "data": data}, tmp_path, features=(), au_detector=f"fake:{tmp_path}", out=str(tmp_path / "sc")),
                      load_au_detector=lambda spec, device: EverythingPresent())
    assert marked.metrics["au"]["status"]["status"] == "self-consistency"
    assert marked.figures()["au/macro_f1"].flags == ("self-consistency",) and "au/macro_f1" in marked.flagged["self_consistency"]
    assert {row["flags"] for row in read_csv(tmp_path / "sc" / "au.csv")} == {"self-consistency"}


def test_compare_prints_two_evaluations_side_by_side(world, tmp_path):
    evaluate(config(world, tmp_path, out=str(tmp_path / "a")))
    evaluate(config(world, tmp_path, dataset="coloured", out=str(tmp_path / "b")))
    result = cli("--compare", tmp_path / "a", tmp_path / "b")
    assert result.exit_code == 0, result.output
    assert "fd/dinov2" in result.output and "kid/dinov2" in result.output
    missing = cli("--compare", tmp_path / "a", tmp_path / "nothing")
    assert missing.exit_code == 2 and "no finished evaluation" in missing.output


def test_an_existing_evaluation_with_other_settings_is_kept_unless_overwrite(world, tmp_path):
    evaluate(config(world, tmp_path))
    with pytest.raises(DatasetError, match="dataset evaluation made with a different config .differs in: config.seed"):
        evaluate(config(world, tmp_path, seed=3))
    assert evaluate(config(world, tmp_path, seed=3, overwrite=True)).metrics["settings"]["seed"] == 3


@pytest.mark.parametrize("args, fragment", [
    ([], "nothing to measure"),
    (["--features", "facebook/dinov2-large"], "hub id"),
    (["--features", "swin:/m"], "unknown feature backbone"),
    (["--judge", "classifier:/nowhere", "--judge-classes", "happy"], "for onnx: judges"),
    (["--features", "/nowhere", "--real-crop", "both"], "unknown --real-crop"),
    (["--features", "/nowhere", "--dtype", "float16", "--device", "cpu"], "for GPUs"),
])
def test_bad_input_is_one_line_and_exit_status_2(world, tmp_path, args, fragment):
    result = cli(world["data"], "--real", world["real"], "--out", tmp_path / "eval", *args)
    assert result.exit_code == 2 and fragment in result.output and result.output.count("\n") == 1, result.output


def test_missing_model_paths_fail_before_any_image_is_read(world, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        evaluate(config(world, tmp_path, features=(f"dinov2:{tmp_path / 'none'}",)))
    assert not (tmp_path / "cache").exists()


def test_the_config_module_loads_no_torch():
    code = "import sys, synfer.eval.evaluate; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
