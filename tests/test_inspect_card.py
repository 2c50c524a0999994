import io
import json
import shutil
import tarfile

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image
from typer.testing import CliRunner

from synfer.cli import app
from synfer.data.card import PREVIEW_CELL, PREVIEW_COLUMNS, PREVIEW_LABEL_WIDTH, summarize, write_card
from synfer.data.dataset import SynferDataset
from synfer.data.format import CARD, PREVIEW, read_manifest
from synfer.synth.runner import finish_dataset

runner = CliRunner()
N = 12
WEIGHTS = {"happy": 2, "sad": 1, "neutral": 1}
EXPECTED = {"neutral": 3, "happy": 6, "sad": 3}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("made")
    weights = root / "weights.json"
    weights.write_text(json.dumps(WEIGHTS))
    out = root / "d"
    result = runner.invoke(
        app,
        ["generate", "--model", "tiny", "--steps", "2", "--batch-size", "4", "--n", str(N), "--shard-size", "5",
         "--distribution", str(weights), "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "dataset complete, card written" in result.output.replace("\n", " ")
    return out


@pytest.fixture
def copy(made, tmp_path):
    return shutil.copytree(made, tmp_path / "copy")


def labels_in_index(root):
    return [r["label_name"] for s in range(3) for r in pq.read_table(root / "shards" / f"0000{s}.parquet").to_pylist()]


def test_card_counts_aus_config_and_loading(made):
    manifest = read_manifest(made)
    assert manifest["plan"]["distribution"] == "custom" and manifest["plan"]["weights"] == {"neutral": 1, "happy": 2, "sad": 1}
    assert manifest["label_counts"] == {**dict.fromkeys(["surprise", "fear", "disgust", "anger", "contempt"], 0), **EXPECTED}
    card = (made / CARD).read_text()
    assert card.startswith("---\n") and "path: shards/*.tar" in card and "- n<1K" in card
    for name, count in EXPECTED.items():
        assert f"| {name} | {count} | {count / N:.1%} |" in card
    assert "| anger | 0 | 0.0% |" in card and f"| **total** | **{N}** |" in card
    assert "| neutral | none |" in card
    summary = summarize(SynferDataset(made))
    happy = summary.labels.index("happy")
    frequency = {au: share for au, share, _ in summary.au_frequency(happy)}
    assert frequency["AU12"] >= 0.5 and f"AU12 {frequency['AU12']:.0%}" in card
    assert "wds.WebDataset(\"shards/{00000..00002}.tar\"" in card and 'load_dataset("webdataset"' in card
    assert "- model: `tiny`" in card and "2 steps" in card and "32x32 png" in card


def test_preview_has_one_row_per_expression(made):
    preview = Image.open(made / PREVIEW)
    assert preview.size == (PREVIEW_LABEL_WIDTH + PREVIEW_COLUMNS * PREVIEW_CELL, 8 * PREVIEW_CELL)
    pixels = preview.convert("RGB")
    white = (255, 255, 255)

    def filled(row, column):
        centre = (PREVIEW_LABEL_WIDTH + column * PREVIEW_CELL + PREVIEW_CELL // 2, row * PREVIEW_CELL + PREVIEW_CELL // 2)
        return pixels.getpixel(centre) != white

    # neutral (row 0) and sad (row 2) have 3 samples, happy 6; surprise has none.
    assert [filled(0, c) for c in range(4)] == [True, True, True, False]
    assert [filled(1, c) for c in range(7)] == [True] * 6 + [False]
    assert not filled(3, 0)


def test_card_is_idempotent_and_waits_for_every_shard(made, copy):
    before = {name: (made / name).read_bytes() for name in (CARD, PREVIEW)}
    write_card(SynferDataset(copy), force=True)
    assert {name: (copy / name).read_bytes() for name in (CARD, PREVIEW)} == before
    assert write_card(SynferDataset(copy)).written == []  # both exist: nothing to do
    for name in (CARD, PREVIEW):
        (copy / name).unlink()
    (copy / "shards" / "00001.parquet").unlink()
    assert finish_dataset(copy) is False and not (copy / CARD).exists()
    shutil.copy(made / "shards" / "00001.parquet", copy / "shards")
    assert finish_dataset(copy) is True and (copy / CARD).read_bytes() == before[CARD]
    assert not list(copy.glob(".*.tmp"))


def test_shards_load_with_webdataset_and_hugging_face_datasets(made, tmp_path):
    samples = list(wds.WebDataset(str(made / "shards" / "{00000..00002}.tar"), shardshuffle=False).decode("pil"))
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(N)]
    assert [s["json"]["label_name"] for s in samples] == labels_in_index(made)

    import datasets  # the test extra installs it

    loaded = datasets.load_dataset(str(made), split="train", cache_dir=str(tmp_path / "cache"))
    assert loaded.num_rows == N
    assert sorted(loaded["__key__"]) == [f"{i:09d}" for i in range(N)]
    row = next(r for r in loaded if r["__key__"] == "000000003")
    assert row["png"].size == (32, 32) and row["json"]["label_name"] == labels_in_index(made)[3]
    files = str(made / "shards" / "*.parquet")
    index = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "cache"))
    assert sorted(index["key"]) == [f"{i:09d}" for i in range(N)]


def test_inspect_reports_counts_and_verifies(made):
    result = runner.invoke(app, ["inspect", str(made), "--verify"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"{N} of {N} samples in 3/3 shards (complete)" in text
    assert "│ happy │ 6 │ 6 │" in text and "│ anger │ 0 │ 0 │" in text
    assert "shards finished: 3 of 3 (00000-00002)" in text and "card: README.md, preview.png" in text
    assert f"verified: {N} unique keys, {N} images decode" in text


def test_inspect_shows_unfinished_shards_and_verify_fails(made, copy):
    (copy / "shards" / "00001.parquet").unlink()
    (copy / "shards" / "00002.tar").rename(copy / "shards" / "00002.tar.tmp")
    (copy / "shards" / "00002.parquet").unlink()
    result = runner.invoke(app, ["inspect", str(copy)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"5 of {N} samples in 1/3 shards (incomplete)" in text and "shards unfinished: 00001-00002" in text
    assert "partly written (running, or interrupted; a rerun redoes them): 00002" in text
    assert "tar without index (interrupted before the index; a rerun redoes them): 00001 " in text
    result = runner.invoke(app, ["inspect", str(copy), "--verify"])
    assert result.exit_code == 1
    assert "shard 1: not finished" in result.stderr and "verification failed: 2 problems" in result.stderr


def rewrite_tar(path, change):
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(path, "w") as tar:
        for member, data in change(members):
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda ms: ms[:-2], "2 indexed files missing from the tar (first: 000000004.json)"),
        (lambda ms: ms + ms[:1], "tar member 000000000.json appears twice"),
        (lambda ms: [(m, d[:40] if m.name.endswith(".png") and m.name.startswith("000000002") else d) for m, d in ms],
         "image 000000002.png does not decode"),
        (lambda ms: [(m, d.replace(b'"label": ', b'"label": 1') if m.name == "000000001.json" else d) for m, d in ms],
         "000000001.json does not match the index"),
    ],
    ids=["missing", "duplicate", "undecodable", "mismatch"],
)
def test_verify_finds_damaged_tars(copy, change, fragment):
    rewrite_tar(copy / "shards" / "00000.tar", change)
    result = runner.invoke(app, ["inspect", str(copy), "--verify"])
    assert result.exit_code == 1
    assert fragment in " ".join(result.stderr.split())


def test_damaged_index_is_reported_not_a_traceback(copy):
    (copy / "shards" / "00001.parquet").write_bytes(b"PAR1 not really")
    result = runner.invoke(app, ["inspect", str(copy)])
    assert result.exit_code == 0 and "unreadable index in shards 00001" in " ".join(result.stderr.split())
    result = runner.invoke(app, ["inspect", str(copy), "--verify"])
    assert result.exit_code == 1 and "shard 1: index unreadable" in result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_inspect_bad_input(tmp_path):
    result = runner.invoke(app, ["inspect", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "does not exist" in result.stderr and "Traceback" not in result.output
    result = runner.invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 2 and "not a synfer dataset" in result.stderr
