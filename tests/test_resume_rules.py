"""Resuming, growing and refusing datasets and runs: RunFolder's field-by-field rules."""

import json

import pytest
from typer.testing import CliRunner

from synfer.cli import app
from synfer.data.dataset import SynferDataset
from synfer.data.format import CARD, MANIFEST, read_manifest
from synfer.data.run_folder import ResumeRules, RunFolder, flatten
from synfer.data.verify import verify_dataset
from synfer.errors import DatasetError
from synfer.synth.runner import DATASET_RULES

runner = CliRunner()
FAST = ["generate", "--model", "tiny", "--steps", "1", "--batch-size", "4"]


def generate(*args):
    return runner.invoke(app, [*FAST, *args])


def shard_files(out):
    return {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())}


def test_rules_compare_field_by_field_with_defaults_globs_and_growth():
    rules = ResumeRules(
        compare=("n", "render", "model.*.sha256"),
        ignore=frozenset({"render.path"}),
        defaults={"render.scheduler": "model"},
        may_grow=frozenset({"n"}),
    )
    old = {"n": 10, "render": {"steps": 5, "path": "/a"}, "model": {"unet": {"sha256": "x", "class": "U"}}, "created": "mon"}
    new = {"n": 10, "render": {"steps": 5, "path": "/b", "scheduler": "model"}, "model": {"unet": {"sha256": "x", "class": "V"}},
           "created": "tue"}
    assert rules.changes(old, new) == []  # a default fills the missing option; paths, classes and times do not count
    changes = rules.changes(old, {**new, "n": 12, "render": {**new["render"], "scheduler": "ddim"}})
    assert [(c.path, c.grown) for c in changes] == [("n", True), ("render.scheduler", False)]
    assert [c.grown for c in rules.changes(old, {**new, "n": 8})] == [False]  # shrinking is a change, not growth
    assert flatten({"a": {"b": (1, 2)}, "c": {}}) == {"a.b": [1, 2], "c": {}}


def test_a_manifest_written_before_an_option_existed_still_resumes(tmp_path):
    out = tmp_path / "d"
    assert generate("--n", "4", "--shard-size", "2", "--out", str(out)).exit_code == 0
    assert DATASET_RULES.defaults, "the dataset rules name the defaults of options added since schema version 1"
    manifest = read_manifest(out)
    for path in DATASET_RULES.defaults:  # write the manifest as a version without these options would have
        node = manifest
        *parents, leaf = path.split(".")
        for part in parents:
            node = node[part]
        del node[leaf]
    (out / MANIFEST).write_text(json.dumps(manifest))
    (out / "shards" / "00001.parquet").unlink()
    again = generate("--n", "4", "--shard-size", "2", "--out", str(out))
    assert again.exit_code == 0 and "made 2 now" in again.output.replace("\n", " ")
    other = generate("--n", "4", "--shard-size", "2", "--scheduler", "ddim", "--out", str(out))
    assert other.exit_code == 2 and "differs in: render.scheduler" in other.stderr


def test_growing_keeps_finished_shards_redoes_the_partial_one_and_refuses_shrinking(tmp_path):
    small, grown, fresh = (tmp_path / name for name in ("small", "grown", "fresh"))
    assert generate("--n", "10", "--shard-size", "4", "--out", str(small)).exit_code == 0
    assert generate("--n", "10", "--shard-size", "4", "--out", str(grown)).exit_code == 0
    before = shard_files(grown)
    result = generate("--n", "20", "--shard-size", "4", "--out", str(grown))  # 1x -> 2x
    assert result.exit_code == 0, result.output
    assert "growing from 10 to 20 samples" in result.stderr
    after = shard_files(grown)
    for name in ("00000.tar", "00000.parquet", "00001.tar", "00001.parquet"):
        assert after[name] == before[name]  # wholly inside the old n: untouched
    assert after["00002.parquet"] != before["00002.parquet"]  # was partial (2 of 4): redone
    assert generate("--n", "20", "--shard-size", "4", "--out", str(fresh)).exit_code == 0
    assert after == shard_files(fresh)  # exactly what a dataset made at 2x in one go holds
    assert read_manifest(grown)["n"] == 20 and (grown / CARD).is_file()
    report = verify_dataset(SynferDataset(grown))
    assert report.ok and report.samples == 20
    shrunk = generate("--n", "12", "--shard-size", "4", "--out", str(grown))
    assert shrunk.exit_code == 2 and "differs in: n, plan.n" in shrunk.stderr
    assert shard_files(grown) == after


def test_a_crash_while_growing_is_finished_by_the_next_run(tmp_path, monkeypatch):
    from synfer.synth import runner as runner_module

    out = tmp_path / "d"
    assert generate("--n", "6", "--shard-size", "4", "--out", str(out)).exit_code == 0

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner_module.RunFolder, "write_record", crash)  # dies after the indexes went, before the manifest
    assert generate("--n", "8", "--shard-size", "4", "--out", str(out)).exit_code == 130
    assert read_manifest(out)["n"] == 6 and not (out / "shards" / "00001.parquet").exists()
    monkeypatch.undo()
    assert generate("--n", "8", "--shard-size", "4", "--out", str(out)).exit_code == 0
    assert verify_dataset(SynferDataset(out)).ok and read_manifest(out)["n"] == 8


def test_dpm_solver_is_recorded_and_layout_inversion_takes_it_below_full_strength(tmp_path):
    import numpy as np
    from PIL import Image

    out = tmp_path / "d"
    assert generate("--n", "2", "--scheduler", "dpm-solver++", "--out", str(out)).exit_code == 0
    assert read_manifest(out)["render"]["scheduler"] == "dpm-solver++"
    faces = tmp_path / "faces"
    faces.mkdir()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(faces / "a.png")
    # 'leading' spacing: DPM-Solver samples from below the noisiest level, where a whole inversion ends.
    refused = generate("--n", "2", "--scheduler", "dpm-solver++", "--layout-dir", str(faces), "--out", str(tmp_path / "x"))
    assert refused.exit_code == 2 and "strength below 1" in refused.stderr and "--scheduler ddim" in refused.stderr
    assert not (tmp_path / "x" / "manifest.json").exists()
    layout = ["--layout-dir", str(faces), "--layout-strength", "0.5", "--steps", "4"]
    taken = generate("--n", "2", "--scheduler", "dpm-solver++", *layout, "--out", str(tmp_path / "x"))
    assert taken.exit_code == 0, taken.output
    manifest = read_manifest(tmp_path / "x")
    assert manifest["render"]["scheduler"] == "dpm-solver++" and manifest["render"]["layout"]["strength"] == 0.5
    assert manifest["model"]["components"]["scheduler"]["class"] == "DPMSolverMultistepScheduler"
    unknown = generate("--n", "2", "--scheduler", "euler", "--out", str(tmp_path / "y"))
    assert unknown.exit_code == 2 and "unknown scheduler 'euler' (accepted: model, ddim, dpm-solver++)" in unknown.stderr


def test_run_folder_refuses_foreign_folders_and_asks_for_resume(tmp_path):
    folder = RunFolder(tmp_path / "run", "config.json", "training run")
    rules = ResumeRules(compare=("config",))
    assert folder.open({"config": {"lr": 1}}, rules).state == "new"
    with pytest.raises(DatasetError, match="pass --resume"):
        folder.open({"config": {"lr": 1}}, rules, resume=False)
    assert folder.open({"config": {"lr": 1}}, rules, resume=True).state == "same"
    with pytest.raises(DatasetError, match="differs in: config.lr"):
        folder.open({"config": {"lr": 2}}, rules, resume=True)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not empty and is not a synfer training run"):
        RunFolder(foreign, "config.json", "training run").open({"config": {}}, rules)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_plain_captions_are_the_prompt_and_the_expression_and_recorded(tmp_path):
    out = tmp_path / "d"
    result = generate("--n", "3", "--label", "happy", "--captions", "plain", "--prompt", "a cartoon face", "--out", str(out))
    assert result.exit_code == 0, result.output
    import pyarrow.parquet as pq

    prompts = pq.read_table(out / "shards" / "00000.parquet").column("prompt").to_pylist()
    assert prompts == ["a cartoon face, smiling happily"] * 3
    assert read_manifest(out)["plan"]["captions"] == "plain"
    unknown = generate("--n", "3", "--captions", "poetic", "--out", str(tmp_path / "x"))
    assert unknown.exit_code == 2 and "unknown caption style 'poetic' (accepted: template, plain)" in unknown.stderr


def test_prompt_file_lines_are_drawn_per_sample_prefix_stably_and_checked_by_content(tmp_path):
    import pyarrow.parquet as pq

    lines = ["a cartoon face of a person with red hair", "a cartoon face of a person wearing glasses", "a cartoon face with a hat"]
    texts = tmp_path / "prompts.txt"
    texts.write_text("\n".join(lines) + "\n\n")
    out = tmp_path / "d"
    args = ["--label", "happy", "--captions", "plain", "--prompt-file", str(texts), "--out", str(out)]
    assert generate("--n", "12", *args).exit_code == 0

    def prompts(folder):
        return pq.read_table(folder / "shards" / "00000.parquet").column("prompt").to_pylist()

    made = prompts(out)
    assert set(made) <= {f"{line}, smiling happily" for line in lines} and len(set(made)) > 1
    assert read_manifest(out)["plan"]["prompt_file_sha256"]
    other = tmp_path / "smaller"
    assert generate("--n", "5", *args[:-1], str(other)).exit_code == 0
    assert prompts(other) == made[:5]  # a sample's line depends on the seed and its index alone

    moved = tmp_path / "moved.txt"
    moved.write_bytes(texts.read_bytes())
    assert generate("--n", "12", *args[:5], str(moved), "--out", str(out)).exit_code == 0  # the content counts, not the path
    texts.write_text("another face\n")
    changed = generate("--n", "12", *args)
    assert changed.exit_code == 2 and "differs in: plan.prompt_file_sha256" in changed.stderr
    both = generate("--n", "2", *args[:-1], str(tmp_path / "b"), "--prompt", "x")
    assert both.exit_code == 2 and "--prompt and --prompt-file" in both.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    refused = generate("--n", "2", "--prompt-file", str(empty), "--out", str(tmp_path / "e"))
    assert refused.exit_code == 2 and "has no non-empty lines" in refused.stderr


def test_plain_captions_default_to_an_empty_negative_prompt_and_template_ones_to_the_photo_one(tmp_path):
    from synfer.prompts import PHOTO_NEGATIVE_PROMPT

    assert generate("--n", "2", "--captions", "plain", "--prompt", "a face", "--out", str(tmp_path / "p")).exit_code == 0
    assert read_manifest(tmp_path / "p")["render"]["negative_prompt"] == ""
    assert generate("--n", "2", "--out", str(tmp_path / "t")).exit_code == 0
    assert read_manifest(tmp_path / "t")["render"]["negative_prompt"] == PHOTO_NEGATIVE_PROMPT
    given = generate("--n", "2", "--captions", "plain", "--negative-prompt", "blurry", "--out", str(tmp_path / "g"))
    assert given.exit_code == 0 and read_manifest(tmp_path / "g")["render"]["negative_prompt"] == "blurry"
