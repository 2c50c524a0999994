"""``synfer world``: the procedural-face world, whose every face's AUs are known exactly."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from ._common import console, progress_bar

world_app = typer.Typer(
    help="Procedural cartoon faces with exactly known AUs: an instrument for training and measuring the whole chain on a CPU.",
    no_args_is_help=True,
)
app.add_typer(world_app, name="world")


@world_app.command("make")
def make(
    n: int = typer.Option(..., "--n", help="Faces in the world, over all splits."),
    out: Path = typer.Option(..., "--out", "-o", help="World folder: train/, val/, test/ (one folder per expression) and world.json."),
    size: int = typer.Option(32, "--size", help="Image size in pixels (16-512)."),
    seed: int = typer.Option(0, "--seed", help="World seed: identities, labels and AU jitter follow from it."),
    label_noise: float = typer.Option(
        0.0, "--label-noise", help="Fraction of train labels swapped to another class (val and test stay clean)."
    ),
    splits: str = typer.Option("0.8,0.1,0.1", "--splits", help="Fractions of train,val,test; they sum to 1."),
    classes: int = typer.Option(8, "--classes", help="8 (AffectNet-8) or 7 (no contempt)."),
    caption_expression: bool = typer.Option(
        True, "--caption-expression/--no-caption-expression", help="End each caption with the expression's phrase (the label given)."
    ),
) -> None:
    """Render a labelled world with ground-truth AU tables; rerunning the same command resumes or does nothing."""
    from ..world.make import WorldConfig, make_world, parse_splits, world_state

    config = WorldConfig(n=n, seed=seed, size=size, splits=parse_splits(splits), label_noise=label_noise, classes=classes,
                         caption_expression=caption_expression)  # fmt: skip
    if world_state(config, out) == "done":
        console.print(f"{out}: this world is already complete; nothing to do", highlight=False, soft_wrap=True)
        return
    with progress_bar("rendering", config.n, unit="face") as advance:
        result = make_world(config, out, progress=advance)
    sizes = ", ".join(f"{split} {sum(counts.values())}" for split, counts in result.counts.items())
    noise = f"; {result.swapped} train labels swapped" if result.swapped else ""
    console.print(f"{out}: {sizes} faces at {config.size} px in {result.seconds:.1f} s{noise}", highlight=False, soft_wrap=True)
