import dataclasses
import gc
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderTiny, EulerDiscreteScheduler
from typer.testing import CliRunner

from synfer.aus import prototype
from synfer.cli import app
from synfer.data.format import read_manifest
from synfer.errors import ConfigError, LabelError, ModelLoadError
from synfer.expressions import AFFECTNET8
from synfer.models.classifier import create_classifier
from synfer.pipelines.guidance import SemanticGuidance
from synfer.pipelines.steering import NORMALIZATIONS, parse_window

from helpers import generators

TARGETS = [int(e) for e in AFFECTNET8.expressions]  # one image per AffectNet-8 class
AUS = [prototype(e) for e in AFFECTNET8.expressions]
PROMPTS = [f"a close-up photo of a {e.label} face" for e in AFFECTNET8.expressions]


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return create_classifier("tiny-resnet", "affectnet8").eval()


def tiny_decoder(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderTiny(
            encoder_block_out_channels=(8, 8),
            decoder_block_out_channels=(8, 8),
            num_encoder_blocks=(1, 1),
            num_decoder_blocks=(1, 1),
        ).eval()


def live_graphs():
    """Tensors still attached to an autograd graph, anywhere in the process."""
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance() over every object touches deprecated torch aliases
        return [o for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.grad_fn is not None]


def generate(pipe, seeds, guidance=None, n=8, steps=4, **kwargs):
    kwargs.setdefault("output_type", "pt")
    return pipe(
        PROMPTS[:n], aus=AUS[:n], generator=generators(*seeds), num_inference_steps=steps,
        semantic_guidance=guidance, **kwargs,
    ).images


def cross_entropy(classifier, images, targets):
    with torch.no_grad():
        return F.cross_entropy(classifier(images), classifier.target_indices(targets), reduction="none")


def test_guided_images_score_lower_cross_entropy_toward_their_targets(tiny_pipe, classifier):
    # The random tiny UNet answers weakly to its text embedding (whose norm is about 50), so the test
    # takes large steps (2.0) over the whole schedule: the loss then drops by ~1%, ten thousand times
    # float rounding, for every image of every seed tried (4 classifiers x 24 seeds, 3 and 4 steps).
    guidance = SemanticGuidance(classifier, TARGETS, step_size=2.0, window=(0.0, 1.0))
    seeds = range(8)  # one seed and one target class per image
    before = cross_entropy(classifier, generate(tiny_pipe, seeds), TARGETS)
    after = cross_entropy(classifier, generate(tiny_pipe, seeds, guidance), TARGETS)
    assert after.mean() < before.mean() - 5e-3
    assert (after < before).all()
    # Reusing the guidance passes' prediction lets each update act a step later: a smaller gain, the same sign.
    reused = cross_entropy(classifier, generate(tiny_pipe, seeds, dataclasses.replace(guidance, reuse_prediction=True)), TARGETS)
    assert reused.mean() < before.mean() - 1e-3
    assert (reused < before).all()

    # The direction comes from the targets: steering the same seeds elsewhere does not help them.
    elsewhere = [TARGETS[(i + 4) % 8] for i in range(8)]
    away = cross_entropy(classifier, generate(tiny_pipe, seeds, guidance.with_targets(elsewhere)), TARGETS)
    assert away.mean() > after.mean()


def test_step_size_zero_equals_unguided_exactly(tiny_pipe, classifier):
    unguided = generate(tiny_pipe, range(4), n=4, output_type="latent")
    zero = SemanticGuidance(classifier, TARGETS[:4], step_size=0.0, window=(0.0, 1.0))
    assert torch.equal(generate(tiny_pipe, range(4), zero, n=4, output_type="latent"), unguided)
    # Reusing the guidance passes splits the CFG batch in two, which rounds differently.
    reused = generate(tiny_pipe, range(4), dataclasses.replace(zero, reuse_prediction=True), n=4, output_type="latent")
    torch.testing.assert_close(reused, unguided, rtol=0, atol=1e-4)


def test_guided_steps_follow_window_and_every():
    g = lambda **kw: SemanticGuidance(create_classifier("tiny-resnet"), **kw)  # noqa: E731
    assert g().guided_steps(50) == list(range(30, 50))  # the default: the last 40%
    assert g().guided_steps(4) == [3]
    assert g(window=(0.7, 1.0)).guided_steps(10) == [7, 8, 9]  # 0.7 * 10 is 7.000000000000001
    assert g(window=(0.5, 1.0), every=2).guided_steps(10) == [5, 7, 9]
    assert g(window=(0.0, 0.3), every=3).guided_steps(20) == [0, 3]
    assert g(window=(0.9, 1.0)).guided_steps(5) == []


def test_classifier_is_called_exactly_as_window_and_every_imply(tiny_pipe, classifier):
    calls = []
    handle = classifier.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        guidance = SemanticGuidance(classifier, TARGETS[:3], window=(0.5, 1.0), every=2)
        generate(tiny_pipe, range(3), guidance, n=3, steps=6)  # steps 3 and 5
        assert calls == [3, 3]
        calls.clear()
        in_passes = SemanticGuidance(classifier, TARGETS[:3], window=(0.5, 1.0), every=2, max_images_per_pass=2)
        generate(tiny_pipe, range(3), in_passes, n=3, steps=6, guidance_scale=1.0)  # works without CFG too
        assert calls == [2, 1] * 2
        calls.clear()
        generate(tiny_pipe, range(3), dataclasses.replace(in_passes, reuse_prediction=True), n=3, steps=6)
        assert calls == [2, 1] * 2
    finally:
        handle.remove()


def test_each_guided_step_moves_each_embedding_by_the_step_size(tiny_pipe, classifier):
    seen = []

    def record(pipe, i, t, tensors):
        embeds = tensors["prompt_embeds"]
        assert embeds.grad_fn is None and not embeds.requires_grad
        if i in (4, 6):  # just after a guided step, no autograd graph survives: nothing alive points into one
            assert not live_graphs()
        seen.append(embeds.clone())
        return {}

    for normalize in ("global", "per_token"):
        seen.clear()
        guidance = SemanticGuidance(classifier, TARGETS[:2], step_size=0.25, window=(0.5, 1.0), every=2, normalize=normalize)
        with torch.no_grad():
            initial = tiny_pipe.encode_prompt(PROMPTS[:2], "cpu", 1, False)[0]
        generate(tiny_pipe, range(2), guidance, n=2, steps=8, callback_on_step_end=record,
                 callback_on_step_end_tensor_inputs=["prompt_embeds"])
        moves = torch.stack([b - a for a, b in zip([initial] + seen[:-1], seen)])  # [steps, images, tokens, dim]
        guided = [4, 6]
        for step in range(8):
            if step not in guided:
                assert torch.equal(moves[step], torch.zeros_like(moves[step]))
            elif normalize == "global":
                torch.testing.assert_close(moves[step].flatten(1).norm(dim=1), torch.full((2,), 0.25), rtol=1e-4, atol=0)
            else:
                torch.testing.assert_close(moves[step].norm(dim=-1), torch.full((2, 77), 0.25), rtol=1e-3, atol=0)


def test_a_non_finite_gradient_leaves_that_image_alone(tiny_pipe, classifier, caplog):
    def poison_first(module, args, logits):
        return torch.cat([logits[:1] * float("inf"), logits[1:]])

    seen = []
    handle = classifier.register_forward_hook(poison_first)
    try:
        with torch.no_grad():
            initial = tiny_pipe.encode_prompt(PROMPTS[:2], "cpu", 1, False)[0]
        guidance = SemanticGuidance(classifier, TARGETS[:2], window=(0.5, 1.0))
        out = generate(tiny_pipe, range(2), guidance, n=2, steps=2, callback_on_step_end_tensor_inputs=["prompt_embeds"],
                       callback_on_step_end=lambda pipe, i, t, tensors: seen.append(tensors["prompt_embeds"].clone()) or {})
    finally:
        handle.remove()
    assert torch.isfinite(out).all()
    assert torch.equal(seen[-1][0], initial[0]) and not torch.equal(seen[-1][1], initial[1])
    assert "non-finite gradient for 1 image" in caplog.text


def test_frozen_models_end_without_gradients_and_outputs_without_graphs(tiny_pipe, classifier):
    classifier.train()
    decoder = tiny_decoder()
    guidance = SemanticGuidance(classifier, TARGETS[:2], window=(0.0, 1.0), decoder=decoder, gradient_checkpointing=True)
    out = generate(tiny_pipe, range(2), guidance, n=2, steps=2)
    classifier.eval()
    assert out.grad_fn is None and not out.requires_grad
    for module in (tiny_pipe.unet, tiny_pipe.vae, tiny_pipe.au_adapter, decoder, classifier):
        assert all(p.grad is None for p in module.parameters())
        assert all(p.requires_grad for p in module.parameters())  # the state they came in with
    for name, value in vars(tiny_pipe).items():
        assert not (isinstance(value, torch.Tensor) and value.grad_fn is not None), name
    assert not live_graphs()


def test_tiny_decoder_checkpointing_and_passes_change_only_float_rounding(tiny_pipe, classifier, tmp_path):
    decoder = tiny_decoder()
    decoder.save_pretrained(tmp_path / "taesd")
    base = dict(classifier=classifier, target_labels=TARGETS[:2], step_size=2.0, window=(0.0, 1.0))
    run = lambda guidance: generate(tiny_pipe, range(2), guidance, n=2, steps=3, output_type="latent")  # noqa: E731
    unguided = run(None)
    with_module = run(SemanticGuidance(**base, decoder=decoder))
    assert torch.equal(run(SemanticGuidance(**base, decoder=str(tmp_path / "taesd"))), with_module)
    assert (with_module - unguided).abs().max() > 1e-4  # the tiny decoder's gradient does steer
    vae = run(SemanticGuidance(**base))
    assert (vae - unguided).abs().max() > 1e-3
    # Recomputing activations (decoder, classifier and UNet blocks) repeats the same arithmetic.
    assert torch.equal(run(SemanticGuidance(**base, gradient_checkpointing=True)), vae)
    assert not tiny_pipe.unet.is_gradient_checkpointing  # switched on for the call only
    # One image per pass computes the same gradients in another float order. Where that flips a ReLU or
    # clamp kink the gradient moves by ~0.1%, which these large steps carry on: measured 0.011 against
    # a guidance effect of 0.59.
    in_passes = run(SemanticGuidance(**base, max_images_per_pass=1))
    assert (in_passes - vae).abs().max() < 0.05 * (vae - unguided).abs().max()


def test_normalizations():
    grad = torch.randn(3, 5, 4)
    assert torch.allclose(NORMALIZATIONS["global"](grad).flatten(1).norm(dim=1), torch.ones(3))
    assert torch.allclose(NORMALIZATIONS["per_token"](grad).norm(dim=-1), torch.ones(3, 5))
    zero = torch.zeros(2, 5, 4)  # a zero gradient stays zero instead of becoming NaN
    assert torch.equal(NORMALIZATIONS["global"](zero), zero) and torch.equal(NORMALIZATIONS["per_token"](zero), zero)


def test_settings_errors(tiny_pipe, classifier, tmp_path):
    for kwargs, fragment in [
        ({"window": (0.5, 1.2)}, "0 <= start < end <= 1"),
        ({"window": (0.8, 0.2)}, "0 <= start < end <= 1"),
        ({"window": "late"}, "two fractions"),
        ({"step_size": -0.1}, ">= 0"),
        ({"step_size": float("inf")}, ">= 0"),
        ({"every": 0}, "every"),
        ({"normalize": "l1"}, "accepted: global, per_token"),
        ({"max_images_per_pass": 0}, "max_images_per_pass"),
    ]:
        with pytest.raises(ConfigError, match=fragment):
            SemanticGuidance(classifier, **kwargs)
    with pytest.raises(ConfigError, match="FER classifier"):
        SemanticGuidance(torch.nn.Linear(2, 2))
    with pytest.raises(ModelLoadError, match="does not exist"):
        SemanticGuidance(classifier, decoder=str(tmp_path / "missing"))
    seven = create_classifier("tiny-resnet", "affectnet7")
    with pytest.raises(LabelError, match="'contempt' is not in label set 'affectnet7'"):
        SemanticGuidance(seven, [1, 7])
    with pytest.raises(ConfigError, match="target_labels"):
        generate(tiny_pipe, range(2), SemanticGuidance(classifier), n=2, steps=2)
    with pytest.raises(ConfigError, match="give 1, 2 or 2"):
        generate(tiny_pipe, range(2), SemanticGuidance(classifier, [1, 2, 3]), n=2, steps=2)
    scheduler = tiny_pipe.scheduler
    tiny_pipe.scheduler = EulerDiscreteScheduler.from_config(scheduler.config)
    try:
        with pytest.raises(ConfigError, match="variance-preserving"):
            generate(tiny_pipe, range(2), SemanticGuidance(classifier, [1, 2]), n=2, steps=2)
    finally:
        tiny_pipe.scheduler = scheduler
    assert parse_window("0.6:1") == (0.6, 1.0)
    with pytest.raises(ConfigError, match="START:END"):
        parse_window("0.6-1.0")


def test_to_dict_records_settings_and_weight_hashes(classifier):
    record = SemanticGuidance(classifier, step_size=0.2, window=(0.5, 1.0), every=2, normalize="per_token").to_dict()
    assert record["step_size"] == 0.2 and record["window"] == [0.5, 1.0] and record["every"] == 2
    assert record["normalize"] == "per_token" and record["decoder"] == "vae" and record["reuse_prediction"] is False
    assert record["classifier"]["label_set"] == "affectnet8" and record["classifier"]["backbone"] == "tiny-resnet"
    torch.manual_seed(1)
    other = create_classifier("tiny-resnet", "affectnet8")
    assert SemanticGuidance(other).to_dict()["classifier"]["sha256"] != record["classifier"]["sha256"]
    with_decoder = SemanticGuidance(classifier, decoder=tiny_decoder()).to_dict()["decoder"]
    assert with_decoder["class"] == "AutoencoderTiny" and len(with_decoder["sha256"]) == 64
    json.dumps(record)


# -- synfer generate ----------------------------------------------------------------------------------
runner = CliRunner()
FAST = ["generate", "--model", "tiny", "--steps", "2", "--batch-size", "4"]


@pytest.fixture(scope="module")
def classifier_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("classifiers")
    for name in ("affectnet8", "affectnet7"):
        torch.manual_seed(0)
        create_classifier("tiny-resnet", name).save_pretrained(root / name)
    return root


def test_generate_with_guidance_records_it_and_refuses_other_settings_on_resume(tmp_path, classifier_folders, monkeypatch):
    from synfer.pipelines.guidance import Guider

    targets = []
    original = Guider.__init__

    def spy(self, config, *args, **kwargs):
        targets.extend(int(label) for label in config.target_labels)
        original(self, config, *args, **kwargs)

    monkeypatch.setattr(Guider, "__init__", spy)
    out = tmp_path / "d"
    guided = ["--guidance-model", str(classifier_folders / "affectnet8"), "--sg-window", "0.5:1", "--sg-every", "2"]
    result = runner.invoke(app, [*FAST, "--n", "6", "--shard-size", "3", "--out", str(out), *guided])
    assert result.exit_code == 0, result.output
    import pyarrow.parquet as pq

    planned = [label for s in (0, 1) for label in pq.read_table(out / "shards" / f"0000{s}.parquet").column("label").to_pylist()]
    assert targets == planned  # each sample is steered toward its own planned label

    manifest = read_manifest(out)
    recorded = manifest["render"]["guidance"]
    assert recorded["window"] == [0.5, 1.0] and recorded["every"] == 2 and recorded["step_size"] == 0.1
    assert len(recorded["classifier"]["sha256"]) == 64 and recorded["classifier"]["label_set"] == "affectnet8"
    assert manifest["model"]["guidance_model"] == str(classifier_folders / "affectnet8")

    (out / "shards" / "00001.parquet").unlink()
    same = runner.invoke(app, [*FAST, "--n", "6", "--shard-size", "3", "--out", str(out), *guided])
    assert same.exit_code == 0, same.output
    changed = runner.invoke(app, [*FAST, "--n", "6", "--shard-size", "3", "--out", str(out), *guided, "--sg-step-size", "0.2"])
    assert changed.exit_code == 2 and "different config" in changed.stderr and "render" in changed.stderr
    reused = runner.invoke(app, [*FAST, "--n", "6", "--shard-size", "3", "--out", str(out), *guided, "--sg-reuse-prediction"])
    assert reused.exit_code == 2 and "different config" in reused.stderr
    unguided = runner.invoke(app, [*FAST, "--n", "6", "--shard-size", "3", "--out", str(out)])
    assert unguided.exit_code == 2 and "different config" in unguided.stderr


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--sg-window", "1.2:0.5"], "0 <= start < end <= 1"),
        (["--sg-window", "late"], "START:END"),
        (["--sg-step-size", "-1"], "step size must be a finite number >= 0"),
        (["--sg-normalize", "l1"], "accepted: global, per_token"),
        (["--sg-every", "0"], "every must be an integer >= 1"),
        (["--sg-decoder", "/nonexistent/taesd"], "does not exist"),
    ],
)
def test_generate_guidance_bad_values_are_one_line_exit_2(tmp_path, classifier_folders, args, fragment):
    classifier = str(classifier_folders / "affectnet8")
    result = runner.invoke(app, [*FAST, "--n", "2", "--out", str(tmp_path / "x"), "--guidance-model", classifier, *args])
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr and "Traceback" not in result.output + result.stderr


def test_generate_guidance_model_errors(tmp_path, classifier_folders):
    missing = runner.invoke(app, [*FAST, "--n", "2", "--out", str(tmp_path / "a"), "--guidance-model", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "not a synfer classifier" in missing.stderr
    seven = ["--guidance-model", str(classifier_folders / "affectnet7")]
    result = runner.invoke(app, [*FAST, "--n", "2", "--out", str(tmp_path / "b"), *seven])
    assert result.exit_code == 2 and "cannot judge every planned label" in result.stderr and "contempt" in result.stderr
    assert not (tmp_path / "b" / "manifest.json").exists()
    ok = runner.invoke(app, [*FAST, "--n", "2", "--classes", "7", "--out", str(tmp_path / "c"), *seven])
    assert ok.exit_code == 0, ok.output
