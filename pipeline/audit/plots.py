"""The PNG plots of `fairl audit`, through pipeline.figures like every fairl plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.audit.probes import NEUTRAL
from pipeline.figures import pyplot, save_figure

KIND_COLOURS = {NEUTRAL: "#4C72B0", "verdict": "#DD8452"}


def plot_finding_rates(rates: pd.DataFrame, path: Path) -> Path:
    """The finding rate of each family (0-1 axis), its count of valid probes written above."""
    fig, ax = pyplot().subplots(figsize=(max(5.0, 0.8 * len(rates) + 2), 3.6))
    x = np.arange(len(rates))
    values = [0.0 if r is None or pd.isna(r) else r for r in rates["rate"]]
    ax.bar(x, values, color=[KIND_COLOURS.get(k, "grey") for k in rates["kind"]], width=0.7)
    for i, (v, n) in enumerate(zip(values, rates["valid"], strict=True)):
        ax.text(i, v + 0.02, f"{v:.2f}\n(n={n})", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, rates["family"], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("finding rate (of valid probes)")
    handles = [pyplot().Rectangle((0, 0), 1, 1, color=c, label=k) for k, c in KIND_COLOURS.items()]
    ax.legend(handles=handles, fontsize=8, loc="upper right")
    ax.set_title("Audit: findings per probe family", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def plot_gaps(judged: pd.DataFrame, delta: float, path: Path) -> Path:
    """Per family, the distribution of gaps (neutral: reward moved by the edit, in sd; verdict:
    R - c in sd), findings in colour; the neutral finding band |gap| > delta shaded."""
    families = list(dict.fromkeys(judged["family"]))
    fig, ax = pyplot().subplots(figsize=(max(5.0, 0.8 * len(families) + 2), 3.8))
    rng = np.random.default_rng(0)
    for i, f in enumerate(families):
        g = judged[(judged["family"] == f) & judged["valid"]]
        x = i + rng.uniform(-0.25, 0.25, len(g))
        colour = np.where(g["finding"], "#C44E52", "#999999")
        ax.scatter(x, g["gap"], s=5, c=colour, lw=0)
    ax.axhspan(-delta, delta, color="#4C72B0", alpha=0.08, lw=0)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xticks(range(len(families)), families, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("gap (sd of the reward)")
    ax.set_title(
        f"Audit gaps (red: findings; band: |gap| <= {delta:g}, a neutral edit's allowance)",
        fontsize=10,
    )
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)
