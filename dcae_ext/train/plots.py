"""PNG outputs of a run: reconstruction strips and the loss curve (matplotlib, see dcae_ext.figures)."""
from __future__ import annotations

import json
import os

import torch

from dcae_ext.data.psnr import psnr_per_image, to_unit
from dcae_ext.figures import new_figure, save_png


def save_reconstruction_grid(originals: torch.Tensor, reconstructions: torch.Tensor, path: str,
                             step: int | None = None) -> None:
    """Inputs on the top row, reconstructions below with their PSNR; tensors (B, 3, H, W) in [-1, 1]."""
    save_png(reconstruction_figure(originals, reconstructions, step), path, dpi=100)


def reconstruction_figure(originals: torch.Tensor, reconstructions: torch.Tensor, step: int | None = None):
    originals, reconstructions = originals.float().cpu(), reconstructions.float().cpu()
    scores = psnr_per_image(to_unit(reconstructions), to_unit(originals))
    count = originals.shape[0]
    size = max(1.3, min(2.2, 14 / count))
    figure = new_figure(figsize=(size * count + 0.8, 2 * size + 0.8))
    axes = figure.subplots(2, count, squeeze=False)
    for column in range(count):
        for row, images in enumerate((originals, reconstructions)):
            axis = axes[row][column]
            axis.imshow(to_unit(images[column]).permute(1, 2, 0).numpy(), interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
        axes[1][column].set_xlabel(f"PSNR {scores[column]:.1f} dB", fontsize=9)
    axes[0][0].set_ylabel("input", fontsize=10)
    axes[1][0].set_ylabel("reconstruction", fontsize=10)
    mean = scores[torch.isfinite(scores)].mean() if torch.isfinite(scores).any() else float("inf")
    heading = f"step {step}: " if step is not None else ""
    figure.suptitle(f"{heading}inputs (top) and reconstructions (bottom), mean PSNR {mean:.2f} dB", fontsize=10)
    figure.tight_layout()
    return figure


def read_metrics(path: str) -> list[dict]:
    """The rows of metrics.jsonl; lines that do not parse (a torn last line) are left out."""
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path) as stream:
        for line in stream:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    points = [(row["step"], row[key]) for row in rows if row.get(key) is not None]
    return tuple(zip(*points)) if points else ((), ())


def save_loss_curve(metrics_path: str, path: str, title: str = "") -> bool:
    """The loss curve of metrics.jsonl as a PNG (see loss_curve_figure). False if matplotlib is missing."""
    try:
        figure = loss_curve_figure(read_metrics(metrics_path), title)
    except ImportError:
        return False
    save_png(figure, path, dpi=100)
    return True


def loss_curve_figure(rows: list[dict], title: str = ""):
    """Every loss term against the step: terms that stay positive on a log axis, terms that reach
    zero or below (an entropy loss) on a linear axis below; every point marked when a series is
    short, legends beside the axes."""
    from matplotlib.ticker import MaxNLocator

    keys = sorted({k for row in rows for k in row if k == "loss" or k.startswith("loss_")})
    series = {key: _series(rows, key) for key in keys}
    positive = [k for k in keys if series[k][1] and min(series[k][1]) > 0]
    signed = [k for k in keys if series[k][1] and k not in positive]
    panels = [(positive, "log", "loss (log scale)")] if positive or not signed else []
    if signed:
        panels.append((signed, "linear", "loss (terms reaching <= 0)"))
    figure = new_figure(figsize=(9, 3.6 * len(panels)))
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)
    for axis, (panel_keys, scale, label) in zip(axes[:, 0], panels):
        for key in panel_keys:
            steps, values = series[key]
            total = key == "loss"  # drawn wider and below the terms, so it shows where they coincide
            axis.plot(steps, values, label=key, linewidth=2.5 if total else 1.2, zorder=1 if total else 2,
                      marker="o" if len(steps) < 30 else None, markersize=7 if total else 3)
        axis.set_yscale(scale)
        if scale == "linear":
            axis.axhline(0.0, color="0.6", linewidth=0.8)
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        if panel_keys:
            axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    axes[-1, 0].set_xlabel("step")
    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    steps = [row["step"] for row in rows if "step" in row]
    if steps:
        axes[-1, 0].set_xlim(0, max(steps) * 1.03 + 1)
    axes[0, 0].set_title(title)
    figure.tight_layout()
    return figure
