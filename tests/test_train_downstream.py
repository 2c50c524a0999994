import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from synfer.cli import app
from synfer.data.readers import open_labelled
from synfer.expressions import AFFECTNET7, Expression
from synfer.models.classifier import load_classifier
from synfer.train.downstream import DownstreamConfig, TrainHooks, train_downstream

from fer_layouts import write_affectnet_csv, write_folder, write_synfer
from helpers import one_thread  # noqa: F401 (autouse: one intra-op thread for this module)

runner = CliRunner()
TINY = dict(backbone="tiny-resnet", batch_size=8, cpu=True)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Solid colours per expression: separable, in an image folder with train/ and val/."""
    root = tmp_path_factory.mktemp("toy")
    return {
        "folder": write_folder(root / "folder", per_class=6),
        "synfer": write_synfer(root / "synfer", per_class=3, shard_size=7),
    }


def test_learns_a_separable_toy_set_and_writes_the_run_folder(tmp_path, toy):
    run = tmp_path / "run"
    config = DownstreamConfig(out=str(run), mode="real-only", real=str(toy["folder"]), epochs=8, lr=1e-2, workers=0,
                              label_smoothing=0.0, checkpoint_every=1000, **TINY)
    result = train_downstream(config)
    assert result.steps == 48 and result.last.accuracy >= 0.75  # chance is 1/8
    assert result.best.accuracy >= result.last.accuracy

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best"]["step"] == result.best_step and metrics["last"]["step"] == 48
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion_matrix"):
        assert key in metrics["best"] and key in metrics["last"]
    assert set(metrics["last"]["per_class"]["happy"]) == {"precision", "recall", "f1", "support"}
    assert [e["step"] for e in metrics["history"]] == [6, 12, 18, 24, 30, 36, 42, 48]  # once per epoch
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["real"] == str(toy["folder"]) and saved["datasets"]["eval"]["name"] == "folder/val"
    for figure in ("confusion.png", "curves.png"):
        assert (run / figure).read_bytes().startswith(b"\x89PNG")

    # best/ holds the evaluated weights: reloaded, it scores what metrics.json says.
    best = load_classifier(run / "best")
    val = open_labelled(toy["folder"], "val")
    images = torch.stack([torch.from_numpy(np.array(s.image.resize((32, 32)))).permute(2, 0, 1) for s in val]).float() / 255
    with torch.no_grad():
        predicted = best(images).argmax(1)
    targets = best.target_indices(val.labels.tolist())
    assert (predicted == targets).float().mean().item() == pytest.approx(metrics["best"]["accuracy"])
    assert load_classifier(run / "last").label_set.name == "affectnet8"
    assert not list(run.rglob("*.tmp")) and not list(run.rglob("*.old"))


class Crash(TrainHooks):
    def __init__(self, at_step):
        self.at_step = at_step

    def step_finished(self, step, images, loss):
        if step == self.at_step:
            raise KeyboardInterrupt


def test_a_resumed_run_ends_with_the_same_weights(tmp_path, toy):
    # The hardest path: mixed sources (a shard reader with a shuffle buffer), class-balanced draws,
    # two workers, gradient accumulation, EMA, augmentation, a checkpoint in the middle of an epoch.
    options = dict(mode="mixed", real=str(toy["folder"]), synthetic=str(toy["synfer"]), synthetic_ratio=0.4, epochs=3,
                   lr=3e-3, workers=2, grad_accum=2, balanced=True, ema_decay=0.9, checkpoint_every=4, keep_checkpoints=2,
                   eval_every=5, backbone="tiny-resnet", batch_size=4, cpu=True)
    whole = train_downstream(DownstreamConfig(out=str(tmp_path / "whole"), **options))
    with pytest.raises(KeyboardInterrupt):
        train_downstream(DownstreamConfig(out=str(tmp_path / "cut"), **options), Crash(at_step=11))
    checkpoints = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir())
    assert checkpoints == ["step-00000004", "step-00000008"]  # step 8 is mid-epoch (10 steps per epoch)
    resumed = train_downstream(DownstreamConfig(out=str(tmp_path / "cut"), resume=True, **options))

    assert resumed.steps == whole.steps == 30
    for folder in ("last", "best"):
        a, b = (load_file(tmp_path / run / folder / "model.safetensors") for run in ("whole", "cut"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), folder
    assert (tmp_path / "whole" / "metrics.json").read_text() == (tmp_path / "cut" / "metrics.json").read_text()


def test_cli_seven_classes_end_to_end_never_emits_contempt(tmp_path, toy):
    run = tmp_path / "run"
    args = ["train-downstream", "--synthetic-only", "--synthetic", str(toy["synfer"]), "--eval-real", str(toy["folder"]),
            "--classes", "7", "--backbone", "tiny-convnext", "--batch-size", "6", "--epochs", "2", "--workers", "1",
            "--cpu", "--out", str(run)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "best (step" in result.stdout and "epoch 2/2" in result.stderr and "loss" in result.stderr
    assert "contempt (not in affectnet7)" in result.stderr  # the eval folder's contempt images are left out
    classifier = load_classifier(run / "best")
    assert classifier.label_set is AFFECTNET7 and classifier.head.out_features == 7
    with torch.no_grad():
        predictions = classifier(torch.rand(64, 3, 32, 32)).argmax(1)
    assert all(classifier.label_set.expression(int(i)) is not Expression.CONTEMPT for i in predictions)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["last"]["labels"] == AFFECTNET7.names and len(metrics["last"]["confusion_matrix"]) == 7
    assert metrics["last"]["n"] == 6 * 7

    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "already holds a training run; pass --resume" in again.stderr
    done = runner.invoke(app, [*args, "--resume"])
    assert done.exit_code == 0 and "finished run" in done.stderr
    changed = runner.invoke(app, [*args[:-2], "--lr", "0.1", "--out", str(run), "--resume"])
    assert changed.exit_code == 2 and "lr: 0.0003 -> 0.1" in changed.stderr


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken")
    (root / "empty").mkdir()
    (root / "affectnet" / "Manually_Annotated_file_lists").mkdir(parents=True)
    write_affectnet_csv(root / "an")
    return root


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--real-only", "--real", "{empty}"], "matches no known dataset layout; expected one of: synfer: manifest.json"),
        (["--real-only", "--real", "{affectnet}"], "Manually_Annotated_file_lists/training.csv is missing"),
        (["--real-only", "--real", "{missing}"], "does not exist"),
        (["--real-only", "--real", "{an}", "--eval-split", "train"], "the evaluation set is the real training set"),
        (["--real-only", "--real", "{an}", "--real-split", "holdout"], "AffectNet has no split 'holdout'"),
        (["--synthetic-only", "--synthetic", "{an}"], "needs --eval-real"),
        (["--synthetic-only", "--real-only", "--real", "{an}"], "choose one of"),
        (["--real-only", "--synthetic", "{an}"], "needs --real"),
        ([], "give training data"),
        (["--real", "{an}", "--labels", "ensemble"], "--labels applies to the --synthetic dataset"),
        (["--real", "{an}", "--classes", "6"], "unknown label set"),
        (["--real", "{an}", "--mixed-precision", "fp8"], "unknown mixed precision"),
        (["--real", "{an}", "--real-layout", "rafdb"], "EmoLabel/list_patition_label.txt is missing"),
        (["--real", "{an}", "--backbone", "alexnet"], "unknown backbone 'alexnet'"),
        (["--real", "{an}", "--batch-size", "64"], "too few for batches of 64"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_status_2(tmp_path, broken, args, fragment):
    paths = {"empty": broken / "empty", "affectnet": broken / "affectnet", "an": broken / "an", "missing": broken / "none"}
    filled = [a.format(**paths) for a in args]
    result = runner.invoke(app, ["train-downstream", *filled, "--workers", "0", "--cpu", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr.replace("\n", "")
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr


def test_unreadable_training_images_are_counted_or_fatal_with_strict(tmp_path):
    root = write_folder(tmp_path / "faces", per_class=2)
    (root / "train" / "sad" / "1.png").write_bytes(b"truncated")
    args = ["train-downstream", "--real-only", "--real", str(root), "--backbone", "tiny-resnet", "--batch-size", "4",
            "--epochs", "1", "--workers", "0", "--cpu", "--no-augment"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "lenient")])
    assert result.exit_code == 0, result.output
    assert "1 unreadable images skipped" in result.stdout
    train = json.loads((tmp_path / "lenient" / "metrics.json").read_text())["train"]
    assert train["unreadable"] == 1 and "sad/1.png" in train["unreadable_examples"][0]
    strict = runner.invoke(app, [*args, "--strict", "--out", str(tmp_path / "strict")])
    assert strict.exit_code == 2 and "unreadable image" in strict.stderr and "sad/1.png" in strict.stderr
    assert "Traceback" not in strict.stderr and not (tmp_path / "strict" / "metrics.json").exists()


def test_resume_refuses_changed_data(tmp_path):
    from synfer.errors import ConfigError

    from fer_layouts import face

    root = write_folder(tmp_path / "faces", per_class=2)
    options = dict(mode="real-only", real=str(root), epochs=2, workers=0, checkpoint_every=1, out=str(tmp_path / "run"), **TINY)
    with pytest.raises(KeyboardInterrupt):
        train_downstream(DownstreamConfig(**options), Crash(at_step=2))
    face(Expression.HAPPY, 9).save(root / "train" / "happy" / "9.png")
    with pytest.raises(ConfigError, match="the real dataset changed .*16 images then, 17 now"):
        train_downstream(DownstreamConfig(resume=True, **options))


def test_folder_swaps_survive_a_crash_between_renames(tmp_path):
    from synfer.data.run_folder import replace_dir, restore_swapped
    from synfer.train.checkpoints import CHECKPOINTS_DIR, latest_checkpoint

    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "best" / "model.safetensors").write_text("old")
    (run / "best.tmp").mkdir()
    (run / "best.tmp" / "model.safetensors").write_text("new")
    replace_dir(run / "best.tmp", run / "best")
    assert (run / "best" / "model.safetensors").read_text() == "new" and sorted(p.name for p in run.iterdir()) == ["best"]

    # A crash after "best" was moved aside and before the new one arrived: the old one comes back.
    (run / "best").rename(run / "best.old")
    (run / "checkpoints" / "step-00000009.tmp").mkdir(parents=True)  # a checkpoint being written
    (run / "checkpoints" / "step-00000004").mkdir()
    (run / "checkpoints" / "step-00000004" / "trainer_state.json").write_text("{}")
    restore_swapped(run, run / CHECKPOINTS_DIR)
    assert (run / "best" / "model.safetensors").read_text() == "new" and not (run / "best.old").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000004"]
    assert latest_checkpoint(run).name == "step-00000004"


def test_a_truncated_shard_fails_before_training_or_is_skipped_and_counted(tmp_path, toy):
    import shutil

    data = tmp_path / "synfer"
    shutil.copytree(toy["synfer"], data)
    tar = data / "shards" / "00001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    args = ["train-downstream", "--synthetic-only", "--synthetic", str(data), "--eval-real", str(toy["folder"]),
            "--backbone", "tiny-resnet", "--batch-size", "4", "--epochs", "1", "--workers", "0", "--cpu"]
    refused = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert f"shard {tar} is damaged" in refused.stderr and "synfer inspect --verify" in refused.stderr
    assert not (tmp_path / "a" / "checkpoints").exists() and not (tmp_path / "a" / "metrics.json").exists()

    skipped = runner.invoke(app, [*args, "--skip-damaged", "--out", str(tmp_path / "b")])
    assert skipped.exit_code == 0, skipped.output
    saved = json.loads((tmp_path / "b" / "config.json").read_text())["datasets"]["synthetic"]
    total = 3 * 8  # write_synfer(per_class=3): 24 samples in shards of 7
    assert saved["images"] == total - 7 and sum(saved["left_out"]["excluded"].values()) == 7
