"""Downstream training throughput: the real data pipeline against the same model fed pre-loaded tensors.

The pipeline variant is what ``synfer train-downstream`` runs: a reader on disk (an image folder of
JPEGs, or a synfer dataset of PNG shards read with webdataset), ``TrainStream`` decoding and
resizing in DataLoader worker processes, uint8 batches moved to the device. The baseline trains
the same model with the same step (kornia augmentation on the device, forward, backward, AdamW) on
the same images decoded once into memory. Rounds alternate between the two so that machine load
affects both alike; the median images/s of each is kept. A ratio near 1 means the loader is not
the bottleneck (target >= 0.8).

On a CPU the decoding workers and the model share the same cores, so the comparison only means
something when one training image costs much more than decoding one, as it does on a GPU machine
with a worker per core: the default is the real setting, ResNet-18 at 224 px (a tiny model would
measure little but PNG decoding). On a small shared CPU the model gets one intra-op thread: the
other core is the decoding worker's, and two threads that wait for each other at every op are
slow whenever other processes hold a core. A GPU run (``--device cuda --batch 256 --workers 8``)
measures the real case.

    python benchmarks/bench_train.py [--backbone resnet18] [--image-size 224] [--batch 16] [--workers 1]
                                     [--rounds 3] [--batches 4] [--source folder synfer] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

TARGET_RATIO = 0.8


def fake_face(index: int, size: int) -> Image.Image:
    """Smooth random content: compresses and decodes like a photo, not like flat colour or noise."""
    rng = np.random.default_rng(index)
    small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.BICUBIC).filter(ImageFilter.GaussianBlur(2))


def write_folder(root: Path, n: int, size: int) -> Path:
    from synfer.expressions import Expression

    for i in range(n):
        folder = root / Expression(i % 8).label
        folder.mkdir(parents=True, exist_ok=True)
        fake_face(i, size).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def write_synfer(root: Path, n: int, size: int, shard_size: int = 100) -> Path:
    from synfer.data.format import MANIFEST, SCHEMA_VERSION, SHARDS_DIR, num_shards, sample_key, write_json
    from synfer.data.writer import ShardWriter
    from synfer.expressions import Expression

    (root / SHARDS_DIR).mkdir(parents=True)
    for shard in range(num_shards(n, shard_size)):
        with ShardWriter(root, shard, "png") as writer:
            for i in range(shard * shard_size, min(n, (shard + 1) * shard_size)):
                row = {"key": sample_key(i), "index": i, "shard": shard, "label": i % 8, "label_name": Expression(i % 8).label,
                       "aus": [0.0] * 41, "au_known": [True] * 41, "prompt": "", "seed": i, "height": size, "width": size,
                       "attributes": "{}"}
                writer.write(row, fake_face(i, size), {"key": row["key"]})
    write_json(root / MANIFEST, {"schema_version": SCHEMA_VERSION, "n": n, "shard_size": shard_size,
                                 "num_shards": num_shards(n, shard_size), "label_set": "affectnet8"})
    return root


class Step:
    """One optimizer step of the downstream trainer (without accelerate's bookkeeping)."""

    def __init__(self, args, device):
        from synfer.models.classifier import create_classifier
        from synfer.train.augment import face_augmentation

        torch.manual_seed(0)
        self.model = create_classifier(args.backbone, "affectnet8", input_size=args.image_size).to(device).train()
        self.augment = face_augmentation(args.image_size).to(device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.device = device

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        images = self.augment(images.to(self.device, non_blocking=True).float().div_(255))
        logits = self.model(images).float()
        loss = F.cross_entropy(logits, targets.to(self.device), ignore_index=-100, label_smoothing=0.1)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def timed(step: Step, batches, warmup: int, count: int, batch_size: int) -> float:
    """Images/s over ``count`` batches after ``warmup`` untimed ones (loader start-up included in warm-up)."""
    iterator = iter(batches)
    for _ in range(warmup):
        batch = next(iterator)
        step(batch["image"], batch["target"])
    start = time.perf_counter()
    for _ in range(count):
        batch = next(iterator)
        step(batch["image"], batch["target"])
    return count * batch_size / (time.perf_counter() - start)


def preloaded_batches(images: torch.Tensor, targets: torch.Tensor, batch_size: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            chosen = order[start : start + batch_size]
            yield {"image": images[chosen], "target": targets[chosen]}


def bench_source(name: str, root: Path, args, device) -> None:
    from synfer.data.readers import open_labelled
    from synfer.train.data import EvalStream, Source, StreamShape, TrainStream, make_loader

    dataset = open_labelled(root)
    size = args.image_size
    # The baseline's memory: the same images, decoded and resized once, exactly as the workers do.
    loaded = list(make_loader(EvalStream(dataset, dataset.label_set, size), 64, 0, 0))
    images, targets = torch.cat([b["image"] for b in loaded]), torch.cat([b["target"] for b in loaded])
    stream = TrainStream([Source(dataset, len(dataset))], dataset.label_set, size, 0,
                         StreamShape(args.batch, workers=args.workers), shuffle_buffer=args.batch * 4)
    pin = device.type == "cuda"
    step = Step(args, device)
    rates: dict[str, list[float]] = {"preloaded": [], "pipeline": []}
    for round_index in range(args.rounds):
        rates["preloaded"].append(timed(step, preloaded_batches(images, targets, args.batch, round_index), 1, args.batches, args.batch))
        stream.set_epoch(round_index)
        loader = make_loader(stream, args.batch, args.workers, 0, pin_memory=pin)
        rates["pipeline"].append(timed(step, loader, 1, args.batches, args.batch))
    common = {"bench": "train", "source": name, "backbone": args.backbone, "image_size": size, "batch": args.batch,
              "workers": args.workers, "device": str(device), "torch_threads": torch.get_num_threads()}
    for variant, values in rates.items():
        print(json.dumps({**common, "variant": variant, "images_per_s": round(statistics.median(values), 2),
                          "rounds": [round(v, 2) for v in values]}), flush=True)
    ratio = statistics.median(rates["pipeline"]) / statistics.median(rates["preloaded"])
    print(json.dumps({**common, "metric": "pipeline_vs_preloaded", "ratio": round(ratio, 3),
                      "target_ratio": TARGET_RATIO, "meets_target": ratio >= TARGET_RATIO}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=4, help="timed batches per round and variant")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of the training process (CPU)")
    parser.add_argument("--source", nargs="+", default=["folder", "synfer"], choices=["folder", "synfer"])
    parser.add_argument("--folder-size", type=int, default=256, help="side of the JPEGs (AffectNet-like crops)")
    parser.add_argument("--synfer-size", type=int, default=512, help="side of the PNGs (synfer generate's default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from synfer.cli._common import quiet_libraries

    quiet_libraries()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    n = args.batch * (args.batches + 1) * 2  # two rounds' worth: every round reads fresh images
    with tempfile.TemporaryDirectory() as tmp:
        writers = {"folder": (write_folder, args.folder_size), "synfer": (write_synfer, args.synfer_size)}
        for name in args.source:
            write, side = writers[name]
            bench_source(name, write(Path(tmp) / name, n, side), args, device)


if __name__ == "__main__":
    sys.exit(main())
