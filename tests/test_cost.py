import dataclasses
import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import AutoencoderTiny, PNDMScheduler
from typer.testing import CliRunner

from synfer.cli import app
from synfer.errors import ConfigError
from synfer.expressions import affectnet_train_size, get_label_set
from synfer.models.classifier import create_classifier
from synfer.models.tiny import tiny_components
from synfer.pipelines.cost import (
    CostConfig,
    count_flops,
    flop_counter,
    gpu_hours,
    guidance_architecture,
    measure_cost,
    model_architecture,
    sd15_architecture,
)
from synfer.pipelines.inversion import LayoutInit
from synfer.pipelines.pipeline_synfer import SynFERPipeline

from helpers import one_thread  # noqa: F401 (autouse: one intra-op thread for this module)

runner = CliRunner()


@pytest.fixture(scope="module")
def pipe():
    pipe = SynFERPipeline(**tiny_components(seed=0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return create_classifier("tiny-resnet", "affectnet8").eval()


@pytest.fixture(scope="module")
def sd15():
    return sd15_architecture()


def small_decoder():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoencoderTiny(
            encoder_block_out_channels=(8, 8),
            decoder_block_out_channels=(8, 8),
            num_encoder_blocks=(1, 1),
            num_decoder_blocks=(1, 1),
        ).eval()


def counted_call(pipe, config: CostConfig) -> int:
    """FlopCounterMode's count of one real pipeline call with ``config``'s settings, decode included."""
    n = config.batch_size
    guidance = config.guidance.with_targets([1, 3, 6][:n]) if config.guidance is not None else None
    layout = None
    if config.layout is not None:
        layout = config.layout.with_images(PIL.Image.fromarray(np.full((32, 32, 3), 128, np.uint8)))
    generator = [torch.Generator().manual_seed(i) for i in range(n)]
    with flop_counter() as counter:
        pipe(
            ["a close-up photo of a happy face", "a photo of a sad face", "an angry face"][:n],
            aus="6,12",
            num_inference_steps=config.steps,
            guidance_scale=config.guidance_scale,
            generator=generator,
            semantic_guidance=guidance,
            layout=layout,
            output_type="pt",
        )
    return counter.get_total_flops()


CASES = {
    "cfg": dict(steps=4),
    "no-cfg": dict(steps=4, guidance_scale=1.0),
    "paper-like": dict(steps=5, guidance=dict(window=(0.4, 1.0))),
    "every-2": dict(steps=6, guidance=dict(window=(0.3, 1.0), every=2)),
    "cheap": dict(steps=5, guidance=dict(window=(0.2, 1.0), every=2, decoder="small", reuse_prediction=True)),
    "reuse-no-cfg": dict(steps=4, guidance_scale=1.0, guidance=dict(window=(0.0, 1.0), reuse_prediction=True)),
    "layout-batch-2": dict(
        steps=6, batch_size=2, layout=dict(strength=0.5, iterations=1), guidance=dict(window=(0.0, 1.0))
    ),
    "checkpointing": dict(steps=3, guidance=dict(window=(0.5, 1.0), gradient_checkpointing=True)),
}


@pytest.mark.parametrize("case", CASES)
def test_composed_cost_equals_the_count_of_a_real_pipeline_call(pipe, classifier, case):
    settings = dict(CASES[case])
    if "guidance" in settings:
        options = dict(settings["guidance"])
        if options.get("decoder") == "small":
            options["decoder"] = small_decoder()
        settings["guidance"] = guidance_architecture(pipe, classifier, **options)
    if "layout" in settings:
        settings["layout"] = LayoutInit(**settings["layout"])
    config = CostConfig(**settings)
    report = measure_cost(pipe, config, "tiny")
    counted = counted_call(pipe, config)
    assert counted > 0
    assert report.per_call == counted  # exact: both are integer counts of the same operations
    assert sum(report.parts.values()) == report.per_call
    if config.guidance is not None:
        assert 0 < report.guided_steps <= report.sampled_steps
        assert report.guided_step > report.unguided_step
        assert report.guided_step_backward > 0
        assert report.guidance["decoder"] == ("AutoencoderTiny" if case == "cheap" else "vae")  # small, not TAESD


def test_a_schedule_longer_than_its_step_count_is_costed_as_sampled(pipe, classifier):
    # PNDM runs one timestep more than asked for; guidance still picks from num_inference_steps.
    pndm = SynFERPipeline(
        **{**pipe.components, "scheduler": PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True)}
    )
    pndm.set_progress_bar_config(disable=True)
    config = CostConfig(steps=4, guidance=guidance_architecture(pndm, classifier, window=(0.5, 1.0)))
    report = measure_cost(pndm, config)
    assert report.sampled_steps == 5
    assert report.per_call == counted_call(pndm, config)
    with pytest.raises(ConfigError, match="DDIM"):
        measure_cost(pndm, CostConfig(steps=4, layout=LayoutInit(strength=0.5)))


def test_sd15_counts_match_the_planning_figures(sd15):
    report = measure_cost(sd15, CostConfig(steps=50), "sd15")
    assert report.height == report.width == 512
    assert report.unet_eval_bare == pytest.approx(0.803e12, rel=5e-3)
    assert 0 < report.adapter_overhead < 0.01
    assert report.vae_decode == pytest.approx(2.515e12, rel=5e-3)
    assert report.vae_decode > 3 * report.unet_eval  # the decoder, not the UNet, is the expensive pass
    assert report.unguided_step == 2 * report.unet_eval  # CFG: one batched call of two evaluations
    assert report.sampled_steps == 50 and report.text_passes == 2
    json.dumps(report.to_dict())

    # Convolutions grow with the pixels (4x from 256 to 512), self-attention with their square.
    small = count_flops(
        lambda: sd15.predict_noise(
            torch.zeros(1, 4, 32, 32, device="meta"),
            torch.tensor(500),
            torch.zeros(1, 77, 768, device="meta"),
            None,
            None,
            None,
            1.0,
        )
    )
    assert small == pytest.approx(0.180e12, rel=5e-3)
    assert 4.0 < report.unet_eval_bare / small < 5.0


def test_paper_like_guidance_backpropagates_through_the_decoder_at_every_guided_step(sd15):
    guidance = guidance_architecture(sd15, "resnet18", window=(0.6, 1.0), every=1)
    report = measure_cost(sd15, CostConfig(height=256, width=256, steps=50, guidance=guidance))
    assert report.guided_steps == 20  # steps 30..49
    forward = report.unet_eval + report.vae_decode + report.classifier_forward
    # The backward pass to the embedding alone (no weight gradients) costs about its forward again, not twice.
    assert report.guided_step_backward > report.vae_decode
    assert 0.75 * forward < report.guided_step_backward < 1.25 * forward
    assert report.guided_step > 3 * report.unguided_step
    assert report.guidance["decoder"] == "vae" and report.guidance["classifier"] == "resnet18 at 224px"


def test_a_model_folder_is_costed_from_its_configs_alone(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "model")
    architecture = model_architecture(str(tmp_path / "model"))
    assert architecture.unet.device.type == "meta" and architecture.au_adapter is not None
    config = CostConfig(steps=4, layout=LayoutInit(strength=0.5))
    assert measure_cost(architecture, config) == measure_cost(pipe, config)


def test_gpu_hours_convert_flops_at_the_achieved_rate(pipe):
    report = dataclasses.replace(measure_cost(pipe, CostConfig(steps=1)), per_call=int(3.6e15))
    assert gpu_hours(report, 1, 1.0) == pytest.approx(1.0)  # 1 TFLOP/s for an hour is 3.6e15 FLOP
    assert gpu_hours(report, 10, 2.0) == pytest.approx(5.0)
    assert gpu_hours(dataclasses.replace(report, batch_size=2), 1, 1.0) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="TFLOP/s"):
        gpu_hours(report, 1, 0.0)
    with pytest.raises(ConfigError):
        CostConfig(steps=0)
    with pytest.raises(ConfigError, match="multiples"):
        measure_cost(pipe, CostConfig(height=33))


def test_info_cost_prints_flops_and_gpu_hours_for_sd15_without_weights():
    args = ["info", "--model", "sd15", "--cost", "--height", "256", "--width", "256", "--n", "1000", "--tflops", "150"]
    result = runner.invoke(app, args, env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for text in (
        "UNet evaluation",
        "VAE decode",
        "unguided step",
        "per image",
        "GPU-hours, 1,000 images",
        "150 TFLOP/s",
        "meta device",
        "859,520,964",
    ):  # the SD1.5 UNet's parameter count
        assert text in result.output


def test_info_cost_of_a_model_folder_with_cheap_guidance_at_affectnet_scale(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "model")
    args = [
        "info",
        "--model",
        str(tmp_path / "model"),
        "--cost",
        "--scale",
        "2x",
        "--guidance-classifier",
        "resnet18",
        "--sg-every",
        "2",
        "--sg-decoder",
        "tiny",
        "--sg-reuse-prediction",
    ]
    result = runner.invoke(app, args, env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for text in (
        "guided step",
        "of which backward",
        "TAESD architecture",
        "reusing its passes",
        "resnet18 at 224px",
        f"GPU-hours, {2 * affectnet_train_size(get_label_set(8)):,} images",
    ):
        assert text in result.output
    assert "an assumption" in result.output  # the default TFLOP/s is said to be one


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps", "10"], "only apply with --cost"),
        (["--cost", "--sg-every", "2"], "--guidance-classifier"),
        (["--cost", "--layout-iterations", "2"], "--layout-strength"),
        (["--cost", "--tflops", "0"], "--tflops"),
        (["--cost", "--guidance-classifier", "resnet18", "--sg-window", "0.9:0.1"], "guidance window"),
        (["--cost", "--guidance-classifier", "resnet18", "--sg-decoder", "nonsense"], "unknown guidance decoder"),
    ],
)
def test_info_cost_refuses_bad_options_in_one_line(args, message):
    result = runner.invoke(app, ["info", "--model", "tiny", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "{missing}"], "does not exist"),
        (["--model", "{empty}"], "no model_index.json"),
        (["--model", "sd15", "--adapter", "{missing}"], "AU adapter folder"),
        (["--model", "sd15", "--adapter", "{empty}"], "not an AU adapter folder"),
        (["--model", "sd15", "--cost", "--scale", "abc"], "unknown scale"),
    ],
)
def test_info_refuses_a_mistyped_model_adapter_or_scale_before_printing_anything(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [arg.format(missing=tmp_path / "missing", empty=tmp_path / "empty") for arg in args]
    result = runner.invoke(app, ["info", *args])
    assert result.exit_code == 2, result.output
    assert result.output.strip().count("\n") == 0, result.output  # one line: no version table before it
    assert message in result.output
