"""Image-caption readers: every layout, the three parquet image cells, ids, escapes, duplicates, no captions."""

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from synfer.data.au_table import read_au_table
from synfer.data.captions import CAPTION_LAYOUTS, CaptionedDataset, detect_caption_layout, open_captioned
from synfer.data.dataset import SynferDataset
from synfer.errors import ConfigError, DatasetError

from fer_layouts import write_synfer


def picture(seed: int, size=(12, 10)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    picture(seed).save(buffer, format="PNG")
    return buffer.getvalue()


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))


# -- imagefolder ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from synfer.world.make import WorldConfig, make_world

    out = tmp_path_factory.mktemp("world") / "w"
    make_world(WorldConfig(n=20, size=24, seed=3), out)
    return out


def test_a_world_split_is_an_imagefolder_whose_ids_join_its_au_table(world):
    data = open_captioned(world / "train")
    assert data.layout == "imagefolder" and detect_caption_layout(world / "train").name == "imagefolder"  # not its aus.parquet
    table = read_au_table(world / "train" / "aus.parquet")
    assert sorted(data.ids) == sorted(table.ids) and all("/" in i for i in data.ids)
    lines = [json.loads(line) for line in (world / "train" / "metadata.jsonl").read_text().splitlines()]
    captions = {line["file_name"]: line["text"] for line in lines}
    sample = data[3]
    assert sample.caption == captions[sample.id] and sample.image.mode == "RGB"
    assert same_pixels(sample.image, Image.open(world / "train" / sample.id))
    assert data[-1].id == data.ids[-1]
    with pytest.raises(IndexError):
        data[len(data)]
    whole = open_captioned(world)  # the world's root: one metadata file per split folder
    assert len(whole) == 20 and f"train/{data.ids[0]}" in whole.ids


def test_per_image_txt_captions_and_a_named_caption_column(tmp_path):
    root = tmp_path / "faces"
    (root / "a").mkdir(parents=True)
    picture(0).save(root / "a" / "x.png")
    (root / "a" / "x.txt").write_text("a smiling face\n")
    picture(1).save(root / "y.jpg")
    (root / "y.txt").write_text("a frown")
    picture(2).save(root / "uncaptioned.png")
    data = open_captioned(root)
    assert data.ids == ["a/x.png", "y.jpg"] and data.captions == ["a smiling face", "a frown"]
    assert data.stats.excluded["no caption"] == 1
    with pytest.raises(DatasetError, match="uncaptioned.png has no caption"):
        open_captioned(root, strict=True)

    (root / "metadata.jsonl").write_text(json.dumps({"file_name": "uncaptioned.png", "description": "calm", "text": "t"}) + "\n")
    named = open_captioned(root, caption_column="description")
    assert dict(zip(named.ids, named.captions))["uncaptioned.png"] == "calm"  # the given column wins over text
    assert dict(zip(named.ids, named.captions))["a/x.png"] == "a smiling face"  # not listed: its .txt


def test_a_folder_of_images_without_captions_is_one_clear_error(tmp_path):
    root = tmp_path / "bare"
    root.mkdir()
    for i in range(3):
        picture(i).save(root / f"{i}.png")
    with pytest.raises(DatasetError) as error:
        open_captioned(root)
    message = str(error.value)
    assert "3 images but no captions" in message and "metadata.jsonl" in message and ".txt" in message
    assert "\n" not in message


def test_metadata_paths_that_leave_the_folder_are_refused(tmp_path):
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    picture(0).save(tmp_path / "secret.png")
    (root / "train" / "metadata.jsonl").write_text(json.dumps({"file_name": "../../secret.png", "text": "x"}) + "\n")
    with pytest.raises(DatasetError, match="points outside the dataset folder"):
        open_captioned(root, layout="imagefolder")


def test_an_image_listed_twice_names_both_metadata_files(tmp_path):
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    picture(0).save(root / "train" / "a.png")
    (root / "metadata.jsonl").write_text(json.dumps({"file_name": "train/a.png", "text": "one"}) + "\n")
    (root / "train" / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "two"}) + "\n")
    with pytest.raises(DatasetError, match=r"'train/a.png' appears twice: in metadata.jsonl:1 and in train/metadata.jsonl:1"):
        open_captioned(root)


def test_listed_images_that_are_missing_are_counted_or_fatal(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    picture(0).save(root / "a.png")
    rows = [{"file_name": "a.png", "text": "here"}, {"file_name": "gone.png", "text": "not here"}]
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = open_captioned(root)
    assert data.ids == ["a.png"] and data.stats.missing == 1 and "gone.png" in data.describe()
    with pytest.raises(DatasetError, match="gone.png is missing"):
        open_captioned(root, strict=True)


# -- parquet --------------------------------------------------------------------------------------------


def write_parquet(path, columns, row_group_size=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def test_parquet_image_cells_bytes_struct_and_path(tmp_path):
    root = tmp_path / "fetext"
    (root / "images").mkdir(parents=True)
    picture(7).save(root / "images" / "p.png")
    picture(8).save(root / "images" / "q.png")
    write_parquet(root / "a.parquet", {
        "image": pa.array([png(0), png(1), png(2)], pa.binary()),
        "caption": ["zero", "one", "two"],
        "image_path": ["imgs/0.jpg", "imgs/1.jpg", "imgs/2.jpg"],
    }, row_group_size=2)  # two row groups: rows are found across them
    write_parquet(root / "b.parquet", {
        "image": pa.array([{"bytes": png(3), "path": "/elsewhere/3.png"}, {"bytes": None, "path": "images/p.png"}],
                          pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "caption": ["three", "p"],
    })
    write_parquet(root / "more" / "c.parquet", {"image": ["images/q.png", "images/absent.png"], "caption": ["q", "gone"]})
    data = open_captioned(root)
    assert data.layout == "parquet"
    assert data.ids == ["imgs/0.jpg", "imgs/1.jpg", "imgs/2.jpg", "b/0", "b/1", "more/c/0"]
    assert data.captions == ["zero", "one", "two", "three", "p", "q"]
    assert data.stats.missing == 1  # the path cell whose file does not exist
    expected = [picture(0), picture(1), picture(2), picture(3), picture(7), picture(8)]
    for i in (5, 0, 2, 4, 1, 3):  # out of order: row groups are read as needed
        assert same_pixels(data[i].image, expected[i]), i
    single = open_captioned(root / "b.parquet")
    assert single.ids == ["b/0", "b/1"] and same_pixels(single[1].image, picture(7))
    with pytest.raises(DatasetError, match="absent.png"):
        open_captioned(root, strict=True)


def test_parquet_columns_can_be_named(tmp_path):
    path = write_parquet(tmp_path / "d" / "x.parquet", {"jpg": pa.array([png(4)], pa.binary()), "prompt": ["p"], "name": ["faces/4.png"]})
    data = open_captioned(path.parent, image_column="jpg", caption_column="prompt", id_column="name")
    assert data.ids == ["faces/4.png"] and data.captions == ["p"] and same_pixels(data[0].image, picture(4))
    with pytest.raises(DatasetError, match=r"no caption column 'caption' \(columns: jpg, prompt, name\)"):
        open_captioned(path.parent, image_column="jpg")
    with pytest.raises(DatasetError, match="no id column 'file'"):
        open_captioned(path.parent, image_column="jpg", caption_column="prompt", id_column="file")


def test_parquet_paths_that_leave_the_folder_are_refused(tmp_path):
    picture(0).save(tmp_path / "outside.png")
    root = tmp_path / "d"
    write_parquet(root / "x.parquet", {"image": ["../outside.png"], "caption": ["c"]})
    with pytest.raises(DatasetError, match="points outside the dataset folder"):
        open_captioned(root)
    struct = pa.array([{"bytes": None, "path": "../outside.png"}], pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    write_parquet(root / "x.parquet", {"image": struct, "caption": ["c"]})
    data = open_captioned(root)  # a struct's path is only followed when its bytes are null: then refused
    with pytest.raises(DatasetError, match="points outside the dataset folder"):
        data[0]


def test_the_same_relative_path_in_two_parquet_files_is_a_duplicate(tmp_path):
    root = tmp_path / "d"
    for name in ("one", "two"):
        write_parquet(root / f"{name}.parquet", {"image": pa.array([png(0)], pa.binary()), "caption": ["c"], "image_path": ["faces/0.png"]})
    with pytest.raises(DatasetError, match=r"'faces/0.png' appears twice: in one.parquet row 0 and in two.parquet row 0"):
        open_captioned(root)


def test_parquet_ids_must_be_relative(tmp_path):
    root = tmp_path / "d"
    write_parquet(root / "x.parquet", {"image": pa.array([png(0)], pa.binary()), "caption": ["c"], "image_path": ["/abs/0.png"]})
    with pytest.raises(DatasetError, match="must be a relative path"):
        open_captioned(root)


# -- webdataset -----------------------------------------------------------------------------------------


def add_member(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards_txt_and_json_captions_random_access(tmp_path):
    root = tmp_path / "wds"
    root.mkdir()
    with tarfile.open(root / "shard-000.tar", "w") as tar:
        add_member(tar, "a.png", png(0))
        add_member(tar, "a.txt", b"first caption")
        add_member(tar, "sub/b.png", png(1))
        add_member(tar, "sub/b.json", json.dumps({"caption": "second", "other": 1}).encode())
        add_member(tar, "c.png", png(2))  # no caption
    with tarfile.open(root / "shard-001.tar", "w") as tar:
        add_member(tar, "a.jpg", png(3))  # the same key in another shard: a different id
        add_member(tar, "a.json", json.dumps({"text": "third"}).encode())
    data = open_captioned(root)
    assert data.layout == "webdataset"
    assert data.ids == ["shard-000/a", "shard-000/sub/b", "shard-001/a"]
    assert data.captions == ["first caption", "second", "third"]
    assert data.stats.excluded["no caption"] == 1
    for i, seed in ((2, 3), (0, 0), (1, 1)):
        assert same_pixels(data[i].image, picture(seed))
    with pytest.raises(DatasetError, match="shard-000.tar:c has no caption"):
        open_captioned(root, strict=True)


# -- synfer ---------------------------------------------------------------------------------------------


def test_a_synfer_dataset_captions_its_images_with_their_prompts(tmp_path):
    root = write_synfer(tmp_path / "syn", per_class=1, shard_size=3)
    (root / "shards" / "00002.parquet").unlink()  # shard 2 unfinished: left out
    data = open_captioned(root)
    assert data.layout == "synfer"
    dataset = SynferDataset(root)
    samples = {s.key: s for shard in (0, 1) for s in dataset.iter_shard(shard)}
    prompts = dict(zip(*dataset.index(["key", "prompt"]).to_pydict().values()))
    assert data.ids == sorted(samples) and len(data) == 6
    for i in (4, 0):
        sample = data[i]
        assert sample.caption == prompts[sample.id] and same_pixels(sample.image, samples[sample.id].image)


# -- shared behaviour -----------------------------------------------------------------------------------


def test_the_fingerprint_follows_content_not_file_times(tmp_path):
    import os

    root = tmp_path / "faces"
    root.mkdir()
    for i in range(3):
        picture(i).save(root / f"{i}.png")
        (root / f"{i}.txt").write_text(f"caption {i}")
    first = open_captioned(root).fingerprint()
    os.utime(root / "1.png", (1, 1))
    assert open_captioned(root).fingerprint() == first
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in os.listdir(root):
        (copy / name).write_bytes((root / name).read_bytes())
    assert open_captioned(copy).fingerprint() == first  # another folder, the same content
    (root / "2.txt").write_text("another caption")
    second = open_captioned(root).fingerprint()
    picture(9).save(root / "0.png")
    third = open_captioned(root).fingerprint()
    assert len({first, second, third}) == 3


def test_layouts_are_registered_and_unknown_ones_refused(tmp_path):
    assert list(CAPTION_LAYOUTS) == ["synfer", "imagefolder", "webdataset", "parquet"]
    with pytest.raises(ConfigError, match=r"unknown caption dataset layout 'coco' \(accepted: synfer, imagefolder"):
        open_captioned(tmp_path, layout="coco")
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(DatasetError, match="matches no image-caption layout; expected one of: synfer:"):
        open_captioned(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        open_captioned(tmp_path / "nothing")
    assert issubclass(type(open_captioned(write_synfer(tmp_path / "s", per_class=1))), CaptionedDataset)
