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

import torch

from .. import __version__
from ..aus import NUM_AUS
from ..data.format import (
    CARD,
    LABELS_DIR,
    MANIFEST,
    PREVIEW,
    SCHEMA_VERSION,
    SHARDS_DIR,
    done_shards,
    num_shards,
    read_manifest,
    shard_range,
    write_json,
)
from ..data.writer import ShardWriter, check_image_format
from ..errors import ConfigError, DatasetError
from .plan import Planner, SamplePlan

if TYPE_CHECKING:
    from ..pipelines.guidance import SemanticGuidance
    from ..pipelines.inversion import LayoutReferences

logger = logging.getLogger(__name__)

DEFAULT_WAIT_TIMEOUT = 900.0  # seconds a rank > 0 waits for rank 0's manifest (model loading included)

DEFAULT_NEGATIVE_PROMPT = (
    "cartoon, drawing, painting, illustration, 3d render, blurry, deformed face, extra limbs, text, watermark"
)


@dataclass(frozen=True)
class RenderConfig:
    """How each image is made from its plan (these settings change the samples too)."""

    steps: int = 50
    guidance_scale: float = 7.5
    au_scale: float = 1.0
    height: int = 512
    width: int = 512
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    image_format: str = "png"
    shard_size: int = 1000
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

    def to_dict(self) -> dict:
        """The manifest's ``render`` entry; guidance and layout appear only when used (older manifests match)."""
        plain = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("guidance", "layout")}
        for name in ("guidance", "layout"):
            if getattr(self, name) is not None:
                plain[name] = getattr(self, name).to_dict()
        return plain


@dataclass
class GenerateResult:
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


def _sample_defining(manifest: dict) -> dict:
    """The parts of a manifest that decide sample content: if they differ, a resume would mix datasets.

    Compared as JSON reads them back (tuples become lists). The AU table counts by its content hash,
    not its path, so a resume may find it under another mount point.
    """
    manifest = json.loads(json.dumps(manifest))
    keys = ("n", "shard_size", "base_seed", "label_set", "image_format", "plan", "render")
    model = manifest.get("model", {})
    hashes = {name: c.get("sha256") for name, c in model.get("components", {}).items()}
    defining = {**{k: manifest.get(k) for k in keys}, "weights": hashes}
    if isinstance(defining["plan"], dict):
        defining["plan"].pop("au_table", None)
    return defining


def _changed_fields(existing: dict, manifest: dict) -> list[str]:
    old, new = _sample_defining(existing), _sample_defining(manifest)
    changed = []
    for key in sorted(new):
        if isinstance(new[key], dict) and isinstance(old.get(key), dict) and key != "weights":
            changed += [f"{key}.{k}" for k in sorted(set(new[key]) | set(old[key])) if new[key].get(k) != old[key].get(k)]
        elif old.get(key) != new[key]:
            changed.append(key)
    return changed


def _refusal(out: Path, changed: list[str]) -> DatasetError:
    return DatasetError(
        f"{out} holds a dataset made with a different config (differs in: {', '.join(changed)}); "
        "use the same options to resume, another --out, or --overwrite to replace it"
    )


def prepare_output(out: Path, manifest: dict, overwrite: bool = False, write: bool = True) -> None:
    """Create ``out`` or check that it holds the same dataset; write the manifest when ``write``.

    An existing dataset made with a different config is refused unless ``overwrite``, which removes it.
    """
    out = Path(out)
    if (out / MANIFEST).is_file():
        existing = read_manifest(out)
        if _sample_defining(existing) != _sample_defining(manifest):
            if not overwrite:
                raise _refusal(out, _changed_fields(existing, manifest))
            if write:
                _remove_dataset(out)
        else:
            return  # same dataset: resume, keep the original manifest
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not out.is_dir():
            raise DatasetError(f"--out {out} exists and is not a folder")
        if not overwrite:
            raise DatasetError(f"--out {out} exists, is not empty and is not a synfer dataset; choose a new folder")
    if not write:
        return
    try:
        (out / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
        write_json(out / MANIFEST, manifest)
    except OSError as error:
        raise DatasetError(f"cannot write to --out {out}: {error.strerror or error}") from None


def wait_for_manifest(
    out: Path, manifest: dict, *, overwrite: bool = False, timeout: float = DEFAULT_WAIT_TIMEOUT, poll: float = 1.0
) -> None:
    """For ranks > 0: wait until rank 0 has written a manifest that matches ``manifest``.

    A manifest that differs is refused at once without ``overwrite`` (rank 0 refuses it too); with
    ``overwrite`` it is waited out, since rank 0 is about to replace it.
    """
    out = Path(out)
    deadline = time.monotonic() + timeout
    while True:
        if (out / MANIFEST).is_file():
            try:
                existing = read_manifest(out)
            except DatasetError:
                existing = None  # being replaced right now (or foreign): look again
            if existing is not None:
                if _sample_defining(existing) == _sample_defining(manifest):
                    return
                if not overwrite:
                    raise _refusal(out, _changed_fields(existing, manifest))
        if time.monotonic() >= deadline:
            raise DatasetError(
                f"waited {timeout:g} s for rank 0 to write {out / MANIFEST} for this config; rank 0 may have "
                "failed (see its output), or raise --wait-timeout"
            )
        time.sleep(poll)


def _remove_dataset(out: Path) -> None:
    for name in (SHARDS_DIR, LABELS_DIR):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in (MANIFEST, CARD, PREVIEW):
        (out / name).unlink(missing_ok=True)


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
        kwargs.update(
            layout_image=[render.layout.image_for(p.seed) for p in plans],
            layout_strength=render.layout.strength,
            layout_prompt=render.layout.prompt,
            layout_iterations=render.layout.iterations,
        )
    return kwargs


def render_batch(pipe, plans: list[SamplePlan], render: RenderConfig):
    """Images for ``plans``; each image depends only on its own plan (one generator per image)."""
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
    batch_size: int = 8,
    rank: int = 0,
    world_size: int = 1,
    on_progress: Callable[[int], None] | None = None,
) -> GenerateResult:
    """Make this process's unfinished shards of the dataset in ``out`` (whose manifest must exist).

    ``on_progress(k)`` is called after each batch of ``k`` new samples.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    out = Path(out)
    n = planner.config.n
    result = GenerateResult(out)
    finished = done_shards(out)
    for shard in rank_shards(n, render.shard_size, rank, world_size):
        indices = shard_range(shard, n, render.shard_size)
        if shard in finished:
            result.skipped_shards.append(shard)
            continue
        try:
            with ShardWriter(out, shard, render.image_format) as writer:
                for start in range(indices.start, indices.stop, batch_size):
                    plans = [planner.plan(i) for i in range(start, min(start + batch_size, indices.stop))]
                    for plan, image in zip(plans, render_batch(pipe, plans, render)):
                        row, meta = _row_and_meta(plan, shard, render.height, render.width)
                        writer.write(row, image, meta)
                    result.made += len(plans)
                    if on_progress is not None:
                        on_progress(len(plans))
        except OSError as error:  # a full or vanished disk: the shard was rolled back, say why in one line
            raise DatasetError(f"cannot write shard {shard} of {out}: {error.strerror or error}") from None
        result.made_shards.append(shard)
    return result


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
