"""Making a dataset: shard by shard, batch by batch, from a plan and a pipeline.

A shard is the unit of work and of completion. Its tar and then its index are renamed into place
when it is complete; a shard with an index is never touched again, so rerunning the same command
resumes where a crash stopped. Process ``rank`` of ``world_size`` makes the shards ``s`` with
``s % world_size == rank`` and needs no communication with the others: rank 0 writes the manifest,
the other ranks wait for it to appear on the (shared) filesystem, and whichever process sees every
shard finished writes the dataset card.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..aus import NUM_AUS
from ..data.format import (
    CARD,
    LABELS_DIR,
    MANIFEST,
    PREVIEW,
    SCHEMA_VERSION,
    SHARDS_DIR,
    check_image_format,
    done_shards,
    index_path,
    num_shards,
    read_manifest,
    shard_range,
    tar_path,
)
from ..data.run_folder import ResumeRules, RunFolder
from ..errors import ConfigError, DatasetError
from ..pipelines.schedulers import MODEL_SCHEDULER
from ..pipelines.speed import MODEL_VAE_DTYPE, check_vae_dtype
from ..prompts import DEFAULT_CAPTION_STYLE, PHOTO_NEGATIVE_PROMPT
from .batching import BatchSizer, free_device_memory, is_out_of_memory
from .plan import PlanConfig, Planner, SamplePlan

if TYPE_CHECKING:
    from ..pipelines.guidance import SemanticGuidance
    from ..pipelines.inversion import LayoutReferences

logger = logging.getLogger(__name__)

DEFAULT_WAIT_TIMEOUT = 900.0  # seconds a rank > 0 waits for rank 0's manifest (model loading included)
DEFAULT_WRITER_THREADS = 2  # image-encoding threads beside the sampling loop (0: encode inline)


@dataclass(frozen=True)
class RenderConfig:
    """How each image is made from its plan (these settings change the samples too)."""

    steps: int = 50
    guidance_scale: float = 7.5
    au_scale: float = 1.0
    height: int = 512
    width: int = 512
    negative_prompt: str = PHOTO_NEGATIVE_PROMPT  # the template captions' (generate passes the style's own)
    image_format: str = "png"
    shard_size: int = 1000
    scheduler: str = MODEL_SCHEDULER  # a name in synfer.pipelines.schedulers.SCHEDULERS
    # Speed levers that may change images in their last bits (synfer.pipelines.speed); off unless asked.
    compile: bool = False
    channels_last: bool = False
    vae_dtype: str = MODEL_VAE_DTYPE
    # Optional steering; each serialises itself into the manifest (settings and weight hashes).
    guidance: SemanticGuidance | None = None  # target labels are filled in per batch from the plans
    layout: LayoutReferences | None = None

    def __post_init__(self):
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.shard_size < 1:
            raise ConfigError(f"shard size must be >= 1, got {self.shard_size}")
        if self.height < 8 or self.width < 8:
            raise ConfigError(f"height and width must be >= 8, got {self.height}x{self.width}")
        check_image_format(self.image_format)
        check_vae_dtype(self.vae_dtype)

    def to_dict(self) -> dict:
        """The manifest's ``render`` entry; guidance and layout appear only when used (older manifests match)."""
        plain = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("guidance", "layout")}
        for name in ("guidance", "layout"):
            if getattr(self, name) is not None:
                plain[name] = getattr(self, name).to_dict()
        return plain


@dataclass
class ShardWork:
    """What :func:`generate_dataset` did: samples made now, shards made now and shards found finished."""

    out: Path
    made: int = 0  # samples made by this process in this run
    skipped_shards: list[int] = field(default_factory=list)
    made_shards: list[int] = field(default_factory=list)


def build_manifest(planner: Planner, render: RenderConfig, model: dict) -> dict:
    config = planner.config
    return {
        "schema_version": SCHEMA_VERSION,
        "synfer_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n": config.n,
        "shard_size": render.shard_size,
        "num_shards": num_shards(config.n, render.shard_size),
        "base_seed": config.base_seed,
        "label_set": planner.label_set.name,
        "image_format": render.image_format,
        "plan": config.to_dict(),
        "render": render.to_dict(),
        "model": model,
        "label_counts": {e.label: c for e, c in planner.counts.items()},
        "label_adjusted": list(planner.adjusted),  # the samples whose label depends on n (see synth.plan)
    }


# What decides a dataset's samples; the rest of a manifest (creation time, version, where the model was
# loaded from, label counts derived from n) is recorded, not compared. The AU table counts by its
# content hash, not its path, so a resume may find it under another mount point. A larger n grows the
# dataset in place; every other change is refused unless --overwrite.
DATASET_RULES = ResumeRules(
    compare=("n", "shard_size", "base_seed", "label_set", "image_format", "plan", "render", "model.components.*.sha256"),
    ignore=frozenset({"plan.au_table", "plan.prompt_file"}),  # paths: their hashes are compared
    may_grow=frozenset({"n", "plan.n"}),
    # Options added since schema version 1, as datasets made before them were made.
    defaults={
        "render.scheduler": MODEL_SCHEDULER,
        "plan.captions": DEFAULT_CAPTION_STYLE,
        "render.compile": False,
        "render.channels_last": False,
        "render.vae_dtype": MODEL_VAE_DTYPE,
        "plan.prompt_file": None,
        "plan.prompt_file_sha256": None,
    },
)
_RESUME_HINT = "use the same options to resume, another --out, or --overwrite to replace it"


def dataset_folder(out: Path) -> RunFolder:
    return RunFolder(out, MANIFEST, "dataset", read=read_manifest)


def _clear_dataset(out: Path) -> None:
    """What --overwrite removes: the dataset's own files (a foreign folder's other files stay)."""
    for name in (SHARDS_DIR, LABELS_DIR):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in (MANIFEST, CARD, PREVIEW):
        (out / name).unlink(missing_ok=True)


def open_dataset(out: Path, manifest: dict, planner: Planner, overwrite: bool = False) -> int | None:
    """Create ``out`` with ``manifest``, resume the same dataset there, or grow a smaller one to it.

    Returns the previous n when the dataset grew, else None. A dataset made with another config is
    refused unless ``overwrite``, which removes it; so is a smaller n (a dataset never shrinks).
    """
    folder = dataset_folder(out)
    status = folder.open(manifest, DATASET_RULES, overwrite=overwrite, hint=_RESUME_HINT, clear=_clear_dataset)
    try:
        (Path(out) / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DatasetError(f"cannot write to --out {out}: {error.strerror or error}") from None
    if status.state != "grown":
        return None
    previous = int(status.stored["n"])
    grow_dataset(out, status.stored, manifest, planner)
    return previous


def grow_dataset(out: Path, stored: dict, manifest: dict, planner: Planner) -> list[int]:
    """Bring a finished-or-not dataset made for a smaller n in line with ``manifest`` (same config, larger n).

    Finished shards that lie wholly inside the old n stay as they are, except any whose samples the
    new n plans differently (only samples in :attr:`Planner.adjusted` can be, and usually none are);
    the old last shard, if partial, is redone. Their indexes go first (so they read as unfinished),
    then their tars; the card goes, since it describes the old n; the manifest is replaced last. A
    crash anywhere in between leaves a dataset the next run grows the same way. Returns the shards
    to redo.
    """
    old_n, shard_size = int(stored["n"]), int(manifest["shard_size"])
    redo = {old_n // shard_size} if old_n % shard_size else set()
    old = Planner(PlanConfig.from_dict(stored["plan"]))
    for index in set(stored.get("label_adjusted", [])) | set(planner.adjusted):
        if index < old_n and old.label_of(index) is not planner.label_of(index):
            redo.add(index // shard_size)
    finished = done_shards(out)
    for shard in sorted(redo & finished):
        index_path(out, shard).unlink(missing_ok=True)
        tar_path(out, shard).unlink(missing_ok=True)
    for name in (CARD, PREVIEW):
        (Path(out) / name).unlink(missing_ok=True)
    dataset_folder(out).write_record(manifest)
    return sorted(redo)


def wait_for_manifest(
    out: Path, manifest: dict, *, overwrite: bool = False, timeout: float = DEFAULT_WAIT_TIMEOUT, poll: float = 1.0
) -> None:
    """For ranks > 0: wait until rank 0 has written a manifest that matches ``manifest``.

    A manifest that differs is refused at once without ``overwrite`` (rank 0 refuses it too); with
    ``overwrite``, or when rank 0 is about to grow the dataset to ``manifest``'s n, it is waited out.
    """
    folder = dataset_folder(out)
    deadline = time.monotonic() + timeout
    while True:
        if folder.has_record():
            try:
                status = folder.compare(manifest, DATASET_RULES)
            except DatasetError:
                status = None  # being replaced right now (or foreign): look again
            if status is not None:
                if status.state == "same":
                    return
                if status.state == "changed" and not overwrite:
                    raise folder.refusal(status.changes, _RESUME_HINT)
        if time.monotonic() >= deadline:
            raise DatasetError(
                f"waited {timeout:g} s for rank 0 to write {Path(out) / MANIFEST} for this config; rank 0 may have "
                "failed (see its output), or raise --wait-timeout"
            )
        time.sleep(poll)


def _row_and_meta(plan: SamplePlan, shard: int, height: int, width: int) -> tuple[dict, dict]:
    attributes = plan.attributes.to_dict()
    row = {
        "key": plan.key,
        "index": plan.index,
        "shard": shard,
        "label": int(plan.label),
        "label_name": plan.label.label,
        "aus": plan.aus.values.tolist(),
        "au_known": plan.aus.known.tolist(),
        "prompt": plan.prompt,
        "seed": plan.seed,
        "height": height,
        "width": width,
        "attributes": json.dumps(attributes, sort_keys=True),
    }
    meta = {
        "key": plan.key,
        "index": plan.index,
        "label": int(plan.label),
        "label_name": plan.label.label,
        "aus": plan.aus.format(),
        "au_intensities": [round(float(v), 4) for v in plan.aus.values],
        "au_known": [bool(k) for k in plan.aus.known],
        "prompt": plan.prompt,
        "seed": plan.seed,
        "height": height,
        "width": width,
        "attributes": attributes,
    }
    assert len(meta["au_intensities"]) == NUM_AUS
    return row, meta


def rank_shards(n: int, shard_size: int, rank: int = 0, world_size: int = 1) -> range:
    """The shards process ``rank`` of ``world_size`` is responsible for."""
    return range(rank, num_shards(n, shard_size), world_size)


def steering_kwargs(plans: list[SamplePlan], render: RenderConfig) -> dict:
    """Pipeline arguments for semantic guidance and layout initialisation, each from the sample's own plan."""
    kwargs = {}
    if render.guidance is not None:
        kwargs["semantic_guidance"] = render.guidance.with_targets([p.label for p in plans])
    if render.layout is not None:
        kwargs["layout"] = render.layout.for_seeds([p.seed for p in plans])
    return kwargs


def render_batch(pipe, plans: list[SamplePlan], render: RenderConfig):
    """Images for ``plans``; each image depends only on its own plan (one generator per image)."""
    import torch

    return pipe(
        prompt=[p.prompt for p in plans],
        negative_prompt=[render.negative_prompt] * len(plans),
        aus=[p.aus for p in plans] if pipe.au_adapter is not None else None,
        au_scale=render.au_scale,
        generator=[torch.Generator("cpu").manual_seed(p.seed) for p in plans],
        num_inference_steps=render.steps,
        guidance_scale=render.guidance_scale,
        height=render.height,
        width=render.width,
        output_type="pil",
        **steering_kwargs(plans, render),
    ).images


def generate_dataset(
    pipe,
    planner: Planner,
    render: RenderConfig,
    out: Path,
    *,
    batch_size: int | str = 8,
    rank: int = 0,
    world_size: int = 1,
    on_progress: Callable[[int], None] | None = None,
    writer_threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> ShardWork:
    """Make this process's unfinished shards of the dataset in ``out`` (whose manifest must exist).

    ``batch_size``: a number, or ``"auto"`` (see :mod:`synfer.synth.batching`). ``writer_threads``:
    threads that encode images while the next batch samples (0: encode inline; the shards' bytes are
    the same either way). ``on_progress(k)`` is called after each batch of ``k`` new samples; ``log``
    gets one-line notes (the batch size ``auto`` found).
    """
    from ..data.writer import ShardSink  # webdataset loads torch
    from .batching import parse_batch_size

    batch_size = parse_batch_size(batch_size)
    out = Path(out)
    n = planner.config.n
    result = ShardWork(out)
    finished = done_shards(out)
    guided_decoder = render.guidance is not None and isinstance(render.guidance.decoder, str)
    sizer = BatchSizer.for_run(batch_size, pipe.device, min(render.shard_size, n), render.height, render.width, guided_decoder, log)
    sink = ShardSink(DEFAULT_WRITER_THREADS if writer_threads is None else writer_threads)
    shard = None
    try:
        with sink:
            for shard in rank_shards(n, render.shard_size, rank, world_size):
                indices = shard_range(shard, n, render.shard_size)
                if shard in finished:
                    result.skipped_shards.append(shard)
                    continue
                writer = sink.open(out, shard, render.image_format)
                start = indices.start
                while start < indices.stop:
                    count = min(sizer.size, indices.stop - start)
                    plans = [planner.plan(i) for i in range(start, start + count)]
                    images = _render_or_none(pipe, plans, render, sizer.adaptive)
                    if images is None:  # out of memory: outside the except block, so that its frames are gone
                        free_device_memory()
                        sizer.out_of_memory(count)
                        continue
                    sizer.fitted(count)
                    for plan, image in zip(plans, images):
                        row, meta = _row_and_meta(plan, shard, render.height, render.width)
                        sink.write(writer, row, image, meta)
                    result.made += count
                    start += count
                    if on_progress is not None:
                        on_progress(count)
                sink.commit(writer)
                result.made_shards.append(shard)
    except OSError as error:  # a full or vanished disk: the shard was rolled back, say why in one line
        failed = sink.failed_shard if sink.failed_shard is not None else shard
        raise DatasetError(f"cannot write shard {failed} of {out}: {error.strerror or error}") from None
    return result


def _render_or_none(pipe, plans: list[SamplePlan], render: RenderConfig, recover: bool):
    """``render_batch``, or None when it ran out of device memory and ``recover`` (the batch-size search) is on."""
    try:
        return render_batch(pipe, plans, render)
    except Exception as error:
        if recover and is_out_of_memory(error):
            return None
        raise


def finish_dataset(out: Path) -> bool:
    """Once every shard is finished: check that there are exactly n unique keys and write the card.

    Any process may call it, any number of times: it does nothing while shards are missing, and the
    card is the same whoever writes it. Returns whether the dataset is complete.
    """
    from ..data.card import write_card
    from ..data.dataset import SynferDataset
    from ..data.verify import check_keys

    dataset = SynferDataset(out)
    if not dataset.complete:
        return False
    problems = check_keys(dataset)
    if problems:
        raise DatasetError(f"{out} is inconsistent: {problems[0]} (run synfer inspect --verify {out})")
    write_card(dataset)
    return True
