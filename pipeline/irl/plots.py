"""IRL training curves: per method, the validation loss and pairwise accuracy by epoch (mean
over seeds, band: their range), and the epoch each seed was selected at."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.config import method_label
from pipeline.figures import pyplot, save_figure

PANELS = (
    ("train_loss", "training loss (objective incl. failures)"),
    ("val_loss", "validation loss (base objective)"),
    ("val_pair_acc", "validation pairwise accuracy"),
)


def plot_training_curves(trained, path: Path) -> Path:
    """`trained`: irl's `TrainedReward`s (method, seed, history rows with epoch, train_loss,
    val_loss, val_pair_acc; best_epoch). One column per panel, one line per method."""
    by_method: dict[str, list] = {}
    for r in trained:
        by_method.setdefault(r.method.name, []).append(r)
    n_seeds = max(len(rs) for rs in by_method.values())
    fig, axes = pyplot().subplots(1, len(PANELS), figsize=(4.4 * len(PANELS), 3.8))
    for ax, (key, label) in zip(axes, PANELS, strict=True):
        for i, (method, rs) in enumerate(by_method.items()):
            epochs = min(len(r.history) for r in rs)  # every seed ran at least this long
            if epochs == 0:
                continue
            values = np.array([[row[key] for row in r.history[:epochs]] for r in rs], float)
            x = [row["epoch"] for row in rs[0].history[:epochs]]
            color = f"C{i % 10}"
            ax.plot(x, values.mean(0), color=color, lw=1.2, label=method_label(method))
            if len(rs) > 1:
                ax.fill_between(x, values.min(0), values.max(0), color=color, alpha=0.15, lw=0)
            for r in rs:  # the selected epoch of each seed
                ax.axvline(r.best_epoch, color=color, lw=0.6, ls=":", alpha=0.7)
        ax.set_xlabel("epoch (one FA-IRL round per epoch)")
        ax.set_ylabel(label, fontsize=9)
        if key == "train_loss":
            ax.set_yscale("log")  # lambda_t L_fail makes FA-IRL's loss large at first
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=6, loc="lower right")
    fig.suptitle(
        f"IRL training (mean over {n_seeds} seed(s), band: their range; dotted: the epoch each "
        "seed was selected at)",
        fontsize=10,
    )
    return save_figure(fig, path)
