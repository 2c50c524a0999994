"""Semantic guidance cost: unguided vs paper-like vs cheap guidance, same components, prompts and seeds.

- ``unguided``: plain SynFERPipeline (AU adapter on, CFG 7.5).
- ``paper``: every step of the default window (the last 40% of the steps), full VAE decode.
- ``cheap``: every 2nd step of the same window, decoding with an ``AutoencoderTiny``, and
  ``reuse_prediction`` (the guidance passes' noise serves the step itself).
- ``cheap_exact``: as ``cheap`` without ``reuse_prediction`` (update, then a separate CFG pass).
- ``paper_short`` (memory only): the paper setting with a window of the last 10%; its peak memory
  equals ``paper``'s when no autograd graph outlives its step.
- ``paper_checkpointed`` (memory only): the paper setting with ``gradient_checkpointing=True``.

Runs are interleaved and the median kept, so machine load affects all modes alike; peak memory is
measured in a fresh child process per mode (on CPU the peak RSS of the generation alone, above the
RSS after building everything; peak allocated memory on CUDA). Prints JSON lines; the last one holds the ratios.

    python benchmarks/bench_guidance.py [--steps 20] [--batch 4] [--repeats 7] [--device cpu] [--threads N]
    python benchmarks/bench_guidance.py --model /models/stable-diffusion-v1-5 --adapter DIR --device cuda \
        --classifier resnet18 --steps 50 --batch 8

With a real model the classifier and the tiny decoder have random weights in the real architectures
(ResNet-18, TAESD): the cost does not depend on the weights.
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

TARGET_CHEAP_RATIO = 1.3
MODES = {
    # mode: (window, every, decoder, gradient checkpointing, reuse prediction)
    "unguided": None,
    "paper": ((0.6, 1.0), 1, "vae", False, False),
    "cheap": ((0.6, 1.0), 2, "tiny", False, True),
    "cheap_exact": ((0.6, 1.0), 2, "tiny", False, False),
    "paper_short": ((0.9, 1.0), 1, "vae", False, False),
    "paper_checkpointed": ((0.6, 1.0), 1, "vae", True, False),
}
TIMED = ("unguided", "paper", "cheap", "cheap_exact")


def build(args):
    from diffusers import AutoencoderTiny
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from synfer.models.classifier import create_classifier
    from synfer.pipelines.loading import load_pipeline

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    pipe = load_pipeline(args.model, args.adapter, device=args.device, dtype=args.dtype)
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(0)
    classifier = create_classifier(args.classifier, "affectnet8").eval().to(args.device)
    if args.model == "tiny":
        tiny = AutoencoderTiny(
            encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8), num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1)
        )
    else:
        tiny = AutoencoderTiny()  # the TAESD architecture
    tiny = tiny.eval().to(device=args.device, dtype=pipe.vae.dtype)
    return pipe, classifier, tiny


def run_once(pipe, classifier, tiny, mode: str, args) -> None:
    from synfer.aus import prototype
    from synfer.expressions import AFFECTNET8
    from synfer.pipelines.guidance import SemanticGuidance

    expressions = [AFFECTNET8.expressions[i % 8] for i in range(args.batch)]
    guidance = None
    if MODES[mode] is not None:
        window, every, decoder, checkpointing, reuse = MODES[mode]
        guidance = SemanticGuidance(
            classifier, [int(e) for e in expressions], window=window, every=every,
            decoder=tiny if decoder == "tiny" else "vae", gradient_checkpointing=checkpointing, reuse_prediction=reuse,
        )
    pipe(
        [f"a close-up photo of a {e.label} face" for e in expressions],
        aus=[prototype(e) for e in expressions],
        num_inference_steps=args.steps,
        guidance_scale=7.5,
        generator=[torch.Generator("cpu").manual_seed(i) for i in range(args.batch)],
        output_type="np",
        semantic_guidance=guidance,
    )
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


def memory_probe(mode: str, args) -> float:
    """Peak memory of one generation in MB (run in a child process)."""
    pipe, classifier, tiny = build(args)
    return peak_memory_mb(lambda: run_once(pipe, classifier, tiny, mode, args), args.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--classifier", default="tiny-resnet", help="backbone of the (random-weight) classifier")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--memory-probe", choices=list(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    common = ["--steps", str(args.steps), "--batch", str(args.batch), "--device", args.device, "--dtype", args.dtype,
              "--model", args.model, "--classifier", args.classifier] + (["--adapter", args.adapter] if args.adapter else [])
    common += ["--threads", str(args.threads)] if args.threads else []
    if args.memory_probe:
        print(memory_probe(args.memory_probe, args))
        return

    pipe, classifier, tiny = build(args)
    for mode in TIMED:
        run_once(pipe, classifier, tiny, mode, args)  # warm-up
    # Wall time is what a user waits; CPU time of this process is steadier on a shared machine.
    times: dict[str, list[float]] = {mode: [] for mode in TIMED}
    cpu_times: dict[str, list[float]] = {mode: [] for mode in TIMED}
    for _ in range(args.repeats):
        for mode in TIMED:
            start, cpu_start = time.perf_counter(), time.process_time()
            run_once(pipe, classifier, tiny, mode, args)
            times[mode].append(time.perf_counter() - start)
            cpu_times[mode].append(time.process_time() - cpu_start)

    memory = {}
    for mode in MODES:
        child = [sys.executable, __file__, "--memory-probe", mode, *common]
        memory[mode] = float(subprocess.run(child, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])

    from synfer.pipelines.guidance import SemanticGuidance

    for mode in MODES:
        record = {"bench": "guidance", "mode": mode, "model": args.model, "device": args.device, "batch": args.batch,
                  "steps": args.steps, "peak_memory_mb": round(memory[mode], 1)}
        if MODES[mode] is not None:
            window, every, decoder, checkpointing, reuse = MODES[mode]
            steps = SemanticGuidance(classifier, window=window, every=every).guided_steps(args.steps)
            record.update(guided_steps=len(steps), decoder=decoder, gradient_checkpointing=checkpointing, reuse_prediction=reuse)
        if mode in times:
            median = statistics.median(times[mode])
            record.update(seconds_per_batch=round(median, 4), images_per_s=round(args.batch / median, 3),
                          cpu_seconds_per_batch=round(statistics.median(cpu_times[mode]), 4))
        print(json.dumps(record))
    base = statistics.median(times["unguided"])
    cheap = statistics.median(times["cheap"]) / base
    cpu_base = statistics.median(cpu_times["unguided"])
    print(json.dumps({
        "bench": "guidance", "metric": "guided_vs_unguided",
        "paper_time_ratio": round(statistics.median(times["paper"]) / base, 3),
        "cheap_time_ratio": round(cheap, 3), "target_cheap_time_ratio": TARGET_CHEAP_RATIO,
        "cheap_exact_time_ratio": round(statistics.median(times["cheap_exact"]) / base, 3),
        "paper_cpu_time_ratio": round(statistics.median(cpu_times["paper"]) / cpu_base, 3),
        "cheap_cpu_time_ratio": round(statistics.median(cpu_times["cheap"]) / cpu_base, 3),
        "cheap_exact_cpu_time_ratio": round(statistics.median(cpu_times["cheap_exact"]) / cpu_base, 3),
        "meets_target": cheap <= TARGET_CHEAP_RATIO,
        "paper_memory_ratio": round(memory["paper"] / memory["unguided"], 3) if memory["unguided"] > 0 else None,
        "cheap_memory_ratio": round(memory["cheap"] / memory["unguided"], 3) if memory["unguided"] > 0 else None,
        "paper_short_vs_paper_memory": round(memory["paper_short"] / memory["paper"], 3) if memory["paper"] > 0 else None,
        "checkpointed_vs_paper_memory": round(memory["paper_checkpointed"] / memory["paper"], 3) if memory["paper"] > 0 else None,
    }))


if __name__ == "__main__":
    main()
