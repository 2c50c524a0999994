"""Fitting a FERAnno head: features through the frozen UNet once (cached as shards), then the head.

First every image goes once through the frozen diffusion model
(:class:`~synfer.labelers.feranno.FERAnnoFeatureExtractor`); with a cache folder the features are
written as shards (``<split>-00000.safetensors``, each renamed into place when complete), so a rerun, or
another head trained on the same images, skips the UNet entirely. Second, the small head
(:class:`~synfer.labelers.feranno.FERAnnoHead`) trains on those features with accelerate's standard
loop. :func:`synfer.train.annotator.train_annotator` is the stage around it.

Under ``accelerate launch`` each process extracts the cache shards ``s`` with ``s % world_size ==
rank`` and then reads them all; that needs a cache folder every process can see.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from ..data.format import atomic_path
from ..errors import ConfigError, DatasetError
from ..expressions import LabelSet
from ..labelers.feranno import (
    FEATURES_FORMAT,
    FERAnnoFeatureExtractor,
    FERAnnoFeatures,
    FERAnnoHead,
)
from . import make_accelerator
from .annotator import HeadTrainingConfig, HeadTrainingOutput

# -- features ---------------------------------------------------------------------------------------


@dataclass
class LabelledFeatures:
    features: FERAnnoFeatures
    labels: torch.Tensor  # class indices into the label set
    extracted: int = 0


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _pixels(image) -> torch.Tensor:
    array = np.array(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)


def _content_hash(chunk: list, indices: list[int]) -> str:
    """What a cache shard was made from: every image's pixels and size, and its label."""
    digest = hashlib.sha256()
    for item, index in zip(chunk, indices):
        image = item.image.convert("RGB")
        digest.update(f"{image.size}:{index}".encode())
        digest.update(image.tobytes())
    return digest.hexdigest()


def _class_indices(chunk: list, label_set: LabelSet) -> list[int]:
    return [label_set.index(item.label) for item in chunk]


def _extract(extractor: FERAnnoFeatureExtractor, chunk: list, batch_size: int) -> FERAnnoFeatures:
    parts = []
    for start in range(0, len(chunk), batch_size):
        items = chunk[start : start + batch_size]
        if len({item.image.size for item in items}) == 1:
            images = torch.stack([_pixels(item.image) for item in items])
        else:  # real datasets mix sizes: resize each the way the extractor resizes a batch
            images = torch.cat([extractor.resize(_pixels(item.image)[None]) for item in items])
        # float32: at a small timestep images differ by a small fraction of the features' offset,
        # which float16 would round away.
        parts.append(extractor(images).to(device="cpu", dtype=torch.float32))
    return FERAnnoFeatures.cat(parts)


def _read_shard(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        return metadata, {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (safe_open is not iterable)


def _shard_metadata(path: Path) -> dict:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except Exception:  # an unreadable file is simply not a valid cache shard
        return {}


def labelled_features(
    extractor: FERAnnoFeatureExtractor,
    items: Iterable,
    label_set: LabelSet,
    *,
    split: str = "train",
    cache_dir: str | Path | None = None,
    batch_size: int = 16,
    shard_size: int = 1024,
    accelerator=None,
    on_progress: Callable[[int], None] | None = None,
) -> LabelledFeatures:
    """Features and class indices of ``items``; cached as shards in ``cache_dir`` when given.

    A cache shard is reused only when it was made by the same extractor (settings and weights) from the
    same images and labels; otherwise it is made again.
    """
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    if world > 1 and cache_dir is None:
        raise ConfigError("training on several processes needs a feature cache folder that all of them can see")
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DatasetError(f"cannot write the feature cache {cache}: {error.strerror or error}") from None
    extractor_id = extractor.fingerprint()
    in_memory: list[FERAnnoFeatures] = []
    labels: list[int] = []
    shard_paths: list[Path] = []
    extracted = 0
    for shard, chunk in enumerate(_chunks(items, shard_size)):
        indices = _class_indices(chunk, label_set)
        labels.extend(indices)
        if cache is None:
            in_memory.append(_extract(extractor, chunk, batch_size))
            extracted += len(chunk)
        else:
            path = cache / f"{split}-{shard:05d}.safetensors"
            shard_paths.append(path)
            expected = {"format": FEATURES_FORMAT, "extractor": extractor_id, "content": _content_hash(chunk, indices)}
            if shard % world == rank and {k: _shard_metadata(path).get(k) for k in expected} != expected:
                features = _extract(extractor, chunk, batch_size)
                tensors = {**features.tensors(), "labels": torch.tensor(indices, dtype=torch.int64)}
                with atomic_path(path) as tmp:
                    save_file(tensors, str(tmp), metadata={**expected, "count": str(len(chunk))})
                extracted += len(chunk)
        if on_progress is not None:
            on_progress(len(chunk))
    if not labels:
        raise DatasetError(f"no {split} images to extract features from")
    if cache is None:
        return LabelledFeatures(FERAnnoFeatures.cat(in_memory), torch.tensor(labels), extracted)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    parts = []
    for path in shard_paths:
        metadata, tensors = _read_shard(path)
        if metadata.get("extractor") != extractor_id:
            raise DatasetError(f"feature cache shard {path} was made by another extractor or model")
        tensors.pop("labels")
        parts.append(FERAnnoFeatures.from_tensors(tensors))
    return LabelledFeatures(FERAnnoFeatures.cat(parts), torch.tensor(labels), extracted)


# -- training ---------------------------------------------------------------------------------------


class _FeatureDataset(torch.utils.data.Dataset):
    def __init__(self, data: LabelledFeatures):
        self.data = data

    def __len__(self) -> int:
        return len(self.data.labels)

    def __getitem__(self, i: int):
        features = self.data.features
        return tuple(f[i].float() for f in features.features), features.attention[i].float(), self.data.labels[i]


@torch.no_grad()
def evaluate_head(head: FERAnnoHead, data: LabelledFeatures, batch_size: int = 256, device=None) -> float:
    """Top-1 accuracy of ``head`` on precomputed features."""
    device = device or next(head.parameters()).device
    was_training = head.training
    head.eval()
    correct = 0
    for start in range(0, len(data.labels), batch_size):
        rows = slice(start, start + batch_size)
        features = [f[rows].to(device, torch.float32) for f in data.features.features]
        logits = head(features, data.features.attention[rows].to(device, torch.float32))
        correct += int((logits.argmax(-1).cpu() == data.labels[rows]).sum())
    head.train(was_training)
    return correct / max(len(data.labels), 1)


def fit_head(
    extractor: FERAnnoFeatureExtractor,
    items: Iterable,
    label_set: LabelSet,
    config: HeadTrainingConfig = HeadTrainingConfig(),
    *,
    val_items: Iterable | None = None,
    cache_dir: str | Path | None = None,
    accelerator=None,
    on_features: Callable[[int], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> HeadTrainingOutput:
    """Train a FERAnno head for ``extractor`` on labelled ``items`` (and report accuracy on ``val_items``).

    ``on_features(k)`` is called after each chunk of ``k`` images has its features, ``on_epoch(entry)``
    with each epoch's history entry.
    """
    from accelerate.utils import set_seed
    from diffusers.optimization import get_cosine_schedule_with_warmup

    accelerator = accelerator or make_accelerator(mixed_precision=config.mixed_precision, cpu=extractor.device.type == "cpu")
    set_seed(config.seed)
    common = dict(
        cache_dir=cache_dir,
        batch_size=config.feature_batch_size,
        shard_size=config.cache_shard_size,
        accelerator=accelerator,
        on_progress=on_features,
    )
    train = labelled_features(extractor, items, label_set, split="train", **common)
    val = labelled_features(extractor, val_items, label_set, split="val", **common) if val_items is not None else None

    head = FERAnnoHead.for_extractor(
        extractor, label_set, hidden_dim=config.hidden_dim, num_heads=config.num_heads, dropout=config.dropout
    )
    head.fit_normalization(train.features)
    loader = torch.utils.data.DataLoader(
        _FeatureDataset(train),
        batch_size=config.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(config.seed),
    )
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    total_steps = config.epochs * math.ceil(len(loader) / accelerator.num_processes)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(config.warmup_fraction * total_steps), total_steps)
    head, optimizer, loader, scheduler = accelerator.prepare(head, optimizer, loader, scheduler)

    history = []
    for epoch in range(config.epochs):
        head.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for features, attention, labels in loader:
            with accelerator.autocast():
                logits = head(features, attention)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            loss_sum += float(loss.detach()) * len(labels)
            correct += int((logits.argmax(-1) == labels).sum())
            seen += len(labels)
        entry = {"epoch": epoch + 1, "loss": round(loss_sum / seen, 6), "train_accuracy": round(correct / seen, 6)}
        if val is not None:
            entry["val_accuracy"] = round(evaluate_head(accelerator.unwrap_model(head), val, device=accelerator.device), 6)
        history.append(entry)
        if on_epoch is not None:
            on_epoch(entry)

    trained = accelerator.unwrap_model(head).to("cpu").eval()
    counts = np.bincount(train.labels.numpy(), minlength=label_set.num_classes)
    return HeadTrainingOutput(
        head=trained,
        history=history,
        train_size=len(train.labels),
        val_size=len(val.labels) if val is not None else 0,
        class_counts={name: int(c) for name, c in zip(label_set.names, counts)},
        extracted=train.extracted + (val.extracted if val is not None else 0),
    )
