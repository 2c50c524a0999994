"""Cost ratios at Stable Diffusion 1.5's real shapes on the CPU: random weights, reduced resolution, few steps.

The SD1.5 UNet, VAE and CLIP-L text encoder are built from their configs (``synfer.models.sd15``,
about 4 GB in float32) with random weights; a pass costs the same whatever the weights. Everything is
measured in one process, each comparison's variants interleaved round by round and the minimum
kept; every line names the resolution, steps, batch and torch threads it ran with. Sections:

- ``adapter``: one UNet evaluation (batch 2: one CFG step of one image) bare against with the AU
  adapter; then ``SynFERPipeline`` (adapter on, au_scale 1) against diffusers' ``StableDiffusionPipeline``
  on the same components (target <= 1.05), with the FLOP ratio from ``synfer.pipelines.cost``.
- ``guidance``: paper-like and cheap semantic guidance (modes of ``bench_guidance.py``; ResNet-18 and
  TAESD architectures) against unguided sampling (cheap target <= 1.3), with the FLOP ratios.
- ``feranno``: FERAnno (VAE encode + one UNet pass with attention recording + head) per image against a
  ResNet-50 forward at 224 px.
- ``train`` (last): the train-adapter step (``build_adapter_trainer(...).train_step``, UNet frozen) against
  a plain UNet training step (every UNet weight trained with AdamW, as diffusers' example scripts do)
  at ``--train-resolution``.
- ``levers``: channels-last (UNet, VAE decode), bfloat16 VAE decoding, batch size per image, image
  encoding per format, the writer's thread pool in the sampling loop (the sampler stood in by a wait
  as long as a GPU's batch, which holds no GIL, as CUDA does not), SDPA in every attention layer,
  torch.compile (tiny preset; SD1.5 with ``--compile-sd15``).
- ``schedulers``: seconds per image with DPM-Solver++ at 10/15/20/25 steps against DDIM at 50, SD1.5
  at ``--scheduler-resolution`` and the tiny preset.

    python benchmarks/bench_sd15.py [--resolution 256] [--steps 4] [--repeats 4] [--threads 2] [--sections adapter guidance ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from _sd15 import (
    Pipelines,
    best,
    guidance_for,
    guidance_models,
    hardware,
    interleaved,
    quiet,
    ratio,
    sd15_components,
    summary,
    train_steps,
)

TARGET_ADAPTER_RATIO = 1.05
TARGET_CHEAP_RATIO = 1.3
SECTIONS = ("adapter", "guidance", "feranno", "levers", "schedulers", "train")
DPM_STEPS = (10, 15, 20, 25)


def emit(record: dict, common: dict) -> None:
    print(json.dumps({"bench": "sd15", **common, **record}), flush=True)


def flop_counts(resolution: int, steps: int, guidance: str | None = None) -> dict:
    """Exact FLOPs per image from synfer.pipelines.cost on the SD1.5 architecture (meta device)."""
    from synfer.pipelines.cost import CostConfig, guidance_architecture, measure_cost, model_architecture

    pipe = model_architecture("sd15")
    settings = {}
    if guidance is not None:
        from _sd15 import GUIDANCE_MODES

        window, every, decoder, reuse = GUIDANCE_MODES[guidance]
        settings["guidance"] = guidance_architecture(pipe, "resnet18", window=window, every=every, decoder=decoder, reuse_prediction=reuse)
    report = measure_cost(pipe, CostConfig(height=resolution, width=resolution, steps=steps, **settings), model="sd15")
    return {"per_image": report.per_image, "unet_eval": report.unet_eval, "unet_eval_bare": report.unet_eval_bare,
            "guided_steps": report.guided_steps}


# -- sections ---------------------------------------------------------------------------------------
def cross_attention_layer_overhead(queries: int, channels: int, rounds: int = 15, calls: int = 10) -> dict:
    """One SD1.5 cross-attention layer (batch 2, 77 text tokens, 4 AU tokens): the AU processor against diffusers'.

    CPU time per call, min over interleaved rounds: the layer is small, so its own cost shows here while
    it is lost in the UNet's noise.
    """
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    from synfer.models.au_adapter import AUAdapter, AUAttnProcessor

    torch.manual_seed(0)
    layer = Attention(channels, cross_attention_dim=768, heads=8, dim_head=channels // 8).eval()
    state = AUAdapter()._state  # a fresh adapter's shared state: scale 1, sdpa
    processor = AUAttnProcessor(torch.nn.Linear(768, channels, bias=False), torch.nn.Linear(768, channels, bias=False), state)
    hidden, text, tokens = torch.randn(2, queries, channels), torch.randn(2, 77, 768), torch.randn(2, 4, 768)
    variants = {"bare": (AttnProcessor2_0(), text), "adapter": (processor, (text, tokens))}
    best_times = {name: float("inf") for name in variants}
    with torch.no_grad():
        for round_ in range(rounds + 1):
            for name, (proc, context) in variants.items():
                start = time.process_time()
                for _ in range(calls):
                    proc(layer, hidden, context)
                if round_:  # the first round warms up
                    best_times[name] = min(best_times[name], (time.process_time() - start) / calls)
    return {"queries": queries, "channels": channels, "bare_ms": round(1000 * best_times["bare"], 3),
            "adapter_ms": round(1000 * best_times["adapter"], 3), "overhead": round(best_times["adapter"] / best_times["bare"] - 1, 3)}


def section_adapter(pipes: Pipelines, args, common: dict) -> None:
    size = args.resolution
    for queries, channels in ((1024, 320), (4096, 320)):  # SD1.5's widest cross-attention layers at 256 and 512 px
        emit({"section": "adapter", "what": "cross_attention_layer", "batch": 2, "timer": "cpu time",
              **cross_attention_layer_overhead(queries, channels)}, common)
    unet = interleaved({"bare": pipes.unet_eval(2, size, False), "adapter": pipes.unet_eval(2, size, True)}, args.repeats)
    flops = flop_counts(size, args.steps)
    emit({"section": "adapter", "what": "unet_eval", "batch": 2, "bare": summary(unet["bare"]), "adapter": summary(unet["adapter"]),
          "time_ratio": ratio(unet, "adapter", "bare"), "flop_ratio": round(flops["unet_eval"] / flops["unet_eval_bare"], 5)}, common)
    calls = {variant: (lambda v=variant: pipes.sample(v, args.batch, args.steps, size)) for variant in ("sd", "synfer")}
    times = interleaved(calls, args.repeats)
    value = ratio(times, "synfer", "sd")
    emit({"section": "adapter", "what": "pipeline", "batch": args.batch, "steps": args.steps, "sd": summary(times["sd"]),
          "synfer": summary(times["synfer"]), "time_ratio": value, "target_time_ratio": TARGET_ADAPTER_RATIO,
          "meets_target": value <= TARGET_ADAPTER_RATIO}, common)


def section_guidance(pipes: Pipelines, args, common: dict) -> None:
    size, steps, batch = args.resolution, args.guidance_steps, args.batch
    classifier, tiny = guidance_models(pipes)
    modes = ("unguided", "paper", "cheap")
    calls = {
        mode: (lambda m=mode: pipes.sample("synfer", batch, steps, size, guidance=guidance_for(pipes, m, batch, classifier, tiny)))
        for mode in modes
    }
    times = interleaved(calls, args.guidance_repeats)
    unguided_flops = flop_counts(size, steps)["per_image"]
    record = {"section": "guidance", "batch": batch, "steps": steps}
    for mode in modes:
        record[mode] = summary(times[mode])
    for mode in ("paper", "cheap"):
        flops = flop_counts(size, steps, mode)
        record[f"{mode}_guided_steps"] = flops["guided_steps"]
        record[f"{mode}_time_ratio"] = ratio(times, mode, "unguided")
        record[f"{mode}_flop_ratio"] = round(flops["per_image"] / unguided_flops, 4)
    record.update(target_cheap_time_ratio=TARGET_CHEAP_RATIO, meets_target=record["cheap_time_ratio"] <= TARGET_CHEAP_RATIO)
    emit(record, common)


def section_feranno(pipes: Pipelines, args, common: dict) -> None:
    from synfer.labelers.feranno import FERAnnoFeatureExtractor, FERAnnoHead
    from synfer.labelers.feranno.config import FeatureConfig
    from synfer.models.classifier import create_classifier

    batch = args.feranno_batch
    pipes.use("synfer")
    extractor = FERAnnoFeatureExtractor(pipes.synfer, FeatureConfig(resolution=args.resolution))
    head = FERAnnoHead.for_extractor(extractor, "affectnet8").to(pipes.device).eval()
    torch.manual_seed(0)
    resnet = create_classifier("resnet50", "affectnet8").eval().to(pipes.device)
    images = torch.rand(batch, 3, args.resolution, args.resolution)
    crops = torch.rand(batch, 3, 224, 224)

    @torch.no_grad()
    def feranno() -> None:
        pipes.use("synfer")
        features = extractor(images).to(device=pipes.device, dtype=torch.float32)
        head(features.features, features.attention)

    @torch.no_grad()
    def resnet50() -> None:
        resnet(crops.to(pipes.device))

    times = interleaved({"feranno": feranno, "resnet50": resnet50}, args.repeats)
    emit({"section": "feranno", "batch": batch, "feranno_resolution": args.resolution, "resnet50_resolution": 224,
          "feranno_seconds_per_image": round(best(times["feranno"]) / batch, 4),
          "resnet50_seconds_per_image": round(best(times["resnet50"]) / batch, 4),
          "feranno_vs_resnet50_cost": ratio(times, "feranno", "resnet50")}, common)


def section_train(pipes: Pipelines, args, common: dict) -> None:
    """The train-adapter step against a plain UNet training step, at --train-resolution (run this section last:
    the plain step leaves AdamW's state for 860M weights behind, and the UNet frozen in float32)."""
    from synfer.synth.batching import available_memory_bytes

    # The plain step trains every UNet weight with AdamW: gradients and two moments, 12 bytes per weight.
    need = 12 * sum(p.numel() for p in pipes.unet.parameters()) * 1.3
    available = available_memory_bytes()
    if available is not None and available < need:
        emit({"section": "train", "measured": False,
              "reason": f"needs about {need / 2**30:.1f} GiB for AdamW over the UNet, {available / 2**30:.1f} GiB available"}, common)
        return
    try:
        steps = train_steps(pipes.components, args.train_batch, args.train_resolution)
    except Exception as error:  # the training loop's API is not there (or has moved): say so, measure the rest
        emit({"section": "train", "measured": False, "reason": f"{type(error).__name__}: {str(error)[:300]}"}, common)
        return
    times = interleaved(steps, max(2, args.repeats - 1))
    emit({"section": "train", "measured": True, "resolution": args.train_resolution, "batch": args.train_batch,
          "unet": summary(times["unet"]), "adapter": summary(times["adapter"]), "adapter_vs_unet_step": ratio(times, "adapter", "unet"),
          "step": "synfer.train.diffusion.adapter.build_adapter_trainer(...).train_step against a diffusers-style full-UNet step"}, common)


def section_levers(pipes: Pipelines, args, common: dict) -> None:
    from synfer.pipelines.speed import attention_report, use_channels_last

    size = args.resolution
    emit({"section": "levers", "lever": "sdpa", **attention_report(pipes.use("synfer"))}, common)

    # channels-last: a fresh copy would double the memory, so the same modules switch format between rounds.
    def formatted(run, channels_last: bool):
        def call():
            use_channels_last(pipes.synfer, channels_last)
            run()
        return call

    unet_eval, decode = pipes.unet_eval(2, size, True), pipes.vae_decode(1, size)
    times = interleaved({"unet": formatted(unet_eval, False), "unet_cl": formatted(unet_eval, True),
                         "vae": formatted(decode, False), "vae_cl": formatted(decode, True)}, args.repeats)
    use_channels_last(pipes.synfer, False)
    emit({"section": "levers", "lever": "channels_last", "unet_speedup": ratio(times, "unet", "unet_cl"),
          "vae_decode_speedup": ratio(times, "vae", "vae_cl"), "unet": summary(times["unet"]), "unet_cl": summary(times["unet_cl"]),
          "vae": summary(times["vae"]), "vae_cl": summary(times["vae_cl"])}, common)

    # bfloat16 VAE decoding against float32 (float16 convolutions have no fast CPU kernels).
    def decode_in(dtype):
        def call():
            pipes.vae.to(dtype)
            decode()
        return call

    times = interleaved({"float32": decode_in(torch.float32), "bfloat16": decode_in(torch.bfloat16)}, args.repeats)
    pipes.vae.to(torch.float32)
    emit({"section": "levers", "lever": "vae_dtype", "bfloat16_decode_speedup": ratio(times, "float32", "bfloat16"),
          "float32": summary(times["float32"]), "bfloat16": summary(times["bfloat16"])}, common)

    # Batch size: seconds per image of one CFG step (UNet batch 2b) and of one decode at b images.
    per_image = {}
    calls = {}
    for b in args.batch_sizes:
        calls[f"unet_{b}"] = pipes.unet_eval(2 * b, size, True)
        calls[f"vae_{b}"] = pipes.vae_decode(b, size)
    times = interleaved(calls, max(2, args.repeats // 2))
    for b in args.batch_sizes:
        per_image[b] = {"cfg_step": round(best(times[f"unet_{b}"]) / b, 4), "decode": round(best(times[f"vae_{b}"]) / b, 4)}
    first = per_image[args.batch_sizes[0]]["cfg_step"]
    emit({"section": "levers", "lever": "batch_size", "seconds_per_image": per_image, "speedup_vs_batch": args.batch_sizes[0],
          "cfg_step_speedup": {b: round(first / v["cfg_step"], 3) for b, v in per_image.items()}}, common)

    section_writer(args, common)
    section_compile(pipes, args, common)


def section_writer(args, common: dict) -> None:
    """PNG encoding per image against sampling, and generate() with the writer's pool against inline writing."""
    import numpy as np
    from PIL import Image

    from synfer.data.writer import encode_image

    rng = np.random.default_rng(0)
    # Smooth content compresses like a photograph; pure noise would cost zlib far more.
    base = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((512, 512), Image.BICUBIC)
    times = interleaved({fmt: (lambda f=fmt: encode_image(image, f)) for fmt in ("png", "jpg", "webp")}, 5)
    emit({"section": "levers", "lever": "image_encoding", "resolution": 512,
          "seconds_per_image": {fmt: round(best(t), 4) for fmt, t in times.items()}}, common)

    # The sampling loop with a stand-in for the GPU: each batch waits (as a CUDA synchronisation does, without
    # holding the GIL) for as long as SD1.5 takes per batch on a GPU, then returns 512 px images. Inline,
    # the encoding adds to every batch; on the pool it runs during the next batch's wait.
    images = [image.rotate(i) for i in range(args.writer_batch)]
    wait = args.writer_batch * args.writer_seconds_per_image
    times = interleaved({"inline": writer_loop(images, wait, 0), "pool": writer_loop(images, wait, 2)}, 3)
    encode = best(interleaved({"png": lambda: [encode_image(im, "png") for im in images]}, 3, warmup=0)["png"])
    emit({"section": "levers", "lever": "writer_threads", "resolution": 512, "batch": args.writer_batch, "batches": 4,
          "stand_in_sampling_seconds_per_batch": round(wait, 3), "png_encoding_seconds_per_batch": round(encode, 3),
          "inline": summary(times["inline"]), "pool_2_threads": summary(times["pool"]), "speedup": ratio(times, "inline", "pool"),
          "note": "sampling is a stand-in that waits like a GPU; the device suite measures the real loop"}, common)


class _WaitingPipe:
    """A pipeline stand-in: waits ``seconds`` per call without holding the GIL, returns the given images."""

    au_adapter = None
    device = torch.device("cpu")

    def __init__(self, images, seconds: float):
        self.images, self.seconds = images, seconds

    def __call__(self, prompt, **kwargs):
        time.sleep(self.seconds)
        return type("Output", (), {"images": self.images[: len(prompt)]})


def writer_loop(images, wait: float, threads: int):
    """generate_dataset's loop over 4 batches with the stand-in sampler and ``threads`` encoding threads."""
    from synfer.synth.plan import PlanConfig, Planner
    from synfer.synth.runner import RenderConfig, generate_dataset

    n = 4 * len(images)
    planner = Planner(PlanConfig(n=n))
    render = RenderConfig(steps=1, height=512, width=512, shard_size=n)

    def run() -> None:
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "shards").mkdir()
            generate_dataset(_WaitingPipe(images, wait), planner, render, Path(folder), batch_size=len(images), writer_threads=threads)

    return run


def section_compile(pipes: Pipelines, args, common: dict) -> None:
    from synfer.pipelines.loading import tiny_pipeline
    from synfer.pipelines.speed import compile_unet

    def measure(pipe, size: int, batch: int, label: str) -> None:
        latents = torch.randn(2 * batch, 4, size // 8, size // 8)
        text = torch.randn(2 * batch, 77, pipe.unet.config.cross_attention_dim)
        tokens = pipe.au_adapter.null(2 * batch).detach().clone()

        @torch.no_grad()
        def call():
            pipe.unet(latents, torch.tensor(500), encoder_hidden_states=(text, tokens), return_dict=False)

        eager = interleaved({"eager": call}, args.repeats)
        compile_unet(pipe)
        start = time.perf_counter()
        call()
        compile_seconds = time.perf_counter() - start
        compiled = interleaved({"compiled": call}, args.repeats)
        times = {**eager, **compiled}
        emit({"section": "levers", "lever": "compile", "model": label, "resolution": size, "batch": batch,
              "first_call_seconds": round(compile_seconds, 1), "eager": summary(times["eager"]),
              "compiled": summary(times["compiled"]), "speedup": ratio(times, "eager", "compiled"),
              "note": "eager rounds ran before compiling, compiled after (compiling cannot be undone in place)"}, common)

    try:
        measure(tiny_pipeline(0), 32, 8, "tiny")
        if args.compile_sd15:
            pipes.use("synfer")
            measure(pipes.synfer, args.resolution, 1, "sd15")
    except Exception as error:  # a compiler missing on this machine is a result too
        emit({"section": "levers", "lever": "compile", "measured": False, "reason": f"{type(error).__name__}: {str(error)[:200]}"}, common)


def section_schedulers(pipes: Pipelines, args, common: dict) -> None:
    from synfer.pipelines.loading import tiny_pipeline
    from synfer.pipelines.schedulers import SCHEDULERS

    def measure(sample, label: str, size: int, repeats: int) -> None:
        config = pipes.synfer.scheduler.config if label == "sd15" else tiny.scheduler.config
        ddim, dpm = SCHEDULERS["ddim"](config), SCHEDULERS["dpm-solver++"](config)
        calls = {"ddim_50": lambda: sample(50, ddim)}
        calls.update({f"dpm_{s}": (lambda s=s: sample(s, dpm)) for s in DPM_STEPS})
        times = interleaved(calls, repeats, warmup=0)
        base = best(times["ddim_50"])
        emit({"section": "schedulers", "model": label, "resolution": size, "batch": 1,
              "seconds_per_image": {name: round(best(t), 3) for name, t in times.items()},
              "speedup_vs_ddim_50": {name: round(base / best(t), 2) for name, t in times.items() if name != "ddim_50"}}, common)

    tiny = tiny_pipeline(0)

    def tiny_sample(steps, scheduler):
        tiny.scheduler = scheduler
        tiny("a photo of a face", aus="6,12", num_inference_steps=steps, generator=[torch.Generator().manual_seed(0)], output_type="np")

    measure(tiny_sample, "tiny", 32, 5)
    size = args.scheduler_resolution
    measure(lambda steps, scheduler: pipes.sample("synfer", 1, steps, size, scheduler=scheduler), "sd15", size, args.scheduler_repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=256, help="image size (latents are 1/8 of it)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps of the adapter comparison")
    parser.add_argument("--guidance-steps", type=int, default=5, help="steps of the guidance comparison (5: 2 paper-like guided steps)")
    parser.add_argument("--batch", type=int, default=1, help="images per generation call")
    parser.add_argument("--feranno-batch", type=int, default=4)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--guidance-repeats", type=int, default=3)
    parser.add_argument("--scheduler-resolution", type=int, default=128)
    parser.add_argument("--scheduler-repeats", type=int, default=2)
    parser.add_argument("--writer-batch", type=int, default=8)
    parser.add_argument("--writer-seconds-per-image", type=float, default=0.15,
                        help="the stand-in sampler's wait per image (about SD1.5 at 512 px, 50 steps, on a current GPU)")
    parser.add_argument("--train-resolution", type=int, default=128, help="image size of the training steps")
    parser.add_argument("--train-batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (set explicitly and reported)")
    parser.add_argument("--compile-sd15", action="store_true", help="also time torch.compile on the SD1.5 UNet (slow to compile)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet()
    common = {"resolution": args.resolution, "threads": torch.get_num_threads(), "dtype": "float32"}
    print(json.dumps({"bench": "sd15", "hardware": hardware("cpu"), "args": vars(args)}), flush=True)

    start = time.perf_counter()
    pipes = Pipelines(sd15_components("cpu"))
    print(json.dumps({"bench": "sd15", "built_seconds": round(time.perf_counter() - start, 1)}), flush=True)
    functions = {"adapter": section_adapter, "guidance": section_guidance, "feranno": section_feranno, "train": section_train,
                 "levers": section_levers, "schedulers": section_schedulers}
    for name in SECTIONS:
        if name in args.sections:
            started = time.perf_counter()
            functions[name](pipes, args, common)
            print(json.dumps({"bench": "sd15", "section_done": name, "seconds": round(time.perf_counter() - started, 1)}),
                  file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
