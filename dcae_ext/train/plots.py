"""PNG outputs of a run: reconstruction grids and the loss curve."""
from __future__ import annotations

import json
import os

import torch


def save_reconstruction_grid(originals: torch.Tensor, reconstructions: torch.Tensor, path: str) -> None:
    """Top row the originals, bottom row the reconstructions; tensors (B, 3, H, W) in [-1, 1]."""
    from torchvision.utils import save_image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    pair = torch.cat([originals.float().cpu(), reconstructions.float().cpu()])
    save_image((pair.clamp(-1, 1) + 1) / 2, path, nrow=originals.shape[0], padding=2)


def read_metrics(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path) as stream:
        return [json.loads(line) for line in stream if line.strip()]


def save_loss_curve(metrics_path: str, path: str, title: str = "") -> bool:
    """Every loss term of metrics.jsonl against the step (log scale). False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = read_metrics(metrics_path)
    keys = sorted({k for row in rows for k in row if k == "loss" or k.startswith("loss_")})
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for key in keys:
        points = [(row["step"], row[key]) for row in rows if key in row and row[key] is not None and row[key] > 0]
        if points:
            steps, values = zip(*points)
            axis.plot(steps, values, label=key, linewidth=2.0 if key == "loss" else 1.0)
    axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    if keys:
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
