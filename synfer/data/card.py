"""The dataset card: ``README.md`` (counts, AU statistics, config, how to load) and ``preview.png``.

Both are computed from the finished shards alone, so any process that finds the dataset complete can
write them and every writer writes the same bytes. Each file goes to a temporary name of its own
(several processes may finish at once), is flushed and renamed into place.
"""

from __future__ import annotations

import os
import socket
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

from ..aus import AU_NAMES, NUM_AUS
from .dataset import SynferDataset
from .format import CARD, PREVIEW, SHARDS_DIR, TMP_SUFFIX, commit_file, index_path, shard_stem

PREVIEW_COLUMNS = 8
PREVIEW_CELL = 96  # pixels per thumbnail
PREVIEW_LABEL_WIDTH = 96
MIN_AU_SHARE = 0.01  # AUs rarer than this within an expression are left out of the card's table


@dataclass
class DatasetSummary:
    """Counts and AU statistics per expression, gathered shard by shard (memory stays flat)."""

    labels: list[str]
    counts: np.ndarray  # [K] images per expression
    au_present: np.ndarray  # [K, 41] images of the expression with the AU present
    au_intensity: np.ndarray  # [K, 41] summed intensity where present

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def au_frequency(self, k: int) -> list[tuple[str, float, float]]:
        """(AU, share of expression k's images with it, mean intensity when present), most frequent first."""
        if self.counts[k] == 0:
            return []
        share = self.au_present[k] / self.counts[k]
        mean = np.divide(self.au_intensity[k], self.au_present[k], out=np.zeros(NUM_AUS), where=self.au_present[k] > 0)
        order = sorted(range(NUM_AUS), key=lambda slot: (-share[slot], slot))
        return [(AU_NAMES[s], float(share[s]), float(mean[s])) for s in order if share[s] >= MIN_AU_SHARE]


def _matrix(column) -> np.ndarray:
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(-1, NUM_AUS)


def summarize(dataset: SynferDataset) -> DatasetSummary:
    label_set = dataset.label_set
    slot_of = {int(e): k for k, e in enumerate(label_set.expressions)}
    k = label_set.num_classes
    summary = DatasetSummary(label_set.names, np.zeros(k, np.int64), np.zeros((k, NUM_AUS), np.int64), np.zeros((k, NUM_AUS)))
    for shard in dataset.shards:
        table = pq.read_table(index_path(dataset.root, shard), columns=["label", "aus", "au_known"])
        slots = np.array([slot_of[int(v)] for v in table.column("label").to_numpy()], dtype=np.int64)
        values, known = _matrix(table.column("aus")), _matrix(table.column("au_known")).astype(bool)
        present = (values > 0) & known
        np.add.at(summary.counts, slots, 1)
        np.add.at(summary.au_present, slots, present.astype(np.int64))
        np.add.at(summary.au_intensity, slots, np.where(present, values, 0.0))
    return summary


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M" if n < 10_000_000 else "n>10M"


def describe_labels(dataset: SynferDataset) -> str:
    """How the dataset's labels were chosen, in a few words."""
    plan = dataset.manifest.get("plan", {})
    if plan.get("label") is not None:
        return f"every image labelled {dataset.label_set.names[dataset.label_set.index(plan['label'])]}"
    if plan.get("aus"):
        return "the expression whose prototype is nearest the fixed AUs"
    weights = f" {plan['weights']}" if plan.get("weights") else ""
    return f"{plan.get('distribution', 'balanced')}{weights}, exact largest-remainder counts"


def render_card(dataset: SynferDataset, summary: DatasetSummary) -> str:
    manifest = dataset.manifest
    plan, render, model = manifest.get("plan", {}), manifest.get("render", {}), manifest.get("model", {})
    last = f"{dataset.num_shards - 1:0{len(shard_stem(0))}d}"
    image_format = manifest.get("image_format", "png")
    labels = describe_labels(dataset)
    au_source = plan.get("au_source") or "prototype"
    if au_source == "fixed":
        au_source = f"fixed: {plan.get('aus')}"
    elif au_source == "empirical":
        au_source = f"empirical: drawn from {Path(str(plan.get('au_table'))).name} (sha256 {str(plan.get('au_table_sha256'))[:12]})"
    lines = [
        "---",
        "pretty_name: synfer synthetic facial expressions",
        "task_categories:",
        "- image-classification",
        "tags:",
        "- synthetic",
        "- facial-expression-recognition",
        "- action-units",
        "size_categories:",
        f"- {_size_category(dataset.n)}",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        f"    path: {SHARDS_DIR}/*.tar",
        "---",
        "",
        f"# Synthetic facial expressions: {dataset.n:,} images",
        "",
        f"Made with `synfer generate` (synfer {manifest.get('synfer_version', '?')}). Each image was generated "
        "from a caption and a target AU vector; its label is the expression it was asked for.",
        "",
        "![one row per expression](preview.png)",
        "",
        "## Images per expression",
        "",
        "| expression | images | share |",
        "| --- | ---: | ---: |",
    ]
    for name, count in zip(summary.labels, summary.counts):
        lines.append(f"| {name} | {int(count):,} | {count / max(summary.total, 1):.1%} |")
    lines += [
        f"| **total** | **{summary.total:,}** | |",
        "",
        "## AUs per expression",
        "",
        f"Share of each expression's images with the AU present (mean intensity 0-5 when present); "
        f"AUs under {MIN_AU_SHARE:.0%} are left out.",
        "",
        "| expression | AUs |",
        "| --- | --- |",
    ]
    for k, name in enumerate(summary.labels):
        aus = ", ".join(f"{au} {share:.0%} ({mean:.1f})" for au, share, mean in summary.au_frequency(k)) or "none"
        lines.append(f"| {name} | {aus} |")
    lines += [
        "",
        "## Config",
        "",
        f"- model: `{model.get('name')}`" + (f" with adapter `{model['adapter']}`" if model.get("adapter") else ""),
        f"- labels: {dataset.label_set.name}; {labels}",
        f"- AUs: {au_source}",
        f"- sampling: {render.get('steps')} steps, guidance scale {render.get('guidance_scale')}, "
        f"AU scale {render.get('au_scale')}, {render.get('width')}x{render.get('height')} {image_format}",
        f"- base seed {manifest.get('base_seed')}; sample i's seed, label, AUs and caption depend only on the config and i",
        f"- {dataset.num_shards} shards of {manifest.get('shard_size')} samples; the full config is in `manifest.json`",
        "",
        "## Loading",
        "",
        "Each sample is `<key>." + image_format + "` plus `<key>.json` (label, label_name, aus, au_intensities, "
        "prompt, seed, attributes) in a webdataset tar; `shards/NNNNN.parquet` indexes each tar.",
        "",
        "```python",
        "import webdataset as wds",
        f'ds = wds.WebDataset("{SHARDS_DIR}/{{{shard_stem(0)}..{last}}}.tar", shardshuffle=False).decode("pil")',
        f'image, meta = next(iter(ds.to_tuple("{image_format}", "json")))',
        "",
        "from datasets import load_dataset  # Hugging Face datasets",
        'ds = load_dataset("webdataset", data_files={"train": "' + SHARDS_DIR + '/*.tar"}, split="train")',
        'ds[0]["json"]["label_name"]',
        'index = load_dataset("parquet", data_files="' + SHARDS_DIR + '/*.parquet", split="train")  # no images',
        "```",
        "",
    ]
    return "\n".join(lines)


def _preview_keys(dataset: SynferDataset, per_row: int) -> dict[int, list[tuple[int, str]]]:
    """The first ``per_row`` (shard, image member) of each expression, in key order."""
    wanted = {int(e): [] for e in dataset.label_set.expressions}
    for shard in dataset.shards:
        table = pq.read_table(index_path(dataset.root, shard), columns=["label", "image"])
        for label, image in zip(table.column("label").to_pylist(), table.column("image").to_pylist()):
            if label in wanted and len(wanted[label]) < per_row:
                wanted[label].append((shard, image))
        if all(len(v) == per_row for v in wanted.values()):
            break
    return wanted


def render_preview(dataset: SynferDataset, per_row: int = PREVIEW_COLUMNS, cell: int = PREVIEW_CELL) -> Image.Image:
    """A grid with one row per expression of the label set and up to ``per_row`` samples each."""
    chosen = _preview_keys(dataset, per_row)
    by_shard: dict[int, set[str]] = {}
    for entries in chosen.values():
        for shard, member in entries:
            by_shard.setdefault(shard, set()).add(member)
    thumbnails: dict[str, Image.Image] = {}
    for shard, members in by_shard.items():
        with tarfile.open(dataset.tar_path(shard)) as tar:
            for member in tar:
                if member.name in members:
                    with Image.open(tar.extractfile(member)) as image:
                        thumb = image.convert("RGB")
                    thumb.thumbnail((cell, cell), Image.Resampling.LANCZOS)
                    if max(thumb.size) < cell:  # small images (the tiny preset) are enlarged without blurring
                        scale = cell / max(thumb.size)
                        thumb = thumb.resize((round(thumb.width * scale), round(thumb.height * scale)), Image.Resampling.NEAREST)
                    thumbnails[member.name] = thumb
    expressions = dataset.label_set.expressions
    grid = Image.new("RGB", (PREVIEW_LABEL_WIDTH + per_row * cell, len(expressions) * cell), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for row, expression in enumerate(expressions):
        draw.text((6, row * cell + cell // 2), expression.label, fill="black", font=font, anchor="lm")
        for column, (_, member) in enumerate(chosen[int(expression)]):
            thumb = thumbnails[member]
            x = PREVIEW_LABEL_WIDTH + column * cell + (cell - thumb.width) // 2
            grid.paste(thumb, (x, row * cell + (cell - thumb.height) // 2))
    return grid


def _write_atomically(path: Path, write) -> None:
    """``write(tmp)`` to a temporary name no other process uses (on any machine), then flush and rename."""
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}{TMP_SUFFIX}")
    try:
        write(tmp)
        commit_file(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass
class CardOutput:
    readme: Path
    preview: Path
    written: list[Path] = field(default_factory=list)  # empty when both already existed


def write_card(dataset: SynferDataset, force: bool = False) -> CardOutput:
    """Write ``README.md`` and ``preview.png`` into a complete dataset, unless both exist (or ``force``)."""
    output = CardOutput(dataset.root / CARD, dataset.root / PREVIEW)
    if not force and output.readme.is_file() and output.preview.is_file():
        return output
    text = render_card(dataset, summarize(dataset))
    _write_atomically(output.readme, lambda tmp: tmp.write_text(text))
    preview = render_preview(dataset)
    _write_atomically(output.preview, lambda tmp: preview.save(tmp, format="PNG"))
    output.written += [output.readme, output.preview]
    return output
