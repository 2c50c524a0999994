"""Dataset generation at two sizes: does the cost per sample stay flat, and does anything pile up?

The tiny preset makes n=64 (the baseline) and n=2,048 samples with ``synfer.generate`` (what the command
runs), each size in a fresh child process with one torch thread, after one warm-up dataset. Times
cover the generation loop only (the reporter's progress context), not loading the model. Reported per size: wall and CPU
seconds per sample (CPU seconds do not count time lost to other programs on a shared machine), the
share of wall time spent in the shard writer (PNG encoding, tar, fsync, parquet index), and RSS: peak,
above the start, and its growth over the second half of the run (allocator and kernel caches fill
during the first few hundred samples; after that nothing should accumulate). The baseline runs before
and after the large run and its median is kept, since the machine may be shared. Targets: per-sample
cost at 2,048 within 10% of 64, writer share under 5%, RSS flat. Also timed: planning the labels of a
5x AffectNet dataset (once per process). Prints JSON lines.

    python benchmarks/bench_generate.py [--steps 2] [--batch 8] [--sizes 64 2048] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGET_RATIO = 1.10
TARGET_WRITER_SHARE = 0.05


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class LoopClock:
    """A reporter that times the generation loop (wall and CPU) and samples RSS half-way through it."""

    def __init__(self, n: int):
        self.n = n
        self.wall = self.cpu = 0.0
        self.rss_start = self.rss_half = self.rss_end = None

    def log(self, message: str) -> None:
        pass

    @contextmanager
    def progress(self, description, total, completed=0, unit="img", show=True):
        made = 0

        def advance(k: int = 1) -> None:
            nonlocal made
            made += k
            if self.rss_half is None and made >= self.n // 2:
                self.rss_half = _rss_mb()

        self.rss_start = _rss_mb()
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        yield advance
        self.wall, self.cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
        self.rss_end = _rss_mb()


def child(n: int, steps: int, batch: int, threads: int) -> dict:
    """Generate n samples into a temporary folder; time the generation loop and the writer's part of it."""
    import torch
    from diffusers.utils import logging as diffusers_logging

    from synfer import GenerateConfig, generate
    from synfer.data import writer as writer_module

    diffusers_logging.set_verbosity_error()
    torch.set_num_threads(threads)
    writer_seconds = 0.0

    def timed(method):
        def wrapper(*args, **kwargs):
            nonlocal writer_seconds
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                writer_seconds += time.perf_counter() - start

        return wrapper

    for name in ("__init__", "write", "commit"):
        setattr(writer_module.ShardWriter, name, timed(getattr(writer_module.ShardWriter, name)))

    options = dict(model="tiny", steps=steps, batch_size=batch, device="cpu")
    with tempfile.TemporaryDirectory() as folder:
        # One warm-up dataset, not counted: first-call kernel set-up and the writer's lazy imports.
        generate(GenerateConfig(str(Path(folder) / "warm"), n=batch, seed=1, **options))
        writer_seconds = 0.0
        clock = LoopClock(n)
        generate(GenerateConfig(str(Path(folder) / "d"), n=n, distribution="affectnet", **options), clock)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "n": n, "wall_s": clock.wall, "cpu_s": clock.cpu, "writer_s": writer_seconds, "peak_rss_mb": peak,
        "rss_growth_mb": peak - clock.rss_start, "rss_second_half_mb": clock.rss_end - clock.rss_half,
    }


def plan_5x_seconds() -> float:
    from synfer.synth.plan import PlanConfig, Planner, scaled_size

    planner = Planner(PlanConfig(n=scaled_size("5x"), distribution="affectnet"))
    start = time.perf_counter()
    assert len(planner.apportionment.labels) == planner.config.n  # computed on first use
    return time.perf_counter() - start


def run_child(n: int, args) -> dict:
    command = [sys.executable, __file__, "--child", str(n), "--steps", str(args.steps), "--batch", str(args.batch),
               "--threads", str(args.threads)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs=2, default=(64, 2048))
    parser.add_argument("--repeats", type=int, default=3, help="runs of the small size (median kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps a shared machine's noise down)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.batch, args.threads)))
        return

    small, large = args.sizes
    # Baseline runs before and after the large one, so that a change in machine load hits both.
    repeats = max(1, args.repeats)
    small_runs = [run_child(small, args) for _ in range((repeats + 1) // 2)]
    measured = run_child(large, args)
    small_runs += [run_child(small, args) for _ in range(repeats // 2)]
    baseline = sorted(small_runs, key=lambda r: r["wall_s"])[len(small_runs) // 2]
    for result in (baseline, measured):
        print(json.dumps({
            "bench": "generate", "preset": "tiny", "steps": args.steps, "batch": args.batch, "threads": args.threads,
            "n": result["n"], "seconds_per_sample": round(result["wall_s"] / result["n"], 5),
            "cpu_seconds_per_sample": round(result["cpu_s"] / result["n"], 5),
            "writer_share": round(result["writer_s"] / result["wall_s"], 4),
            "peak_rss_mb": round(result["peak_rss_mb"], 1), "rss_growth_mb": round(result["rss_growth_mb"], 1),
            "rss_growth_second_half_mb": round(result["rss_second_half_mb"], 1),
        }))
    ratio = (measured["wall_s"] / large) / (baseline["wall_s"] / small)
    # CPU seconds are what a sample costs this process, whatever else the machine is running.
    cpu_ratio = (measured["cpu_s"] / large) / (baseline["cpu_s"] / small)
    writer_share = max(r["writer_s"] / r["wall_s"] for r in (baseline, measured))
    print(json.dumps({
        "bench": "generate", "metric": f"n{large}_vs_n{small}", "per_sample_time_ratio": round(ratio, 3),
        "per_sample_cpu_ratio": round(cpu_ratio, 3), "target_ratio": TARGET_RATIO,
        "writer_share_max": round(writer_share, 4), "target_writer_share": TARGET_WRITER_SHARE,
        "peak_rss_delta_mb": round(measured["peak_rss_mb"] - baseline["peak_rss_mb"], 1),
        "rss_growth_second_half_mb": round(measured["rss_second_half_mb"], 1),
        "small_runs_seconds_per_sample": [round(r["wall_s"] / small, 5) for r in small_runs],
        "meets_target": max(cpu_ratio, 1 / cpu_ratio) <= TARGET_RATIO and writer_share < TARGET_WRITER_SHARE,
    }))
    print(json.dumps({"bench": "generate", "metric": "plan_labels_5x_affectnet", "samples": 5 * 287_651,
                      "seconds": round(plan_5x_seconds(), 3)}))


if __name__ == "__main__":
    main()
