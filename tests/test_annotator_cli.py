"""`synfer train-annotator --real DIR` end to end: a real on-disk layout in, a loadable FERAnno head out."""

import json

from typer.testing import CliRunner

from synfer.cli import app
from synfer.expressions import Expression

from fer_layouts import write_folder

runner = CliRunner()


def test_train_annotator_reads_a_real_layout_and_writes_a_head(tmp_path):
    expressions = (Expression.NEUTRAL, Expression.HAPPY, Expression.SAD, Expression.ANGER)
    real = write_folder(tmp_path / "real", per_class=3, expressions=expressions)
    out = tmp_path / "head"
    args = ["train-annotator", "--model", "tiny", "--real", str(real), "--val-split", "val", "--out", str(out),
            "--epochs", "2", "--batch-size", "8", "--pool-size", "1", "--attention-size", "2", "--cache", str(tmp_path / "cache")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    # 12 training + 12 validation images.
    assert "12 training images (24 through the UNet now)" in result.output.replace("\n", " ")
    config = json.loads((out / "config.json").read_text())
    assert config["label_set"] == "affectnet8"
    assert list(out.glob("*.safetensors"))

    # The cache makes the second run skip the UNet.
    again = runner.invoke(app, [*args[:-2], "--cache", str(tmp_path / "cache"), "--overwrite"])
    assert again.exit_code == 0, again.output
    assert "(0 through the UNet now)" in again.output.replace("\n", " ")


def test_train_annotator_names_what_it_expected_for_a_wrong_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["train-annotator", "--model", "tiny", "--real", str(tmp_path / "empty"), "--out", str(tmp_path / "h")])
    assert result.exit_code == 2
    assert "fer2013.csv" in result.stderr and "Traceback" not in result.stderr
