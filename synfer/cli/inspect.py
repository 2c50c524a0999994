"""``synfer inspect``: what a dataset holds, how far its generation got, and (``--verify``) whether it is whole."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from . import app
from ._common import console, err_console, progress_bar

MAX_PROBLEMS_SHOWN = 20


def _ranges(numbers: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"00000-00002, 00005, 00007-00008"``: shard numbers as their files are named."""
    parts: list[str] = []
    start = previous = None
    for number in sorted(numbers):
        if previous is not None and number == previous + 1:
            previous = number
            continue
        if start is not None:
            parts.append(_span(start, previous))
        start = previous = number
    if start is not None:
        parts.append(_span(start, previous))
    return ", ".join(parts)


def _span(first: int, last: int) -> str:
    from ..data.format import shard_stem

    return shard_stem(first) if first == last else f"{shard_stem(first)}-{shard_stem(last)}"


def _made_counts(dataset) -> tuple[dict[int, int], list[int]]:
    """Samples per AffectNet label in the finished shards, and the shards whose index cannot be read."""
    import numpy as np
    import pyarrow.parquet as pq

    from ..data.format import index_path

    counts: dict[int, int] = {}
    unreadable = []
    for shard in dataset.shards:
        try:
            labels = pq.read_table(index_path(dataset.root, shard), columns=["label"]).column("label").to_numpy()
        except Exception:  # a damaged index; --verify says what is wrong with it
            unreadable.append(shard)
            continue
        for label, count in zip(*np.unique(labels, return_counts=True)):
            counts[int(label)] = counts.get(int(label), 0) + int(count)
    return counts, unreadable


@app.command()
def inspect(
    dataset_path: Path = typer.Argument(..., metavar="DATASET", help="A dataset folder made by synfer generate."),
    verify: bool = typer.Option(
        False, "--verify", help="Read everything: every key once, tar members matching the index, every image decoding."
    ),
) -> None:
    """Show a dataset's counts and per-shard completion; with --verify, check it end to end (exit 1 on problems)."""
    from ..data.card import describe_labels
    from ..data.dataset import SynferDataset
    from ..data.format import CARD, PREVIEW, SHARDS_DIR, TMP_SUFFIX, index_path, shard_range, tar_path
    from ..data.verify import verify_dataset

    dataset = SynferDataset(dataset_path)
    manifest = dataset.manifest
    shard_size = int(manifest["shard_size"])
    done = dataset.shards
    made = sum(len(shard_range(s, dataset.n, shard_size)) for s in done)
    state = "complete" if dataset.complete else "incomplete"
    console.print(f"[bold]{dataset.root}[/]: {made:,} of {dataset.n:,} samples in {len(done)}/{dataset.num_shards} shards ({state})")

    plan, render, model = manifest.get("plan", {}), manifest.get("render", {}), manifest.get("model", {})
    console.print(
        f"labels {dataset.label_set.name}: {describe_labels(dataset)}; AUs {plan.get('au_source') or 'prototype'}; "
        f"model {model.get('name')}, {render.get('steps')} steps, "
        f"{render.get('width')}x{render.get('height')} {manifest.get('image_format')}, seed {manifest.get('base_seed')}",
        highlight=False,
    )

    planned = manifest.get("label_counts") or {}
    counts, unreadable = _made_counts(dataset)
    table = Table(title="samples per expression")
    for column in ("expression", "made", "planned"):
        table.add_column(column, justify="left" if column == "expression" else "right")
    for expression in dataset.label_set.expressions:
        target = planned.get(expression.label)
        table.add_row(expression.label, f"{counts.get(int(expression), 0):,}", "-" if target is None else f"{target:,}")
    console.print(table)
    if unreadable:
        err_console.print(f"[yellow]warning:[/] unreadable index in shards {_ranges(unreadable)}, not counted; run --verify")

    unfinished = [s for s in range(dataset.num_shards) if s not in set(done)]
    folder = dataset.root / SHARDS_DIR
    partial = sorted(int(p.name.split(".")[0]) for p in folder.glob(f"*.tar{TMP_SUFFIX}") if p.name.split(".")[0].isdigit())
    orphans = [s for s in unfinished if tar_path(dataset.root, s).is_file() and not index_path(dataset.root, s).is_file()]
    # A count first: "shards finished: 00000" alone reads as "nothing finished" for a one-shard dataset.
    console.print(f"shards finished: {len(done)} of {dataset.num_shards}" + (f" ({_ranges(done)})" if done else ""))
    if unfinished:
        console.print(f"shards unfinished: {_ranges(unfinished)}")
        if partial:
            console.print(f"  partly written (running, or interrupted; a rerun redoes them): {_ranges(partial)}")
        if orphans:
            console.print(f"  tar without index (interrupted before the index; a rerun redoes them): {_ranges(orphans)}")
        console.print("  rerun the same synfer generate command to finish them")
    card = [name for name in (CARD, PREVIEW) if (dataset.root / name).is_file()]
    console.print(f"card: {', '.join(card) if card else 'not written yet (written once every shard is finished)'}")

    if not verify:
        return
    with progress_bar("verifying", total=made, unit="sample") as advance:
        report = verify_dataset(dataset, on_shard=advance)
    if report.ok:
        console.print(f"[green]verified[/]: {dataset.n:,} unique keys, {report.samples:,} images decode, tars match their indexes")
        return
    for problem in report.problems[:MAX_PROBLEMS_SHOWN]:
        err_console.print(f"[red]problem:[/] {problem}", highlight=False)
    if len(report.problems) > MAX_PROBLEMS_SHOWN:
        err_console.print(f"... and {len(report.problems) - MAX_PROBLEMS_SHOWN} more problems", highlight=False)
    err_console.print(f"verification failed: {len(report.problems)} problems in {dataset.root}", highlight=False)
    raise typer.Exit(1)
