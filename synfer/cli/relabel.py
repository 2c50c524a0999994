"""``synfer relabel``: re-check every label of a dataset with an ensemble of labelers."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..labelers.base import LABELERS
from ..labelers.rectifier import POLICIES
from ..labelers.relabel import RelabelConfig as C
from . import app
from ._common import RichReporter, console, quiet_libraries

_LABELER_HELP = f"An ensemble member, KIND:PATH ({LABELERS.choices()}), e.g. feranno:HEAD_DIR (repeat for more)."


@app.command()
def relabel(
    dataset: Path = typer.Argument(..., help="A dataset folder written by synfer generate."),
    labeler: list[str] = typer.Option(..., "--labeler", "-l", help=_LABELER_HELP),
    policy: str = typer.Option(C.policy, "--policy", help=f"{POLICIES.choices()}: mean averages probabilities, as SynFER."),
    weight: list[float] = typer.Option(None, "--weight", help="With --policy weighted: one weight per --labeler, in order."),
    name: str = typer.Option(C.name, "--name", help="Writes labels/NAME.parquet (+ .report.json, .relabel.png)."),
    min_confidence: float = typer.Option(
        C.min_confidence, "--min-confidence", help="Mark keep=false where the ensemble's confidence is below this (default: keep all)."
    ),
    batch_size: int = typer.Option(C.batch_size, "--batch-size"),
    device: str = typer.Option(C.device, "--device", help="auto, cpu, cuda, cuda:N or mps."),
    overwrite: bool = typer.Option(C.overwrite, "--overwrite", help="Replace labels/NAME.parquet made with other settings."),
) -> None:
    """Relabel a dataset with an ensemble (FERAnno heads, FER classifiers): labels/NAME.parquet + a report."""
    from ..labelers.relabel import relabel as run
    from ..labelers.relabel import report_file

    config = C(
        str(dataset), tuple(labeler), policy, tuple(weight) if weight else None, name, min_confidence, batch_size, device, overwrite
    )
    quiet_libraries()
    result = run(config, RichReporter())
    if result.already_complete:
        console.print(f"{result.path} was already complete with these labelers and settings")
    elif result.labelled:
        console.print(f"labelled {result.labelled} samples ({result.labelled / max(result.seconds, 1e-9):.2f} img/s)")
    _print_report(result.report)
    console.print(f"wrote {result.path}, {report_file(dataset, name)} and the relabel matrix figure")


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
