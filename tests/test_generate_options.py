import shutil

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from synfer.aus import AUVector
from synfer.cli import app
from synfer.data.format import read_manifest
from synfer.synth.au_sources import load_au_table
from synfer.synth.generate import GenerateConfig

runner = CliRunner()
FAST = ["generate", "--model", "tiny", "--steps", "1", "--batch-size", "4"]


def test_scale_and_n():
    assert GenerateConfig(out="x", scale="1x").plan.n == 287_651
    assert GenerateConfig(out="x", scale="5x", classes=7).plan.n == 5 * 283_901
    assert GenerateConfig(out="x", scale="7x").plan.n == 7 * 287_651  # any multiple, said before it starts
    assert GenerateConfig(out="x", scale="2x", n=100).plan.n == 100  # --n overrides


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--scale", "0x"], "unknown scale"),
        (["--n", "4", "--scale", "abc"], "unknown scale"),  # checked even though --n overrides it
        (["--aus", "6"], "--n N or --scale"),
        (["--n", "4", "--label", "happy", "--distribution", "affectnet"], "cannot be combined with --distribution"),
        (["--n", "4", "--distribution", "zipf"], "unknown --distribution 'zipf'"),
        (["--n", "4", "--aus", "6,12", "--distribution", "balanced"], "cannot be combined with --distribution"),
        (["--n", "4", "--distribution", "missing.json"], "cannot read label weights"),
        (["--n", "4", "--au-source", "empirical"], "needs --au-table"),
        (["--n", "4", "--au-source", "fixed"], "needs --aus"),
        (["--n", "4", "--aus", "6", "--au-source", "prototype"], "cannot be combined with --au-source prototype"),
        (["--n", "4", "--au-table", "t.csv", "--au-source", "fixed"], "--au-table goes with --au-source empirical"),
        (["--n", "4", "--au-source", "dreamed"], "unknown AU source"),
    ],
)
def test_bad_plan_options_are_one_line_and_exit_2(tmp_path, args, fragment):
    result = runner.invoke(app, [*FAST, *args, "--out", str(tmp_path / "x")])
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr and "Traceback" not in result.output + result.stderr
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_empirical_aus_resume_by_content_not_path(tmp_path):
    table = tmp_path / "aus.csv"
    table.write_text("label,AU6,AU12\nhappy,1.5,2\nhappy,3,4\n")
    out = tmp_path / "d"
    args = [*FAST, "--n", "4", "--label", "happy", "--out", str(out)]
    assert runner.invoke(app, [*args, "--au-table", str(table)]).exit_code == 0
    rows = pq.read_table(out / "shards" / "00000.parquet").to_pylist()
    real = {load_au_table(table).vector(0), load_au_table(table).vector(1)}
    assert {AUVector(r["aus"], r["au_known"]) for r in rows} <= real  # only AU6 and AU12 known, as in the table
    assert read_manifest(out)["plan"]["au_source"] == "empirical"

    moved = shutil.copy(table, tmp_path / "elsewhere.csv")  # same content, another path: a resume
    again = runner.invoke(app, [*args, "--au-table", str(moved)])
    assert again.exit_code == 0 and "made 0 now" in again.output.replace("\n", " ")
    table.write_text("label,AU6,AU12\nhappy,1.5,2\nhappy,3,5\n")  # changed content: another dataset
    changed = runner.invoke(app, [*args, "--au-table", str(table)])
    assert changed.exit_code == 2 and "plan.au_table_sha256" in changed.stderr


def test_changed_distribution_is_refused_on_resume(tmp_path):
    out = tmp_path / "d"
    assert runner.invoke(app, [*FAST, "--n", "4", "--out", str(out)]).exit_code == 0
    changed = runner.invoke(app, [*FAST, "--n", "4", "--distribution", "affectnet", "--out", str(out)])
    assert changed.exit_code == 2 and "differs in: plan.distribution" in changed.stderr
