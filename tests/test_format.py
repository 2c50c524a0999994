import pyarrow.parquet as pq
import pytest
from PIL import Image

from synfer.data.format import (
    atomic_path,
    done_shards,
    index_path,
    resolve_inside,
    sample_key,
    shard_range,
    tar_path,
)
from synfer.data.writer import ShardWriter, encode_image
from synfer.errors import ConfigError, DatasetError

ROW = {
    "key": sample_key(0), "index": 0, "shard": 0, "label": 1, "label_name": "happy", "aus": [0.0] * 41,
    "au_known": [True] * 41, "prompt": "p", "seed": 1, "height": 8, "width": 8, "attributes": "{}",
}


def test_keys_and_ranges():
    assert sample_key(42) == "000000042" and "." not in sample_key(10**8)
    assert list(shard_range(2, 25, 10)) == list(range(20, 25))


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "file.txt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole" and list(tmp_path.iterdir()) == [target]


def test_shard_writer_commits_tar_before_index_and_aborts_cleanly(tmp_path):
    (tmp_path / "shards").mkdir()
    image = Image.new("RGB", (8, 8), (10, 20, 30))
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, 0) as writer:
        writer.write(ROW, image, {"key": ROW["key"]})
        raise RuntimeError("crash mid-shard")
    assert list((tmp_path / "shards").iterdir()) == [] and done_shards(tmp_path) == set()
    with ShardWriter(tmp_path, 0, "webp") as writer:
        writer.write(ROW, image, {"key": ROW["key"]})
    assert tar_path(tmp_path, 0).is_file() and done_shards(tmp_path) == {0}
    assert pq.read_table(index_path(tmp_path, 0)).column("image").to_pylist() == ["000000000.webp"]


def test_same_samples_make_the_same_shard_bytes(tmp_path):
    image = Image.new("RGB", (8, 8), (1, 2, 3))
    blobs = []
    for name in ("a", "b"):
        (tmp_path / name / "shards").mkdir(parents=True)
        with ShardWriter(tmp_path / name, 0) as writer:
            writer.write(ROW, image, {"key": ROW["key"]})
        blobs.append(tar_path(tmp_path / name, 0).read_bytes())
    assert blobs[0] == blobs[1]


def test_encode_image_formats():
    image = Image.new("RGB", (4, 4))
    assert encode_image(image, "png").startswith(b"\x89PNG")
    assert encode_image(image, "jpg").startswith(b"\xff\xd8")
    with pytest.raises(ConfigError, match="accepted: png, jpg, webp"):
        encode_image(image, "bmp")


def test_metadata_paths_cannot_escape_the_dataset(tmp_path):
    assert resolve_inside(tmp_path, "shards/00000.tar") == (tmp_path / "shards/00000.tar").resolve()
    for bad in ("../outside", "/etc/passwd", "shards/../../x"):
        with pytest.raises(DatasetError, match="outside the dataset"):
            resolve_inside(tmp_path, bad)
