"""The diffusion training loop and train-lora on the tiny model: learning, clipping, exact resume, the LoRA file, the cache."""

import json

import numpy as np
import pytest
import torch

from synfer.errors import ConfigError, DatasetError, ModelLoadError
from synfer.train.diffusion import LoraConfig, TrainOptions, train_lora
from synfer.train.diffusion.data import BatchPlan, Collate, TrainingExamples, epoch_order, prepare_image
from synfer.train.diffusion.loop import DiffusionTrainer, StageParts, make_training_accelerator
from synfer.train.diffusion.objectives import UNetTask

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
    return captioned_folder(tmp_path_factory.mktemp("data") / "faces", n=8)


def lora(base, data, out, **options):
    return LoraConfig(base=str(base), data=str(data), out=str(out), **{**FAST_TRAINING, **options})


def lora_state(path):
    from safetensors.torch import load_file

    return load_file(str(path))


# -- the loop, on a task built by hand -------------------------------------------------------------

def unet_trainer(base, data, **options):
    from synfer.data.captions import open_captioned
    from synfer.train.diffusion.common import empty_text
    from synfer.train.diffusion.components import load_component, noise_scheduler

    config = TrainOptions(out="unused", **{**FAST_TRAINING, **options})
    accelerator = make_training_accelerator(config, None, "no")
    unet, vae = load_component(base, "unet"), load_component(base, "vae").requires_grad_(False)
    text_encoder, tokenizer = load_component(base, "text_encoder").requires_grad_(False), load_component(base, "tokenizer")
    task = UNetTask(unet, vae.config, noise_scheduler(base), vae=vae, text_encoder=text_encoder,
                    empty_text=empty_text(text_encoder, tokenizer, "cpu"))
    dataset = open_captioned(data)
    examples = TrainingExamples(dataset, range(len(dataset)), 32, seed=0, random_flip=False, fingerprint="x")
    parts = StageParts("test", task, examples, Collate(tokenizer))
    return DiffusionTrainer(config, parts, accelerator, None), examples, Collate(tokenizer)


def test_loss_falls_on_a_fixed_batch(base, data):
    trainer, examples, collate = unet_trainer(base, data, learning_rate=1e-3)
    batch = collate([examples[(0, j)] for j in range(4)])
    # The step counter stays at 0, so every call draws the same noise and timesteps: only the weights change.
    losses = [float(trainer.train_step(batch)[0]) for _ in range(25)]
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3]), losses


def test_gradient_clipping_is_applied_at_every_step(base, data):
    limit = 1e-3
    trainer, examples, collate = unet_trainer(base, data, max_grad_norm=limit)
    seen = []

    def measure(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    trainer.optimizer.optimizer.register_step_pre_hook(measure)
    batch = collate([examples[(0, j)] for j in range(4)])
    before = []
    for _ in range(3):
        _, logs = trainer.train_step(batch)
        before.append(float(logs["grad_norm"]))
    assert len(seen) == 3
    assert min(before) > 10 * limit  # clipping had something to do ...
    assert max(seen) <= limit * 1.0001  # ... and the optimizer stepped with the clipped gradients, every time


def test_batch_plan_splits_processes_and_skips_exactly():
    plans = [BatchPlan(40, 4, processes=2, process_index=r, accumulation=2, seed=3) for r in range(2)]
    assert plans[0].steps_per_epoch == 2 and plans[0].micro_batches_per_epoch == 4
    together = [j for b in range(4) for plan in plans for _, j in plan.micro_batches(1)[b]]
    assert together == list(epoch_order(40, 3, 1)[:32])  # processes take disjoint slices of the epoch's order
    assert plans[1].micro_batches(1, start=2) == plans[1].micro_batches(1)[2:]
    assert not np.array_equal(epoch_order(40, 3, 0), epoch_order(40, 3, 1))
    with pytest.raises(DatasetError, match="fewer than one optimizer step"):
        BatchPlan(7, 4, accumulation=2).check()


def test_prepare_image_resizes_the_shorter_side_and_crops_the_centre():
    from PIL import Image

    array = np.zeros((40, 80, 3), np.uint8)
    array[:, 20:60] = 255  # a white band in the middle of a wide image
    tensor = prepare_image(Image.fromarray(array), 20)
    assert tensor.shape == (3, 20, 20) and tensor.min() >= -1 and tensor.max() <= 1
    assert float(tensor[:, :, 5:15].mean()) > 0.95  # the centre crop keeps the band
    flipped = prepare_image(Image.fromarray(array[:, ::-1].copy()), 20, flip=True)
    assert torch.allclose(flipped, tensor, atol=1e-6)


# -- train-lora ------------------------------------------------------------------------------------

class StopAt:
    """A reporter that interrupts the run once ``step`` optimizer steps are done (as Ctrl-C would)."""

    def __init__(self, step):
        self.step = step

    def log(self, message):
        pass

    def progress(self, description, total, completed=0, unit="img", show=True):
        from contextlib import contextmanager

        @contextmanager
        def bar():
            done = [completed]

            def advance(k=1):
                done[0] += k
                if unit == "step" and done[0] >= self.step:
                    raise KeyboardInterrupt

            yield advance

        return bar()


def test_resume_ends_on_the_weights_of_an_uninterrupted_run(base, data, tmp_path):
    options = dict(max_train_steps=5, checkpoint_every=2, gradient_accumulation_steps=2, batch_size=2, ema_decay=0.9,
                   lr_scheduler="cosine", lr_warmup_steps=2, random_flip=True, learning_rate=1e-3, log_every=3)
    whole = train_lora(lora(base, data, tmp_path / "whole", **options))
    with pytest.raises(KeyboardInterrupt):
        train_lora(lora(base, data, tmp_path / "cut", **options), StopAt(3))  # checkpoints at step 2, dies at 3
    assert not (tmp_path / "cut" / "pytorch_lora_weights.safetensors").exists()
    assert [p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()] == ["checkpoint-2"]
    with pytest.raises(ConfigError, match="pass --resume"):
        train_lora(lora(base, data, tmp_path / "cut", **options))
    with pytest.raises(DatasetError, match=r"differs in: config\.learning_rate"):
        train_lora(lora(base, data, tmp_path / "cut", resume=True, **{**options, "learning_rate": 5e-4}))
    resumed = train_lora(lora(base, data, tmp_path / "cut", resume=True, **options))
    assert resumed.steps == whole.steps == 5
    expected, got = lora_state(whole.weights), lora_state(resumed.weights)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    # Training moved the weights away from a fresh LoRA, so equality above is not that of two untrained LoRAs.
    assert any(float(v.abs().max()) > 0 for k, v in got.items() if "lora.up" in k)
    rows = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [3, 5]  # the row logged before the cut is not doubled ...
    uninterrupted = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == [r["loss"] for r in uninterrupted]  # ... and step 3's mean spans the cut

    with pytest.raises(DatasetError, match=r"differs in: config\.rank"):
        train_lora(lora(base, data, tmp_path / "cut", resume=True, **{**options, "rank": 8}))
    again = train_lora(lora(base, data, tmp_path / "cut", resume=True, **options))
    assert again.finished_before


def test_saved_lora_loads_into_diffusers_and_changes_its_output(base, data, tmp_path):
    from diffusers import StableDiffusionPipeline

    result = train_lora(lora(base, data, tmp_path / "run", max_train_steps=3, learning_rate=5e-3, merge=True, rank=2,
                             checkpoint_every=1, keep_checkpoints=1))
    assert result.weights.name == "pytorch_lora_weights.safetensors"
    assert [p.name for p in (result.out / "checkpoints").iterdir()] == ["checkpoint-2"]  # the limit holds

    def image(pipe):
        pipe.set_progress_bar_config(disable=True)
        return pipe("a red face", num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images[0]

    pipe = StableDiffusionPipeline.from_pretrained(str(base), safety_checker=None, requires_safety_checker=False)
    plain = image(pipe)
    pipe.load_lora_weights(str(result.out))
    with_lora = image(pipe)
    assert np.abs(with_lora - plain).max() > 1e-3
    merged = StableDiffusionPipeline.from_pretrained(str(result.pipeline), safety_checker=None, requires_safety_checker=False)
    np.testing.assert_allclose(image(merged), with_lora, atol=2e-3)  # --merge fuses exactly what the LoRA file holds
    assert (tmp_path / "run" / "validation" / "step-00000003.png").is_file()


def test_cache_latents_trains_like_encoding_each_step_and_is_reused(base, data, tmp_path):
    options = dict(max_train_steps=2, random_flip=True, learning_rate=1e-3)
    plain = train_lora(lora(base, data, tmp_path / "plain", **options))
    cached = train_lora(lora(base, data, tmp_path / "cached", cache_latents=True, cache_dir=str(tmp_path / "cache"), **options))
    assert cached.encoded_latents == 16  # 8 images, each also mirrored
    a, b = lora_state(plain.weights), lora_state(cached.weights)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    again = train_lora(lora(base, data, tmp_path / "again", cache_latents=True, cache_dir=str(tmp_path / "cache"), **options))
    assert again.encoded_latents == 0


def test_full_fine_tuning_from_a_config_writes_a_unet(base, data, tmp_path):
    unet_config = json.loads((base / "unet" / "config.json").read_text())
    (tmp_path / "unet.json").write_text(json.dumps({**unet_config, "block_out_channels": [16, 32], "norm_num_groups": 8}))
    result = train_lora(lora(base, data, tmp_path / "run", max_train_steps=1, full=True, init=str(tmp_path / "unet.json")))
    assert json.loads((result.weights / "config.json").read_text())["block_out_channels"] == [16, 32]
    record = json.loads((tmp_path / "run" / "training_config.json").read_text())
    assert record["resolved"]["caption_dropout"] == 0.1 and record["resolved"]["from_scratch"]


def test_bad_input_is_refused_in_one_line(base, data, tmp_path):
    with pytest.raises(ModelLoadError, match="not a Stable-Diffusion-shaped folder"):
        train_lora(lora(data, data, tmp_path / "a"))
    with pytest.raises(ConfigError, match="needs the tensorboard package"):
        lora(base, data, tmp_path / "b", report_to="tensorboard")
    with pytest.raises(ConfigError, match="add --full"):
        lora(base, data, tmp_path / "c", init=str(base / "unet"))
    with pytest.raises(ConfigError, match="matched no layer"):
        train_lora(lora(base, data, tmp_path / "d", target_modules=("nothing_here",)))
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "other.txt").write_text("not a run")
    with pytest.raises(ConfigError, match="not a synfer training run"):
        train_lora(lora(base, data, tmp_path / "e"))
