"""SynFERPipeline (AU adapter attached, au_scale 1) against diffusers' StableDiffusionPipeline.

Both pipelines share the same tiny components, prompts, seeds, steps and batch size; runs are
interleaved and the median is kept, so machine load affects both alike. Peak memory is measured in a
fresh child process per variant (peak RSS above the RSS after building the model on CPU; peak
allocated memory on CUDA). Prints JSON lines; the last one holds the ratios.

    python benchmarks/bench_pipeline.py [--steps 20] [--batch 4] [--repeats 7] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from _memory import peak_memory_mb

TARGET_RATIO = 1.15


def build(variant: str, device: str):
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from synfer.models.tiny import tiny_components
    from synfer.pipelines.pipeline_synfer import SynFERPipeline

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    components = tiny_components(0)
    if variant == "sd":
        components.pop("au_adapter")
        pipe = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    else:
        pipe = SynFERPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def run_once(pipe, variant: str, args) -> None:
    prompts = ["a close-up photo of a young woman smiling happily"] * args.batch
    kwargs = dict(
        num_inference_steps=args.steps,
        guidance_scale=7.5,
        generator=[torch.Generator("cpu").manual_seed(i) for i in range(args.batch)],
        output_type="np",
    )
    if variant == "synfer":
        kwargs.update(aus=["6,12"] * args.batch, au_scale=1.0)
    pipe(prompts, **kwargs)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


def memory_probe(variant: str, args) -> float:
    """Peak memory of one generation in MB (run in a child process)."""
    pipe = build(variant, args.device)
    return peak_memory_mb(lambda: run_once(pipe, variant, args), args.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-probe", choices=["sd", "synfer"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        print(memory_probe(args.memory_probe, args))
        return

    pipes = {variant: build(variant, args.device) for variant in ("sd", "synfer")}
    for variant, pipe in pipes.items():
        run_once(pipe, variant, args)  # warm-up
    times: dict[str, list[float]] = {variant: [] for variant in pipes}
    for _ in range(args.repeats):
        for variant, pipe in pipes.items():
            start = time.perf_counter()
            run_once(pipe, variant, args)
            times[variant].append(time.perf_counter() - start)

    memory = {}
    for variant in pipes:
        child = [sys.executable, __file__, "--memory-probe", variant, "--steps", str(args.steps), "--batch", str(args.batch),
                 "--device", args.device]
        memory[variant] = float(subprocess.run(child, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])

    for variant in pipes:
        median = statistics.median(times[variant])
        print(json.dumps({
            "bench": "pipeline", "variant": variant, "device": args.device, "batch": args.batch, "steps": args.steps,
            "seconds_per_batch": round(median, 4), "images_per_s": round(args.batch / median, 2),
            "peak_memory_mb": round(memory[variant], 1),
        }))
    ratio = statistics.median(times["synfer"]) / statistics.median(times["sd"])
    print(json.dumps({
        "bench": "pipeline", "metric": "synfer_vs_stable_diffusion", "time_ratio": round(ratio, 3),
        "target_time_ratio": TARGET_RATIO, "meets_target": ratio <= TARGET_RATIO,
        "memory_ratio": round(memory["synfer"] / memory["sd"], 3) if memory["sd"] > 0 else None,
    }))


if __name__ == "__main__":
    main()
