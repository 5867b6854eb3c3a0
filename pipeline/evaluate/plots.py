"""The PNG plots of `fairl evaluate`: test metrics by method, and each method's learned reward
against the ground truth. Written with `pipeline.figures.save_figure`, like every fairl plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.evaluate.metrics import EvalInputs
from pipeline.figures import pyplot, save_figure

BAR_PANELS = (
    ("test/accuracy", "Accuracy ↑"),
    ("test/f1", "F1 ↑"),
    ("test/auc", "AUC ↑"),
    ("test/starc", "STARC (Eq. 4) ↓"),
    ("test/pairwise_accuracy", "Pairwise accuracy ↑"),
)


def plot_metric_bars(metrics: dict, path: Path) -> Path | None:
    """One bar panel per test metric that any method has (metrics.json "methods"), error bars
    the std over seeds; None (nothing written) when no method has any."""
    panels = [
        (k, label)
        for k, label in BAR_PANELS
        if any(a["mean"].get(k) is not None for a in metrics["methods"].values())
    ]
    if not panels:
        return None
    methods = list(metrics["methods"])
    fig, axes = pyplot().subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    colors = ["#4C72B0" if not m.startswith("fa-") else "#DD8452" for m in methods]
    for ax, (k, label) in zip(axes[0], panels):
        mean = [metrics["methods"][m]["mean"].get(k) or 0.0 for m in methods]
        std = [metrics["methods"][m]["std"].get(k) or 0.0 for m in methods]
        ax.bar(range(len(methods)), mean, yerr=std, color=colors, capsize=3)
        ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=8)
        ax.set_title(label, fontsize=10)
        lo = min(m - s for m, s in zip(mean, std))
        ax.set_ylim(max(0.0, lo - 0.1 * (max(mean) - lo + 1e-9)), None)
    fig.suptitle(
        f"{metrics['run']}: test metrics by method (error bars: std over seeds)", fontsize=10
    )
    return save_figure(fig, path)


def plot_reward_vs_gt(inp: EvalInputs, path: Path) -> Path:
    """Per method, its lowest seed's standardised reward against the ground-truth score on the
    test outputs (red: toxic), with their correlation. Needs ground-truth scores."""
    test = inp.test
    methods = inp.methods
    gt = inp.column("score", test)
    toxic = inp.column("toxic", test) if "chosen_toxic" in inp.df else None
    cols = min(3, len(methods))
    rows = -(-len(methods) // cols)
    fig, axes = pyplot().subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    for ax, m in zip(axes.flat, methods):
        seed = inp.seeds_of(m)[0]
        r = inp.scores[m, seed].outputs(test)
        r = (r - r.mean()) / (r.std() + 1e-12)
        c = np.where(toxic, "#C44E52", "#4C72B0") if toxic is not None else "#4C72B0"
        ax.scatter(gt, r, s=6, alpha=0.5, c=c, linewidths=0)
        rho = np.corrcoef(gt, r)[0, 1] if r.std() > 0 and gt.std() > 0 else float("nan")
        ax.set_title(f"{m} (seed {seed}), r = {rho:.2f}", fontsize=9)
        ax.set_xlabel("ground-truth score", fontsize=8)
        ax.set_ylabel("learned reward (standardised)", fontsize=8)
    for ax in list(axes.flat)[len(methods) :]:
        ax.axis("off")
    fig.suptitle("Learned reward vs ground truth on test outputs (red: toxic)", fontsize=10)
    return save_figure(fig, path)
