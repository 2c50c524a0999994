"""What ``synfer evaluate`` costs, one section per half of it.

Section ``metrics`` (the statistics, ``synfer.eval.distribution``): random Gaussian features with a fixed
seed, D = 1,024 (DINOv2-L's width), stored float32 as a feature cache would hold them; real ~ N(0, I),
generated ~ N(0.05, 1.05^2 I), 8 balanced classes. For each n in ``--ns`` (features per side, default
1,000 / 10,000 / 50,000), in one run, each metric is timed once at its library defaults:

- ``fd``: statistics of both sides (two N x D^2 passes) + one sqrtm (D^3), no interval;
- ``fd_bootstrap``: ``--bootstrap-resamples`` replicates (default 10, not the library's 100, to keep the
  run short); the line gives seconds per replicate and the projection for 100;
- ``fd_infinity``: one pass over the generated side + 15 D x D eigenvalue problems (None below 5,000);
- ``kid``: 100 subsets of min(1,000, n): 3 x 1,000^2 x D per subset, the same cost for every n >= ~5,000
  (below, the kernel rows of all 2n samples are computed once and shared by the subsets);
- ``prdc``: three k-NN distance passes on at most 10,000 per side (dgm-eval's cap): (2 x 10k)^2 x D at most;
- ``per_class_kid``: KID in each of the 8 classes (pooled kernel rows while a class is small);
- ``diversity``: mean pairwise L2 distance per class, both sides (exact up to 2,000 per class, else 20,000
  random pairs).

Each line: seconds, seconds per 1,000 features per side and its ratio to n = 1,000 (the baseline: < 1
means the metric costs less than linear in n), and the peak RSS the call needed above what was held
(``_memory.peak_memory_mb``). The ``summary`` line: total time, process peak RSS, and what dominates
at the largest n.

What dominates at 50k (one BLAS thread, 2-core Xeon, AVX-512): the FD bootstrap, ~1.6 s per replicate
(two weighted Gram passes over the ~63% distinct rows of each side, N x D^2, plus a D x D Cholesky and
eigenvalue problem), so ~2.8 min at the library's 100 replicates, three quarters of the whole; then
per-class KID (~35 s: kernel rows within 8 classes of 6,250 per side), PRDC (~9 s, capped at 10k per
side), KID (~7 s), FD-infinity (~4 s), FD (~4 s) and diversity (~2 s). This run itself takes ~2 min;
peak RSS ~750 MB, of which 400 MB are the float32 features.

A ``features`` section (backbone forward passes) can be added to ``SECTIONS``.

    python benchmarks/bench_evaluate.py [--sections metrics] [--ns 1000 10000 50000] [--bootstrap-resamples 10]
                                        [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable

D = 1024
CLASSES = 8
SEED = 0


def make_features(n: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    real = rng.standard_normal((n, D), dtype=np.float32)
    fake = rng.standard_normal((n, D), dtype=np.float32) * np.float32(1.05) + np.float32(0.05)
    labels = np.arange(n) % CLASSES
    return real, fake, labels


def measure(run: Callable[[], object]) -> tuple[object, float, float]:
    """Result, wall seconds and peak RSS above the current level (MB) of one call."""
    from _memory import peak_memory_mb

    box = {}

    def timed() -> None:
        start = time.perf_counter()
        box["result"] = run()
        box["seconds"] = time.perf_counter() - start

    memory = peak_memory_mb(timed, "cpu")
    return box["result"], box["seconds"], memory


def metrics_section(args, emit: Callable[[dict], None]) -> dict:
    from synfer.eval.diversity import within_class_diversity
    from synfer.eval.frechet import (
        FeatureStats,
        fd_infinity,
        frechet_bootstrap,
        frechet_distance,
    )
    from synfer.eval.kernel import kernel_distance, per_class_kernel_distance
    from synfer.eval.manifold import precision_recall_density_coverage

    real_all, fake_all, labels_all = make_features(max(args.ns), SEED)

    def fd(real, fake, labels):
        return frechet_distance(FeatureStats.from_features(real), FeatureStats.from_features(fake))

    def bootstrap(real, fake, labels):
        return frechet_bootstrap(real, fake, resamples=args.bootstrap_resamples, seed=SEED).to_dict()

    def infinity(real, fake, labels):
        result = fd_infinity(real, fake, seed=SEED)
        return None if result is None else result.value

    def kid(real, fake, labels):
        return kernel_distance(real, fake, seed=SEED).mean

    def prdc(real, fake, labels):
        return precision_recall_density_coverage(real, fake, seed=SEED).to_dict()

    def per_class(real, fake, labels):
        return per_class_kernel_distance(real, fake, labels, labels, seed=SEED).to_dict()["mean_over_classes"]

    def diversity(real, fake, labels):
        return [within_class_diversity(side, labels, seed=SEED).to_dict()["mean_over_classes"] for side in (real, fake)]

    metrics = {"fd": fd, "fd_bootstrap": bootstrap, "fd_infinity": infinity, "kid": kid, "prdc": prdc,
               "per_class_kid": per_class, "diversity": diversity}
    baseline: dict[str, float] = {}
    seconds: dict[tuple[str, int], float] = {}
    for n in sorted(args.ns):
        real, fake, labels = real_all[:n], fake_all[:n], labels_all[:n]
        for name, function in metrics.items():
            result, wall, memory = measure(lambda f=function, r=real, g=fake, c=labels: f(r, g, c))
            seconds[name, n] = wall
            per_1k = wall / (n / 1000)
            if result is not None:  # the smallest n with a figure is the baseline (FD-infinity has none at 1k)
                baseline.setdefault(name, per_1k)
            line = {"bench": "evaluate", "section": "metrics", "metric": name, "n": n, "d": D, "threads": args.threads,
                    "seconds": round(wall, 3), "s_per_1k": round(per_1k, 4),
                    "s_per_1k_vs_baseline": round(per_1k / baseline[name], 3) if baseline.get(name) else None,
                    "peak_rss_delta_mb": round(memory, 1)}
            if name == "fd_bootstrap":
                per_resample = max(wall - seconds["fd", n], 0.0) / args.bootstrap_resamples
                line.update(resamples=args.bootstrap_resamples, s_per_resample=round(per_resample, 3),
                            projected_s_at_100=round(seconds["fd", n] + 100 * per_resample, 1))
                seconds["fd_bootstrap_at_100", n] = seconds["fd", n] + 100 * per_resample
                result = {key: result[key] for key in ("value", "ci")}
            line["value"] = result
            emit(line)
    largest = max(args.ns)
    at_largest = {name: s for (name, n), s in seconds.items() if n == largest and name != "fd_bootstrap"}
    ranked = sorted(at_largest.items(), key=lambda item: -item[1])
    return {"largest_n": largest, "dominant_at_largest_n": ranked[0][0],
            "seconds_at_largest_n": {name: round(s, 1) for name, s in ranked}}


SECTIONS: dict[str, Callable] = {"metrics": metrics_section}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--ns", type=int, nargs="+", default=[1000, 10_000, 50_000], help="features per side")
    parser.add_argument("--bootstrap-resamples", type=int, default=10)
    # BLAS threads are fixed when numpy loads, so they are set before anything imports it. On a shared
    # machine, OpenBLAS threads that wait for a descheduled peer make LAPACK calls (eigh, sqrtm) up to 50x
    # slower; one thread keeps the figures stable. On an idle machine, --threads 2 is the 2-core figure.
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS threads for numpy/scipy (0: the library's default)")
    args = parser.parse_args()
    if args.threads > 0:
        for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[variable] = str(args.threads)
    if "numpy" in sys.modules:
        print("warning: numpy was imported before --threads took effect", file=sys.stderr)

    start = time.perf_counter()
    summary = {"bench": "evaluate", "metric": "summary", "threads": args.threads, "cpus": os.cpu_count()}
    for name in args.sections:
        summary[name] = SECTIONS[name](args, lambda line: print(json.dumps(line), flush=True))
    summary["total_s"] = round(time.perf_counter() - start, 1)
    summary["process_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
