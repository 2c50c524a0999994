"""``synfer relabel``: re-check every label of a dataset with an ensemble of labelers."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from . import app
from ._common import console, progress_bar, quiet_libraries

_LABELER_HELP = "An ensemble member, KIND:PATH: feranno:HEAD_DIR or classifier:DIR (repeat for more)."


@app.command()
def relabel(
    dataset: Path = typer.Argument(..., help="A dataset folder written by synfer generate."),
    labeler: list[str] = typer.Option(..., "--labeler", "-l", help=_LABELER_HELP),
    policy: str = typer.Option("mean", "--policy", help="mean (averaged probabilities, as SynFER), vote or weighted."),
    weight: list[float] = typer.Option(None, "--weight", help="With --policy weighted: one weight per --labeler, in order."),
    name: str = typer.Option("rectified", "--name", help="Writes labels/NAME.parquet (+ .report.json, .relabel.png)."),
    min_confidence: float = typer.Option(
        None, "--min-confidence", help="Mark keep=false where the ensemble's confidence is below this (default: keep all)."
    ),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace labels/NAME.parquet made with other settings."),
) -> None:
    """Relabel a dataset with an ensemble (FERAnno heads, FER classifiers): labels/NAME.parquet + a report."""
    from ..data.dataset import SynferDataset
    from ..labelers.registry import load_labeler, parse_labeler_spec
    from ..labelers.rectifier import Rectifier, check_settings
    from ..labelers.relabel import check_name, finished_samples, relabel_dataset, report_file, run_metadata
    from ..models.loading import resolve_device

    # Cheap checks first: a typo should not cost a model load.
    check_name(name)
    data = SynferDataset(dataset)
    for spec in labeler:
        parse_labeler_spec(spec)
    weights = weight or None
    check_settings(policy, weights, len(labeler), min_confidence)
    torch_device = resolve_device(device)

    quiet_libraries()
    members = [load_labeler(spec, torch_device) for spec in labeler]
    rectifier = Rectifier(members, data.label_set, policy=policy, weights=weights, min_confidence=min_confidence)

    already = finished_samples(data, name, run_metadata(data, rectifier, name))
    start = time.perf_counter()
    with progress_bar("relabelling", total=data.n, completed=already) as advance:
        result = relabel_dataset(data, rectifier, name, batch_size=batch_size, overwrite=overwrite, on_progress=advance)
    elapsed = time.perf_counter() - start
    if result.already_complete:
        console.print(f"{result.path} was already complete with these labelers and settings")
    elif result.labelled:
        console.print(f"labelled {result.labelled} samples ({result.labelled / max(elapsed, 1e-9):.2f} img/s)")
    _print_report(result.report)
    console.print(f"wrote {result.path}, {report_file(data.root, name)} and the relabel matrix figure")


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _print_report(report: dict) -> None:
    table = Table(title=f"relabel '{report['name']}'")
    for column in ("target", "samples", "agreement", "member agreement", "kept", "relabelled to"):
        table.add_column(column, justify="left" if column in ("target", "relabelled to") else "right")
    labels = report["relabel_matrix"]["labels"]
    for row, entry in zip(report["relabel_matrix"]["counts"], report["per_class"]):
        moved = ", ".join(f"{labels[j]} {count}" for j, count in enumerate(row) if count and labels[j] != entry["label"])
        table.add_row(
            entry["label"],
            str(entry["count"]),
            _percent(entry["agreement"]),
            _percent(entry["member_agreement"]),
            _percent(entry["kept_fraction"]),
            moved or "-",
        )
    console.print(table)
    console.print(
        f"{report['n']} samples: ensemble agrees with the target on {_percent(report['agreement'])}, "
        f"relabelled {report['changed']} ({_percent(report['changed_fraction'])}), "
        f"kept {report['kept']} ({_percent(report['kept_fraction'])})"
    )
