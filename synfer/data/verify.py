"""Checking a synfer dataset against its own promises: every key once, tars matching indexes, images decoding.

Checks return problems as one-line strings rather than raising, so that one pass reports all of them.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow.parquet as pq
from PIL import Image

from ..errors import first_line
from .dataset import SynferDataset
from .format import index_path, sample_key, shard_range


def _expected_keys(dataset: SynferDataset, shard: int) -> list[str]:
    return [sample_key(i) for i in shard_range(shard, dataset.n, int(dataset.manifest["shard_size"]))]


REQUIRED_COLUMNS = ("key", "label", "image", "width", "height")


def _read_index(dataset: SynferDataset, shard: int, columns: list[str] | None = None):
    try:
        table = pq.read_table(index_path(dataset.root, shard), columns=columns)
    except Exception as error:  # a damaged parquet file raises anything from OSError to ArrowInvalid
        return None, f"shard {shard}: index unreadable ({first_line(error)})"
    missing = [c for c in (columns or REQUIRED_COLUMNS) if c not in table.column_names]
    if missing:
        return None, f"shard {shard}: index lacks the columns {', '.join(missing)}"
    return table, None


def _key_problems(shard: int, keys: list[str], expected: list[str]) -> list[str]:
    if keys == expected:
        return []
    if len(keys) != len(expected):
        return [f"shard {shard}: index has {len(keys)} rows, expected {len(expected)} ({expected[0]}..{expected[-1]})"]
    first = next(i for i, (a, b) in enumerate(zip(keys, expected)) if a != b)
    return [f"shard {shard}: index row {first} has key {keys[first]}, expected {expected[first]}"]


def check_keys(dataset: SynferDataset) -> list[str]:
    """Fast check from the indexes alone: every shard finished and holding exactly its keys.

    Since shards hold disjoint key ranges, this means exactly n unique keys in all.
    """
    problems = [f"shard {s}: not finished (no index)" for s in range(dataset.num_shards) if s not in set(dataset.shards)]
    for shard in dataset.shards:
        table, problem = _read_index(dataset, shard, ["key"])
        if problem:
            problems.append(problem)
            continue
        problems += _key_problems(shard, table.column("key").to_pylist(), _expected_keys(dataset, shard))
    return problems


def check_tar(path, members: int) -> str | None:
    """A fast structural check of one shard tar (its headers only, no image decoded): None when sound.

    Catches what kills a reader mid-epoch: a truncated or unreadable tar, or one holding fewer
    members than its index promises (``members``: an image and a JSON per sample).
    """
    try:
        size = path.stat().st_size
        with tarfile.open(path) as tar:
            found = [m for m in tar.getmembers() if m.isfile()]
    except (OSError, tarfile.TarError) as error:
        return f"unreadable tar ({first_line(error)})"
    if len(found) != members:
        return f"tar holds {len(found)} files, its index promises {members}"
    if found and found[-1].offset_data + found[-1].size > size:
        return "tar is truncated"
    return None


def verify_shard(dataset: SynferDataset, shard: int) -> tuple[int, list[str]]:
    """Full check of one finished shard; returns (samples checked, problems)."""
    table, problem = _read_index(dataset, shard)
    if problem:
        return 0, [problem]
    rows = {row["key"]: row for row in table.to_pylist()}
    problems = _key_problems(shard, list(rows), _expected_keys(dataset, shard))
    if len(rows) != table.num_rows:
        problems.append(f"shard {shard}: index has {table.num_rows - len(rows)} duplicate keys")
    image_format = dataset.manifest.get("image_format", "png")
    wanted = {f"{key}.json" for key in rows} | {row["image"] for row in rows.values()}
    seen: set[str] = set()
    checked = 0
    path = dataset.tar_path(shard)
    try:
        with tarfile.open(path) as tar:
            metas: dict[str, dict] = {}
            for member in tar:
                name = member.name
                if name in seen:
                    problems.append(f"shard {shard}: tar member {name} appears twice")
                    continue
                seen.add(name)
                if name not in wanted:
                    problems.append(f"shard {shard}: tar member {name} is not in the index")
                    continue
                if not member.isfile():
                    problems.append(f"shard {shard}: tar member {name} is not a regular file")
                    continue
                key, _, ext = name.partition(".")
                data = tar.extractfile(member).read()
                if ext == "json":
                    try:
                        metas[key] = json.loads(data)
                    except ValueError:
                        problems.append(f"shard {shard}: {name} is not valid JSON")
                    continue
                row = rows[key]
                try:
                    with Image.open(io.BytesIO(data)) as image:
                        image.load()
                        size = image.size
                except Exception as error:  # PIL raises many types for damaged data
                    problems.append(f"shard {shard}: image {name} does not decode ({type(error).__name__})")
                    continue
                if size != (row["width"], row["height"]):
                    problems.append(f"shard {shard}: image {name} is {size[0]}x{size[1]}, index says {row['width']}x{row['height']}")
                checked += 1
            for key, meta in metas.items():
                if meta.get("key") != key or meta.get("label") != rows[key]["label"]:
                    problems.append(f"shard {shard}: {key}.json does not match the index (key or label)")
    except (OSError, tarfile.TarError) as error:
        return checked, problems + [f"shard {shard}: tar unreadable ({first_line(error)})"]
    missing = sorted(wanted - seen)
    if missing:
        problems.append(f"shard {shard}: {len(missing)} indexed files missing from the tar (first: {missing[0]})")
    wrong = [row["image"] for row in rows.values() if row["image"] != f"{row['key']}.{image_format}"]
    if wrong:
        problems.append(f"shard {shard}: index names image {wrong[0]}, expected <key>.{image_format} as the manifest says")
    return checked, problems


@dataclass
class VerifyReport:
    shards: int = 0
    samples: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_dataset(dataset: SynferDataset, on_shard: Callable[[int], None] | None = None) -> VerifyReport:
    """Every shard finished, every key present exactly once, tars matching indexes, every image decoding.

    ``on_shard(k)`` is called after each finished shard with its number of samples.
    """
    report = VerifyReport()
    done = set(dataset.shards)
    report.problems += [f"shard {s}: not finished (no index)" for s in range(dataset.num_shards) if s not in done]
    for shard in dataset.shards:
        checked, problems = verify_shard(dataset, shard)
        report.shards += 1
        report.samples += checked
        report.problems += problems
        if on_shard is not None:
            on_shard(len(_expected_keys(dataset, shard)))
    return report
