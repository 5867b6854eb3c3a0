"""The re-RLHF toxicity curves (the paper's Figure 3, right)."""

from __future__ import annotations

from pathlib import Path

from pipeline.figures import pyplot, save_figure


def plot_curves(curves: dict, path: Path, title: str) -> Path:
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for name, c in curves.items():
        pts = c["points"]
        ax.plot(
            [p["step"] for p in pts],
            [p["toxicity_rate"] for p in pts],
            marker="o",
            ms=3,
            label=name,
        )
    ax.set_xlabel("RL step")
    ax.set_ylabel("ground-truth toxicity rate (held-out prompts)")
    ax.set_title(f"{title}: re-RLHF with each reward", fontsize=10)
    ax.set_ylim(0, None)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
