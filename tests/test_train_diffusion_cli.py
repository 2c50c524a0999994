"""The commands end to end, from scratch: init-model, train-vae, train-lora --full, train-adapter, build-model, then generate."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from synfer.aus import AU_INDEX, NUM_AUS
from synfer.cli import app
from synfer.data.au_table import AUScores, write_au_table

from helpers import (
    captioned_folder,
    one_thread,  # noqa: F401 (autouse: one intra-op thread for this module)
)

runner = CliRunner()
FAST = ["--batch-size", "4", "--validation-every", "0", "--validation-inference-steps", "2", "--validation-seeds", "0", "--log-every", "1"]


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def test_a_model_trained_from_scratch_generates_through_synfer_generate(tmp_path):
    data = captioned_folder(tmp_path / "world", n=8)
    from synfer.data.captions import open_captioned

    ids = open_captioned(data).ids
    scores = np.zeros((len(ids), NUM_AUS), np.float32)
    scores[::2, AU_INDEX["AU12"]] = 4.0
    write_au_table(data / "aus.parquet", AUScores(ids, scores, np.ones_like(scores, bool)))

    result = invoke("init-model", "--preset", "tiny", "--captions", data, "--out", tmp_path / "base")
    assert result.exit_code == 0, result.output
    marker = json.loads((tmp_path / "base" / "synfer_init.json").read_text())
    assert marker["untrained"] == ["unet", "vae"]
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(tmp_path / "base" / "tokenizer"))
    assert tokenizer.tokenize("a yellow face") == ["a</w>", "yellow</w>", "face</w>"]  # every caption word is one token

    # Nothing trains on a random autoencoder.
    result = invoke("train-lora", "--base", tmp_path / "base", "--data", data, "--out", tmp_path / "x", "--full", *FAST)
    assert result.exit_code == 2 and "VAE" in result.output and "train-vae" in result.output

    result = invoke("train-vae", "--base", tmp_path / "base", "--data", data, "--out", tmp_path / "vae", "--max-train-steps", "2",
                    "--val-fraction", "0.25", "--learning-rate", "1e-3", *FAST)
    assert result.exit_code == 0, result.output
    assert "PSNR" in result.output
    vae_result = json.loads((tmp_path / "vae" / "result.json").read_text())
    assert vae_result["val_psnr"] > 0 and vae_result["scaling_factor"] > 0
    assert json.loads((tmp_path / "vae" / "model" / "vae" / "config.json").read_text())["scaling_factor"] == pytest.approx(
        vae_result["scaling_factor"])
    assert json.loads((tmp_path / "vae" / "model" / "synfer_init.json").read_text())["untrained"] == ["unet"]
    model_base = tmp_path / "vae" / "model"

    result = invoke("train-lora", "--base", model_base, "--data", data, "--out", tmp_path / "x", *FAST)
    assert result.exit_code == 2 and "--full" in result.output  # a LoRA on a random UNet is refused

    result = invoke("train-lora", "--base", model_base, "--data", data, "--out", tmp_path / "unet", "--full", "--max-train-steps", "2",
                    "--cache-latents", "--cache-dir", tmp_path / "cache", *FAST)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "unet" / "unet" / "config.json").is_file()

    result = invoke("train-adapter", "--base", model_base, "--lora", tmp_path / "unet", "--data", data, "--out", tmp_path / "adapter",
                    "--max-train-steps", "2", "--hidden-dim", "32", "--validation-aus", "6,12", "--random-flip", *FAST)
    assert result.exit_code == 0, result.output
    assert "8 images (0 without AUs left out)" in result.output  # --aus defaults to DATA/aus.parquet

    result = invoke("build-model", "--base", model_base, "--lora", tmp_path / "unet", "--adapter", tmp_path / "adapter",
                    "--out", tmp_path / "model")
    assert result.exit_code == 0, result.output
    training = json.loads((tmp_path / "model" / "training.json").read_text())
    assert training["inputs"]["lora"]["kind"] == "full" and set(training["components"]) >= {"unet", "au_adapter"}

    result = invoke("generate", "--model", tmp_path / "model", "--aus", "6,12", "--n", "2", "--steps", "2", "--out", tmp_path / "dataset")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "dataset" / "manifest.json").read_text())
    assert manifest["model"]["components"]["unet"]["sha256"] == training["components"]["unet"]["sha256"]
    assert (tmp_path / "dataset" / "shards" / "00000.tar").is_file()

    # A built model is not rebuilt over, and a finished run is not run again.
    result = invoke("build-model", "--base", model_base, "--lora", tmp_path / "unet", "--adapter", tmp_path / "adapter",
                    "--out", tmp_path / "model")
    assert result.exit_code == 2 and "--overwrite" in result.output
    result = invoke("train-adapter", "--base", model_base, "--lora", tmp_path / "unet", "--data", data, "--out", tmp_path / "adapter",
                    "--max-train-steps", "2", "--hidden-dim", "32", "--validation-aus", "6,12", "--random-flip", "--resume", *FAST)
    assert result.exit_code == 0, result.output


def test_the_adapter_must_match_the_model_it_is_built_into(tmp_path):
    """build-model refuses an adapter trained with another UNet, naming the option that overrides it."""
    from helpers import tiny_base_folder

    base = tiny_base_folder(tmp_path / "base")
    data = captioned_folder(tmp_path / "data", n=4)
    from synfer.data.captions import open_captioned

    ids = open_captioned(data).ids
    scores = np.zeros((len(ids), NUM_AUS), np.float32)
    write_au_table(data / "aus.parquet", AUScores(ids, scores, np.ones_like(scores, bool)))
    result = invoke("train-lora", "--base", base, "--data", data, "--out", tmp_path / "lora", "--max-train-steps", "1", *FAST)
    assert result.exit_code == 0, result.output
    result = invoke("train-adapter", "--base", base, "--data", data, "--out", tmp_path / "adapter", "--max-train-steps", "1",
                    "--hidden-dim", "16", "--validation-aus", "6,12", *FAST)
    assert result.exit_code == 0, result.output
    result = invoke("build-model", "--base", base, "--lora", tmp_path / "lora", "--adapter", tmp_path / "adapter", "--out", tmp_path / "m")
    assert result.exit_code == 2 and "--allow-mismatch" in result.output
    result = invoke("build-model", "--base", base, "--lora", tmp_path / "lora", "--adapter", tmp_path / "adapter", "--out", tmp_path / "m",
                    "--allow-mismatch")
    assert result.exit_code == 0, result.output


def test_option_errors_are_one_line_with_exit_status_2(tmp_path):
    data = captioned_folder(tmp_path / "data", n=4)
    common = ["--base", tmp_path, "--data", data, "--out", tmp_path / "a"]
    for args, fragment in [
        (["train-lora", *common, "--report-to", "tensorboard"], "pip install tensorboard"),
        (["train-lora", *common, "--report-to", "mlflow"], "unknown --report-to"),
        (["train-lora", *common, "--lr-scheduler", "linear"], "accepted: constant, cosine"),
        (["train-adapter", *common, "--au-policy", "x"], "unknown --au-policy"),
        (["train-lora", *common], "not a Stable-Diffusion-shaped folder"),
        (["init-model", "--preset", "huge", "--out", tmp_path / "b"], "unknown model preset 'huge'"),
        (["train-vae", *common, "--reconstruction", "ssim"], "unknown --reconstruction"),
    ]:
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert fragment in result.output and "Traceback" not in result.output
