"""train-adapter on the tiny model: condition dropout, the mirrored AUs, the frozen UNet, the AU policy, the built model."""

import numpy as np
import pytest
import torch

from synfer.aus import AU_INDEX, AU_NAMES, MIRRORED_SLOTS, NUM_AUS, AUVector
from synfer.data.au_table import AUScores, write_au_table
from synfer.errors import ConfigError, DatasetError, ModelLoadError
from synfer.train.diffusion import AdapterConfig, BuildModelConfig, LoraConfig, TrainOptions, build_model, train_adapter, train_lora
from synfer.train.diffusion.adapter import au_intensities
from synfer.train.diffusion.data import TrainingExamples
from synfer.train.diffusion.objectives import dropout_masks, noisy_intensities

from helpers import (
    FAST_TRAINING,
    captioned_folder,
    one_thread,  # noqa: F401 (autouse: one intra-op thread for this module)
    tiny_base_folder,
)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_base_folder(tmp_path_factory.mktemp("base") / "sd")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = captioned_folder(tmp_path_factory.mktemp("data") / "faces", n=8)
    from synfer.data.captions import open_captioned

    ids = open_captioned(root).ids
    scores = np.zeros((len(ids), NUM_AUS), np.float32)
    scores[::2, AU_INDEX["AU12"]] = 4.0  # every other face smiles, the others frown on one side
    scores[1::2, AU_INDEX["L12"]] = 3.0
    write_au_table(root / "aus.parquet", AUScores(ids, scores, np.ones_like(scores, bool)))
    return root


@pytest.fixture(scope="module")
def lora_run(base, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    return train_lora(LoraConfig(base=str(base), data=str(data), out=str(out), max_train_steps=2, learning_rate=1e-3, **FAST_TRAINING)).out


def adapter(base, data, out, **options):
    defaults = dict(hidden_dim=32, validation_aus=("6,12",), **FAST_TRAINING)
    return AdapterConfig(base=str(base), data=str(data), out=str(out), **{**defaults, **options})


def test_condition_dropout_is_exclusive_at_the_asked_rates():
    generator = torch.Generator().manual_seed(0)
    n = 200_000
    text, aus = dropout_masks(n, generator, "cpu", 0.05, 0.10, 0.02)
    only_text, only_aus, both = (text & ~aus).float().mean(), (aus & ~text).float().mean(), (text & aus).float().mean()
    for measured, asked in ((only_text, 0.05), (only_aus, 0.10), (both, 0.02)):
        assert abs(float(measured) - asked) < 4 * (asked * (1 - asked) / n) ** 0.5 + 1e-4


def test_au_noise_moves_present_aus_only_and_stays_in_range():
    aus = torch.zeros(1000, NUM_AUS)
    aus[:, AU_INDEX["AU12"]] = 2.5
    aus[:, AU_INDEX["AU6"]] = 4.9
    known = torch.ones_like(aus, dtype=torch.bool)
    known[:, AU_INDEX["AU4"]] = False
    noisy = noisy_intensities(aus, known, 0.2, torch.Generator().manual_seed(1))
    assert torch.equal(noisy[:, AU_INDEX["AU1"]], aus[:, AU_INDEX["AU1"]])  # absent stays absent
    assert 0.18 < float((noisy[:, AU_INDEX["AU12"]] - 2.5).std()) < 0.22
    assert float(noisy[:, AU_INDEX["AU6"]].max()) == 5.0  # clipped to the scale


def test_mirrored_slots_swap_left_and_right_and_the_flip_uses_them(data):
    assert [AU_NAMES[s] for s in MIRRORED_SLOTS][AU_INDEX["L12"]] == "R12"
    assert [AU_NAMES[s] for s in MIRRORED_SLOTS][AU_INDEX["AU12"]] == "AU12"
    assert all(MIRRORED_SLOTS[MIRRORED_SLOTS[i]] == i for i in range(NUM_AUS))
    from synfer.data.captions import open_captioned

    dataset = open_captioned(data)
    values = np.zeros((len(dataset), NUM_AUS), np.float32)
    values[:, AU_INDEX["L12"]] = 3.0
    known = np.ones_like(values, bool)
    known[:, AU_INDEX["L14"]] = False
    examples = TrainingExamples(dataset, range(len(dataset)), 32, seed=0, random_flip=True, fingerprint="x", aus=values, known=known)
    flips = [examples.flipped(0, j) for j in range(len(dataset))]
    assert any(flips) and not all(flips)
    for j, flipped in enumerate(flips):
        item = examples[(0, j)]
        side = "R" if flipped else "L"
        assert item["aus"][AU_INDEX[f"{side}12"]] == 3.0 and item["aus"][AU_INDEX[f"{'L' if flipped else 'R'}12"]] == 0.0
        assert not item["known"][AU_INDEX[f"{side}14"]]
        plain = TrainingExamples(dataset, range(len(dataset)), 32, seed=0, random_flip=False, fingerprint="x")[(0, j)]
        expected = plain["pixel_values"].flip(-1) if flipped else plain["pixel_values"]
        assert torch.equal(item["pixel_values"], expected)


def test_au_policy_turns_scores_into_intensities():
    scores = np.zeros((2, NUM_AUS), np.float32)
    scores[0, 0], scores[1, 0] = 0.7, 0.3
    probabilities = AUScores(["a.png", "b.png"], scores, np.ones_like(scores, bool), kind="probability", suggested_threshold=0.6)
    values, _, policy = au_intensities(probabilities, "auto", None, 3.0)
    assert policy["policy"] == "threshold" and policy["threshold"] == 0.6 and values[:, 0].tolist() == [3.0, 0.0]
    values, _, policy = au_intensities(probabilities, "scale", None, 3.0)
    assert np.allclose(values[:, 0], [3.5, 1.5]) and policy["factor"] == 5.0
    with pytest.raises(ConfigError, match="needs an intensity table"):
        au_intensities(probabilities, "intensity", None, 3.0)
    intensities = AUScores(["a.png", "b.png"], scores * 5, np.ones_like(scores, bool))
    values, _, policy = au_intensities(intensities, "auto", None, 3.0)
    assert policy["policy"] == "intensity" and np.allclose(values[:, 0], [3.5, 1.5])


def test_the_frozen_unet_gets_no_gradient_and_stays_byte_identical(base, data):
    from synfer.data.captions import open_captioned
    from synfer.models.au_adapter import AUAdapter
    from synfer.train.diffusion.common import empty_text
    from synfer.train.diffusion.components import load_component, noise_scheduler
    from synfer.train.diffusion.data import Collate
    from synfer.train.diffusion.loop import DiffusionTrainer, StageParts, make_training_accelerator
    from synfer.train.diffusion.objectives import AdapterTask

    config = TrainOptions(out="unused", learning_rate=1e-2, adam_weight_decay=0.0, **FAST_TRAINING)
    unet = load_component(base, "unet").requires_grad_(False)
    vae = load_component(base, "vae").requires_grad_(False)
    text_encoder, tokenizer = load_component(base, "text_encoder").requires_grad_(False), load_component(base, "tokenizer")
    frozen = {k: v.clone() for k, v in unet.state_dict().items()}
    au_adapter = AUAdapter.from_unet(unet, hidden_dim=32)
    before = {k: v.clone() for k, v in au_adapter.state_dict().items()}
    task = AdapterTask(unet, au_adapter, vae.config, noise_scheduler(base), vae=vae, text_encoder=text_encoder,
                       empty_text=empty_text(text_encoder, tokenizer, "cpu"), drop_text=0.0, drop_aus=0.5, drop_both=0.0)
    dataset = open_captioned(data)
    values = np.full((len(dataset), NUM_AUS), 2.0, np.float32)
    examples = TrainingExamples(dataset, range(len(dataset)), 32, seed=0, random_flip=False, fingerprint="x", aus=values,
                                known=np.ones_like(values, bool))
    parts = StageParts("test", task, examples, Collate(tokenizer))
    trainer = DiffusionTrainer(config, parts, make_training_accelerator(config, None, "no"), None)
    batch = Collate(tokenizer)([examples[(0, j)] for j in range(8)])
    for step in range(2):
        trainer.state.step = step
        trainer.train_step(batch)
    assert all(p.grad is None for p in unet.parameters())
    assert all(torch.equal(frozen[k], v) for k, v in unet.state_dict().items())
    # Every adapter weight moved (no weight decay: only gradients move them), the null tokens too: what dropped
    # AUs become is learnt, not fixed.
    assert [k for k, v in au_adapter.state_dict().items() if torch.equal(before[k], v)] == []
    au_adapter.detach()


def test_train_adapter_then_build_a_model_whose_aus_act(base, data, lora_run, tmp_path):
    from synfer.pipelines.loading import load_pipeline
    from synfer.train.diffusion.components import apply_unet_source, load_component, resolve_unet_source

    result = train_adapter(adapter(base, data, tmp_path / "adapter", lora=str(lora_run), max_train_steps=4, learning_rate=3e-3,
                                   random_flip=True, drop_aus=0.2, cache_latents=True, cache_dir=str(tmp_path / "cache")))
    assert result.images == 8 and result.left_out == 0
    assert (result.out / "validation" / "step-00000004.png").is_file()
    built = build_model(BuildModelConfig(base=str(base), lora=str(lora_run), adapter=str(result.out), out=str(tmp_path / "model")))
    inputs = built.training["inputs"]
    assert inputs["lora"]["sha256"] and inputs["adapter"]["sha256"] and inputs["au_table"]["sha256"] and inputs["base"]["unet"]
    assert built.training["data"]["train_adapter"]["with_aus"] == 8

    pipe = load_pipeline(str(built.out), device="cpu", dtype="float32")

    def image(**kwargs):
        return pipe("a red face", num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).images[0]

    smile, frown, off = image(aus="AU12:5"), image(aus="L12:5,AU4:4"), image(aus="AU12:5", au_scale=0)
    assert np.abs(smile - frown).max() > 1e-3  # the AUs change the image ...
    fused = apply_unet_source(load_component(base, "unet"), resolve_unet_source(lora_run), base)
    pipe.unload_au_adapter()
    pipe.unet.load_state_dict(fused.state_dict())
    bare = image()
    np.testing.assert_array_equal(off, bare)  # ... and au_scale=0 is the LoRA-fused UNet without the adapter, exactly
    assert np.abs(smile - bare).max() > 1e-3


def test_bad_adapter_input_is_refused_in_one_line(base, data, lora_run, tmp_path):
    from synfer.models.au_adapter import AUAdapter
    from synfer.models.tiny import tiny_components

    other = np.zeros((2, NUM_AUS), np.float32)
    write_au_table(tmp_path / "other.parquet", AUScores(["x/1.png", "x/2.png"], other, np.ones_like(other, bool)))
    with pytest.raises(DatasetError, match=r"matches none of the 8 images .*0 of its 2 ids matched"):
        train_adapter(adapter(base, data, tmp_path / "a", aus=str(tmp_path / "other.parquet")))
    empty = captioned_folder(tmp_path / "silent", n=4)
    (empty / "metadata.jsonl").write_text("".join(line.replace('"a ', '"').split('"text": ')[0] + '"text": ""}\n'
                                                  for line in (empty / "metadata.jsonl").read_text().splitlines()))
    with pytest.raises(DatasetError, match="no captions"):
        train_adapter(adapter(base, empty, tmp_path / "b", aus=str(data / "aus.parquet")))
    (empty / "metadata.jsonl").unlink()
    with pytest.raises(DatasetError, match="no captions"):
        train_adapter(adapter(base, empty, tmp_path / "b", aus=str(data / "aus.parquet")))
    with pytest.raises(ModelLoadError, match="not a Stable-Diffusion-shaped folder"):
        train_adapter(adapter(data, data, tmp_path / "c"))
    # An adapter built for another UNet, and a LoRA made for another UNet.
    small = tiny_components()["unet"].__class__(block_out_channels=(16, 32), layers_per_block=1, cross_attention_dim=32,
                                                 norm_num_groups=8, attention_head_dim=4,
                                                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    AUAdapter.from_unet(small, hidden_dim=16).save_pretrained(tmp_path / "foreign")
    with pytest.raises(ConfigError, match="does not fit this UNet"):
        train_adapter(adapter(base, data, tmp_path / "d", init_adapter=str(tmp_path / "foreign")))
    from safetensors.torch import load_file, save_file

    weights = load_file(str(lora_run / "pytorch_lora_weights.safetensors"))
    save_file({k: torch.cat([v, v], dim=1) if "lora.down" in k else v for k, v in weights.items()}, str(tmp_path / "wide.safetensors"))
    with pytest.raises(ModelLoadError, match="made for another UNet"):
        train_adapter(adapter(base, data, tmp_path / "e", lora=str(tmp_path / "wide.safetensors")))
    with pytest.raises(ConfigError, match="must sum to less than 1"):
        adapter(base, data, tmp_path / "f", drop_text=0.5, drop_aus=0.5)
    with pytest.raises(ModelLoadError, match="holds no AU adapter"):
        build_model(BuildModelConfig(base=str(base), adapter=str(data), out=str(tmp_path / "g")))
    assert AUVector.parse("6,12")  # the validation AU sets are parsed by the config too
    with pytest.raises(Exception, match="unknown AU"):
        adapter(base, data, tmp_path / "h", validation_aus=("AU99",))
