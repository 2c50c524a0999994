from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image

from synfer.errors import ConfigError, ModelLoadError
from synfer.expressions import AFFECTNET8, Expression
from synfer.labelers.feranno import (
    AttentionRecorder,
    FeatureConfig,
    FERAnno,
    FERAnnoFeatureExtractor,
    FERAnnoHead,
    cross_attention_blocks,
    parse_blocks,
)
from synfer.pipelines.loading import tiny_pipeline

TINY = {"name": "tiny", "adapter": None, "seed": 0}


def hooks_on(module):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def test_hooks_collect_the_declared_blocks(tiny_pipe):
    unet = tiny_pipe.unet
    processors = dict(unet.attn_processors)
    hooks = hooks_on(unet)
    images = torch.rand(2, 3, 32, 32)

    both = FERAnnoFeatureExtractor(tiny_pipe, FeatureConfig(up_blocks=(0, 1), pool_size=2, attention_size=4))(images)
    assert [tuple(f.shape) for f in both.features] == [(2, 4, 64), (2, 4, 32)]  # [B, pool², channels of block]
    tokens = tiny_pipe.tokenizer.model_max_length + tiny_pipe.au_adapter.config.num_tokens
    assert both.attention.shape == (2, tokens, 2 * 4 * 4)
    # Each map cell is a softmax over the text tokens and, separately, over the AU tokens.
    cells = both.attention.view(2, tokens, 2, 16)
    assert torch.allclose(cells[:, :77].sum(1), torch.ones(2, 2, 16), atol=1e-5)
    assert torch.allclose(cells[:, 77:].sum(1), torch.ones(2, 2, 16), atol=1e-5)

    last = FERAnnoFeatureExtractor(tiny_pipe, FeatureConfig(up_blocks=(1,), pool_size=1, attention_size=4))
    one = last(images)
    assert [tuple(f.shape) for f in one.features] == [(2, 1, 32)]
    assert torch.allclose(one.attention, both.attention[..., 16:], atol=1e-6)
    assert torch.allclose(one.features[0][:, 0], both.features[1].mean(1), atol=1e-5)

    # Everything installed for the pass is gone afterwards.
    assert dict(unet.attn_processors) == processors
    assert hooks_on(unet) == hooks


def test_recording_leaves_the_unet_output_unchanged(tiny_pipe):
    unet = tiny_pipe.unet
    torch.manual_seed(0)
    latents, text = torch.randn(2, 4, 16, 16), torch.randn(2, 77, 32)
    context = (text, tiny_pipe.au_adapter.null(2))
    with torch.no_grad():
        plain = unet(latents, 1, encoder_hidden_states=context).sample
        with AttentionRecorder(unet, [0, 1], 2, 4).installed() as recorder:
            recorded = unet(latents, 1, encoder_hidden_states=context).sample
    assert torch.equal(plain, recorded)
    # Every cross-attention layer of a block adds a map (the tiny decoder blocks have two each).
    assert set(recorder.features) == {0, 1} and len(recorder.maps[0]) == len(recorder.maps[1]) == 2


def test_recorded_maps_equal_diffusers_own_attention_scores(tiny_pipe):
    """The recorder re-derives attention probabilities from diffusers' internals; this fails loudly if they change."""
    from diffusers.models.attention_processor import Attention

    from synfer.labelers.feranno.recorder import RecordingProcessor

    unet = tiny_pipe.unet
    torch.manual_seed(0)
    latents, text = torch.randn(2, 4, 16, 16), torch.randn(2, 77, 32)
    au_tokens = tiny_pipe.au_adapter(torch.rand(2, 41) * 5)
    calls = []
    layers = [m for m in unet.modules() if isinstance(m, Attention) and m.is_cross_attention]
    handles = [m.register_forward_pre_hook(lambda m, a, k: calls.append((m, a[0], k["encoder_hidden_states"])), with_kwargs=True)
               for m in layers]
    try:
        with torch.no_grad():
            unet(latents, 1, encoder_hidden_states=(text, au_tokens))
    finally:
        for handle in handles:
            handle.remove()
    assert len(calls) == len(layers) > 0
    with torch.no_grad():
        for attn, hidden, (context, aus) in calls:
            processor = attn.processor
            recorded = RecordingProcessor(processor, recorder=None, block=0)._probabilities(attn, hidden, (context, aus), None)
            query = attn.head_to_batch_dim(attn.to_q(hidden))
            expected = [attn.get_attention_scores(query, attn.head_to_batch_dim(attn.to_k(context)))]
            expected.append(attn.get_attention_scores(query, attn.head_to_batch_dim(processor.to_k_au(aus))))
            heads = attn.heads
            expected = torch.cat([p.view(2, heads, *p.shape[1:]).mean(1) for p in expected], dim=-1)
            torch.testing.assert_close(recorded, expected, rtol=1e-5, atol=1e-6)


def test_aus_condition_known_samples_only(tiny_pipe):
    extractor = FERAnnoFeatureExtractor(tiny_pipe)
    images = torch.rand(1, 3, 32, 32).expand(2, -1, -1, -1)
    aus = torch.zeros(2, 41)
    aus[:, [4, 9]] = 3.0  # AU6 + AU12
    known = torch.zeros(2, 41, dtype=torch.bool)
    known[0] = True
    with_aus, without = extractor(images, aus, known), extractor(images)
    assert not torch.allclose(with_aus.attention[0], without.attention[0])
    assert torch.equal(with_aus.attention[1], without.attention[1])  # nothing known: the null AU
    ignoring = FERAnnoFeatureExtractor(tiny_pipe, FeatureConfig(use_aus=False))(images, aus, known)
    assert torch.equal(ignoring.attention, without.attention)


def test_features_do_not_depend_on_the_batch(tiny_pipe):
    extractor = FERAnnoFeatureExtractor(tiny_pipe)
    images = torch.rand(3, 3, 48, 48)  # any size: resized to the model's 32 px
    batch, alone = extractor(images), extractor(images[2:])
    assert torch.allclose(batch.attention[2:], alone.attention, atol=1e-5)
    assert all(torch.allclose(b[2:], a, atol=1e-5) for b, a in zip(batch.features, alone.features))


def test_blocks_are_checked(tiny_pipe):
    with pytest.raises(ConfigError, match="does not exist"):
        FERAnnoFeatureExtractor(tiny_pipe, FeatureConfig(up_blocks=(2,)))
    with pytest.raises(ConfigError, match="less than|below 1000"):
        FERAnnoFeatureExtractor(tiny_pipe, FeatureConfig(timestep=1000))
    with pytest.raises(ConfigError, match="comma-separated"):
        parse_blocks("1,two")
    assert parse_blocks("auto") is None and parse_blocks("1,2") == (1, 2)

    from synfer.models.sd15 import sd15_unet

    unet = sd15_unet("meta")
    assert cross_attention_blocks(unet) == [1, 2, 3]  # SD1.5's first decoder block has no attention
    pipe = SimpleNamespace(unet=unet, vae_scale_factor=8, scheduler=DDIMScheduler(), au_adapter=None)
    extractor = FERAnnoFeatureExtractor(pipe)
    assert extractor.config.up_blocks == (1, 2, 3) and extractor.config.resolution == 512
    assert extractor.feature_dims == [1280, 640, 320]
    with pytest.raises(ConfigError, match="no cross-attention"):
        FERAnnoFeatureExtractor(pipe, FeatureConfig(up_blocks=(0,)))


@dataclass
class Item:
    image: Image.Image
    label: Expression
    source: str


TOY_COLOURS = {
    Expression.NEUTRAL: (0.5, 0.5, 0.5),
    Expression.HAPPY: (0.9, 0.7, 0.2),
    Expression.SAD: (0.2, 0.3, 0.8),
    Expression.ANGER: (0.8, 0.1, 0.1),
}


def toy_items(per_class: int, seed: int) -> list[Item]:
    """Each class a colour with a bright square at its own corner, plus noise: learnable, not trivial."""
    rng = np.random.default_rng(seed)
    items = []
    for k, (expression, colour) in enumerate(TOY_COLOURS.items()):
        for i in range(per_class):
            array = np.asarray(colour)[None, None] + rng.normal(0, 0.15, (32, 32, 3))
            y, x = divmod(k, 2)
            array[16 * y : 16 * y + 12, 16 * x : 16 * x + 12] += 0.3
            pixels = (np.clip(array, 0, 1) * 255).astype(np.uint8)
            items.append(Item(Image.fromarray(pixels), expression, f"toy/{expression.label}/{i}.png"))
    return items


def test_head_trains_on_a_toy_set_above_chance_and_round_trips(tmp_path):
    from synfer.train.annotator import HeadTrainingConfig, save_annotator
    from synfer.train.annotator_fit import evaluate_head, fit_head, labelled_features

    pipe = tiny_pipeline(0)
    extractor = FERAnnoFeatureExtractor(pipe, model=TINY)
    train, val = toy_items(8, seed=0), toy_items(4, seed=1)
    config = HeadTrainingConfig(epochs=10, batch_size=16, learning_rate=5e-3, hidden_dim=32, dropout=0.0, cache_shard_size=16)
    epochs = []
    output = fit_head(extractor, train, AFFECTNET8, config, val_items=val, cache_dir=tmp_path / "cache", on_epoch=epochs.append)
    assert output.train_size == 32 and output.val_size == 16 and output.extracted == 48
    assert output.class_counts["happy"] == 8 and output.class_counts["contempt"] == 0
    assert len(epochs) == 10 and epochs[-1]["loss"] < epochs[0]["loss"]
    assert output.val_accuracy >= 0.75, output.history  # four classes: chance is 0.25
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "train-00000.safetensors", "train-00001.safetensors", "val-00000.safetensors",
    ]

    # The cache serves a second run without the UNet, with the same features.
    again = labelled_features(extractor, val, AFFECTNET8, split="val", cache_dir=tmp_path / "cache", shard_size=16)
    assert again.extracted == 0
    assert evaluate_head(output.head, again) == pytest.approx(output.val_accuracy)
    changed = [Item(it.image.rotate(90), it.label, it.source) for it in val]
    assert labelled_features(extractor, changed, AFFECTNET8, split="val", cache_dir=tmp_path / "cache", shard_size=16).extracted == 16

    # Saved as safetensors + config, loaded with the model it names, it predicts the same.
    save_annotator(output, tmp_path / "head", config)
    assert {p.name for p in (tmp_path / "head").iterdir()} >= {"config.json", "diffusion_pytorch_model.safetensors", "training.json"}
    annotator = FERAnno.from_pretrained(tmp_path / "head", device="cpu")
    images = torch.stack([torch.from_numpy(np.array(it.image)).permute(2, 0, 1).float() / 255 for it in val])
    probs = annotator.predict_proba(images)
    assert probs.shape == (16, 8) and torch.allclose(probs.sum(1), torch.ones(16), atol=1e-5)
    predicted = [AFFECTNET8.expression(i) for i in probs.argmax(1).tolist()]
    accuracy = np.mean([p == it.label for p, it in zip(predicted, val)])
    assert accuracy == pytest.approx(output.val_accuracy)
    config_json = annotator.head.config.extractor
    assert config_json["config"]["timestep"] == 1 and config_json["config"]["up_blocks"] == [0, 1]
    assert config_json["unet_sha256"] and config_json["model"] == TINY and annotator.head.config.label_set == "affectnet8"
    with pytest.raises(Exception, match="not empty"):
        save_annotator(output, tmp_path / "head", config)


def test_head_refuses_another_unet(tmp_path):
    extractor = FERAnnoFeatureExtractor(tiny_pipeline(0), model=TINY)
    FERAnnoHead.for_extractor(extractor, AFFECTNET8, hidden_dim=16).save_pretrained(tmp_path / "head")
    assert FERAnno.from_pretrained(tmp_path / "head", device="cpu").label_set is AFFECTNET8
    with pytest.raises(ModelLoadError, match="different unet"):
        FERAnno.from_pretrained(tmp_path / "head", pipe=tiny_pipeline(1))
    other = FERAnnoFeatureExtractor(tiny_pipeline(0), FeatureConfig(pool_size=3), model=TINY)
    with pytest.raises(ModelLoadError, match="expects features shaped"):
        FERAnno(other, FERAnnoHead.for_extractor(extractor, AFFECTNET8, hidden_dim=16))
