"""Figures for PNG files through matplotlib's object API: a `Figure` on its own Agg canvas, so no
pyplot state is kept (nothing to close) and an interactive user's backend is never switched.
Imports nothing of dcae_ext: train, eval and bench all draw with it."""
from __future__ import annotations

import os


def new_figure(**kwargs):
    """A matplotlib Figure (kwargs as for Figure: figsize, layout, ...) drawn by the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


def save_png(figure, path: str, dpi: int) -> str:
    """`figure` as a PNG at `path` (its folder created); returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=dpi)
    return path
