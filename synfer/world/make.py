"""``make_world``: write a labelled world of procedural faces whose AUs are known exactly.

```
DIR/world.json                   config, counts per split and class, drawn AUs, swapped labels; written last
DIR/<split>/<expression>/<id>.png  split = train, val, test; the folder is the label given (noisy in train)
DIR/<split>/metadata.jsonl       Hugging Face imagefolder captions: {"file_name": "<expression>/<id>.png", "text": ...}
DIR/<split>/aus.parquet          the ground-truth AU table (synfer.data.au_table): ids = those file names,
                                 intensities in the drawn slots (the others unknown), label, true_label,
                                 identity_seed, index
```

Sample ``i`` (a global index; train first, then val, then test) is a pure function of the config
and ``i``: its identity comes from ``derive_seed(seed, i, IDENTITY_STREAM)`` and its AUs from
``PrototypeAUs(seed)(i, expression)``, the default AU source of ``synfer generate``. Labels are
balanced in every split. ``label_noise`` swaps that fraction of the *train* labels to a different
class drawn at random (folder, caption and ``label`` follow the swapped label; ``true_label`` keeps
the drawn one); val and test stay clean.

Crash safety: each split is written under ``DIR/.<split>.partial`` and renamed into place when it is
complete, and ``world.json`` comes last, so a half-written world never looks finished. A rerun with
the same config keeps the finished splits and redoes the rest; a finished world makes it a no-op.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .. import __version__
from ..aus import AU_INDEX, NUM_AUS, AUVector
from ..data.au_table import AUScores, write_au_table
from ..data.format import sample_key, write_json
from ..errors import ConfigError, DatasetError
from ..expressions import Expression, LabelSet, get_label_set
from ..synth.apportion import integer_weights, largest_remainder
from ..synth.au_sources import PrototypeAUs
from ..synth.seeds import derive_seed
from .caption import caption
from .face import DRAWN_AUS
from .identity import Identity
from .render import DEFAULT_SUPERSAMPLE, MAX_SIZE, MIN_SIZE, render_array

WORLD_FORMAT = "synfer-world"
WORLD_VERSION = 1
# Bump whenever a change to the renderer or the sampling changes the pixels or AUs of a world.
RENDERER_VERSION = 1
WORLD_JSON = "world.json"
PARTIAL_JSON = ".world.partial.json"
METADATA_NAME = "metadata.jsonl"
AU_TABLE_NAME = "aus.parquet"
SPLITS = ("train", "val", "test")

# Seed streams of derive_seed, apart from synfer.synth.seeds' own (0-2).
IDENTITY_STREAM = 16
ORDER_STREAM = 17
NOISE_STREAM = 18


def drawn_mask() -> np.ndarray:
    """The known-mask of the world's ground truth: True on the slots of :data:`DRAWN_AUS`."""
    mask = np.zeros(NUM_AUS, bool)
    mask[[AU_INDEX[name] for name in DRAWN_AUS]] = True
    return mask


def parse_splits(text: str) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` -> (0.8, 0.1, 0.1); the three fractions of train, val and test."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ConfigError(f"cannot read splits {text!r}: give three fractions train,val,test such as 0.8,0.1,0.1") from None
    if len(values) != 3:
        raise ConfigError(f"splits {text!r} must be three fractions train,val,test such as 0.8,0.1,0.1")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class WorldConfig:
    """What defines a world; two worlds with equal configs (and renderer version) are identical, byte for byte."""

    n: int
    seed: int = 0
    size: int = 32
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1)
    label_noise: float = 0.0
    classes: int = 8
    caption_expression: bool = True
    supersample: int = DEFAULT_SUPERSAMPLE

    def __post_init__(self):
        object.__setattr__(self, "splits", tuple(float(v) for v in self.splits))
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 1:
            raise ConfigError(f"--n must be a positive number of faces, got {self.n!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"--seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.size, int) or not MIN_SIZE <= self.size <= MAX_SIZE:
            raise ConfigError(f"--size must be an integer number of pixels in {MIN_SIZE}-{MAX_SIZE}, got {self.size!r}")
        if not isinstance(self.supersample, int) or not 1 <= self.supersample <= 8:
            raise ConfigError(f"supersample must be an integer in 1-8, got {self.supersample!r}")
        if len(self.splits) != 3 or not all(math.isfinite(v) and v >= 0 for v in self.splits):
            raise ConfigError(f"--splits must be three non-negative fractions train,val,test, got {self.splits}")
        if abs(sum(self.splits) - 1.0) > 1e-6 or self.splits[0] <= 0:
            raise ConfigError(f"--splits must sum to 1 with a positive train fraction, got {','.join(f'{v:g}' for v in self.splits)}")
        if not (isinstance(self.label_noise, (int, float)) and 0.0 <= self.label_noise < 1.0):
            raise ConfigError(f"--label-noise must be a fraction in [0, 1) of the train labels, got {self.label_noise!r}")
        if self.classes not in (7, 8):
            raise ConfigError(f"--classes must be 8 (AffectNet-8) or 7 (no contempt), got {self.classes!r}")

    @property
    def label_set(self) -> LabelSet:
        return get_label_set(self.classes)

    def split_sizes(self) -> dict[str, int]:
        """Faces per split: the largest-remainder apportionment of ``n`` by the split fractions."""
        counts = largest_remainder(self.n, integer_weights(self.splits))
        return {name: int(count) for name, count in zip(SPLITS, counts)}

    def to_dict(self) -> dict:
        data = asdict(self)
        data["splits"] = list(self.splits)
        return data


@dataclass(frozen=True)
class WorldSample:
    """One face of a world: where it goes, what it shows, and its caption."""

    index: int
    split: str
    identity_seed: int
    true_label: Expression  # the expression drawn
    label: Expression  # the label given (differs from true_label for swapped train samples)
    aus: np.ndarray  # [41] intensities; 0 outside DRAWN_AUS
    caption: str

    @property
    def file_name(self) -> str:
        """Path relative to the split folder: ``<label>/<id>.png``."""
        return f"{self.label.label}/{sample_key(self.index)}.png"

    identity: Identity = field(repr=False, compare=False)


@dataclass
class WorldResult:
    out: Path
    config: WorldConfig
    counts: dict[str, dict[str, int]]  # split -> label given -> faces
    swapped: int  # train labels swapped by label_noise
    made: bool  # False when the world was already complete (nothing written)
    rendered: int = 0  # faces rendered by this call
    seconds: float = 0.0
    splits_reused: list[str] = field(default_factory=list)


def _balanced_labels(n: int, label_set: LabelSet, rng: np.random.Generator) -> list[Expression]:
    k = label_set.num_classes
    labels = [label_set.expressions[i % k] for i in range(n)]
    return [labels[i] for i in rng.permutation(n)]


def plan_world(config: WorldConfig) -> list[WorldSample]:
    """Every sample of the world, in global index order (train, then val, then test)."""
    label_set = config.label_set
    sizes = config.split_sizes()
    aus_source = PrototypeAUs(config.seed)
    drawn = drawn_mask()
    samples: list[WorldSample] = []
    start = 0
    for split_number, split in enumerate(SPLITS):
        count = sizes[split]
        order_rng = np.random.default_rng(derive_seed(config.seed, split_number, stream=ORDER_STREAM))
        true_labels = _balanced_labels(count, label_set, order_rng)
        given = list(true_labels)
        if split == "train" and config.label_noise > 0:
            noise_rng = np.random.default_rng(derive_seed(config.seed, 0, stream=NOISE_STREAM))
            swaps = round(config.label_noise * count)
            for position in sorted(noise_rng.choice(count, size=swaps, replace=False).tolist()):
                others = [e for e in label_set.expressions if e != true_labels[position]]
                given[position] = others[int(noise_rng.integers(len(others)))]
        for offset, (true_label, label) in enumerate(zip(true_labels, given)):
            index = start + offset
            identity_seed = derive_seed(config.seed, index, stream=IDENTITY_STREAM)
            values = np.where(drawn, aus_source(index, true_label).values, 0.0).astype(np.float32)
            identity = Identity.draw(identity_seed)
            text = caption(identity, label if config.caption_expression else None)
            samples.append(WorldSample(index, split, identity_seed, true_label, label, values, text, identity))
        start += count
    return samples


def _world_record(config: WorldConfig, samples: list[WorldSample]) -> dict:
    label_set = config.label_set
    counts = {split: dict.fromkeys(label_set.names, 0) for split in SPLITS}
    true_counts = {split: dict.fromkeys(label_set.names, 0) for split in SPLITS}
    swapped = dict.fromkeys(SPLITS, 0)
    for sample in samples:
        counts[sample.split][sample.label.label] += 1
        true_counts[sample.split][sample.true_label.label] += 1
        swapped[sample.split] += int(sample.label != sample.true_label)
    return {
        "format": WORLD_FORMAT,
        "version": WORLD_VERSION,
        "renderer_version": RENDERER_VERSION,
        "synfer_version": __version__,
        "config": config.to_dict(),
        "label_set": label_set.name,
        "drawn_aus": list(DRAWN_AUS),
        "splits": config.split_sizes(),
        "counts": counts,
        "true_counts": true_counts,
        "swapped_labels": swapped,
        "layout": {
            "images": "<split>/<label>/<id>.png",
            "captions": f"<split>/{METADATA_NAME}",
            "au_table": f"<split>/{AU_TABLE_NAME}",
        },
    }


def _identity_of(record: dict) -> tuple:
    return (record.get("format"), record.get("version"), record.get("renderer_version"), record.get("config"))


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 array: the same pixels always give the same bytes."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise DatasetError("could not encode a world image as PNG")
    return data.tobytes()


def _write_split(folder: Path, config: WorldConfig, samples: list[WorldSample], advance: Callable[[int], None]) -> None:
    """Render one split into ``folder`` (a fresh temporary folder)."""
    for name in sorted({s.label.label for s in samples}):
        (folder / name).mkdir(parents=True)
    lines = []
    for sample in samples:
        pixels = render_array(sample.identity, AUVector(sample.aus), config.size, config.supersample)
        (folder / sample.file_name).write_bytes(encode_png(pixels))
        lines.append(json.dumps({"file_name": sample.file_name, "text": sample.caption}))
        advance(1)
    (folder / METADATA_NAME).write_text("\n".join(lines) + ("\n" if lines else ""))
    known = np.broadcast_to(drawn_mask(), (len(samples), NUM_AUS))
    table = AUScores(
        ids=[s.file_name for s in samples],
        scores=np.stack([s.aus for s in samples]) if samples else np.zeros((0, NUM_AUS), np.float32),
        known=known,
        kind="intensity",
        source={"source": "synfer.world", "renderer_version": RENDERER_VERSION, "seed": config.seed, "size": config.size},
        extra={
            "label": [int(s.label) for s in samples],
            "true_label": [int(s.true_label) for s in samples],
            "identity_seed": [int(s.identity_seed) for s in samples],
            "index": [int(s.index) for s in samples],
        },
    )
    write_au_table(folder / AU_TABLE_NAME, table)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def world_state(config: WorldConfig, out: str | Path) -> str:
    """What :func:`make_world` would do with ``out``: ``"done"`` (the same world is complete), ``"resume"``
    (an unfinished world with this config) or ``"new"``; a ConfigError when ``out`` holds anything else."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; give a folder for the world")
    if not out.is_dir():
        return "new"
    wanted = (WORLD_FORMAT, WORLD_VERSION, RENDERER_VERSION, config.to_dict())
    finished = _read_json(out / WORLD_JSON)
    if finished is not None:
        if _identity_of(finished) != wanted:
            raise ConfigError(f"{out} holds a different world ({_describe(finished)}); choose another --out or the same options")
        return "done"
    partial = _read_json(out / PARTIAL_JSON)
    if partial is not None and _identity_of(partial) == wanted:
        return "resume"
    if any(out.iterdir()):
        raise ConfigError(
            f"--out {str(out)!r} exists and is not empty, and is not an unfinished world with these options; choose an empty folder"
        )
    return "new"


def make_world(config: WorldConfig, out: str | Path, progress: Callable[[int], None] | None = None) -> WorldResult:
    """Write the world of ``config`` into ``out`` (see the module docstring); ``progress(k)`` is told of each k faces."""
    if not isinstance(config, WorldConfig):
        raise ConfigError("make_world needs a WorldConfig")
    started = time.perf_counter()
    out = Path(out)
    advance = progress or (lambda k: None)
    state = world_state(config, out)
    samples = plan_world(config)
    record = _world_record(config, samples)
    counts = record["counts"]
    swapped = record["swapped_labels"]["train"]
    if state == "done":
        return WorldResult(out, config, counts, swapped, made=False, seconds=time.perf_counter() - started, splits_reused=list(SPLITS))
    out.mkdir(parents=True, exist_ok=True)
    if state == "new":
        write_json(out / PARTIAL_JSON, record)
    rendered = 0
    reused = []
    for split in SPLITS:
        chosen = [s for s in samples if s.split == split]
        final = out / split
        if final.is_dir():  # renamed into place, so complete
            reused.append(split)
            advance(len(chosen))
            continue
        if not chosen:
            continue
        temporary = out / f".{split}.partial"
        if temporary.exists():
            shutil.rmtree(temporary)
        temporary.mkdir()
        _write_split(temporary, config, chosen, advance)  # a crash leaves only the .partial folder, redone next time
        os.replace(temporary, final)
        _fsync_dir(out)
        rendered += len(chosen)
    write_json(out / WORLD_JSON, record)
    (out / PARTIAL_JSON).unlink(missing_ok=True)
    return WorldResult(out, config, counts, swapped, made=True, rendered=rendered, seconds=time.perf_counter() - started,
                       splits_reused=reused)  # fmt: skip


def _describe(record: dict) -> str:
    config = record.get("config") or {}
    shown = ", ".join(f"{key} {value}" for key, value in config.items() if key in ("n", "seed", "size", "label_noise", "classes"))
    if record.get("renderer_version") != RENDERER_VERSION:
        shown += f", renderer version {record.get('renderer_version')}"
    return shown or "unreadable world.json"


def read_world(path: str | Path) -> dict:
    """The ``world.json`` of a finished world; an error when ``path`` is not one."""
    record = _read_json(Path(path) / WORLD_JSON)
    if record is None or record.get("format") != WORLD_FORMAT:
        raise DatasetError(f"{str(path)!r} is not a finished synfer world (no readable {WORLD_JSON}); make it with synfer world make")
    return record
