import subprocess
import sys
import tarfile

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from typer.testing import CliRunner

from synfer.aus import AUVector
from synfer.cli import app
from synfer.data.format import INDEX_SCHEMA, read_manifest

runner = CliRunner()
FAST = ["--model", "tiny", "--steps", "2", "--batch-size", "3"]


def generate(*args):
    return runner.invoke(app, ["generate", *FAST, *args])


def test_generate_writes_the_dataset_format(tmp_path):
    out = tmp_path / "demo"
    result = generate("--aus", "6,12", "--n", "7", "--shard-size", "4", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "labelling every sample 'happy'" in result.stderr
    assert "random weights" in result.stderr

    manifest = read_manifest(out)
    assert manifest["n"] == 7 and manifest["num_shards"] == 2 and manifest["shard_size"] == 4
    assert manifest["plan"]["aus"] == "AU6:3,AU12:3"
    assert set(manifest["model"]["components"]) == {"vae", "text_encoder", "tokenizer", "unet", "scheduler", "au_adapter"}
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["00000.parquet", "00000.tar", "00001.parquet", "00001.tar"]

    tables = [pq.read_table(out / "shards" / f"0000{s}.parquet") for s in (0, 1)]
    assert all(t.schema.equals(INDEX_SCHEMA) for t in tables)
    rows = [r for t in tables for r in t.to_pylist()]
    assert [r["key"] for r in rows] == [f"{i:09d}" for i in range(7)]
    assert {r["label_name"] for r in rows} == {"happy"}
    assert all(AUVector(r["aus"], r["au_known"]) == AUVector.parse("6,12") for r in rows)
    assert len({r["seed"] for r in rows}) == 7

    with tarfile.open(out / "shards" / "00000.tar") as tar:
        names = tar.getnames()
    assert names == [f"{i:09d}.{ext}" for i in range(4) for ext in ("json", "png")]

    # Readable by the webdataset library without synfer.
    samples = list(wds.WebDataset(str(out / "shards" / "{00000..00001}.tar"), shardshuffle=False).decode("pil"))
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(7)]
    assert samples[0]["png"].size == (32, 32)
    meta = samples[5]["json"]
    assert meta["label_name"] == "happy" and meta["aus"] == "AU6:3,AU12:3"
    assert meta["prompt"] == rows[5]["prompt"] and "smiling happily" in meta["prompt"]


def test_generate_balances_labels_without_aus_or_label(tmp_path):
    result = generate("--n", "16", "--out", str(tmp_path / "d"))
    assert result.exit_code == 0, result.output
    labels = pq.read_table(tmp_path / "d" / "shards" / "00000.parquet").column("label").to_pylist()
    assert sorted(labels) == sorted(list(range(8)) * 2)


def test_rerun_resumes_and_changed_config_is_refused(tmp_path):
    out = tmp_path / "d"
    assert generate("--label", "sad", "--n", "6", "--shard-size", "3", "--out", str(out)).exit_code == 0
    first = (out / "shards" / "00000.tar").read_bytes()
    (out / "shards" / "00001.parquet").unlink()  # as if the run had died before finishing shard 1
    again = generate("--label", "sad", "--n", "6", "--shard-size", "3", "--out", str(out))
    assert again.exit_code == 0 and "made 3 now" in again.output.replace("\n", " ")
    assert (out / "shards" / "00000.tar").read_bytes() == first
    changed = generate("--label", "anger", "--n", "6", "--shard-size", "3", "--out", str(out))
    assert changed.exit_code == 2 and "different config" in changed.stderr and "plan" in changed.stderr
    replaced = generate("--label", "anger", "--n", "6", "--shard-size", "3", "--out", str(out), "--overwrite")
    assert replaced.exit_code == 0
    assert read_manifest(out)["plan"]["label"] == 6


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--aus", "6,99", "--n", "2"], "unknown AU '99'"),
        (["--aus", "", "--n", "2"], "empty AU specification"),
        (["--label", "joyous", "--n", "2"], "unknown expression"),
        (["--n", "2", "--format", "gif"], "unknown image format"),
        (["--n", "2", "--classes", "7", "--label", "contempt"], "not in label set"),
        (["--n", "2", "--height", "33"], "multiples of 2"),
        (["--n", "2", "--device", "cuda:0"], "no CUDA GPU"),
        (["--n", "2", "--dtype", "float64"], "unknown dtype"),
        (["--aus", "6"], "--n"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, args, fragment):
    result = generate(*args, "--out", str(tmp_path / "x"))
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert len(result.stderr.strip().splitlines()[-1]) > 0


def test_model_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("SYNFER_MODEL", raising=False)
    result = runner.invoke(app, ["generate", "--n", "2", "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "--model tiny" in result.stderr and "SYNFER_MODEL" in result.stderr
    result = runner.invoke(app, ["generate", "--model", str(tmp_path / "missing"), "--n", "2", "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "does not exist" in result.stderr
    (tmp_path / "notamodel").mkdir()
    result = runner.invoke(app, ["generate", "--model", str(tmp_path / "notamodel"), "--n", "2", "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "model_index.json" in result.stderr
    result = runner.invoke(app, ["generate", "--model", "org/not-cached", "--n", "2", "--out", str(tmp_path / "d")])
    assert result.exit_code == 2 and "could not load model 'org/not-cached'" in result.stderr
    monkeypatch.setenv("SYNFER_MODEL", "tiny")
    result = runner.invoke(app, ["generate", "--n", "1", "--steps", "1", "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output


def test_unwritable_or_foreign_out(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = generate("--n", "2", "--out", str(blocker / "sub"))
    assert result.exit_code == 2 and "cannot write to --out" in result.stderr
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    result = generate("--n", "2", "--out", str(foreign))
    assert result.exit_code == 2 and "not a synfer dataset" in result.stderr
    assert (foreign / "notes.txt").read_text() == "mine"


def test_console_script_entry_point_exits_2_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "synfer", "generate", "--model", "tiny", "--aus", "AU6:9", "--n", "1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error:") and "out of range" in result.stderr


def test_info_lists_components(tmp_path):
    result = runner.invoke(app, ["info", "--model", "tiny"])
    assert result.exit_code == 0, result.output
    for name in ("torch", "diffusers", "unet", "au_adapter", "UNet2DConditionModel", "7 cross-attention layers"):
        assert name in result.output


def test_dataset_reader_sees_finished_shards_only(tmp_path):
    from synfer.data.dataset import SynferDataset
    from synfer.errors import DatasetError

    out = tmp_path / "d"
    assert generate("--n", "5", "--shard-size", "2", "--out", str(out)).exit_code == 0
    (out / "shards" / "00001.parquet").unlink()
    dataset = SynferDataset(out)
    assert dataset.shards == [0, 2] and not dataset.complete and dataset.num_shards == 3
    samples = list(dataset)
    assert [s.key for s in samples] == ["000000000", "000000001", "000000004"]
    assert samples[0].image.size == (32, 32) and samples[0].meta["key"] == "000000000"
    assert dataset.index(["key"]).column("key").to_pylist() == [s.key for s in samples]
    with pytest.raises(DatasetError, match="not a synfer dataset"):
        SynferDataset(tmp_path)
