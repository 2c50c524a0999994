import os
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from synfer.data.readers import LAYOUTS, LabelledImage, UnreadableImage, detect_layout, open_labelled
from synfer.errors import ConfigError, DatasetError
from synfer.expressions import AFFECTNET7, AFFECTNET8, Expression

from fer_layouts import (
    COLOURS,
    SEVEN,
    face,
    write_affectnet_csv,
    write_affectnet_npy,
    write_fer2013,
    write_folder,
    write_rafdb,
    write_relabel,
    write_synfer,
)

WRITERS = {
    "affectnet-csv": write_affectnet_csv,
    "affectnet-npy": write_affectnet_npy,
    "rafdb": write_rafdb,
    "fer2013": write_fer2013,
    "folder": write_folder,
    "synfer": write_synfer,
}


def mean_colour(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=float).reshape(-1, 3).mean(axis=0)


def closest_expression(image: Image.Image, grey: bool = False) -> Expression:
    """The fixture colour an image shows (in grey for FER2013): proves the label belongs to the pixels."""
    w, h = image.size
    seen = mean_colour(image.crop((w // 4, h // 4, w - w // 4, h - h // 4)))  # inside any frame around the face
    def reference(e):
        colour = np.asarray(COLOURS[e], dtype=float)
        return np.full(3, colour @ [0.299, 0.587, 0.114]) if grey else colour
    candidates = SEVEN if grey else list(Expression)
    return min(candidates, key=lambda e: np.abs(reference(e) - seen).sum())


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_every_layout_is_detected_and_labels_match_the_images(tmp_path, layout):
    root = WRITERS[layout](tmp_path / layout)
    assert detect_layout(root).name == layout
    dataset = open_labelled(root, "train")
    samples = list(dataset)
    assert len(samples) == len(dataset) > 0
    assert dataset.label_set is AFFECTNET8 and dataset.name.startswith(layout)
    for sample in samples:
        assert isinstance(sample, LabelledImage) and sample.image.mode == "RGB"
        if layout != "fer2013":  # FER2013 is grey: several colours share a grey level
            assert closest_expression(sample.image) == sample.label, sample.source
    expected = set(SEVEN) if layout in ("rafdb", "fer2013") else set(Expression)
    assert {s.label for s in samples} == expected
    assert Counter(int(s.label) for s in samples) == Counter(dataset.labels.tolist())


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_seven_classes_never_yield_contempt(tmp_path, layout):
    dataset = open_labelled(WRITERS[layout](tmp_path / layout), "train", classes=7)
    labels = {s.label for s in dataset}
    assert Expression.CONTEMPT not in labels and labels == set(SEVEN)
    assert dataset.label_set is AFFECTNET7 and "contempt" not in dataset.class_counts()
    if layout not in ("rafdb", "fer2013"):
        assert dataset.stats.excluded["contempt (not in affectnet7)"] == 2


def test_affectnet_csv_splits_excluded_codes_missing_images_and_face_crop(tmp_path):
    root = write_affectnet_csv(tmp_path / "an", header=False)  # validation.csv without its header row
    train, val = open_labelled(root, "train"), open_labelled(root, "val")
    assert open_labelled(root, "test").labels.tolist() == val.labels.tolist()  # AffectNet's val is its test
    assert all("training_" in s.source for s in train) and all("validation_" in s.source for s in val)
    for dataset in (train, val):
        assert len(dataset) == 16
        assert dataset.stats.excluded["AffectNet codes 8-10 (none, uncertain, no-face)"] == 3
        assert dataset.stats.missing == 1 and dataset.stats.missing_examples[0].endswith("_gone.jpg")
        assert "1 missing images" in dataset.stats.summary()
    full = next(iter(train)).image
    cropped = next(iter(open_labelled(root, "train", crop_face=True))).image
    assert full.size == (24, 24) and cropped.size == (16, 16)
    # The magenta frame around the face is gone after cropping.
    assert mean_colour(full)[1] < mean_colour(cropped)[1]
    with pytest.raises(DatasetError, match="1 of 17 images listed in .*training.csv are missing"):
        open_labelled(root, "train", strict=True)


def test_rafdb_and_fer2013_splits(tmp_path):
    raf = write_rafdb(tmp_path / "raf")
    assert open_labelled(raf, "val").split == "test" and all("test_" in s.source for s in open_labelled(raf, "test"))
    fer = write_fer2013(tmp_path / "fer")
    sizes = {split: len(open_labelled(fer, split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 14, "val": 14, "test": 14}
    grey = next(iter(open_labelled(fer / "fer2013.csv", "test")))  # the CSV's own path works too
    assert grey.image.size == (48, 48) and closest_expression(grey.image, grey=True) == grey.label


def test_unreadable_images_are_skipped_and_counted_or_fatal_with_strict(tmp_path):
    root = write_folder(tmp_path / "f", splits=("",))
    (root / "happy" / "0.png").write_bytes(b"not a png")
    dataset = open_labelled(root)
    samples = list(dataset)
    assert len(samples) == len(dataset) - 1 and dataset.stats.unreadable == 1
    assert "happy/0.png" in dataset.stats.unreadable_examples[0]
    with pytest.raises(UnreadableImage, match="happy/0.png"):
        list(open_labelled(root, strict=True))
    fer = write_fer2013(tmp_path / "fer", bad_row=True)
    dataset = open_labelled(fer, "train")
    assert len(list(dataset)) == 14 and dataset.stats.unreadable == 1


def test_image_folders_accept_aliases_and_refuse_ambiguous_names(tmp_path):
    aliases = {Expression.ANGER: "Angry", Expression.HAPPY: "happiness", Expression.FEAR: "fearful"}
    root = write_folder(tmp_path / "a", splits=("train", "validation"), names=aliases)
    assert open_labelled(root, "val").split == "val"
    assert {s.label for s in open_labelled(root, "train")} == set(Expression)
    with pytest.raises(DatasetError, match="no 'test' split folder"):
        open_labelled(root, "test")

    # RAF-DB style numeric folders: 1 means surprise in RAF-DB but happy in AffectNet.
    coded = [e for e in SEVEN if e.value > 0]  # folders 1..6, valid codes in both numberings
    numeric = write_folder(tmp_path / "n", splits=("",), names={e: str(e.value) for e in coded}, expressions=coded)
    with pytest.raises(DatasetError, match="numeric name, which is ambiguous"):
        open_labelled(numeric)
    as_affectnet = open_labelled(numeric, numbering="affectnet")
    as_rafdb = open_labelled(numeric, numbering="rafdb")
    first = {s.source: s.label for s in as_affectnet}
    second = {s.source: s.label for s in as_rafdb}
    one = next(k for k in first if f"{os.sep}1{os.sep}" in k)
    assert first[one] is Expression.HAPPY and second[one] is Expression.SURPRISE
    zero = write_folder(tmp_path / "z", splits=("",), names={Expression.NEUTRAL: "0"}, expressions=[Expression.NEUTRAL])
    with pytest.raises(DatasetError, match="RAF-DB has no label 0"):  # RAF-DB counts from 1
        open_labelled(zero, numbering="rafdb")
    (tmp_path / "bad" / "smirk").mkdir(parents=True)
    (tmp_path / "bad" / "happy").mkdir()
    with pytest.raises(DatasetError, match="smirk' is not named after an expression"):
        open_labelled(tmp_path / "bad")


def test_synfer_dataset_with_relabel_parquet(tmp_path):
    root = write_synfer(tmp_path / "s", per_class=2, shard_size=5)
    rows = [(f"{i:09d}", int(Expression.SAD), i % 3 != 0) for i in range(16)]
    rows[1] = (rows[1][0], int(Expression.CONTEMPT), True)
    write_relabel(root, "ensemble", rows)
    dataset = open_labelled(root, labels="ensemble")
    kept = [r for r in rows if r[2]]
    assert len(dataset) == len(kept) and dataset.stats.excluded["keep is false in labels/ensemble.parquet"] == 6
    samples = list(dataset)
    assert [s.source for s in samples] == [r[0] for r in kept]
    assert Counter(s.label for s in samples) == Counter(Expression(r[1]) for r in kept)
    seven = open_labelled(root, labels="ensemble", classes=7)
    assert len(seven) == len(kept) - 1 and Expression.CONTEMPT not in {s.label for s in seven}
    with pytest.raises(DatasetError, match="no labels/other.parquet .*found: ensemble"):
        open_labelled(root, labels="other")
    with pytest.raises(DatasetError, match="outside the dataset folder"):
        open_labelled(root, labels="../../elsewhere")
    # A shard that is not finished (no index) is not read.
    (root / "shards" / "00001.parquet").unlink()
    assert len(open_labelled(root)) == 11


def test_synfer_dataset_from_synfer_generate(tmp_path):
    from typer.testing import CliRunner

    from synfer.cli import app

    out = tmp_path / "gen"
    args = ["generate", "--model", "tiny", "--steps", "1", "--n", "4", "--label", "fear", "--shard-size", "3", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    samples = list(open_labelled(out))
    assert [s.source for s in samples] == [f"{i:09d}" for i in range(4)]
    assert {s.label for s in samples} == {Expression.FEAR} and samples[0].image.size == (32, 32)


def test_missing_or_shuffled_files_are_named(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        open_labelled(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="matches no known dataset layout.*list_patition_label.txt.*fer2013.csv"):
        open_labelled(tmp_path / "empty")
    (tmp_path / "an" / "Manually_Annotated_file_lists").mkdir(parents=True)
    with pytest.raises(DatasetError, match="training.csv is missing"):
        open_labelled(tmp_path / "an")
    (tmp_path / "raf" / "EmoLabel").mkdir(parents=True)
    (tmp_path / "raf" / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 4\n")
    with pytest.raises(DatasetError, match="Image/aligned is missing"):
        open_labelled(tmp_path / "raf")
    (tmp_path / "raf" / "Image" / "aligned").mkdir(parents=True)
    with pytest.raises(DatasetError, match="1 listed images are missing, first: train_00001_aligned.jpg"):
        open_labelled(tmp_path / "raf")
    (tmp_path / "raf" / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 9\n")
    with pytest.raises(DatasetError, match=r"list_patition_label.txt:1: RAF-DB has no label 9"):
        open_labelled(tmp_path / "raf")


def test_metadata_paths_cannot_leave_the_dataset(tmp_path):
    root = write_affectnet_csv(tmp_path / "an")
    secret = tmp_path / "secret.jpg"
    face(Expression.HAPPY, 0).save(secret)
    csv_file = root / "Manually_Annotated_file_lists" / "training.csv"
    csv_file.write_text(csv_file.read_text() + "../../secret.jpg,0,0,16,16,,1,0,0\n")
    with pytest.raises(DatasetError, match="points outside the dataset folder"):
        open_labelled(root)


def test_options_and_layouts_are_checked(tmp_path):
    root = write_rafdb(tmp_path / "raf")
    with pytest.raises(ConfigError, match="'crop_face' does not apply to rafdb"):
        open_labelled(root, crop_face=True)
    with pytest.raises(ConfigError, match="unknown dataset layout 'imagenet'"):
        open_labelled(root, layout="imagenet")
    with pytest.raises(DatasetError, match="fer2013.csv is missing"):
        open_labelled(root, layout="fer2013")
    assert set(LAYOUTS) == set(WRITERS)
