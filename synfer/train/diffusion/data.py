"""Training examples for the diffusion stages: which images, in which order, flipped or not.

The order of epoch ``e`` is a permutation drawn from (seed, e) alone; each optimizer step takes
``batch_size x processes x accumulation`` consecutive positions of it, process ``r`` its slice of
every micro-batch; the remainder of an epoch that fills no whole step is left out. Whether example
``j`` is flipped in epoch ``e`` is a function of (seed, e, j). So the examples of step ``s`` are a
pure function of the options and ``s``, which is what lets ``--resume`` continue exactly, with any
number of DataLoader workers.

Images are resized so the shorter side is the resolution, centre-cropped and scaled to [-1, 1];
a flip mirrors the image and, for the adapter, swaps the left and right AU slots
(``synfer.aus.MIRRORED_SLOTS``). With a latent cache an example carries the VAE's moments
(mean and log-variance) of the (flipped) image instead of its pixels, and its caption's text
embedding instead of the caption.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ...aus import MIRRORED_SLOTS
from ...errors import DatasetError

ORDER_STREAM = 1
FLIP_STREAM = 2


def open_training_data(path: str, *, layout: str | None = None, image_column: str = "image", caption_column: str = "caption",
                       id_column: str | None = None):
    """An image-caption dataset (``synfer.data.captions.open_captioned``) and a one-line error for an empty one."""
    from ...data.captions import open_captioned

    dataset = open_captioned(path, layout=layout, image_column=image_column, caption_column=caption_column, id_column=id_column)
    if len(dataset) == 0:
        raise DatasetError(f"{path} holds no captioned images")
    return dataset


def dataset_fingerprint(dataset, advance=None) -> str:
    """The dataset's content fingerprint: its own ``fingerprint()`` when it has one, else ids, captions and pixels."""
    if hasattr(dataset, "fingerprint"):
        return dataset.fingerprint(advance) if advance is not None else dataset.fingerprint()
    digest = hashlib.sha256(f"synfer-in-memory-v1\0{len(dataset)}\0".encode())
    for i in range(len(dataset)):
        item = dataset[i]
        pixels = hashlib.sha256(item.image.convert("RGB").tobytes()).hexdigest()
        digest.update(f"{item.id}\0{item.caption}\0{item.image.size}\0{pixels}\n".encode())
    return digest.hexdigest()


def dataset_ids(dataset) -> list[str]:
    return list(dataset.ids) if hasattr(dataset, "ids") else [dataset[i].id for i in range(len(dataset))]


def dataset_captions(dataset) -> list[str]:
    return list(dataset.captions) if hasattr(dataset, "captions") else [dataset[i].caption for i in range(len(dataset))]


def _draw(*words: int) -> int:
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1)[0])


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the ``n`` examples in ``epoch``: a function of (seed, epoch) only."""
    return np.random.default_rng(np.random.SeedSequence([seed, ORDER_STREAM, epoch])).permutation(n)


def is_flipped(seed: int, epoch: int, example: int) -> bool:
    return bool(_draw(seed, FLIP_STREAM, epoch, example) & 1)


@dataclass(frozen=True)
class BatchPlan:
    """How examples form steps: ``batch_size`` per process, ``processes``, ``accumulation`` micro-batches per step."""

    examples: int
    batch_size: int
    processes: int = 1
    process_index: int = 0
    accumulation: int = 1
    seed: int = 0

    @property
    def micro_batches_per_epoch(self) -> int:
        return self.steps_per_epoch * self.accumulation

    @property
    def steps_per_epoch(self) -> int:
        return self.examples // (self.batch_size * self.processes * self.accumulation)

    def check(self) -> None:
        if self.steps_per_epoch < 1:
            need = self.batch_size * self.processes * self.accumulation
            raise DatasetError(
                f"{self.examples} training images are fewer than one optimizer step takes ({self.batch_size} per batch x "
                f"{self.processes} process(es) x {self.accumulation} accumulation = {need}); lower --batch-size"
            )

    def micro_batches(self, epoch: int, start: int = 0) -> list[list[tuple[int, int]]]:
        """This process's micro-batches of ``epoch`` from micro-batch ``start`` on, as (epoch, example) keys."""
        order = epoch_order(self.examples, self.seed, epoch)
        width = self.batch_size * self.processes
        batches = []
        for b in range(start, self.micro_batches_per_epoch):
            chunk = order[b * width : (b + 1) * width]
            mine = chunk[self.process_index * self.batch_size : (self.process_index + 1) * self.batch_size]
            batches.append([(epoch, int(j)) for j in mine])
        return batches


def prepare_image(image: Image.Image, resolution: int, flip: bool = False) -> torch.Tensor:
    """[3, R, R] in [-1, 1]: shorter side resized to ``resolution`` (bicubic, antialiased), centre crop, optional mirror."""
    image = image.convert("RGB")
    width, height = image.size
    scale = resolution / min(width, height)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def latent_key(fingerprint: str, image_id: str, resolution: int, flip: bool) -> str:
    """The latent cache key of one image: the dataset's content fingerprint, the image's id, size and mirroring."""
    return hashlib.sha256(f"{fingerprint}\0{image_id}\0{resolution}\0{int(flip)}".encode()).hexdigest()[:40]


def text_key(caption: str) -> str:
    return hashlib.sha256(caption.encode()).hexdigest()[:40]


class TrainingExamples(torch.utils.data.Dataset):
    """Examples addressed by (epoch, example) keys; ``example`` indexes ``positions`` (rows of ``dataset`` used).

    Args:
        dataset: a caption dataset (``dataset[i]`` has ``.id``, ``.image``, ``.caption``).
        positions: the dataset rows that take part (e.g. those with AUs).
        aus, known: [len(positions), 41] intensities and known-mask (the adapter stage), or None.
        latents, texts: :class:`~synfer.train.diffusion.cache.TensorCache` readers, or None to read pixels and captions.
        pixels: whether examples need pixels at all (False when every latent comes from the cache).
    """

    def __init__(self, dataset, positions: Sequence[int], resolution: int, *, seed: int, random_flip: bool, fingerprint: str,
                 aus: np.ndarray | None = None, known: np.ndarray | None = None, latents=None, texts=None):
        self.dataset = dataset
        self.positions = list(positions)
        self.resolution = resolution
        self.seed = seed
        self.random_flip = random_flip
        self.fingerprint = fingerprint
        all_ids, all_captions = dataset_ids(dataset), dataset_captions(dataset)
        self.ids = [all_ids[p] for p in self.positions]
        self.captions = [all_captions[p] for p in self.positions]
        self.aus = aus
        self.known = known
        self.latents = latents
        self.texts = texts
        self._mirror = np.asarray(MIRRORED_SLOTS)

    def __len__(self) -> int:
        return len(self.positions)

    def flipped(self, epoch: int, example: int) -> bool:
        return self.random_flip and is_flipped(self.seed, epoch, example)

    def latent_key(self, example: int, flip: bool) -> str:
        return latent_key(self.fingerprint, self.ids[example], self.resolution, flip)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, example = key
        flip = self.flipped(epoch, example)
        caption = self.captions[example]
        item: dict = {"example": example, "flip": flip, "caption": caption}
        if self.latents is not None:
            item["latent_moments"] = self.latents.get(self.latent_key(example, flip))
        else:
            image = self.dataset[self.positions[example]].image
            item["pixel_values"] = prepare_image(image, self.resolution, flip)
        if self.texts is not None:
            item["text_embeds"] = self.texts.get(text_key(caption))
        if self.aus is not None:
            values, known = self.aus[example], self.known[example]
            if flip:
                values, known = values[self._mirror], known[self._mirror]
            item["aus"] = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
            item["known"] = torch.from_numpy(np.ascontiguousarray(known, dtype=bool))
        return item


class Collate:
    """Stacks examples into a batch; tokenizes the captions when their embeddings do not come from a cache."""

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer

    def __call__(self, items: list[dict]) -> dict:
        batch: dict = {"example": torch.tensor([i["example"] for i in items]), "caption": [i["caption"] for i in items]}
        for name in ("pixel_values", "latent_moments", "text_embeds", "aus", "known"):
            if name in items[0]:
                batch[name] = torch.stack([i[name] for i in items])
        if "text_embeds" not in batch and self.tokenizer is not None:
            batch["input_ids"] = tokenize(self.tokenizer, batch["caption"])
        return batch


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids


def batch_loader(examples: TrainingExamples, batches: list[list[tuple[int, int]]], collate: Collate, workers: int,
                 pin_memory: bool = False):
    """A DataLoader over exactly ``batches`` (in order), decoded by ``workers`` processes."""
    return torch.utils.data.DataLoader(
        examples, batch_sampler=batches, collate_fn=collate, num_workers=workers, pin_memory=pin_memory,
        persistent_workers=False,
    )
