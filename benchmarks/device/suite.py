"""The GPU suite: what an image costs at 512 px on a real accelerator, and how close synfer runs to its peak.

Run by ``benchmarks/device/run.sh`` (which installs carried wheels first); see docs/performance.md.
Everything is measured in one process on one device, each comparison interleaved and its minimum
kept, within a time budget (``--budget`` seconds; a part that would not fit is skipped and says so).
Writes JSON lines to ``OUT/suite.jsonl`` as it goes and ``OUT/summary.json`` at the end:

- ``flops``: exact FLOPs per image (``synfer.pipelines.cost``, the SD1.5 architecture) for every setting timed.
- ``ceiling``: a bf16 matrix product's TFLOP/s on this device, beside the datasheet's dense bf16 peak.
- ``pipelines``: images/s of diffusers' StableDiffusionPipeline and SynFERPipeline (AU adapter on) on the
  same components, float16 and bfloat16, batch 1/8/32; peak memory per batch; achieved TFLOP/s from
  the exact counts and its fraction of the peak.
- ``guidance``: unguided against paper-like and cheap semantic guidance (ResNet-18, TAESD architectures).
- ``feranno``: FERAnno images/s (VAE encode + UNet pass with recording + head) against a ResNet-50 at 224 px.
- ``train``: the train-adapter step (``build_adapter_trainer(...).train_step``) against a plain UNet training
  step (every weight trained with AdamW), bf16 mixed precision.
- ``levers``: SDPA everywhere, channels-last, VAE dtypes, --batch-size auto (the size it finds), the
  writer's thread pool, torch.compile (last: it compiles for a minute or more).
- ``schedulers``: DPM-Solver++ at 10/15/20/25 steps against DDIM at 50.

``--device cpu --smoke`` runs every part on synfer's tiny preset in seconds, to test the script itself.
Weights are random everywhere: a pass costs the same whatever the weights.

    python benchmarks/device/suite.py --out OUT [--device cuda] [--budget 360] [--smoke] [--no-compile]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared SD1.5 helpers

import torch
from _sd15 import (  # noqa: E402 (after the path it is found on)
    Pipelines,
    best,
    guidance_for,
    guidance_models,
    hardware,
    interleaved,
    peak_memory,
    quiet,
    ratio,
    sd15_components,
    summary,
    synchronize,
)

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s; float16 is the same.
DATASHEET_BF16_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.1}


class Suite:
    """Runs the parts in order within a time budget and writes every record as it is made."""

    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.lines = open(self.out / "suite.jsonl", "w")  # noqa: SIM115 (closed in finish)
        self.started = time.perf_counter()
        self.records: list[dict] = []
        self.errors: list[dict] = []
        self.skipped: list[str] = []

    def left(self) -> float:
        return self.args.budget - (time.perf_counter() - self.started)

    def emit(self, record: dict) -> None:
        record = {"elapsed_s": round(time.perf_counter() - self.started, 1), **record}
        self.records.append(record)
        self.lines.write(json.dumps(record) + "\n")
        self.lines.flush()
        print(json.dumps(record), flush=True)

    def part(self, name: str, need_s: float, function, *args) -> None:
        """Run one part if ``need_s`` seconds are left; an error is recorded and the suite goes on."""
        if not self.args.smoke and self.left() < need_s:
            self.skipped.append(name)
            self.emit({"measure": name, "skipped": f"needs about {need_s:.0f} s, {self.left():.0f} s of the budget left"})
            return
        try:
            function(self, *args)
        except Exception as error:  # one part failing must not cost the others
            self.errors.append({"part": name, "error": f"{type(error).__name__}: {str(error)[:300]}"})
            self.emit({"measure": name, "error": self.errors[-1]["error"], "traceback": traceback.format_exc()[-1500:]})
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


# -- settings ---------------------------------------------------------------------------------------
def settings(args) -> dict:
    if args.smoke:
        return dict(size=32, steps=3, batches=(1, 2), repeats=1, warmup=0, dtypes=("float32",), guidance_batch=2, feranno_batch=2,
                    scheduler_steps=(2, 3), ddim_steps=4, generate_n=6, generate_steps=1)
    return dict(size=512, steps=args.steps, batches=tuple(args.batches), repeats=args.repeats, warmup=1, dtypes=("float16", "bfloat16"),
                guidance_batch=8, feranno_batch=32, scheduler_steps=(10, 15, 20, 25), ddim_steps=50, generate_n=128,
                generate_steps=2)


_ARCHITECTURES: dict[bool, object] = {}
_FLOPS: dict[tuple, float] = {}


def flops_per_image(size: int, steps: int, tiny: bool, guidance: str | None = None) -> float:
    """Exact FLOPs of one image (``synfer.pipelines.cost``), counted once per setting."""
    from _sd15 import GUIDANCE_MODES

    from synfer.pipelines.cost import CostConfig, guidance_architecture, measure_cost, model_architecture

    key = (size, steps, tiny, guidance)
    if key not in _FLOPS:
        if tiny not in _ARCHITECTURES:
            _ARCHITECTURES[tiny] = model_architecture("tiny" if tiny else "sd15")
        pipe = _ARCHITECTURES[tiny]
        if isinstance(pipe, Pipelines):  # smoke mode counts on the suite's own tiny components (real tensors)
            pipe = pipe.use("synfer")
        extra = {}
        if guidance is not None:
            window, every, decoder, reuse = GUIDANCE_MODES[guidance]
            classifier = "tiny-resnet" if tiny else "resnet18"
            extra["guidance"] = guidance_architecture(pipe, classifier, window=window, every=every, decoder=decoder, reuse_prediction=reuse)
        _FLOPS[key] = float(measure_cost(pipe, CostConfig(height=size, width=size, steps=steps, **extra)).per_image)
    return _FLOPS[key]


# -- parts ------------------------------------------------------------------------------------------
def part_flops(suite: Suite, cfg: dict) -> None:
    size, steps, tiny = cfg["size"], cfg["steps"], suite.args.smoke
    suite.emit({"measure": "flops", "resolution": size, "steps": steps, "unguided_per_image": flops_per_image(size, steps, tiny),
                "paper_per_image": flops_per_image(size, steps, tiny, "paper"),
                "cheap_per_image": flops_per_image(size, steps, tiny, "cheap"),
                "counted_on": "the tiny preset's components" if tiny else "the SD1.5 architecture on the meta device"})


def part_ceiling(suite: Suite, device: str) -> None:
    record = {"measure": "ceiling"}
    if torch.device(device).type == "cuda":
        n = 8192
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        synchronize(device)
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        synchronize(device)
        record["matmul_bf16_tflops"] = round(10 * 2 * n**3 / (time.perf_counter() - start) / 1e12, 1)
        name = torch.cuda.get_device_name(device)
        record["gpu"] = name
        record["datasheet_bf16_tflops"] = next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in name), None)
        del a, b
    suite.ceiling = record
    suite.emit(record)


def peak_tflops(suite: Suite) -> float | None:
    ceiling = getattr(suite, "ceiling", {})
    return ceiling.get("datasheet_bf16_tflops") or ceiling.get("matmul_bf16_tflops")


def part_pipelines(suite: Suite, pipes: Pipelines, dtype: str, cfg: dict) -> None:
    size, steps = cfg["size"], cfg["steps"]
    flops = flops_per_image(size, steps, suite.args.smoke)
    peak = peak_tflops(suite)
    for batch in cfg["batches"]:
        calls = {variant: (lambda v=variant, b=batch: pipes.sample(v, b, steps, size)) for variant in ("sd", "synfer")}
        memory = {variant: peak_memory(call, pipes.device) for variant, call in calls.items()}  # doubles as the warm-up
        times = interleaved(calls, cfg["repeats"], warmup=0)
        for variant in calls:
            seconds = best(times[variant])
            record = {"measure": "pipelines", "variant": variant, "dtype": dtype, "batch": batch, "steps": steps, "resolution": size,
                      **summary(times[variant]), "images_per_s": round(batch / seconds, 3), "peak_memory_mib": memory[variant]}
            achieved = flops * batch / seconds / 1e12
            record["achieved_tflops"] = round(achieved, 2)
            record["fraction_of_peak"] = round(achieved / peak, 4) if peak else None
            suite.emit(record)
        suite.emit({"measure": "pipelines", "metric": "synfer_vs_sd", "dtype": dtype, "batch": batch,
                    "time_ratio": ratio(times, "synfer", "sd")})


def part_guidance(suite: Suite, pipes: Pipelines, cfg: dict) -> None:
    size, steps, batch = cfg["size"], cfg["steps"], cfg["guidance_batch"]
    classifier, tiny = guidance_models(pipes, tiny=suite.args.smoke)
    modes = ("unguided", "paper", "cheap")
    calls = {m: (lambda m=m: pipes.sample("synfer", batch, steps, size, guidance=guidance_for(pipes, m, batch, classifier, tiny)))
             for m in modes}
    memory = {mode: peak_memory(call, pipes.device) for mode, call in calls.items()}  # doubles as the warm-up
    times = interleaved(calls, cfg["repeats"], warmup=0)
    record = {"measure": "guidance", "batch": batch, "steps": steps, "resolution": size, "dtype": str(pipes.unet.dtype)[6:]}
    unguided = flops_per_image(size, steps, suite.args.smoke)
    for mode in modes:
        record[mode] = {**summary(times[mode]), "images_per_s": round(batch / best(times[mode]), 3), "peak_memory_mib": memory[mode]}
    for mode in ("paper", "cheap"):
        record[f"{mode}_time_ratio"] = ratio(times, mode, "unguided")
        record[f"{mode}_flop_ratio"] = round(flops_per_image(size, steps, suite.args.smoke, mode) / unguided, 4)
    suite.emit(record)


def part_feranno(suite: Suite, pipes: Pipelines, cfg: dict) -> None:
    from synfer.labelers.feranno import FERAnnoFeatureExtractor, FERAnnoHead
    from synfer.labelers.feranno.config import FeatureConfig
    from synfer.models.classifier import create_classifier

    batch, size = cfg["feranno_batch"], cfg["size"]
    pipes.use("synfer")
    extractor = FERAnnoFeatureExtractor(pipes.synfer, FeatureConfig(resolution=size))
    head = FERAnnoHead.for_extractor(extractor, "affectnet8").to(pipes.device).eval()
    torch.manual_seed(0)
    resnet = create_classifier("tiny-resnet" if suite.args.smoke else "resnet50", "affectnet8").eval().to(pipes.device)
    images = torch.rand(batch, 3, size, size, device=pipes.device)
    crop = 32 if suite.args.smoke else 224
    crops = torch.rand(batch, 3, crop, crop, device=pipes.device)

    @torch.no_grad()
    def feranno() -> None:
        pipes.use("synfer")
        features = extractor(images).to(device=pipes.device, dtype=torch.float32)
        head(features.features, features.attention)
        synchronize(pipes.device)

    @torch.no_grad()
    def resnet50() -> None:
        resnet(crops)
        synchronize(pipes.device)

    times = interleaved({"feranno": feranno, "resnet50": resnet50}, cfg["repeats"], cfg["warmup"])
    suite.emit({"measure": "feranno", "batch": batch, "resolution": size, "feranno_images_per_s": round(batch / best(times["feranno"]), 2),
                "resnet50_images_per_s": round(batch / best(times["resnet50"]), 2),
                "feranno_vs_resnet50_cost": ratio(times, "feranno", "resnet50"),
                "feranno_peak_memory_mib": peak_memory(feranno, pipes.device)})


def part_train(suite: Suite, pipes: Pipelines, cfg: dict) -> None:
    """The train-adapter step against a plain UNet training step (bf16 mixed precision on a GPU); restores the components after."""
    from _sd15 import train_steps

    batch, size = (1, cfg["size"]) if suite.args.smoke else (8, cfg["size"])
    mixed = "no" if torch.device(suite.args.device).type == "cpu" else "bf16"
    dtype = pipes.unet.dtype
    try:
        try:
            steps = train_steps(pipes.components, batch, size, mixed)
        except Exception as error:  # the training loop's API is not there (or has moved): say so
            suite.emit({"measure": "train", "measured": False, "reason": f"{type(error).__name__}: {str(error)[:300]}"})
            return
        memory = {name: peak_memory(step, pipes.device) for name, step in steps.items()}  # doubles as the warm-up
        times = interleaved(steps, max(2, cfg["repeats"]), warmup=0)
        suite.emit({"measure": "train", "measured": True, "batch": batch, "resolution": size, "mixed_precision": mixed,
                    "unet_images_per_s": round(batch / best(times["unet"]), 2),
                    "adapter_images_per_s": round(batch / best(times["adapter"]), 2),
                    "adapter_vs_unet_step": ratio(times, "adapter", "unet"), "peak_memory_mib": memory})
    finally:
        for name in ("unet", "vae", "text_encoder", "au_adapter"):
            pipes.components[name].to(dtype).requires_grad_(False)
        steps = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def part_levers(suite: Suite, pipes: Pipelines, cfg: dict) -> None:
    from synfer.pipelines.speed import attention_report, use_channels_last

    size, batch = cfg["size"], cfg["batches"][min(1, len(cfg["batches"]) - 1)]
    suite.emit({"measure": "levers", "lever": "sdpa", **attention_report(pipes.use("synfer"))})

    def formatted(run, channels_last: bool):
        def call():
            use_channels_last(pipes.synfer, channels_last)
            run()
        return call

    unet_eval, decode = pipes.unet_eval(2 * batch, size, True), pipes.vae_decode(batch, size)
    times = interleaved({"unet": formatted(unet_eval, False), "unet_cl": formatted(unet_eval, True),
                         "vae": formatted(decode, False), "vae_cl": formatted(decode, True)}, max(2, cfg["repeats"]), cfg["warmup"])
    use_channels_last(pipes.synfer, False)
    suite.emit({"measure": "levers", "lever": "channels_last", "batch": batch, "unet_speedup": ratio(times, "unet", "unet_cl"),
                "vae_decode_speedup": ratio(times, "vae", "vae_cl")})

    original = pipes.vae.dtype
    dtypes = ("float32", "bfloat16") if suite.args.smoke else ("float32", "float16", "bfloat16")

    def decode_in(name: str):
        def call():
            pipes.vae.to(getattr(torch, name))
            decode()
        return call

    calls = {name: decode_in(name) for name in dtypes}
    times = interleaved(calls, max(2, cfg["repeats"]), cfg["warmup"])
    memory = {name: peak_memory(calls[name], pipes.device) for name in dtypes}
    pipes.vae.to(original)
    suite.emit({"measure": "levers", "lever": "vae_dtype", "batch": batch,
                "decode_seconds": {name: round(best(t), 4) for name, t in times.items()},
                "speedup_vs_float32": {name: ratio(times, "float32", name) for name in dtypes if name != "float32"},
                "peak_memory_mib": memory})

    part_generate_levers(suite, pipes, cfg)


def part_generate_levers(suite: Suite, pipes: Pipelines, cfg: dict) -> None:
    """--batch-size auto and the writer's thread pool, through the runner's sampling loop."""
    from synfer.prompts import PromptBuilder
    from synfer.synth.plan import PlanConfig, Planner
    from synfer.synth.runner import RenderConfig, generate_dataset

    pipe = pipes.use("synfer")
    n, size = cfg["generate_n"], cfg["size"]
    planner = Planner(PlanConfig(n=n), PromptBuilder(pipe.tokenizer))
    render = RenderConfig(steps=cfg["generate_steps"], height=size, width=size, shard_size=n)
    logs: list[str] = []

    def run(batch, threads: int) -> float:
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "shards").mkdir()
            start = time.perf_counter()
            generate_dataset(pipe, planner, render, Path(folder), batch_size=batch, writer_threads=threads, log=logs.append)
            synchronize(pipes.device)
            return time.perf_counter() - start

    fixed = 2 if suite.args.smoke else 8
    run(fixed, 2)  # warm-up
    seconds = {"inline": run(fixed, 0), "pool": run(fixed, 4)}
    suite.emit({"measure": "levers", "lever": "writer_threads", "n": n, "batch": fixed, "steps": render.steps, "resolution": size,
                "inline_images_per_s": round(n / seconds["inline"], 2), "pool_4_images_per_s": round(n / seconds["pool"], 2),
                "speedup": round(seconds["inline"] / seconds["pool"], 3)})
    auto_seconds = run("auto", 4)
    found = [line for line in logs if "--batch-size auto" in line]
    suite.emit({"measure": "levers", "lever": "batch_size_auto", "n": n, "steps": render.steps, "resolution": size,
                "found": found[-1] if found else None, "auto_images_per_s": round(n / auto_seconds, 2),
                "fixed_images_per_s": round(n / seconds["pool"], 2), "fixed_batch": fixed,
                "note": "auto's time includes its search, made on the run's own first batches"})


def part_compile(suite: Suite, pipes: Pipelines, cfg: dict) -> None:
    from synfer.pipelines.speed import compile_unet

    batch, size = cfg["batches"][min(1, len(cfg["batches"]) - 1)], cfg["size"]
    pipe = pipes.use("synfer")
    run = pipes.unet_eval(2 * batch, size, True)
    eager = interleaved({"eager": run}, max(3, cfg["repeats"]), cfg["warmup"])
    compile_unet(pipe, backend="eager" if suite.args.smoke else None)
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    compiled = interleaved({"compiled": run}, max(3, cfg["repeats"]), cfg["warmup"])
    times = {**eager, **compiled}
    suite.emit({"measure": "levers", "lever": "compile", "batch": batch, "resolution": size, "first_call_seconds": round(first, 1),
                "eager_seconds": round(best(times["eager"]), 4), "compiled_seconds": round(best(times["compiled"]), 4),
                "speedup": ratio(times, "eager", "compiled"), "backend": "eager (smoke)" if suite.args.smoke else "inductor"})


def part_schedulers(suite: Suite, pipes: Pipelines, cfg: dict) -> None:
    from synfer.pipelines.schedulers import SCHEDULERS

    size, batch = cfg["size"], cfg["batches"][min(1, len(cfg["batches"]) - 1)]
    config = pipes.synfer.scheduler.config
    ddim, dpm = SCHEDULERS["ddim"](config), SCHEDULERS["dpm-solver++"](config)
    calls = {f"ddim_{cfg['ddim_steps']}": lambda: pipes.sample("synfer", batch, cfg["ddim_steps"], size, scheduler=ddim)}
    calls.update({f"dpm_{s}": (lambda s=s: pipes.sample("synfer", batch, s, size, scheduler=dpm)) for s in cfg["scheduler_steps"]})
    times = interleaved(calls, max(1, cfg["repeats"] - 1), cfg["warmup"])
    base = f"ddim_{cfg['ddim_steps']}"
    suite.emit({"measure": "schedulers", "batch": batch, "resolution": size,
                "seconds_per_image": {k: round(best(t) / batch, 4) for k, t in times.items()},
                "speedup_vs_ddim": {k: ratio(times, base, k) for k in times if k != base}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="the tiny preset: every part in seconds (tests the script)")
    parser.add_argument("--budget", type=float, default=360.0, help="seconds; parts that would not fit are skipped")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps of the timed generations")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (it compiles for a minute or more)")
    args = parser.parse_args()
    if torch.device(args.device).type == "cpu":
        torch.set_num_threads(1 if args.smoke else max(1, os.cpu_count() or 1))  # one thread keeps a shared CPU's smoke run short
    quiet()
    cfg = settings(args)
    suite = Suite(args)
    suite.emit({"measure": "hardware", **hardware(args.device), "smoke": args.smoke, "budget_s": args.budget, "settings": cfg})

    suite.part("ceiling", 5, part_ceiling, args.device)
    first, *others = cfg["dtypes"]
    pipes = Pipelines(sd15_components(args.device, getattr(torch, first), tiny=args.smoke))
    if args.smoke:
        _ARCHITECTURES[True] = pipes
    suite.part("flops", 5, part_flops, cfg)
    suite.part(f"pipelines_{first}", 60, part_pipelines, pipes, first, cfg)
    for dtype in others:  # the same random weights in the next dtype (no second build), then back
        cast(pipes, dtype)
        suite.part(f"pipelines_{dtype}", 45, part_pipelines, pipes, dtype, cfg)
    cast(pipes, first)
    # The other parts run in the first dtype: float16 on a GPU, synfer's default there.
    suite.part("guidance", 40, part_guidance, pipes, cfg)
    suite.part("feranno", 15, part_feranno, pipes, cfg)
    suite.part("schedulers", 20, part_schedulers, pipes, cfg)
    suite.part("levers", 40, part_levers, pipes, cfg)
    suite.part("train", 30, part_train, pipes, cfg)  # after the others: it trains the shared components' copies in place
    if not args.no_compile:
        suite.part("compile", 150, part_compile, pipes, cfg)
    summary_record = finish(suite)
    print(json.dumps(summary_record), flush=True)


def cast(pipes: Pipelines, dtype: str) -> None:
    for name in ("unet", "vae", "text_encoder", "au_adapter"):
        pipes.components[name].to(getattr(torch, dtype))


def finish(suite: Suite) -> dict:
    records = suite.records
    ratios = {f"{r['dtype']}_batch_{r['batch']}": r["time_ratio"] for r in records if r.get("metric") == "synfer_vs_sd"}
    fractions = {f"{r['variant']}_{r['dtype']}_batch_{r['batch']}": r["fraction_of_peak"] for r in records
                 if r.get("measure") == "pipelines" and "variant" in r}
    result = {"smoke": suite.args.smoke, "device": suite.args.device, "seconds": round(time.perf_counter() - suite.started, 1),
              "synfer_vs_sd": ratios, "fraction_of_peak": fractions, "peak_tflops_used": peak_tflops(suite),
              "skipped": suite.skipped, "errors": suite.errors}
    with open(suite.out / "summary.json", "w") as handle:
        json.dump(result, handle, indent=1)
    suite.lines.close()
    return result


if __name__ == "__main__":
    main()
