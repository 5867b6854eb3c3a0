"""Figures: matplotlib without a display, and one way to write a figure to disk.

Every plot of fairl (evaluate's metric bars and reward scatter, re-rlhf's toxicity curves) is a
PNG written by `save_figure`, so they share one resolution and layout and never leak open
figures in a long process.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: a headless machine or CI must be able to plot

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

DPI = 110


def save_figure(fig, path: Path) -> Path:
    """Lay `fig` out, write it to `path` as PNG and close it; returns the path."""
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return Path(path)


__all__ = ["DPI", "plt", "save_figure"]
