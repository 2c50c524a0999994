"""Are the world's expressions legible? Train a small CNN on a world's faces and test it on held-out ones.

Makes a world with ``synfer.world.make_world`` (train and test splits, fixed seed), reads both splits
back with ``synfer.data.readers.open_labelled``, trains a small independent CNN on the train split and
prints, as JSON lines: the render speed, held-out accuracy overall and per class, and the confusion
matrix (rows: true class, columns: predicted). The baseline in the same run is a ridge classifier on
raw pixels, which shows how much of the expression a linear read-out of the pixels already gets; a
logistic regression on the true AU intensities gives the ceiling that the AUs themselves allow (the
world's AU source sometimes drops a prototype AU, which can make two classes' AUs coincide).
Target: held-out accuracy >= 0.95 for the CNN.

Measured (4,000 train / 1,000 test at 32 px, 15 epochs, one thread of a shared 2-core x86 CPU, about
80 s of training): seed 0 0.983, seed 1 0.993 (ridge baseline 0.90, AU oracle 1.00 and 0.998); at
64 px, seed 0: 0.997. The errors left are faces whose AU source dropped a defining AU (anger without
AU4, contempt with only a weak dimple, happy with only a weak AU6).

    python benchmarks/world_legibility.py [--train 4000] [--test 1000] [--size 32] [--seed 0] [--epochs 15] [--threads 1]
                                          [--show-errors] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TARGET = 0.95


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def load_split(root: Path, split: str, classes: int) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Images, class indices, class names, AU intensities [N, 41] and each image's AUs as text (from the split's AU table)."""
    from synfer.aus import AUVector
    from synfer.data.au_table import read_au_table
    from synfer.data.readers import open_labelled

    dataset = open_labelled(root, split=split, classes=classes, strict=True)
    table = read_au_table(root / split / "aus.parquet")
    names = dataset.label_set.names
    images, labels, aus, vectors = [], [], [], []
    for sample in dataset:
        images.append(np.asarray(sample.image, dtype=np.uint8))
        labels.append(dataset.label_set.index(sample.label))
        image_id = Path(sample.source).relative_to(root / split).as_posix()
        row = table.row(image_id)
        aus.append(f"{image_id} {AUVector(table.scores[row], table.known[row]).to_dict()}")
        vectors.append(table.scores[row])
    return np.stack(images), np.asarray(labels, dtype=np.int64), names, np.stack(vectors), aus


class SmallCNN(nn.Module):
    """Three conv stages (16, 32, 64 channels) with batch norm, global pooling, one linear layer."""

    def __init__(self, classes: int, width: int = 16):
        super().__init__()

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )  # fmt: skip

        self.features = nn.Sequential(stage(3, width), stage(width, 2 * width), stage(2 * width, 4 * width))
        self.head = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.25


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 pixels and horizontal flips (contempt occurs on both sides, so flips keep labels)."""
    b, _, h, w = batch.shape
    padded = F.pad(batch, (2, 2, 2, 2), mode="replicate")
    dx, dy = torch.randint(0, 5, (2,), generator=generator).tolist()
    out = padded[:, :, dy : dy + h, dx : dx + w]
    flip = torch.rand(b, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def train_cnn(x: torch.Tensor, y: torch.Tensor, classes: int, epochs: int, seed: int, batch_size: int = 64) -> nn.Module:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = SmallCNN(classes)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size]
            loss = F.cross_entropy(model(augment(x[index], generator)), y[index], label_smoothing=0.05)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    return torch.cat([model(x[i : i + 256]).argmax(1) for i in range(0, len(x), 256)]).numpy()


def ridge_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, classes: int, alpha: float = 10.0) -> np.ndarray:
    a = train_x.reshape(len(train_x), -1).astype(np.float64) / 255.0
    mean = a.mean(0)
    a -= mean
    targets = np.eye(classes)[train_y]
    weights = np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ (targets - targets.mean(0)))
    return ((test_x.reshape(len(test_x), -1) / 255.0 - mean) @ weights).argmax(1)


def au_oracle_predict(train_au: np.ndarray, train_y: np.ndarray, test_au: np.ndarray, classes: int, seed: int) -> np.ndarray:
    """Logistic regression on the ground-truth AU intensities: how far the AUs alone tell the classes apart.

    The world's AU source sometimes drops a prototype AU, which can leave two classes with the same
    AUs; no classifier of the images can do better than the AUs allow, so this is the ceiling to read
    the CNN's figure against.
    """
    torch.manual_seed(seed)
    x, y = torch.from_numpy(train_au).float(), torch.from_numpy(train_y)

    def features(a: torch.Tensor) -> torch.Tensor:  # intensity and presence
        return torch.cat([a, (a > 0).float()], 1)

    model = nn.Linear(2 * x.shape[1], classes)
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(model(features(x)), y) + 1e-4 * model.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return model(features(torch.from_numpy(test_au).float())).argmax(1).numpy()


def report(name: str, truth: np.ndarray, predicted: np.ndarray, names: list[str], extra: dict) -> dict:
    k = len(names)
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    per_class = {n: round(float(confusion[i, i] / max(confusion[i].sum(), 1)), 4) for i, n in enumerate(names)}
    record = {"bench": "world_legibility", "classifier": name, "accuracy": round(float((truth == predicted).mean()), 4),
              "per_class": per_class, "confusion": confusion.tolist(), "classes": names, **extra}  # fmt: skip
    emit(record)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--show-errors", action="store_true", help="Print each misclassified test face with its AUs.")
    parser.add_argument("--out", type=Path, default=None, help="Keep the world here (default: a temporary folder).")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from synfer.world import WorldConfig, make_world

    n = args.train + args.test
    config = WorldConfig(n=n, seed=args.seed, size=args.size, splits=(args.train / n, 0.0, args.test / n), classes=args.classes)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp) / "world"
        result = make_world(config, root)
        sizes = config.split_sizes()
        emit({"bench": "world_legibility", "what": "render", "faces": result.rendered, "seconds": round(result.seconds, 2),
              "faces_per_s": round(result.rendered / max(result.seconds, 1e-9), 1), "size": args.size,
              "note": "make_world: plan, render, PNG write, AU tables; one process"})  # fmt: skip
        train_x, train_y, names, train_au, _ = load_split(root, "train", args.classes)
        test_x, test_y, _, test_au, test_aus = load_split(root, "test", args.classes)
    common = {"size": args.size, "seed": args.seed, "train": sizes["train"], "test": sizes["test"],
              "cpu": platform.processor() or platform.machine(), "threads": args.threads}  # fmt: skip
    started = time.perf_counter()
    baseline = ridge_predict(train_x, train_y, test_x, len(names))
    report("ridge-pixels (baseline)", test_y, baseline, names, {**common, "train_seconds": round(time.perf_counter() - started, 1)})
    oracle = au_oracle_predict(train_au, train_y, test_au, len(names), args.seed)
    report("au-oracle (logistic regression on the true AUs)", test_y, oracle, names, common)
    started = time.perf_counter()
    model = train_cnn(to_tensor(train_x), torch.from_numpy(train_y), len(names), args.epochs, args.seed)
    seconds = time.perf_counter() - started
    predicted = predict(model, to_tensor(test_x))
    record = report("small-cnn", test_y, predicted, names,
                    {**common, "epochs": args.epochs, "train_seconds": round(seconds, 1), "target": TARGET})  # fmt: skip
    if args.show_errors:
        for i in np.flatnonzero(predicted != test_y):
            emit({"bench": "world_legibility", "error": test_aus[i], "true": names[test_y[i]], "predicted": names[predicted[i]]})
    emit({"bench": "world_legibility", "target": TARGET, "accuracy": record["accuracy"], "meets_target": record["accuracy"] >= TARGET})
    return 0


if __name__ == "__main__":
    sys.exit(main())
