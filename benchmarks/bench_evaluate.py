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

Section ``features`` (the image half: ``synfer.eval.feature_backbones``, ``synfer.eval.preprocess``,
``synfer.eval.extract``), random weights built in code, each line one measurement:

- ``forward``: images/s of each backbone kind's forward pass through synfer's wrapper (normalisation +
  model) on preprocessed batches, after one warm-up batch: the tiny test configs, and DINOv2-L/14 at
  224 px, CLIP ViT-L/14 at 224 px and the FID Inception at 299 px at their real sizes (``--feature-batch``
  images x ``--feature-batches`` batches; few on a CPU). Each line projects the hours for a 5x AffectNet
  dataset (1,438,255 images) at that rate.
- ``preprocess``: decoding a 512 px PNG (a generated image's size) and resizing it with clean-fid's
  float bicubic to 224 and 299 px, per image on one thread, and images/s with ``--workers`` threads
  (``extract`` runs decoding in a thread pool; PIL releases the GIL). The hours for 1.44M images
  follow per worker.
- ``extract``: the tiny DINOv2 through ``extract`` on ``--extract-n`` PNGs (decode, preprocess, forward,
  cache parts written), then the same call again, now read from the cache: the pipeline's overhead over
  the bare forward and what a second evaluation against the same images costs.

On a CPU, the large backbones are forward-bound by far (seconds per image); on a GPU the decode threads
are what to size: images/s = min(forward rate, workers x per-thread decode rate). ``--device cuda``
measures the GPU forward rates (``--dtype bfloat16`` too).

    python benchmarks/bench_evaluate.py [--sections metrics features] [--ns 1000 10000 50000] [--bootstrap-resamples 10]
                                        [--threads 1] [--device cpu] [--feature-batch 4] [--feature-batches 2] [--workers 2]
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


FIVE_X = 1_438_255  # a 5x AffectNet dataset (synfer generate --scale 5x, 8 classes)


def _backbones(device: str, dtype: str):
    """(name, build) of each backbone shape; build() gives the backbone, wrapped exactly as evaluate wraps loaded
    ones (random weights), and its parameter count."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, Dinov2Config, Dinov2Model

    from synfer.eval.feature_backbones import BackboneOptions, clip_backbone, dinov2_backbone, inception_backbone
    from synfer.models.inception import FIDInceptionV3

    options = BackboneOptions(dtype=dtype)
    device = torch.device(device)
    tiny_vit = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "patch_size": 8, "image_size": 32}
    large_vit = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "patch_size": 14}

    def counted(make_model, wrap):
        def build():
            model = make_model()
            return wrap(model), sum(p.numel() for p in model.parameters())
        return build

    def dinov2(**config):
        return counted(lambda: Dinov2Model(Dinov2Config(**config)), lambda m: dinov2_backbone(m, "random", {}, device, options))

    def clip(**config):
        return counted(lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**config)),
                       lambda m: clip_backbone(m, "random", {}, device, options, projected=True))

    return [
        ("dinov2-tiny", dinov2(**tiny_vit, mlp_ratio=2)),
        ("clip-tiny", clip(**tiny_vit, intermediate_size=32, projection_dim=8)),
        ("dinov2-large", dinov2(**large_vit, mlp_ratio=4, image_size=518)),
        ("clip-large", clip(**large_vit, intermediate_size=4096, image_size=224, projection_dim=768)),
        ("inception", counted(FIDInceptionV3, lambda m: inception_backbone(m, "random", {}, device, options))),
    ]


def _png(size: int, seed: int) -> bytes:
    """A smooth random picture with some grain, PNG-encoded: about what a generated face costs to decode."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
    pixels = np.clip(np.asarray(coarse, dtype=np.int16) + rng.integers(-6, 7, (size, size, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class _MemorySource:
    """A generated-side image source held in memory (the protocol ``synfer.eval.extract`` reads)."""

    side = "generated"

    def __init__(self, blobs: list[bytes], chunk: int = 64):
        import numpy as np

        from synfer.eval.feature_cache import Chunk

        self.blobs = blobs
        self._chunks = [Chunk(f"rows-{i:06d}", f"bench-{i}", np.arange(start, min(len(blobs), start + chunk)))
                        for i, start in enumerate(range(0, len(blobs), chunk))]

    def __len__(self) -> int:
        return len(self.blobs)

    def record(self) -> dict:
        return {"kind": "bench", "n": len(self.blobs)}

    def chunks(self):
        return self._chunks

    def items(self, chunk):
        for row in chunk.rows.tolist():
            yield row, self.blobs[row]

    @staticmethod
    def decode(raw):
        import io

        from PIL import Image

        with Image.open(io.BytesIO(raw)) as handle:
            return handle.convert("RGB")


def features_section(args, emit: Callable[[dict], None]) -> dict:
    import io
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from PIL import Image

    from synfer.eval.extract import extract
    from synfer.eval.feature_cache import FeatureCache
    from synfer.eval.preprocess import Preprocess

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    rates, summary = {}, {}
    for name, build in _backbones(args.device, args.dtype):
        backbone, parameters = build()
        tiny = name.endswith("tiny")
        batch = args.feature_batch * (8 if tiny else 1)
        batches = args.feature_batches * (5 if tiny else 1)
        pixels = torch.rand(batch, 3, backbone.preprocess.size, backbone.preprocess.size, generator=torch.Generator().manual_seed(0))
        backbone(pixels)  # warm-up: allocation, kernel selection
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(batches):
            out = backbone(pixels)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        rate = batch * batches / seconds
        rates[name] = rate
        emit({"bench": "evaluate", "section": "features", "measure": "forward", "backbone": name, "size": backbone.preprocess.size,
              "dim": int(out.shape[1]), "batch": batch, "images": batch * batches, "seconds": round(seconds, 3),
              "images_per_s": round(rate, 2), "hours_for_5x": round(FIVE_X / rate / 3600, 1), "device": args.device,
              "dtype": args.dtype, "threads": args.threads, "parameters": parameters})
        del backbone
    blobs = [_png(512, seed) for seed in range(args.preprocess_n)]
    for size in (224, 299):
        preprocess = Preprocess(size)

        def one(blob, preprocess=preprocess):
            with Image.open(io.BytesIO(blob)) as handle:
                return preprocess.array(handle.convert("RGB"))

        start = time.perf_counter()
        for blob in blobs:
            one(blob)
        single = (time.perf_counter() - start) / len(blobs)
        with ThreadPoolExecutor(args.workers) as pool:
            start = time.perf_counter()
            list(pool.map(one, blobs))
            pooled = len(blobs) / (time.perf_counter() - start)
        emit({"bench": "evaluate", "section": "features", "measure": "preprocess", "source": "512 px PNG", "size": size,
              "ms_per_image_one_thread": round(1000 * single, 2), "workers": args.workers, "images_per_s": round(pooled, 1),
              "hours_for_5x_one_thread": round(FIVE_X * single / 3600, 2)})
        summary[f"decode_resize_{size}_ms"] = round(1000 * single, 2)
    source = _MemorySource([_png(512, seed) for seed in range(args.extract_n)])
    tiny = dict(_backbones(args.device, args.dtype))["dinov2-tiny"]()[0]
    with tempfile.TemporaryDirectory() as cache_dir:
        cache = FeatureCache(cache_dir)
        timings = []
        for _ in range(2):
            start = time.perf_counter()
            done = extract(source, {"dinov2": tiny}, cache, batch_size=args.feature_batch * 8, workers=args.workers)
            timings.append((time.perf_counter() - start, done.computed["dinov2"]))
    (first, computed), (second, reused) = timings
    emit({"bench": "evaluate", "section": "features", "measure": "extract", "backbone": "dinov2-tiny", "images": args.extract_n,
          "workers": args.workers, "first_s": round(first, 3), "first_images_per_s": round(args.extract_n / first, 1),
          "computed_first": computed, "second_s": round(second, 3), "computed_second": reused,
          "forward_only_images_per_s": round(rates["dinov2-tiny"], 1)})
    summary.update({f"{name}_images_per_s": round(rate, 2) for name, rate in rates.items()})
    summary["cache_hit_speedup"] = round(first / max(second, 1e-9), 1)
    return summary


SECTIONS: dict[str, Callable] = {"metrics": metrics_section, "features": features_section}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--ns", type=int, nargs="+", default=[1000, 10_000, 50_000], help="features per side")
    parser.add_argument("--bootstrap-resamples", type=int, default=10)
    parser.add_argument("--device", default="cpu", help="features: where the backbones run (cpu, cuda)")
    parser.add_argument("--dtype", default="float32", help="features: backbone precision (float16/bfloat16 on GPUs)")
    parser.add_argument("--feature-batch", type=int, default=4, help="features: images per batch of a large backbone (x8 tiny)")
    parser.add_argument("--feature-batches", type=int, default=2, help="features: timed batches per large backbone (x5 tiny)")
    parser.add_argument("--workers", type=int, default=2, help="features: decoding threads")
    parser.add_argument("--preprocess-n", type=int, default=32, help="features: PNGs decoded and resized per size")
    parser.add_argument("--extract-n", type=int, default=256, help="features: images through extract(), twice")
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
