"""annotate-aus: detectors (a fake one, OpenGraphAU with random weights), AU files joined by id, resume, refusals."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from synfer.aus import AU_INDEX, NUM_AUS, from_openface
from synfer.cli import app
from synfer.data.au_table import read_au_table
from synfer.errors import ConfigError, DatasetError
from synfer.labelers.annotate_aus import AnnotateConfig, annotate_aus
from synfer.labelers.au_detectors import AU_DETECTORS, load_au_detector

runner = CliRunner()
CALLS = {"images": 0, "crash_after": None}


class BrightnessDetector:
    """A detector whose 'weights' are a text file holding a gain: AU12 = gain x the red mean, AU4 = the blue mean."""

    kind = "brightness"
    scores = "probability"
    suggested_threshold = 0.4

    def __init__(self, path):
        data = Path(path).read_bytes()
        self.gain = float(data)
        self.source = path
        self.fingerprint = hashlib.sha256(data).hexdigest()
        self.known = np.zeros(NUM_AUS, bool)
        self.known[[AU_INDEX["AU12"], AU_INDEX["AU4"]]] = True
        self.preprocessing = {"resize": None, "input": "RGB in [0, 1]"}

    def predict(self, images):
        if CALLS["crash_after"] is not None and CALLS["images"] >= CALLS["crash_after"]:
            raise KeyboardInterrupt
        CALLS["images"] += len(images)
        out = torch.zeros(len(images), NUM_AUS)
        out[:, AU_INDEX["AU12"]] = (self.gain * images[:, 0].mean(dim=(1, 2))).clamp(0, 1)
        out[:, AU_INDEX["AU4"]] = images[:, 2].mean(dim=(1, 2))
        return out


if "brightness" not in AU_DETECTORS:
    AU_DETECTORS.register("brightness", lambda path, device: BrightnessDetector(path))


@pytest.fixture(autouse=True)
def reset_calls():
    CALLS.update(images=0, crash_after=None)
    yield
    CALLS.update(images=0, crash_after=None)


def make_faces(root, n=10, sizes=((12, 12), (16, 10))):
    """An imagefolder: n images of two sizes with metadata.jsonl captions; image i has red level 20 * i."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        name = f"{'ab'[i % 2]}/{i:03d}.png"
        (root / name).parent.mkdir(exist_ok=True)
        pixels = np.zeros((*sizes[i % 2][::-1], 3), np.uint8)
        pixels[..., 0] = 20 * i
        pixels[..., 2] = 255 - 20 * i
        Image.fromarray(pixels).save(root / name)
        lines.append(json.dumps({"file_name": name, "text": f"face {i}"}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def faces(tmp_path):
    return make_faces(tmp_path / "faces")


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "gain.txt"
    path.write_text("1.5")
    return path


def config(data, detector, out, **options):
    return AnnotateConfig(data=str(data), detector=detector, out=str(out), device="cpu", **options)


def test_a_detector_scores_every_image_into_an_au_table(faces, weights, tmp_path):
    result = annotate_aus(config(faces, f"brightness:{weights}", tmp_path / "out", batch_size=3, chunk_size=4))
    assert (result.images, result.rows, result.annotated, result.kind, result.scores) == (10, 10, 10, "brightness", "probability")
    table = read_au_table(tmp_path / "out" / "aus.parquet")
    assert table.ids == sorted(f"{'ab'[i % 2]}/{i:03d}.png" for i in range(10))
    assert table.kind == "probability" and table.suggested_threshold == 0.4
    for image_id, scores, known in zip(table.ids, table.scores, table.known):
        i = int(image_id[2:5])
        assert scores[AU_INDEX["AU12"]] == pytest.approx(min(1.0, 1.5 * 20 * i / 255), abs=1e-5)  # not thresholded
        assert scores[AU_INDEX["AU4"]] == pytest.approx((255 - 20 * i) / 255, abs=1e-5)
        assert known.sum() == 2 and scores[~known].max() == 0
    source = table.source
    assert source["detector"] == "brightness" and source["weights_sha256"] == hashlib.sha256(b"1.5").hexdigest()
    assert source["preprocessing"] == {"resize": None, "input": "RGB in [0, 1]"} and source["data"]["images"] == 10
    assert not (tmp_path / "out" / ".parts").exists() and not list((tmp_path / "out").glob("*.tmp"))

    again = annotate_aus(config(faces, f"brightness:{weights}", tmp_path / "out", batch_size=3, chunk_size=4))
    assert again.already_complete and CALLS["images"] == 10  # nothing ran again


def test_an_interrupted_run_resumes_at_the_first_unfinished_chunk(faces, weights, tmp_path):
    whole = tmp_path / "whole"
    annotate_aus(config(faces, f"brightness:{weights}", whole, batch_size=2, chunk_size=4))
    CALLS.update(images=0, crash_after=6)  # chunk 0 (4 images) is finished, chunk 1 is half done
    with pytest.raises(KeyboardInterrupt):
        annotate_aus(config(faces, f"brightness:{weights}", tmp_path / "cut", batch_size=2, chunk_size=4))
    assert [p.name for p in (tmp_path / "cut" / ".parts").glob("*.parquet")] == ["00000.parquet"]
    assert not (tmp_path / "cut" / "aus.parquet").exists()
    CALLS.update(images=0, crash_after=None)
    resumed = annotate_aus(config(faces, f"brightness:{weights}", tmp_path / "cut", batch_size=2, chunk_size=4))
    assert resumed.reused_chunks == 1 and resumed.annotated == 6 and CALLS["images"] == 6
    a, b = read_au_table(whole / "aus.parquet"), read_au_table(tmp_path / "cut" / "aus.parquet")
    assert a.ids == b.ids and np.array_equal(a.scores, b.scores) and a.source == b.source


def test_another_detector_or_other_data_is_refused_unless_overwrite(faces, weights, tmp_path):
    out = tmp_path / "out"
    annotate_aus(config(faces, f"brightness:{weights}", out))
    weights.write_text("0.5")
    with pytest.raises(DatasetError, match=r"differs in: detector.fingerprint\); pass --overwrite"):
        annotate_aus(config(faces, f"brightness:{weights}", out))
    replaced = annotate_aus(config(faces, f"brightness:{weights}", out, overwrite=True))
    assert not replaced.already_complete
    assert read_au_table(out / "aus.parquet").scores[-1, AU_INDEX["AU12"]] == pytest.approx(0.5 * 180 / 255, abs=1e-5)
    Image.new("RGB", (12, 12), (1, 2, 3)).save(faces / "a" / "000.png")
    with pytest.raises(DatasetError, match=r"differs in: data.fingerprint"):
        annotate_aus(config(faces, f"brightness:{weights}", out))
    moved = weights.rename(tmp_path / "elsewhere.txt")  # the same weights under another path resume
    assert annotate_aus(config(faces, f"brightness:{moved}", out, overwrite=True)).rows == 10
    assert annotate_aus(config(faces, f"brightness:{moved.rename(tmp_path / 'third.txt')}", out)).already_complete


def test_unreadable_images_are_left_out_and_counted_or_fatal(faces, weights, tmp_path):
    (faces / "b" / "003.png").write_bytes(b"not a png")
    result = annotate_aus(config(faces, f"brightness:{weights}", tmp_path / "out", chunk_size=3))
    assert result.rows == 9 and result.unreadable == 1 and result.unreadable_examples == ["b/003.png"]
    assert "b/003.png" not in read_au_table(tmp_path / "out" / "aus.parquet").ids
    with pytest.raises(DatasetError, match="unreadable image: .*003.png"):
        annotate_aus(config(faces, f"brightness:{weights}", tmp_path / "strict", strict=True))


def test_opengraphau_checkpoint_gives_its_41_probabilities(faces, tmp_path):
    from synfer.models.opengraphau import OpenGraphAU, preprocess, to_synfer_slots

    torch.manual_seed(0)
    model = OpenGraphAU(stage=1, backbone="resnet18")
    with torch.no_grad():  # random weights, but not the default BatchNorm statistics
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "OpenGraphAU-r18.pth"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    detector = load_au_detector(f"opengraphau:{path}")
    assert detector.scores == "probability" and detector.known.all() and detector.suggested_threshold == 0.5
    assert detector.preprocessing["resize"] == 256 and detector.preprocessing["crop"] == 224
    result = annotate_aus(config(faces, f"opengraphau:{path}", tmp_path / "out", batch_size=4))
    table = read_au_table(tmp_path / "out" / "aus.parquet")
    assert result.rows == 10 and table.known.all() and table.source["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    image = torch.from_numpy(np.array(Image.open(faces / table.ids[3]).convert("RGB"))).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        expected = to_synfer_slots(model.eval()(preprocess(image)))[0]
    assert np.allclose(table.scores[3], expected, atol=1e-5) and table.scores.std(axis=0).max() > 0  # images differ


# -- table: ------------------------------------------------------------------------------------------


def test_an_openface_csv_is_joined_by_file_name(faces, tmp_path):
    rows = ["file_name, AU06_r, AU12_r, AU45_c"] + [f"a/{i:03d}.png, 1.5, {i / 4}, 1" for i in range(0, 10, 2)] + ["other.png, 1, 1, 0"]
    (tmp_path / "openface.csv").write_text("\n".join(rows) + "\n")
    result = annotate_aus(config(faces, f"table:{tmp_path / 'openface.csv'}", tmp_path / "out"))
    assert (result.rows, result.images, result.table_rows, result.scores) == (5, 10, 6, "intensity")
    table = read_au_table(tmp_path / "out" / "aus.parquet")
    assert table.ids == [f"a/{i:03d}.png" for i in range(0, 10, 2)] and table.kind == "intensity"
    expected = from_openface({"AU06_r": 1.5, "AU12_r": 2 / 4, "AU45_c": 1})
    assert np.array_equal(table.scores[1], expected.values) and np.array_equal(table.known[1], expected.known)
    assert table.source["layout"] == "openface" and table.suggested_threshold is None


def test_a_pyfeat_output_with_absolute_paths_and_an_id_column(faces, tmp_path):
    root = faces.resolve()
    rows = ["input,AU01,AU12,AU43"] + [f"{root}/b/{i:03d}.png,0.25,0.{i},0.9" for i in range(1, 10, 2)]
    (tmp_path / "pyfeat.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ConfigError, match=r"no an 'id' or 'file_name' column .* name it with --id-column"):
        annotate_aus(config(faces, f"table:{tmp_path / 'pyfeat.csv'}", tmp_path / "bad"))
    result = annotate_aus(config(faces, f"table:{tmp_path / 'pyfeat.csv'}", tmp_path / "out", id_column="input"))
    table = read_au_table(tmp_path / "out" / "aus.parquet")
    assert result.rows == 5 and table.ids[0] == "b/001.png" and table.kind == "probability" and table.suggested_threshold == 0.5
    assert table.scores[2, AU_INDEX["AU12"]] == pytest.approx(0.5) and table.known[0].sum() == 2  # AU43 has no slot


def test_named_columns_and_their_score_kind(faces, tmp_path):
    path = tmp_path / "aus.parquet"
    pq.write_table(pa.table({"id": ["a/000.png", "b/001.png"], "AU6": [0.2, 0.9], "R14": [None, 0.4]}), path)
    intensity = annotate_aus(config(faces, f"table:{path}", tmp_path / "i"))
    assert intensity.scores == "intensity"
    probability = annotate_aus(config(faces, f"table:{path}", tmp_path / "p", table_scores="probability"))
    table = read_au_table(tmp_path / "p" / "aus.parquet")
    assert probability.scores == table.kind == "probability" and table.known[0, AU_INDEX["R14"]] == np.False_
    pq.write_table(pa.table({"id": ["a/000.png"], "AU6": [3.0]}), path)
    with pytest.raises(ConfigError, match="no probability; pass --table-scores intensity"):
        annotate_aus(config(faces, f"table:{path}", tmp_path / "p2", table_scores="probability"))


def test_an_au_table_that_matches_no_image_says_so(faces, tmp_path):
    path = tmp_path / "aus.csv"
    path.write_text("file_name,AU6\n000.png,1\n001.png,2\n002.png,3\n")
    with pytest.raises(DatasetError) as error:
        annotate_aus(config(faces, f"table:{path}", tmp_path / "out"))
    message = str(error.value)
    assert "the table has 3 rows (e.g. id '000.png') and the dataset 10 images (e.g. id 'a/000.png')" in message
    path.write_text("file_name,AU6\na/000.png,1\na/000.png,2\n")
    with pytest.raises(DatasetError, match=r"names image 'a/000.png' twice \(rows 0 and 1\)"):
        annotate_aus(config(faces, f"table:{path}", tmp_path / "out"))
    path.write_text("file_name,notes\na/000.png,x\n")
    with pytest.raises(ConfigError, match="has no AU columns"):
        annotate_aus(config(faces, f"table:{path}", tmp_path / "out"))


def test_a_synfer_au_table_keeps_its_score_kind(tmp_path):
    from synfer.world.make import WorldConfig, make_world

    world = tmp_path / "world"
    make_world(WorldConfig(n=10, size=16), world)
    result = annotate_aus(config(world / "train", f"table:{world / 'train' / 'aus.parquet'}", tmp_path / "out"))
    source, copy = read_au_table(world / "train" / "aus.parquet"), read_au_table(tmp_path / "out" / "aus.parquet")
    assert result.rows == len(source) == 8 and sorted(copy.ids) == sorted(source.ids)
    rows = [source.ids.index(i) for i in copy.ids]
    assert np.array_equal(copy.scores, source.scores[rows]) and np.array_equal(copy.known, source.known[rows])


# -- the command line -------------------------------------------------------------------------------


def test_cli_annotates_and_reports_and_bad_input_is_one_line(faces, weights, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["annotate-aus", "--data", str(faces), "--detector", f"brightness:{weights}", "--out", str(out),
                                 "--device", "cpu", "--chunk-size", "4"])
    assert result.exit_code == 0, result.output
    assert "10 of 10 images annotated (probability scores from brightness)" in result.stdout
    again = runner.invoke(app, ["annotate-aus", "--data", str(faces), "--detector", f"brightness:{weights}", "--out", str(out),
                                "--device", "cpu", "--chunk-size", "4"])
    assert again.exit_code == 0 and "already complete" in again.stdout
    for args, fragment in (
        (["--detector", "resnet:x"], "unknown AU detector kind 'resnet' in 'resnet:x' (accepted: opengraphau, detector,"),
        (["--detector", "opengraphau"], "--detector is given as KIND:PATH"),
        (["--detector", f"brightness:{weights}", "--id-column", "file"], "--id-column applies to --detector table:FILE only"),
        (["--detector", f"table:{weights}", "--table-scores", "logits"], "unknown --table-scores 'logits'"),
        (["--detector", f"brightness:{weights}", "--layout", "coco"], "unknown caption dataset layout 'coco'"),
        (["--detector", f"opengraphau:{tmp_path / 'none.pth'}"], "does not exist"),
        (["--detector", f"brightness:{weights}", "--chunk-size", "5"], "differs in: chunk_size"),
    ):
        bad = runner.invoke(app, ["annotate-aus", "--data", str(faces), "--out", str(out), "--device", "cpu", *args])
        assert bad.exit_code == 2, (args, bad.output)
        assert fragment in bad.stderr.replace("\n", "") and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr
