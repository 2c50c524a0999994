"""Figures written next to results: confusion / relabel matrices and training curves (PNG, no display)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_matrix(
    matrix: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    path: str | Path,
    title: str = "",
    xlabel: str = "predicted",
    ylabel: str = "true",
    normalize: bool = True,
) -> Path:
    """A labelled heat map of ``matrix`` (rows normalised to sum 1 when ``normalize``), counts in each cell."""
    plt = _pyplot()
    counts = np.asarray(matrix, dtype=float)
    shown = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) if normalize else counts
    size = max(4.0, 0.6 * max(len(row_labels), len(col_labels)) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=45, ha="right")
    ax.set_yticks(range(len(row_labels)), row_labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    threshold = shown.max() / 2 if shown.size else 0
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            text = f"{shown[i, j]:.2f}\n({int(counts[i, j])})" if normalize else f"{int(counts[i, j])}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if shown[i, j] > threshold else "black")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_curves(series: Mapping[str, Sequence[tuple[float, float]]], path: str | Path, title: str = "", xlabel: str = "step") -> Path:
    """Line plot of named (x, y) series, e.g. {"train loss": [(step, loss), ...], "val accuracy": ...}."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in series.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=name)
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_bars(values: Mapping[str, float | None], path: str | Path, title: str = "", ylabel: str = "",
              errors: Mapping[str, Sequence[float] | float | None] | None = None, ylim: tuple[float, float] | None = None) -> Path:
    """A bar per name (missing values left empty); ``errors``: a +-value or a [low, high] interval per name."""
    plt = _pyplot()
    names = list(values)
    heights = [np.nan if values[n] is None else float(values[n]) for n in names]
    low, high = [], []
    for name, height in zip(names, heights):
        error = (errors or {}).get(name)
        if error is None or np.isnan(height):
            low.append(0.0)
            high.append(0.0)
        elif isinstance(error, (int, float)):
            low.append(float(error))
            high.append(float(error))
        else:
            low.append(max(0.0, height - float(error[0])))
            high.append(max(0.0, float(error[1]) - height))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(names) + 2), 3.5))
    ax.bar(range(len(names)), np.nan_to_num(heights), yerr=[low, high] if errors else None, capsize=2, color="tab:blue")
    tilted = len(names) > 6
    ax.set_xticks(range(len(names)), names, rotation=45 if tilted else 0, ha="right" if tilted else "center",
                  fontsize=7 if len(names) > 20 else 9)
    if ylabel:
        ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_image_rows(rows: Sequence[tuple[str, Sequence, Sequence]], path: str | Path, title: str = "", size: int = 96) -> Path:
    """One row per (label, left images, right images): e.g. real faces next to generated ones of one class."""
    from PIL import Image, ImageDraw

    per_side = max([max(len(left), len(right)) for _, left, right in rows] + [1])
    label_width, gap, header = 90, 12, 38
    width = label_width + 2 * per_side * size + gap
    height = header + size * max(1, len(rows))
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), title, fill="black")
    draw.text((label_width, 22), "real", fill="black")
    draw.text((label_width + per_side * size + gap, 22), "generated", fill="black")
    for r, (label, left, right) in enumerate(rows):
        top = header + r * size
        draw.text((4, top + size // 2 - 6), label, fill="black")
        for side, images in ((0, left), (1, right)):
            for c, image in enumerate(images):
                x = label_width + side * (per_side * size + gap) + c * size
                canvas.paste(image.convert("RGB").resize((size, size), Image.BICUBIC), (x, top))
    path = Path(path)
    canvas.save(path)
    return path
