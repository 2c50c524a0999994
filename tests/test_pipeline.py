import inspect

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from synfer.aus import AUVector
from synfer.errors import AUError, ConfigError
from synfer.pipelines.loading import load_pipeline
from synfer.pipelines.pipeline_synfer import SynFEROutput, SynFERPipeline

from helpers import generators

STEPS = 4


def run(pipe, prompt="a photo of a happy face", seeds=(0,), **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("output_type", "np")
    return pipe(prompt, generator=generators(*seeds), **kwargs)


def test_call_keeps_stable_diffusion_argument_order():
    ours = list(inspect.signature(SynFERPipeline.__call__).parameters)[1:]
    sd = list(inspect.signature(StableDiffusionPipeline.__call__).parameters)
    shared = [name for name in ours if name in sd]
    assert shared == [name for name in sd if name in ours]
    assert shared == [
        "prompt", "height", "width", "num_inference_steps", "guidance_scale", "negative_prompt",
        "num_images_per_prompt", "eta", "generator", "latents", "prompt_embeds", "negative_prompt_embeds",
        "output_type", "return_dict", "cross_attention_kwargs", "callback_on_step_end",
        "callback_on_step_end_tensor_inputs",
    ]
    assert ours[len(shared):] == [
        "aus", "au_scale", "semantic_guidance", "layout",
    ]


def test_output_dataclass_and_tuple(tiny_pipe):
    out = run(tiny_pipe, ["happy", "sad"], seeds=(0, 1, 2, 3), aus=["6,12", "1,4,15"], num_images_per_prompt=2)
    assert isinstance(out, SynFEROutput)
    assert out.images.shape == (4, 32, 32, 3)
    assert out.prompts == ["happy", "happy", "sad", "sad"]
    assert [a.format() for a in out.aus] == ["AU6:3,AU12:3"] * 2 + ["AU1:3,AU4:3,AU15:3"] * 2
    images, aus, prompts = run(tiny_pipe, seeds=(0,), aus="6,12", return_dict=False)
    assert images.shape == (1, 32, 32, 3) and aus == [AUVector.parse("6,12")] and len(prompts) == 1
    pil = run(tiny_pipe, aus="6", output_type="pil").images
    assert pil[0].size == (32, 32)


def test_image_in_a_batch_equals_image_made_alone(tiny_pipe):
    prompts = ["a happy face", "a sad face", "a surprised face"]
    aus = ["6,12", "1,4,15", "1,2,5,26"]
    batch = run(tiny_pipe, prompts, seeds=(11, 12, 13), aus=aus).images
    for i in range(3):
        alone = run(tiny_pipe, prompts[i], seeds=(11 + i,), aus=aus[i]).images[0]
        np.testing.assert_allclose(batch[i], alone, atol=1e-5)
        # Batched matrix products may round differently in the last float bit; as 8-bit pixels the
        # two can differ by at most one level where a value sits on a rounding boundary.
        assert np.abs(np.round(batch[i] * 255) - np.round(alone * 255)).max() <= 1


def test_save_pretrained_then_from_pretrained_gives_identical_images(tiny_pipe, tmp_path):
    before = run(tiny_pipe, seeds=(5,), aus="AU6:2.5,AU12:4").images
    tiny_pipe.save_pretrained(tmp_path)
    assert (tmp_path / "au_adapter" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))
    loaded = SynFERPipeline.from_pretrained(tmp_path, use_safetensors=True, local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    assert np.array_equal(before, run(loaded, seeds=(5,), aus="AU6:2.5,AU12:4").images)


def test_loads_a_stable_diffusion_folder_plus_adapter_folder(tiny_components, tmp_path):
    adapter = tiny_components.pop("au_adapter")
    sd = StableDiffusionPipeline(
        **tiny_components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    sd.save_pretrained(tmp_path / "sd")
    adapter.save_pretrained(tmp_path / "adapter")
    reference = SynFERPipeline(**tiny_components, au_adapter=adapter)
    reference.set_progress_bar_config(disable=True)
    expected = run(reference, seeds=(3,), aus="6,12").images
    adapter.detach()

    combined = load_pipeline(str(tmp_path / "sd"), tmp_path / "adapter", device="cpu", dtype="float32")
    assert combined.au_adapter is not None
    assert np.array_equal(run(combined, seeds=(3,), aus="6,12").images, expected)

    # Without an adapter the pipeline is plain Stable Diffusion, and refuses AUs.
    plain = load_pipeline(str(tmp_path / "sd"), device="cpu", dtype="float32")
    sd.set_progress_bar_config(disable=True)
    sd_images = sd("a photo of a happy face", num_inference_steps=STEPS, generator=generators(0), output_type="np").images
    assert np.array_equal(run(plain).images, sd_images)
    with pytest.raises(ConfigError, match="no AU adapter"):
        run(plain, aus="6,12")


def test_aus_and_au_scale_change_the_image(tiny_pipe):
    happy = run(tiny_pipe, aus="6,12").images
    surprise = run(tiny_pipe, aus="1,2,5,26").images
    off = run(tiny_pipe, aus="6,12", au_scale=0.0).images
    off_other = run(tiny_pipe, aus="1,2,5,26", au_scale=0.0).images
    assert np.abs(happy - surprise).max() > 1e-3
    assert np.array_equal(off, off_other)  # scale 0 ignores the AUs exactly
    assert tiny_pipe.au_adapter.au_scale == 1.0  # restored after the call


def test_cfg_contrasts_with_null_au(tiny_pipe):
    # With the null AU equal to the conditional tokens, AU conditioning cancels out of the CFG delta
    # only if the unconditional branch really uses the null tokens.
    adapter = tiny_pipe.au_adapter
    tokens = adapter(torch.zeros(1, 41), torch.ones(1, 41, dtype=torch.bool))
    seen = {}

    def spy(module, args, kwargs):
        context = kwargs["encoder_hidden_states"]
        seen["au"] = context[1].clone()

    handle = tiny_pipe.unet.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        run(tiny_pipe, aus="none", guidance_scale=5.0)
    finally:
        handle.remove()
    uncond, cond = seen["au"].chunk(2)
    assert torch.equal(uncond[0], adapter.null_tokens)
    assert torch.allclose(cond[0], tokens[0])


def test_aus_as_tensor_and_per_image_list(tiny_pipe):
    from synfer.aus import stack

    values, _ = stack([AUVector.parse("6,12"), AUVector.parse("1,4,15")])
    from_tensor = run(tiny_pipe, ["a", "b"], seeds=(0, 1), aus=torch.from_numpy(values)).images
    from_list = run(tiny_pipe, ["a", "b"], seeds=(0, 1), aus=["6,12", "1,4,15"]).images
    assert np.array_equal(from_tensor, from_list)
    with pytest.raises(AUError, match="give 1, 2 or 4"):
        run(tiny_pipe, ["a", "b"], seeds=(0, 1, 2, 3), aus=["6", "7", "9"], num_images_per_prompt=2)
    with pytest.raises(AUError, match=r"\[0, 5\]"):
        run(tiny_pipe, aus=torch.full((1, 41), 9.0))


def test_callback_can_read_and_replace_tensors(tiny_pipe):
    steps = []

    def callback(pipe, i, t, tensors):
        steps.append(i)
        assert set(tensors) == {"latents", "au_embeds"}
        return {"latents": tensors["latents"] * 0}

    out = run(tiny_pipe, aus="6", callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents", "au_embeds"])
    assert steps == list(range(STEPS))
    with torch.no_grad():
        zeros = tiny_pipe.vae.decode(torch.zeros(1, 4, 16, 16)).sample
    expected = tiny_pipe.image_processor.postprocess(zeros, output_type="np")
    np.testing.assert_allclose(out.images, expected, atol=1e-6)
    with pytest.raises(ConfigError, match="unknown callback tensor inputs"):
        run(tiny_pipe, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["noise"])


def test_input_errors(tiny_pipe):
    with pytest.raises(ConfigError, match="multiples of 2"):
        run(tiny_pipe, height=33)
    with pytest.raises(ConfigError, match="exactly one"):
        tiny_pipe(prompt=None, num_inference_steps=1)
    with pytest.raises(ConfigError, match="one per image"):
        run(tiny_pipe, ["a", "b"], seeds=(0,))


def test_unload_and_load_adapter(tiny_pipe, tmp_path):
    with_adapter = run(tiny_pipe).images  # no AUs: both CFG branches get the null AU
    adapter = tiny_pipe.au_adapter
    adapter.save_pretrained(tmp_path)
    tiny_pipe.unload_au_adapter()
    assert tiny_pipe.au_adapter is None
    bare = run(tiny_pipe).images
    # The null AU is zero-initialised, so the untrained adapter without AUs equals the bare model.
    np.testing.assert_allclose(bare, with_adapter, atol=1e-6)
    tiny_pipe.load_au_adapter(str(tmp_path))
    assert np.array_equal(run(tiny_pipe).images, with_adapter)
    assert np.abs(run(tiny_pipe, aus="6,12").images - with_adapter).max() > 1e-3
