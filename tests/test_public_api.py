"""The top-level names: each stage function, its config and its result are `synfer.<name>`, loaded on first use."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import synfer

# Where each stage's function, config and result are defined. `synfer.<name>` must be that very object.
HOMES = {
    "generate": "synfer.synth.generate",
    "GenerateConfig": "synfer.synth.generate",
    "GenerateResult": "synfer.synth.generate",
    "relabel": "synfer.labelers.relabel",
    "RelabelConfig": "synfer.labelers.relabel",
    "RelabelOutput": "synfer.labelers.relabel",
    "annotate_aus": "synfer.labelers.annotate_aus",
    "AnnotateConfig": "synfer.labelers.annotate_aus",
    "AnnotateResult": "synfer.labelers.annotate_aus",
    "train_downstream": "synfer.train.downstream",
    "DownstreamConfig": "synfer.train.downstream",
    "DownstreamOutput": "synfer.train.downstream",
    "train_annotator": "synfer.train.annotator",
    "AnnotatorConfig": "synfer.train.annotator",
    "AnnotatorOutput": "synfer.train.annotator",
    "evaluate": "synfer.eval.evaluate",
    "EvaluateConfig": "synfer.eval.evaluate",
    "EvaluateResult": "synfer.eval.evaluate",
    "init_model": "synfer.train.diffusion.new_base",
    "InitModelConfig": "synfer.train.diffusion.config",
    "InitResult": "synfer.train.diffusion.new_base",
    "train_vae": "synfer.train.diffusion.vae",
    "VaeConfig": "synfer.train.diffusion.config",
    "VaeResult": "synfer.train.diffusion.vae",
    "train_lora": "synfer.train.diffusion.lora",
    "LoraConfig": "synfer.train.diffusion.config",
    "LoraResult": "synfer.train.diffusion.lora",
    "train_adapter": "synfer.train.diffusion.adapter",
    "AdapterConfig": "synfer.train.diffusion.config",
    "AdapterResult": "synfer.train.diffusion.adapter",
    "build_model": "synfer.train.diffusion.build",
    "BuildModelConfig": "synfer.train.diffusion.config",
    "BuildResult": "synfer.train.diffusion.build",
    "make_world": "synfer.world.make",
    "WorldConfig": "synfer.world.make",
    "WorldResult": "synfer.world.make",
}
CONFIGS = sorted(name for name in HOMES if name.endswith("Config"))


@pytest.mark.parametrize("name", sorted(HOMES))
def test_each_stage_name_is_the_object_of_its_home_module(name):
    home = importlib.import_module(HOMES[name])
    assert getattr(synfer, name) is getattr(home, name)
    assert getattr(synfer, name).__module__ == HOMES[name]


def test_every_exported_name_resolves_and_every_stage_name_is_exported():
    assert set(HOMES) <= set(synfer.__all__)
    missing = [name for name in synfer.__all__ if not hasattr(synfer, name)]
    assert not missing, f"in synfer.__all__ but not importable: {missing}"
    with pytest.raises(AttributeError, match="no attribute 'not_a_stage'"):
        synfer.not_a_stage  # noqa: B018


def test_importing_synfer_and_reading_its_configs_loads_no_model_stack():
    # The command line builds these configs at start-up, before any model is needed.
    code = (
        "import sys, synfer\n"
        "before = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        f"configs = [getattr(synfer, n) for n in {CONFIGS!r}]\n"
        "after = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "print(before, after)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[] []"
