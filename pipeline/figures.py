"""Figures: matplotlib without a display, and one way to write a figure to disk.

Every plot of fairl (evaluate's metric bars and reward scatter, re-rlhf's toxicity curves) is a
PNG written by `save_figure`, so they share one resolution and layout and never leak open
figures in a long process. matplotlib is imported, and its non-interactive backend chosen,
only when a plot is drawn (`pyplot()`): importing a stage from a notebook leaves the
notebook's own backend alone until fairl actually plots.
"""

from __future__ import annotations

from pathlib import Path

DPI = 110


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display: a headless machine or CI can plot)."""
    import matplotlib  # heavy, and the backend is chosen here: on first plot only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Lay `fig` out, write it to `path` as PNG and close it; returns the path."""
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    pyplot().close(fig)
    return Path(path)
