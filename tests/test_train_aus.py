"""train-downstream --task aus: an AU detector learns visible AUs, saves a loadable folder, resumes exactly."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from synfer.aus import AU_INDEX, MIRRORED_SLOTS, NUM_AUS
from synfer.cli import app
from synfer.data.au_table import AUScores, write_au_table
from synfer.errors import ConfigError, DatasetError
from synfer.labelers.au_detectors import load_au_detector
from synfer.train.au_metrics import AUMetrics, au_statistics
from synfer.train.downstream import DownstreamConfig, TrainHooks, train_downstream

from helpers import one_thread  # noqa: F401 (autouse: one intra-op thread for this module)

runner = CliRunner()
# Each AU lights one quadrant of the face: the subject's left brow and mouth corner are on the image's right.
PATCHES = {"AU1": (0, 0), "AU4": (0, 1), "R12": (1, 0), "L12": (1, 1)}
TINY = dict(backbone="tiny-resnet", cpu=True, workers=0)


def patch_face(intensities: dict, seed: int, size: int = 24) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = 40 + rng.integers(-8, 9, (size, size, 3))
    half = size // 2
    for name, (row, col) in PATCHES.items():
        pixels[row * half + 2 : (row + 1) * half - 2, col * half + 2 : (col + 1) * half - 2] += int(40 * intensities.get(name, 0))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_patch_faces(root, counts=(("train", 96), ("val", 32)), seed=0, table=True):
    """An image folder (all 'neutral') with aus.parquet per split: 4 known slots, intensities 0 or 1-5."""
    rng = np.random.default_rng(seed)
    tables = {}
    for split, n in counts:
        (root / split / "neutral").mkdir(parents=True)
        ids, scores = [], np.zeros((n, NUM_AUS), np.float32)
        for i in range(n):
            values = {name: float(rng.integers(1, 6)) if rng.random() < 0.5 else 0.0 for name in PATCHES}
            ids.append(f"neutral/{i:03d}.png")
            patch_face(values, seed * 1000 + i + (500 if split == "val" else 0)).save(root / split / ids[-1])
            for name, value in values.items():
                scores[i, AU_INDEX[name]] = value
        known = np.zeros((n, NUM_AUS), bool)
        known[:, [AU_INDEX[name] for name in PATCHES]] = True
        tables[split] = AUScores(ids, scores, known, "intensity", {"source": "test patches"})
        if table:
            write_au_table(root / split / "aus.parquet", tables[split])
    return tables


@pytest.fixture(scope="module")
def patches(tmp_path_factory):
    root = tmp_path_factory.mktemp("patches") / "faces"
    return root, write_patch_faces(root)


def constant_baseline(train: AUScores, val: AUScores, threshold=1.0) -> dict:
    """The best constant per slot: the training mean for MAE; always or never present for F1."""
    slots = [AU_INDEX[name] for name in PATCHES]
    mean = train.scores[:, slots].mean(axis=0)
    mae = np.abs(val.scores[:, slots] - mean).mean(axis=0).mean()
    positives = (val.scores[:, slots] >= threshold).mean(axis=0)
    f1 = np.maximum(2 * positives / (1 + positives), 0.0).mean()  # never-present scores F1 0
    return {"mae": float(mae), "f1": float(f1)}


def test_learns_visible_aus_beats_a_constant_and_saves_a_loadable_detector(tmp_path, patches):
    root, tables = patches
    run = tmp_path / "run"
    config = DownstreamConfig(out=str(run), mode="real-only", real=str(root), task="aus", batch_size=16, epochs=12, lr=1e-2,
                              weight_decay=0.0, augment=False, checkpoint_every=1000, **TINY)
    result = train_downstream(config)
    baseline = constant_baseline(tables["train"], tables["val"])
    best = result.best.summary()
    assert result.task == "aus" and result.steps == 72
    assert best["mae"] < 0.6 * baseline["mae"] and best["f1"] > baseline["f1"] + 0.1, (best, baseline)
    assert best["pearson"] > 0.8

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "aus" and metrics["best_metric"] == "f1" and metrics["scores"] == "intensity"
    assert sorted(metrics["best"]["per_au"]) == sorted(PATCHES) and metrics["trained_slots"] == ["AU1", "AU4", "L12", "R12"]
    assert set(metrics["last"]["per_au"]["L12"]) >= {"f1", "mae", "pearson", "precision", "recall", "support", "n"}
    assert len(metrics["history"]) == 12 and {"f1", "mae", "pearson"} <= set(metrics["history"][0])
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["task"] == "aus" and saved["datasets"]["real"]["au_targets"]["scores"] == "intensity"
    assert (run / "curves.png").read_bytes().startswith(b"\x89PNG") and not (run / "confusion.png").exists()

    # best/ is a detector folder: loaded by spec, it scores what metrics.json says.
    detector = load_au_detector(f"detector:{run / 'best'}")
    assert detector.kind == "detector" and detector.scores == "intensity" and detector.suggested_threshold == 1.0
    assert detector.known.sum() == 4 and detector.known[AU_INDEX["L12"]]
    folder = json.loads((run / "best" / "config.json").read_text())
    assert folder["format"] == "synfer-au-detector" and folder["slots"][AU_INDEX["R14"]] == "R14" and folder["input_size"] == 32
    val = tables["val"]
    # As the trainer's evaluation feeds them: resized to the input size when decoded.
    pixels = [np.array(Image.open(root / "val" / i).resize((32, 32), Image.BILINEAR)) for i in val.ids]
    scores = detector.predict(torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255).numpy()
    assert scores.shape == (len(val), NUM_AUS) and scores[:, ~detector.known].max() == 0
    again = AUMetrics(au_statistics(scores, val.scores, val.known & detector.known, 1.0), 1.0, "intensity", len(val))
    assert again.summary()["mae"] == pytest.approx(metrics["best"]["mae"], abs=1e-5)
    assert again.summary()["f1"] == pytest.approx(metrics["best"]["f1"], abs=1e-6)


class Crash(TrainHooks):
    def __init__(self, at_step):
        self.at_step = at_step

    def step_finished(self, step, images, loss):
        if step == self.at_step:
            raise KeyboardInterrupt


def test_a_resumed_au_run_ends_with_the_same_weights(tmp_path, patches):
    # Augmentation with its L/R flip, two workers, accumulation, EMA, a checkpoint mid-epoch.
    root, _ = patches
    options = dict(mode="real-only", real=str(root), task="aus", epochs=2, lr=3e-3, workers=2, grad_accum=2, ema_decay=0.9,
                   checkpoint_every=4, keep_checkpoints=1, eval_every=5, batch_size=8, backbone="tiny-resnet", cpu=True,
                   best_metric="mae")
    whole = train_downstream(DownstreamConfig(out=str(tmp_path / "whole"), **options))
    with pytest.raises(KeyboardInterrupt):
        train_downstream(DownstreamConfig(out=str(tmp_path / "cut"), **options), Crash(at_step=7))
    assert [p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()] == ["step-00000004"]
    resumed = train_downstream(DownstreamConfig(out=str(tmp_path / "cut"), resume=True, **options))
    assert resumed.steps == whole.steps == 12
    for folder in ("last", "best"):
        a, b = (load_file(tmp_path / run / folder / "model.safetensors") for run in ("whole", "cut"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), folder
    assert (tmp_path / "whole" / "metrics.json").read_text() == (tmp_path / "cut" / "metrics.json").read_text()
    history = json.loads((tmp_path / "whole" / "metrics.json").read_text())["history"]
    best = json.loads((tmp_path / "whole" / "metrics.json").read_text())["best"]
    assert best["mae"] == min(e["mae"] for e in history)  # --best-metric mae keeps the lowest


def test_a_flip_swaps_left_and_right_targets():
    from synfer.train.tasks import AUTask

    torch.manual_seed(3)
    images = torch.arange(2 * 3 * 4 * 5, dtype=torch.uint8).view(2, 3, 4, 5)
    aus = torch.zeros(2, NUM_AUS)
    aus[:, AU_INDEX["L12"]], aus[:, AU_INDEX["AU1"]] = 4.0, 2.0
    known = torch.zeros(2, NUM_AUS, dtype=torch.bool)
    known[:, AU_INDEX["L12"]] = True
    batch = {"image": images, "aus": aus, "au_known": known}
    seen = set()
    for _ in range(12):
        out, targets = AUTask().batch(batch, torch.device("cpu"), augment=lambda x: x)
        for i in range(2):
            flipped = torch.equal(out[i], images[i].float().div(255).flip(-1))
            assert flipped or torch.equal(out[i], images[i].float().div(255))
            left, right = (targets["aus"][i, AU_INDEX[n]].item() for n in ("L12", "R12"))
            assert (left, right) == ((0.0, 4.0) if flipped else (4.0, 0.0)) and targets["aus"][i, AU_INDEX["AU1"]] == 2.0
            assert bool(targets["known"][i, AU_INDEX["R12"]]) == flipped
            seen.add(flipped)
    assert seen == {True, False}
    assert sorted(MIRRORED_SLOTS) == list(range(NUM_AUS))


def test_a_disfa_style_csv_and_a_world_through_the_command_line(tmp_path):
    from synfer.world.make import WorldConfig, make_world

    world = tmp_path / "world"
    make_world(WorldConfig(n=40, size=24, seed=2, splits=(0.7, 0.3, 0.0)), world)
    run = tmp_path / "run"
    args = ["train-downstream", "--task", "aus", "--real-only", "--real", str(world), "--backbone", "tiny-resnet", "--batch-size",
            "8", "--epochs", "1", "--workers", "0", "--cpu", "--out", str(run)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "mean F1" in result.stdout and "MAE" in result.stdout and "Pearson" in result.stdout
    assert "AU targets (intensity) for 28 from" in result.stderr and "aus.parquet" in result.stderr
    assert load_au_detector(f"detector:{run / 'last'}").scores == "intensity"

    # Frame-level intensities as DISFA/BP4D-style CSVs (OpenFace names), joined by a named column.
    faces = tmp_path / "faces"
    tables = write_patch_faces(faces, counts=(("train", 16), ("val", 8)), table=False)
    for split, table in tables.items():
        lines = ["frame,AU01_r,AU04_r,AU12_r"] + [
            f"{i},{s[AU_INDEX['AU1']]},{s[AU_INDEX['AU4']]},{max(s[AU_INDEX['L12']], s[AU_INDEX['R12']])}"
            for i, s in zip(table.ids, table.scores)
        ]
        (tmp_path / f"{split}.csv").write_text("\n".join(lines) + "\n")
    csv_run = tmp_path / "csv-run"
    args = ["train-downstream", "--task", "aus", "--real-only", "--real", str(faces), "--au-table", str(tmp_path / "train.csv"),
            "--eval-au-table", str(tmp_path / "val.csv"), "--au-id-column", "frame", "--backbone", "tiny-resnet", "--batch-size", "8",
            "--epochs", "1", "--workers", "0", "--cpu", "--no-augment", "--out", str(csv_run)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((csv_run / "metrics.json").read_text())
    assert sorted(metrics["trained_slots"]) == ["AU1", "AU12", "AU4"]  # what OpenFace measures in the file


@pytest.mark.parametrize(
    "options, error, fragment",
    [
        (dict(task="regression"), ConfigError, "unknown --task 'regression'"),
        (dict(au_table="x.csv"), ConfigError, "--au-table applies to --task aus only"),
        (dict(task="aus", best_metric="accuracy"), ConfigError, "for --task aus (accepted: f1, mae, pearson)"),
        (dict(task="aus", au_threshold=0), ConfigError, "--au-threshold must be positive"),
    ],
)
def test_bad_au_options_are_refused_before_anything_loads(tmp_path, options, error, fragment):
    with pytest.raises(error, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        DownstreamConfig(out=str(tmp_path / "run"), mode="real-only", real=str(tmp_path), **options)


def test_data_without_au_targets_or_matching_ids_is_one_clear_error(tmp_path):
    from fer_layouts import write_folder

    root = write_folder(tmp_path / "faces", per_class=1)
    base = dict(out=str(tmp_path / "run"), mode="real-only", real=str(root), task="aus", batch_size=2, epochs=1, **TINY)
    with pytest.raises(ConfigError, match="the real data folder/train at .* has no AU targets: give --au-table FILE"):
        train_downstream(DownstreamConfig(**base))
    (tmp_path / "aus.csv").write_text("file_name,AU6\n0.png,1\n")
    with pytest.raises(DatasetError, match=r"the table has 1 rows \(e.g. id '0.png'\) and the dataset 8 images \(e.g. id 'anger/0.png'\)"):
        train_downstream(DownstreamConfig(**{**base, "out": str(tmp_path / "run2")}, au_table=str(tmp_path / "aus.csv")))


def test_au_targets_follow_their_images_through_a_shuffled_shard_stream(tmp_path):
    from synfer.data.readers import open_labelled
    from synfer.train.au_targets import AUJoined, AUTargets
    from synfer.train.data import Source, StreamShape, TrainStream, make_loader

    from fer_layouts import write_synfer

    shards = open_labelled(write_synfer(tmp_path / "syn", per_class=3, shard_size=5))
    keys, labels = shards.sample_ids(), shards.labels
    scores = np.zeros((len(keys), NUM_AUS), np.float32)
    scores[:, AU_INDEX["AU1"]] = labels  # each sample's AU1 says its AffectNet label
    known = np.zeros((len(keys), NUM_AUS), bool)
    known[::2, AU_INDEX["AU1"]] = True  # and only every other sample's is known
    order = np.random.default_rng(0).permutation(len(keys))
    joined = AUJoined(shards, AUTargets([keys[i] for i in order[:-3]], scores[order[:-3]], known[order[:-3]], "intensity", "test"))
    assert len(joined) == len(keys) - 3 and joined.stats.excluded["no row in the AU table"] == 3 and joined.sequential
    stream = TrainStream([Source(joined, len(joined))], shards.label_set, 16, seed=1, shape=StreamShape(4, workers=2), shuffle_buffer=6)
    seen = 0
    for batch in make_loader(stream, 4, 2, seed=0):
        expressions = [shards.label_set.expression(int(t)) for t in batch["target"]]
        assert batch["aus"][:, AU_INDEX["AU1"]].tolist() == [float(int(e)) for e in expressions]
        seen += int(batch["au_known"][:, AU_INDEX["AU1"]].sum())
    total = int(known[order[:-3], AU_INDEX["AU1"]].sum())
    assert stream.images_per_epoch == len(joined) - 1 and total - 1 <= seen <= total  # one sample left over by the batches
