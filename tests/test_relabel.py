import hashlib
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from synfer.cli import app
from synfer.data.dataset import SynferDataset
from synfer.expressions import AFFECTNET8, Expression
from synfer.labelers.base import load_labeler
from synfer.labelers.rectifier import Rectifier
from synfer.labelers.relabel import relabel_dataset, work_dir
from synfer.models.classifier import create_classifier

runner = CliRunner()
HAPPY = int(Expression.HAPPY)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A tiny 8-sample dataset in two shards (one sample per class) and constant classifiers."""
    root = tmp_path_factory.mktemp("relabel")
    result = runner.invoke(
        app,
        ["generate", "--model", "tiny", "--steps", "2", "--n", "8", "--shard-size", "4", "--batch-size", "4", "--out", str(root / "data")],
    )
    assert result.exit_code == 0, result.output

    def constant(name, index, strength, classes="affectnet8"):
        torch.manual_seed(0)
        model = create_classifier("tiny-resnet", classes)
        with torch.no_grad():
            model.head.weight.zero_()
            model.head.bias.zero_()
            model.head.bias[index] = strength
        model.save_pretrained(root / name)
        return f"classifier:{root / name}"

    return {
        "data": root / "data",
        "happy": constant("happy", HAPPY, 5.0),  # p(happy) = e^5 / (e^5 + 7) ≈ 0.955
        "sad": constant("sad", int(Expression.SAD), 2.0),  # p(sad) ≈ 0.514
        "seven": constant("seven", HAPPY, 5.0, "affectnet7"),
    }


@pytest.fixture
def dataset(made, tmp_path):
    shutil.copytree(made["data"], tmp_path / "data")
    return tmp_path / "data"


def relabel(dataset, *args):
    return runner.invoke(app, ["relabel", str(dataset), *args])


def file_hashes(root, pattern):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.glob(pattern)) if p.is_file()}


def column(table, name):
    return np.asarray(table.column(name).to_pylist())


def test_confident_happy_labeler_relabels_and_mean_combines(made, dataset):
    before = file_hashes(dataset, "shards/*") | file_hashes(dataset, "manifest.json")
    result = relabel(dataset, "--labeler", made["happy"], "--labeler", made["sad"], "--batch-size", "3")
    assert result.exit_code == 0, result.output
    assert file_hashes(dataset, "shards/*") | file_hashes(dataset, "manifest.json") == before  # only read

    table = pq.read_table(dataset / "labels" / "rectified.parquet")
    index = SynferDataset(dataset).index(["key", "label"])
    assert table.column("key").to_pylist() == index.column("key").to_pylist()
    types = {f.name: f.type for f in table.schema}
    assert types["key"] == pa.string() and types["target_label"] == pa.int8() and types["label"] == pa.int8()
    assert types["keep"] == pa.bool_() and types["changed"] == pa.bool_() and types["confidence"] == pa.float32()
    assert types["agreement"] == pa.float32() and types["probs"] == pa.list_(pa.float32())
    assert {"probs_classifier_0", "probs_classifier_1"} <= set(types)

    target = column(table, "target_label")
    assert target.tolist() == index.column("label").to_pylist() and sorted(target.tolist()) == list(range(8))
    happy, sad, ensemble = (column(table, c) for c in ("probs_classifier_0", "probs_classifier_1", "probs"))
    assert happy.argmax(1).tolist() == [HAPPY] * 8 and happy[:, HAPPY].min() > 0.95
    assert np.allclose(ensemble, (happy + sad) / 2, atol=1e-6)  # the mean policy
    assert column(table, "label").tolist() == [HAPPY] * 8
    assert column(table, "changed").tolist() == (target != HAPPY).tolist()
    assert np.allclose(column(table, "confidence"), ensemble.max(1))
    assert np.allclose(column(table, "agreement"), 0.5)  # happy agrees with the ensemble, sad does not
    assert column(table, "keep").all()

    report = json.loads((dataset / "labels" / "rectified.report.json").read_text())
    assert report["n"] == 8 and report["changed"] == 7 and report["kept_fraction"] == 1.0
    assert {c["label"]: c["agreement"] for c in report["per_class"]} == {e.label: float(e == Expression.HAPPY) for e in Expression}
    counts = np.asarray(report["relabel_matrix"]["counts"])
    assert counts[:, HAPPY].tolist() == [1] * 8 and counts.sum() == 8
    assert (dataset / "labels" / "rectified.relabel.png").stat().st_size > 0
    assert not work_dir(dataset, "rectified").exists()
    assert "relabelled 7" in result.output and "happy" in result.output

    # The same command again: nothing recomputed, the same bytes.
    first = file_hashes(dataset, "labels/*")
    again = relabel(dataset, "--labeler", made["happy"], "--labeler", made["sad"])
    assert again.exit_code == 0 and "already complete" in again.output
    assert file_hashes(dataset, "labels/*") == first

    # Other settings under the same name are refused; under another name they coexist.
    clash = relabel(dataset, "--labeler", made["happy"])
    assert clash.exit_code == 2 and "--overwrite" in clash.stderr
    message = "".join(clash.stderr.split())  # the terminal may wrap the line anywhere
    assert "differsin:members.1.column" in message and "members.length" in message  # compared member by member
    assert "relabelling" not in clash.stderr  # refused before any work began
    strict = relabel(dataset, "--labeler", made["happy"], "--labeler", made["sad"], "--name", "strict", "--min-confidence", "0.6")
    assert strict.exit_code == 0, strict.output
    assert not column(pq.read_table(dataset / "labels" / "strict.parquet"), "keep").any()  # mean confidence ≈ 0.51
    weighted = relabel(
        dataset, "--labeler", made["happy"], "--labeler", made["sad"], "--name", "w", "--policy", "weighted",
        "--weight", "1", "--weight", "3"
    )
    assert weighted.exit_code == 0, weighted.output
    assert column(pq.read_table(dataset / "labels" / "w.parquet"), "label").tolist() == [int(Expression.SAD)] * 8
    assert file_hashes(dataset, "labels/rectified*") == {k: v for k, v in first.items() if "rectified" in k}


def test_a_killed_run_resumes_to_the_same_result(made, dataset):
    data = SynferDataset(dataset)
    members = [load_labeler(made["happy"]), load_labeler(made["sad"])]
    clean = relabel_dataset(data, Rectifier(members, AFFECTNET8), "clean", batch_size=3)
    assert clean.labelled == 8

    seen = []

    def die_in_second_shard(k):
        seen.append(k)
        if sum(seen) >= 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        relabel_dataset(data, Rectifier(members, AFFECTNET8), "resumed", batch_size=3, on_progress=die_in_second_shard)
    assert not (dataset / "labels" / "resumed.parquet").exists()
    parts = sorted(p.name for p in work_dir(dataset, "resumed").iterdir())
    assert parts == ["00000.parquet", "run.json"]  # the shard in progress left nothing behind

    resumed = relabel_dataset(data, Rectifier(members, AFFECTNET8), "resumed", batch_size=3)
    assert resumed.reused_shards == [0] and resumed.labelled == 4
    assert (dataset / "labels" / "resumed.parquet").read_bytes() == (dataset / "labels" / "clean.parquet").read_bytes()
    assert resumed.report["relabel_matrix"] == clean.report["relabel_matrix"]
    assert not work_dir(dataset, "resumed").exists()


def test_feranno_head_is_an_ensemble_member(made, dataset, tmp_path):
    from synfer.labelers.feranno import FERAnnoFeatureExtractor, FERAnnoHead
    from synfer.pipelines.loading import tiny_pipeline

    extractor = FERAnnoFeatureExtractor(tiny_pipeline(0), model={"name": "tiny", "adapter": None, "seed": 0})
    torch.manual_seed(0)
    FERAnnoHead.for_extractor(extractor, AFFECTNET8, hidden_dim=16).save_pretrained(tmp_path / "head")
    result = relabel(dataset, "--labeler", f"feranno:{tmp_path / 'head'}", "--labeler", made["happy"], "--name", "mixed")
    assert result.exit_code == 0, result.output
    table = pq.read_table(dataset / "labels" / "mixed.parquet")
    feranno, happy = column(table, "probs_feranno_0"), column(table, "probs_classifier_1")
    assert feranno.shape == (8, 8) and np.allclose(feranno.sum(1), 1, atol=1e-5)
    assert len({tuple(row) for row in feranno.round(6)}) > 1  # it looks at each image
    assert np.allclose(column(table, "probs"), (feranno + happy) / 2, atol=1e-6)
    members = json.loads(table.schema.metadata[b"synfer"])["members"]
    assert [m["kind"] for m in members] == ["feranno", "classifier"] and all(m["fingerprint"] for m in members)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--labeler", "seven"], "7 classes"),
        (["--labeler", "clip:/x"], "unknown labeler kind 'clip'"),
        (["--labeler", "happy", "--name", "../out"], "must be letters"),
        (["--labeler", "happy", "--policy", "weighted"], "--weight"),
        (["--labeler", "happy", "--policy", "best"], "unknown policy"),
        (["--labeler", "happy", "--min-confidence", "2"], "[0, 1]"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(made, args, fragment):
    args = [made.get(a, a) for a in args]
    result = relabel(made["data"], *args)
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr and "Traceback" not in result.output + result.stderr
    assert not (made["data"] / "labels").exists()


def test_not_a_dataset_or_unfinished(made, tmp_path):
    result = relabel(tmp_path, "--labeler", made["happy"])
    assert result.exit_code == 2 and "not a synfer dataset" in result.stderr
    shutil.copytree(made["data"], tmp_path / "partial")
    (tmp_path / "partial" / "shards" / "00001.parquet").unlink()
    result = relabel(tmp_path / "partial", "--labeler", made["happy"])
    assert result.exit_code == 2 and "1 of 2 shards" in result.stderr


def test_train_annotator_checks_options_before_loading_anything(tmp_path):
    for args, fragment in [(["--blocks", "1,x"], "comma-separated"), (["--timestep", "-1"], "timestep"), (["--classes", "6"], "label set")]:
        result = runner.invoke(app, ["train-annotator", "--model", "tiny", "--real", str(tmp_path), "--out", str(tmp_path / "o"), *args])
        assert result.exit_code == 2 and fragment in result.stderr, result.output
