"""The train-adapter step against a plain diffusers-style step, and ``--cache-latents`` against encoding each step.

Three ways to train the same AU adapter on the same frozen UNet, VAE and text encoder, on the same
batch, timed step by step in interleaved rounds (median kept), so that machine load affects all
alike:

* ``synfer``: one step of ``synfer train-adapter`` (``synfer.train.diffusion.adapter.build_adapter_trainer``
  then ``DiffusionTrainer.train_step``): accelerate's accumulation context, exclusive condition
  dropout, AU noise, the per-step generator, gradient clipping over the parameter list, AdamW,
  the scheduler; images and captions encoded by the frozen VAE and text encoder at every step;
* ``plain``: the step as diffusers' example scripts write it around the same modules: VAE and text
  encoder under no_grad, noise, ``add_noise``, the UNet with the AU tokens, MSE, backward, AdamW;
* ``synfer-cached``: the synfer step with ``--cache-latents``: VAE moments and text embeddings read
  from safetensors shards instead of encoded.

``overhead`` = synfer / plain (target <= 1.15); ``cache_speedup`` = synfer / synfer-cached. Peak
memory is the peak RSS (CPU) or peak allocated memory (CUDA) of one step above what was held before
it (the models), in a fresh process per variant, on its first step (optimizer state included).
``--preset tiny`` is the random tiny model at 32 px; ``--preset sd15`` is Stable Diffusion 1.5's
real UNet, VAE and text encoder shapes (random weights, about 4 GB in float32) at a reduced
resolution (``--sd15-resolution``, 128 px by default: 16x16 latents) so that a CPU step takes seconds.

    python benchmarks/bench_train_stages.py [--preset tiny sd15] [--device cpu] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F
from _memory import peak_memory_mb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_OVERHEAD = 1.15


class Images:
    """An in-memory caption dataset of random images (what the readers would hand the trainer)."""

    def __init__(self, n: int, size: int, seed: int = 0):
        from PIL import Image

        from synfer.data.captions.base import CaptionedImage

        rng = np.random.default_rng(seed)
        self.ids = [f"faces/{i:04d}.png" for i in range(n)]
        self.captions = [f"a close-up photo of a young woman smiling happily, number {i}" for i in range(n)]
        self._images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]
        self._item = CaptionedImage

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        return self._item(self.ids[i], self._images[i], self.captions[i])

    def fingerprint(self) -> str:
        return f"bench-{len(self)}-{self._images[0].size[0]}"


def components(preset: str):
    from diffusers import DDPMScheduler

    from synfer.models.tiny import tiny_components, tiny_tokenizer

    if preset == "tiny":
        parts = tiny_components(0)
        parts.pop("au_adapter")
        scheduler = DDPMScheduler.from_config(parts["scheduler"].config)
        return parts["unet"], parts["vae"], parts["text_encoder"], parts["tokenizer"], scheduler
    from synfer.models.sd15 import sd15_text_encoder, sd15_unet, sd15_vae
    from synfer.train.diffusion.presets import SD_SCHEDULER

    torch.manual_seed(0)
    scheduler = DDPMScheduler.from_config({k: v for k, v in SD_SCHEDULER.items() if not k.startswith("_")})
    return sd15_unet("cpu"), sd15_vae("cpu"), sd15_text_encoder("cpu"), tiny_tokenizer(), scheduler


def plain_step(unet, adapter, vae, text_encoder, scheduler, optimizer, batch, generator):
    """One training step written as diffusers' example scripts write it (the baseline)."""
    with torch.no_grad():
        latents = vae.encode(batch["pixel_values"]).latent_dist.sample(generator) * vae.config.scaling_factor
        text = text_encoder(batch["input_ids"])[0]
    noise = torch.randn(latents.shape, generator=generator, device=latents.device)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator, device=latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    tokens = adapter(batch["aus"], batch["known"])
    prediction = unet(noisy, timesteps, encoder_hidden_states=(text, tokens)).sample
    loss = F.mse_loss(prediction.float(), noise.float())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def setup(preset: str, args, device: torch.device):
    """The shared modules and the three variants' step functions, ready to run (nothing run yet)."""
    from synfer.aus import NUM_AUS
    from synfer.models.au_adapter import AUAdapter
    from synfer.train.diffusion import AdapterConfig
    from synfer.train.diffusion.adapter import build_adapter_trainer
    from synfer.train.diffusion.data import TrainingExamples
    from synfer.train.diffusion.loop import make_training_accelerator

    resolution = 32 if preset == "tiny" else args.sd15_resolution
    batch_size = args.batch if preset == "tiny" else args.sd15_batch
    rounds = args.rounds if preset == "tiny" else args.sd15_rounds
    started = time.perf_counter()
    unet, vae, text_encoder, tokenizer, scheduler = components(preset)
    torch.manual_seed(0)
    adapter = AUAdapter.from_unet(unet, hidden_dim=64 if preset == "tiny" else 1024)
    build_seconds = time.perf_counter() - started
    data = Images(batch_size, resolution)
    rng = np.random.default_rng(1)
    aus = rng.uniform(0, 5, (batch_size, NUM_AUS)).astype(np.float32)
    known = np.ones_like(aus, bool)
    cache = args.cache_dir
    trainers = {}
    for variant, cached in (("synfer", False), ("synfer-cached", True)):
        config = AdapterConfig(base="unused", data="in-memory", out="unused", batch_size=batch_size, cache_latents=cached,
                               cache_dir=cache, cpu=device.type == "cpu", mixed_precision="no")
        examples = TrainingExamples(data, range(batch_size), resolution, seed=0, random_flip=False, fingerprint=data.fingerprint(),
                                    aus=aus, known=known)
        trainer = build_adapter_trainer(config, unet=unet, adapter=adapter, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                        noise_scheduler=scheduler, examples=examples, mixed_precision="no",
                                        accelerator=make_training_accelerator(config, None, "no"))
        batch = trainer.parts.collate([examples[(0, j)] for j in range(batch_size)])
        trainers[variant] = (trainer, {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})
    plain_batch = trainers["synfer"][1]
    optimizer = torch.optim.AdamW([p for p in adapter.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator(device=device).manual_seed(0)

    def run(variant: str) -> None:
        if variant == "plain":
            plain_step(unet, adapter, vae, text_encoder, scheduler, optimizer, plain_batch, generator)
        else:
            trainer, batch = trainers[variant]
            trainer.train_step(batch)
            trainer.state.step += 1
        if device.type == "cuda":
            torch.cuda.synchronize()

    info = {"resolution": resolution, "batch": batch_size, "rounds": rounds, "build_seconds": build_seconds,
            "unet_parameters": sum(p.numel() for p in unet.parameters()),
            "adapter_parameters": sum(p.numel() for p in adapter.parameters())}
    return run, info


def peak_in_child(preset: str, variant: str, args) -> float:
    """Peak memory of ``variant``'s first step, in a fresh process (nothing else ran there to leave memory behind)."""
    command = [sys.executable, __file__, "--memory-of", f"{preset}:{variant}", "--device", args.device,
               "--sd15-resolution", str(args.sd15_resolution), "--sd15-batch", str(args.sd15_batch), "--batch", str(args.batch)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


VARIANTS = ("synfer", "plain", "synfer-cached")


def measure(preset: str, args, device: torch.device) -> list[dict]:
    run, info = setup(preset, args, device)
    resolution, batch_size, rounds = info["resolution"], info["batch"], info["rounds"]
    variants = VARIANTS
    for variant in variants:  # warm-up
        run(variant)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(rounds):
        for variant in variants:
            start = time.perf_counter()
            run(variant)
            times[variant].append(time.perf_counter() - start)
    peaks = {variant: peak_in_child(preset, variant, args) if args.memory else float("nan") for variant in variants}
    medians = {v: statistics.median(t) for v, t in times.items()}
    common = {"bench": "train_stages", "preset": preset, "resolution": resolution, "batch": batch_size, "device": str(device),
              "threads": torch.get_num_threads()}
    rows = [{**common, "variant": v, "seconds_per_step": round(medians[v], 4), "steps": len(times[v]),
             "images_per_second": round(batch_size / medians[v], 2), "peak_memory_mb": round(peaks[v], 1)} for v in variants]
    rows.append({**common, "variant": "summary", "overhead": round(medians["synfer"] / medians["plain"], 3),
                 "target_overhead": TARGET_OVERHEAD, "cache_speedup": round(medians["synfer"] / medians["synfer-cached"], 3),
                 "unet_parameters": info["unet_parameters"], "adapter_parameters": info["adapter_parameters"],
                 "build_seconds": round(info["build_seconds"], 1)})
    return rows


def quiet() -> None:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", nargs="+", default=["tiny", "sd15"], choices=["tiny", "sd15"])
    parser.add_argument("--batch", type=int, default=8, help="tiny preset batch size")
    parser.add_argument("--rounds", type=int, default=15, help="tiny preset timed rounds")
    parser.add_argument("--sd15-resolution", type=int, default=128)
    parser.add_argument("--sd15-batch", type=int, default=2)
    parser.add_argument("--sd15-rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory child processes")
    parser.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)  # PRESET:VARIANT, in a child process
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-train-cache-") as cache:
        args.cache_dir = cache
        run_benchmark(args)


def run_benchmark(args) -> None:
    if args.memory_of:
        preset, variant = args.memory_of.split(":")
        quiet()
        run, _ = setup(preset, args, torch.device(args.device))
        print(peak_memory_mb(lambda: run(variant), args.device))
        return
    quiet()
    device = torch.device(args.device)
    print(json.dumps({"bench": "train_stages", "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                      "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device)}), flush=True)
    for preset in args.preset:
        for row in measure(preset, args, device):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
