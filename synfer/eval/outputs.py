"""The files of an evaluation folder (docs/formats.md, "Evaluation"): metrics.json, CSVs and figures.

Every file names the figures it holds as they are named in ``metrics.json``; a figure made by a judge
that guided or relabelled the dataset carries the flag ``dependent``, an AU figure made by the detector
that annotated the training AUs the flag ``self-consistency``, in the JSON, in a ``flags`` column of
each CSV and in the title of each plot.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from ..data.format import atomic_path, write_json


def finite(data):
    """``data`` with every NaN or infinity replaced by None and numpy scalars by Python ones (strict JSON)."""
    if isinstance(data, dict):
        return {str(k): finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(v) for v in data]
    if isinstance(data, np.ndarray):
        return finite(data.tolist())
    if isinstance(data, (np.floating, float)):
        value = float(data)
        return value if math.isfinite(value) else None
    if isinstance(data, np.integer):
        return int(data)
    if isinstance(data, np.bool_):
        return bool(data)
    return data


def write_metrics(path: Path, metrics: dict) -> None:
    text = json.dumps(finite(metrics), indent=2, sort_keys=True, allow_nan=False) + "\n"
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text)


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with atomic_path(Path(path)) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow(["" if v is None else (f"{v:.6g}" if isinstance(v, float) else v) for v in finite(row)])


def _flags(flags: list[str] | tuple[str, ...]) -> str:
    return ";".join(flags)


def per_class_rows(metrics: dict, label_names: list[str]) -> tuple[list[str], list[list]]:
    """per_class.csv: one row per class: n on each side, then each backbone's KID and diversity, the judge's recalls."""
    backbones = list(metrics.get("features", {}))
    header = ["class", "n_real", "n_generated"]
    for name in backbones:
        header += [f"kid_{name}", f"kid_std_{name}", f"diversity_real_{name}", f"diversity_generated_{name}"]
    judge = metrics.get("judge")
    if judge:
        header += ["judge_recall_generated", "judge_recall_generated_ci_low", "judge_recall_generated_ci_high",
                   "judge_recall_real", "judge_flags"]
    rows = []
    for label in label_names:
        row = [label, metrics["real"]["per_class_n"].get(label, 0), metrics["generated"]["per_class_n"].get(label, 0)]
        for name in backbones:
            distribution = metrics["features"][name]["distribution"]
            kid = ((distribution.get("per_class_kid") or {}).get("per_class") or {}).get(label) or {}
            real_div = ((distribution.get("diversity_real") or {}).get("per_class") or {}).get(label) or {}
            fake_div = ((distribution.get("diversity_fake") or {}).get("per_class") or {}).get(label) or {}
            row += [kid.get("mean"), kid.get("std"), real_div.get("mean"), fake_div.get("mean")]
        if judge:
            generated = judge["generated"]["per_class"].get(label, {})
            ci = generated.get("recall_ci") or [None, None]
            real = (judge.get("real") or {}).get("per_class", {}).get(label, {})
            row += [generated.get("recall"), ci[0], ci[1], real.get("recall"), _flags(judge["flags"])]
        rows.append(row)
    return header, rows


def confusion_rows(judge: dict) -> tuple[list[str], list[list]]:
    """judge_confusion.csv: counts [true, predicted] for the generated set and the real reference."""
    labels = judge["generated"]["labels"]
    header = ["side", "true", *[f"predicted_{label}" for label in labels], "flags"]
    rows = []
    for side in ("generated", "real"):
        if judge.get(side):
            for label, counts in zip(labels, judge[side]["confusion_matrix"]):
                rows.append([side, label, *counts, _flags(judge["flags"]) if side == "generated" else ""])
    return header, rows


def au_rows(au: dict) -> tuple[list[str], list[list]]:
    header = ["au", "n", "requested", "detected", "precision", "recall", "f1", "f1_ci_low", "f1_ci_high",
              "pearson", "pearson_ci_low", "pearson_ci_high", "mae", "mae_sem", "flags"]
    rows = []
    for name, entry in au["report"]["per_au"].items():
        f1_ci = entry.get("f1_ci") or [None, None]
        r_ci = entry.get("pearson_ci") or [None, None]
        rows.append([name, entry["n"], entry["requested"], entry["detected"], entry["precision"], entry["recall"], entry["f1"],
                     f1_ci[0], f1_ci[1], entry["pearson"], r_ci[0], r_ci[1], entry["mae"], entry["mae_sem"], _flags(au["flags"])])
    return header, rows


def flag_suffix(flags) -> str:
    return f" [{', '.join(flags)}]" if flags else ""


def write_plots(folder: Path, metrics: dict, thumbnails: list[tuple[str, list, list]]) -> list[str]:
    """The figures of an evaluation; returns the file names written."""
    from ..plots import plot_bars, plot_image_rows, plot_matrix

    written = []
    judge = metrics.get("judge")
    if judge:
        generated = judge["generated"]
        title = (f"judge on generated images: accuracy {generated['accuracy']:.3f}" + flag_suffix(judge["flags"]))
        plot_matrix(np.asarray(generated["confusion_matrix"]), generated["labels"], generated["labels"],
                    folder / "judge_confusion.png", title=title, ylabel="planned" if metrics["generated"]["labels"] == "planned"
                    else "label")
        written.append("judge_confusion.png")
        if judge.get("real"):
            real = judge["real"]
            plot_matrix(np.asarray(real["confusion_matrix"]), real["labels"], real["labels"], folder / "judge_confusion_real.png",
                        title=f"judge on the real reference: accuracy {real['accuracy']:.3f} (the ceiling)")
            written.append("judge_confusion_real.png")
    au = metrics.get("au")
    if au:
        per_au = au["report"]["per_au"]
        values = {name: entry["f1"] for name, entry in per_au.items() if entry["requested"]}
        errors = {name: per_au[name]["f1_ci"] for name in values}
        macro = au["report"]["macro_f1"]
        title = "AU occurrence F1" + (f", macro {macro:.3f}" if macro is not None else "") + flag_suffix(au["flags"])
        plot_bars(values, folder / "au_f1.png", errors=errors, ylim=(0, 1), ylabel="F1 (requested vs detected)", title=title)
        written.append("au_f1.png")
    order = list(metrics["real"]["per_class_n"])  # the label set's order
    for name, entry in metrics.get("features", {}).items():
        found = ((entry["distribution"].get("per_class_kid") or {}).get("per_class")) or {}
        per_class = {label: found[label] for label in order if label in found}
        if per_class:
            plot_bars({label: kid["mean"] for label, kid in per_class.items()}, folder / f"kid_per_class_{name}.png",
                      errors={label: kid["std"] for label, kid in per_class.items()}, ylabel="KID (mean +- std over subsets)",
                      title=f"KID per class, {name} features")
            written.append(f"kid_per_class_{name}.png")
    if thumbnails:
        plot_image_rows(thumbnails, folder / "samples.png", title="samples per class: real reference and generated")
        written.append("samples.png")
    return written


def write_all(folder: Path, metrics: dict, record: dict, label_names: list[str], thumbnails) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(folder / "per_class.csv", *per_class_rows(metrics, label_names))
    if metrics.get("judge"):
        write_csv(folder / "judge_confusion.csv", *confusion_rows(metrics["judge"]))
    if metrics.get("au"):
        write_csv(folder / "au.csv", *au_rows(metrics["au"]))
    metrics["files"] = sorted(["metrics.json", "per_class.csv", *(["judge_confusion.csv"] if metrics.get("judge") else []),
                               *(["au.csv"] if metrics.get("au") else []), *write_plots(folder, metrics, thumbnails)])
    write_json(folder / "evaluation.json", finite(record))
    write_metrics(folder / "metrics.json", metrics)  # last: its presence marks a finished evaluation
