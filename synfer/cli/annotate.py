"""``synfer annotate-aus``: an AU table for an image-caption dataset, the first stage of the data flow."""

from __future__ import annotations

from pathlib import Path

import typer

from ..data.au_table import SCORE_KINDS
from ..data.captions import CAPTION_LAYOUTS
from ..labelers.annotate_aus import AnnotateConfig as C
from ..labelers.annotate_aus import detector_kinds
from . import app
from ._common import RichReporter, console, quiet_libraries

_DETECTOR_HELP = (
    f"KIND:PATH ({detector_kinds()}): opengraphau:FILE.pth, detector:DIR (trained with train-downstream --task aus), "
    "or table:FILE (an OpenFace, py-feat or OpenGraphAU output, or a CSV/parquet with one column per AU, joined by id)."
)


@app.command("annotate-aus")
def annotate_aus_command(
    data: Path = typer.Option(..., "--data", help=f"Image-caption dataset: {CAPTION_LAYOUTS.choices()} (detected)."),
    detector: str = typer.Option(..., "--detector", "-d", help=_DETECTOR_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: aus.parquet (the AU table) and run.json; resumable."),
    layout: str = typer.Option(C.layout, "--layout", help=f"Layout of --data: {CAPTION_LAYOUTS.choices()} (default: detected)."),
    image_column: str = typer.Option(C.image_column, "--image-column", help="Parquet data: the image column."),
    caption_column: str = typer.Option(C.caption_column, "--caption-column", help="The caption column or field."),
    data_id_column: str = typer.Option(
        C.data_id_column, "--data-id-column", help="Parquet data: the column of image ids (default: image_path, else file/row)."
    ),
    id_column: str = typer.Option(C.id_column, "--id-column", help="table: the column naming each row's image (default: id or file_name)."),
    table_scores: str = typer.Option(
        C.table_scores, "--table-scores", help=f"table: what its numbers are, {' or '.join(SCORE_KINDS)} (default: from its columns)."
    ),
    batch_size: int = typer.Option(C.batch_size, "--batch-size", help="Images per detector pass."),
    chunk_size: int = typer.Option(C.chunk_size, "--chunk-size", help="Images per finished part (what a crash can lose)."),
    workers: int = typer.Option(C.workers, "--workers", help="DataLoader processes that decode images (0: the main process)."),
    device: str = typer.Option(C.device, "--device", help="auto, cpu, cuda, cuda:N or mps."),
    strict: bool = typer.Option(C.strict, "--strict", help="Fail on missing, uncaptioned or unreadable images instead of counting them."),
    overwrite: bool = typer.Option(C.overwrite, "--overwrite", help="Replace an annotation made with another detector or other data."),
) -> None:
    """Score every image's AUs with a detector (or join an AU file by id) into OUT/aus.parquet."""
    from ..labelers.annotate_aus import annotate_aus

    config = C(
        data=str(data), detector=detector, out=str(out), layout=layout, image_column=image_column, caption_column=caption_column,
        data_id_column=data_id_column, id_column=id_column, table_scores=table_scores, batch_size=batch_size,
        chunk_size=chunk_size, workers=workers, device=device, strict=strict, overwrite=overwrite,
    )
    quiet_libraries()
    result = annotate_aus(config, RichReporter())
    if result.already_complete:
        console.print(f"{result.table} was already complete with this detector and data", highlight=False)
        return
    parts = [f"{result.rows} of {result.images} images annotated ({result.scores} scores from {result.kind})"]
    if result.table_rows is not None:
        parts.append(f"{result.table_rows} rows in the table")
    if result.reused_chunks:
        parts.append(f"{result.reused_chunks} chunks reused")
    if result.unreadable:
        parts.append(f"{result.unreadable} unreadable images left out (first: {', '.join(result.unreadable_examples)})")
    console.print(f"wrote {result.table}: " + "; ".join(parts), highlight=False, soft_wrap=True)
