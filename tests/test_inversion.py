import shutil

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler
from typer.testing import CliRunner

from synfer.cli import app
from synfer.data.format import read_manifest
from synfer.errors import ConfigError, DatasetError
from synfer.pipelines.inversion import (
    LayoutInit,
    LayoutReferences,
    encode_images,
    layout_compatible,
    layout_mismatch,
    list_references,
    pick_reference,
    use_layout_scheduler,
)
from synfer.pipelines.schedulers import use_scheduler

from helpers import generators


def face(seed=0, size=32):
    """A smooth synthetic reference (gradients and a blob pattern), different per seed."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    phase = seed * 0.7
    image = np.stack([xx, yy, 0.5 + 0.5 * np.sin(6 * xx + phase) * np.cos(6 * yy - phase)], -1)
    return PIL.Image.fromarray((image * 255).astype(np.uint8))


def latent_of(pipe, image):
    with torch.no_grad():
        return encode_images(pipe, image, 1, 1, 32, 32, "cpu", torch.float32)


def run(pipe, prompt="a photo of a face", seeds=(0,), steps=10, layout_image=None, layout_strength=1.0, layout_prompt="",
        layout_iterations=0, **kwargs):
    kwargs.setdefault("output_type", "latent")
    if layout_image is not None:
        kwargs["layout"] = LayoutInit(layout_image, layout_strength, layout_prompt, layout_iterations)
    return pipe(prompt, generator=generators(*seeds), num_inference_steps=steps, **kwargs).images


def test_inverting_then_regenerating_with_the_same_prompt_reconstructs_the_latent(tiny_pipe):
    reference = latent_of(tiny_pipe, face())  # mean |z| is about 0.045
    same = dict(prompt="a photo of a face", layout_image=face(), layout_prompt="a photo of a face", guidance_scale=1.0)
    error = lambda latents: (latents - reference).abs()  # noqa: E731
    from_noise = error(run(tiny_pipe, steps=50, guidance_scale=1.0)).mean()
    plain_10 = error(run(tiny_pipe, steps=10, **same)).mean()
    plain_50 = error(run(tiny_pipe, steps=50, **same)).mean()
    # Plain DDIM inversion retraces better with more steps, but on a random-weight UNet it stays far
    # from exact: x_T is off by a little, and sampling amplifies that by sqrt(a_0 / a_T), about 14.
    assert plain_50 < plain_10 and plain_50 < 0.1 * from_noise
    # Fixed-point refinement of each inversion step closes the gap: within 0.02 everywhere and 0.005 on
    # average (measured: 0.006 and 0.0009), against about 11 for a start from random noise.
    refined = error(run(tiny_pipe, steps=50, layout_iterations=5, **same))
    assert refined.max() < 0.02 and refined.mean() < 0.005 and from_noise > 1.0


def test_inverted_start_changes_the_result_and_lower_strength_keeps_more_of_the_reference(tiny_pipe):
    reference = latent_of(tiny_pipe, face())
    setting = dict(prompt="a close-up photo of a smiling face", aus="6,12", guidance_scale=7.5, steps=10)
    random_start = run(tiny_pipe, **setting)
    distance = {None: (random_start - reference).abs().mean()}
    for strength in (1.0, 0.3):
        result = run(tiny_pipe, layout_image=face(), layout_strength=strength, **setting)
        assert (result - random_start).abs().mean() > 1.0  # measured: 10 to 11
        distance[strength] = (result - reference).abs().mean()
    assert distance[0.3] < distance[1.0] < distance[None]  # measured: 0.5 < 6 < 10


def test_strength_decides_which_steps_are_inverted_and_then_sampled(tiny_pipe):
    calls = []
    handle = tiny_pipe.unet.register_forward_pre_hook(lambda module, args: calls.append((int(args[1]), args[0].shape[0])))
    try:
        run(tiny_pipe, layout_image=face(), layout_strength=0.5, steps=10, guidance_scale=7.5)
        # Inversion: 5 steps up, one image each, no CFG; then sampling down from where it stopped, with CFG.
        assert calls == [(1, 1), (101, 1), (201, 1), (301, 1), (401, 1), (401, 2), (301, 2), (201, 2), (101, 2), (1, 2)]
        calls.clear()
        run(tiny_pipe, layout_image=face(), layout_strength=0.2, layout_iterations=2, steps=10, guidance_scale=1.0)
        assert calls == [(1, 1)] * 3 + [(101, 1)] * 3 + [(101, 1), (1, 1)]
    finally:
        handle.remove()


def test_one_reference_per_image_and_batch_equals_alone(tiny_pipe):
    references = [face(1), face(2)]
    batch = run(tiny_pipe, ["a happy face", "a sad face"], seeds=(3, 4), layout_image=references, layout_strength=0.6)
    for i in range(2):
        alone = run(tiny_pipe, ["a happy face", "a sad face"][i], seeds=(3 + i,), layout_image=references[i], layout_strength=0.6)
        torch.testing.assert_close(batch[i : i + 1], alone, rtol=0, atol=1e-4)
    assert (batch[0] - batch[1]).abs().mean() > 0.1
    as_tensor = torch.from_numpy(np.stack([np.asarray(r) for r in references])).permute(0, 3, 1, 2).float() / 255
    from_tensor = run(tiny_pipe, ["a happy face", "a sad face"], seeds=(3, 4), layout_image=as_tensor, layout_strength=0.6)
    torch.testing.assert_close(from_tensor, batch, rtol=0, atol=1e-3)  # PIL and tensor resizing round alike at 32 px
    with pytest.raises(ConfigError, match="give 1, 2 or 2"):
        run(tiny_pipe, ["a", "b"], seeds=(3, 4), layout_image=[face(1), face(2), face(3)])


def test_layout_errors(tiny_pipe):
    for strength in (0.0, 1.5, -1.0):
        with pytest.raises(ConfigError, match=r"in \(0, 1\]"):
            run(tiny_pipe, layout_image=face(), layout_strength=strength)
    with pytest.raises(ConfigError, match="inverts none of 4 steps"):
        run(tiny_pipe, layout_image=face(), layout_strength=0.2, steps=4)
    with pytest.raises(ConfigError, match="at most one of `latents` and `layout`"):
        run(tiny_pipe, layout_image=face(), latents=torch.zeros(1, 4, 16, 16))
    with pytest.raises(ConfigError, match="iterations must be >= 0"):
        run(tiny_pipe, layout_image=face(), layout_iterations=-1)
    ddim = tiny_pipe.scheduler
    tiny_pipe.scheduler = PNDMScheduler.from_config(ddim.config)
    try:
        with pytest.raises(ConfigError, match=r"DDIMScheduler.from_config"):
            run(tiny_pipe, layout_image=face())
    finally:
        tiny_pipe.scheduler = ddim


def test_schedulers_compatible_with_inversion_and_the_swap(tiny_pipe):
    ddim = tiny_pipe.scheduler
    ddim.set_timesteps(7)
    before = ddim.timesteps.clone()
    assert layout_compatible(ddim, 10)
    assert torch.equal(ddim.timesteps, before)  # checking leaves the caller's scheduler as it was
    assert not layout_compatible(PNDMScheduler.from_config(ddim.config), 10)  # repeats a timestep
    assert not layout_compatible(EulerDiscreteScheduler.from_config(ddim.config), 10)  # sigma-scaled latents
    assert use_layout_scheduler(tiny_pipe, 10) is None and tiny_pipe.scheduler is ddim
    tiny_pipe.scheduler = PNDMScheduler.from_config(ddim.config)
    assert use_layout_scheduler(tiny_pipe, 10) == "PNDMScheduler"
    assert isinstance(tiny_pipe.scheduler, DDIMScheduler) and tiny_pipe.config.scheduler[1] == "DDIMScheduler"


def test_dpm_solver_inverts_with_its_own_inverse_and_samples_on_from_where_it_stopped(tiny_pipe):
    use_scheduler(tiny_pipe, "dpm-solver++")  # the model's 'leading' spacing
    reason = layout_mismatch(tiny_pipe.scheduler, 20)
    assert "ends at timestep 999" in reason and "starts at 941" in reason and "strength below 1" in reason
    assert layout_compatible(tiny_pipe.scheduler, 20, 16)
    config = tiny_pipe.scheduler.config
    assert layout_compatible(DPMSolverMultistepScheduler.from_config(config, timestep_spacing="linspace"), 20)  # starts at 999
    assert "use_karras_sigmas" in layout_mismatch(DPMSolverMultistepScheduler.from_config(config, use_karras_sigmas=True), 20, 16)
    with pytest.raises(ConfigError, match="strength below 1"):
        run(tiny_pipe, layout_image=face(), steps=20)

    calls = []
    handle = tiny_pipe.unet.register_forward_pre_hook(lambda module, args: calls.append((int(args[1]), args[0].shape[0])))
    try:
        run(tiny_pipe, layout_image=face(), layout_strength=0.5, steps=10, guidance_scale=7.5)
    finally:
        handle.remove()
    # DPM-Solver's grid at 10 steps is 1, 91, ..., 901; five inverse steps end at 451, where sampling (CFG) takes over.
    assert calls == [(1, 1), (91, 1), (181, 1), (271, 1), (361, 1), (451, 2), (361, 2), (271, 2), (181, 2), (91, 2)]

    reference = latent_of(tiny_pipe, face())
    same = dict(prompt="a photo of a face", layout_image=face(), layout_prompt="a photo of a face", guidance_scale=1.0)
    error = lambda latents: (latents - reference).abs().mean()  # noqa: E731
    from_noise = error(run(tiny_pipe, steps=20, guidance_scale=1.0))
    plain = error(run(tiny_pipe, steps=20, layout_strength=0.8, **same))
    refined = error(run(tiny_pipe, steps=20, layout_strength=0.8, layout_iterations=5, **same))
    # Measured: 0.22 and 0.15 against 9.0. Refinement helps less than with DDIM (0.015): a multistep solver's step
    # down uses noisier predictions than its step up, so no fixed point makes the two paths one.
    assert plain < 0.05 * from_noise and refined < 0.9 * plain


@pytest.fixture
def faces(tmp_path):
    folder = tmp_path / "faces"
    (folder / "sub").mkdir(parents=True)
    for i, name in enumerate(["b.png", "a.jpg", "sub/c.webp", "d.JPEG", "e.png"]):
        face(i).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_references_are_listed_in_a_fixed_order_and_picked_by_seed(faces, tmp_path):
    names = [p.relative_to(faces).as_posix() for p in list_references(faces)]
    assert names == ["a.jpg", "b.png", "d.JPEG", "e.png", "sub/c.webp"]
    layout = LayoutReferences(faces, strength=0.8, prompt="a face")
    picks = [layout.reference_for(seed).relative_to(faces) for seed in range(60)]
    assert len(set(picks)) == 5  # every face gets used
    assert picks == [pick_reference(list_references(faces), seed).relative_to(faces) for seed in range(60)]

    # The same faces elsewhere, written in another order: the same choices and the same manifest entry.
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in reversed(names):
        (moved / name).parent.mkdir(exist_ok=True)
        shutil.copy(faces / name, moved / name)
    again = LayoutReferences(moved, strength=0.8, prompt="a face")
    assert [again.reference_for(seed).relative_to(moved) for seed in range(60)] == picks
    assert again.to_dict() == layout.to_dict() and layout.to_dict()["references"] == 5
    face(9).save(moved / "f.png")
    assert LayoutReferences(moved, strength=0.8, prompt="a face").to_dict()["listing_sha256"] != layout.to_dict()["listing_sha256"]

    image = layout.image_for(3)
    assert image.mode == "RGB" and image.size == (32, 32)


def test_reference_folder_errors(faces, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        LayoutReferences(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no images"):
        LayoutReferences(tmp_path / "empty")
    with pytest.raises(ConfigError, match=r"in \(0, 1\]"):
        LayoutReferences(faces, strength=0)
    with pytest.raises(ConfigError, match="no reference faces"):
        pick_reference([], 0)
    for path in list_references(faces):
        path.write_bytes(b"broken")
    with pytest.raises(DatasetError, match="cannot read layout reference"):
        LayoutReferences(faces).image_for(0)


def test_runner_gives_each_sample_the_reference_its_seed_picks(faces):
    from synfer.synth.plan import PlanConfig, Planner
    from synfer.synth.runner import RenderConfig, steering_kwargs

    layout = LayoutReferences(faces, strength=0.5, prompt="a face", iterations=1)
    planner = Planner(PlanConfig(n=6, base_seed=7))
    plans = [planner.plan(i) for i in range(6)]
    kwargs = steering_kwargs(plans, RenderConfig(layout=layout))
    expected = [np.asarray(PIL.Image.open(layout.reference_for(p.seed)).convert("RGB")) for p in plans]
    batch_layout = kwargs["layout"]
    assert all(np.array_equal(np.asarray(a), b) for a, b in zip(batch_layout.images, expected))
    assert (batch_layout.strength, batch_layout.prompt, batch_layout.iterations) == (0.5, "a face", 1)
    assert steering_kwargs(plans, RenderConfig()) == {}


# -- synfer generate ----------------------------------------------------------------------------------
runner = CliRunner()
FAST = ["generate", "--model", "tiny", "--steps", "4", "--batch-size", "4"]


def test_generate_with_layout_records_it_and_refuses_other_settings_on_resume(tmp_path, faces):
    out = tmp_path / "d"
    layout = ["--layout-dir", str(faces), "--layout-strength", "0.5"]
    result = runner.invoke(app, [*FAST, "--n", "3", "--out", str(out), *layout])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out)
    assert manifest["render"]["layout"]["strength"] == 0.5 and manifest["render"]["layout"]["references"] == 5
    assert manifest["model"]["layout_dir"] == str(faces)
    assert "guidance" not in manifest["render"]
    changed = runner.invoke(app, [*FAST, "--n", "3", "--out", str(out), "--layout-dir", str(faces), "--layout-strength", "1.0"])
    assert changed.exit_code == 2 and "different config" in changed.stderr


def test_generate_with_layout_samples_with_ddim_when_the_model_schedules_otherwise(tmp_path, faces, tiny_pipe):
    tiny_pipe.scheduler = PNDMScheduler.from_config(tiny_pipe.scheduler.config)
    tiny_pipe.save_pretrained(tmp_path / "model")
    args = ["generate", "--model", str(tmp_path / "model"), "--steps", "4", "--n", "2", "--layout-dir", str(faces)]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert "sampling with DDIMScheduler instead of PNDMScheduler" in result.stderr
    assert read_manifest(tmp_path / "d")["model"]["components"]["scheduler"]["class"] == "DDIMScheduler"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--layout-strength", "0"], "layout strength must be in (0, 1]"),
        (["--layout-strength", "0.1"], "inverts none of 4 steps"),
        (["--layout-iterations", "-1"], "iterations must be >= 0"),
    ],
)
def test_generate_layout_bad_values_are_one_line_exit_2(tmp_path, faces, args, fragment):
    result = runner.invoke(app, [*FAST, "--n", "2", "--out", str(tmp_path / "x"), "--layout-dir", str(faces), *args])
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr and "Traceback" not in result.output + result.stderr
    assert not (tmp_path / "x" / "manifest.json").exists()


def test_generate_layout_folder_errors(tmp_path):
    missing = runner.invoke(app, [*FAST, "--n", "2", "--out", str(tmp_path / "a"), "--layout-dir", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(app, [*FAST, "--n", "2", "--out", str(tmp_path / "b"), "--layout-dir", str(tmp_path / "empty")])
    assert empty.exit_code == 2 and "holds no images" in empty.stderr
