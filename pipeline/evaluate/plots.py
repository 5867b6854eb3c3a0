"""The PNG plots of `fairl evaluate`: test metrics by method, and each method's learned reward
against the ground truth. Written with `pipeline.figures.save_figure`, like every fairl plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.config import METHOD_TABLE
from pipeline.evaluate.metrics import EvalInputs
from pipeline.figures import pyplot, save_figure

BAR_PANELS = (  # key, label, the metric's range (the axis shows all of it)
    ("test/accuracy", "Accuracy ↑", (0.0, 1.0)),
    ("test/f1", "F1 ↑", (0.0, 1.0)),
    ("test/auc", "AUC ↑", (0.0, 1.0)),
    ("test/starc", "STARC (Eq. 4) ↓", (0.0, 2.0)),
    ("test/pairwise_accuracy", "Pairwise accuracy ↑", (0.0, 1.0)),
)
KINDS = {  # method kind -> (colour, legend label)
    "irl": ("#4C72B0", "IRL"),
    "matched": ("#8FAADC", "IRL, matched selection"),
    "fa": ("#DD8452", "FA-IRL"),
}


def _kind(method: str) -> str:
    row = METHOD_TABLE.get(method)
    if row is None or not (row.failure_aware or row.matched):
        return "irl"
    return "fa" if row.failure_aware else "matched"


def _kinds_and_title(fig, methods: list[str], title: str) -> None:
    """The legend of the method kinds present, in one row at the top right, level with the
    left-aligned title."""
    present = dict.fromkeys(_kind(m) for m in methods)
    handles = [
        pyplot().Rectangle((0, 0), 1, 1, color=KINDS[k][0], label=KINDS[k][1]) for k in present
    ]
    fig.legend(handles=handles, loc="upper right", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10, x=0.02, ha="left")


def plot_metric_bars(metrics: dict, path: Path) -> Path | None:
    """One panel per test metric that any method has (metrics.json "methods"): a bar per method
    at its mean over seeds, each seed a dot, the value written above the bar. Every axis spans
    the metric's whole range (0-1, STARC 0-2), so a gap of 0.01 looks like one; the paired
    table of report.md gives the differences. None (nothing written) when no method has any."""
    panels = [
        (k, label, span)
        for k, label, span in BAR_PANELS
        if any(a["mean"].get(k) is not None for a in metrics["methods"].values())
    ]
    if not panels:
        return None
    methods = list(metrics["methods"])
    per_seed = {
        m: [row for key, row in metrics["models"].items() if key.split("/seed-")[0] == m]
        for m in methods
    }
    n_seeds = max(len(metrics["methods"][m]["seeds"]) for m in methods)
    fig, axes = pyplot().subplots(1, len(panels), figsize=(3.3 * len(panels), 3.9), squeeze=False)
    x = np.arange(len(methods))
    colors = [KINDS[_kind(m)][0] for m in methods]
    for ax, (k, label, (lo, hi)) in zip(axes[0], panels, strict=True):
        mean = [metrics["methods"][m]["mean"].get(k) for m in methods]
        ax.bar(x, [v if v is not None else 0.0 for v in mean], color=colors, width=0.7)
        for i, m in enumerate(methods):
            seeds = [r[k] for r in per_seed[m] if r.get(k) is not None]
            if seeds:
                jitter = np.linspace(-0.15, 0.15, len(seeds)) if len(seeds) > 1 else [0.0]
                ax.scatter(i + np.asarray(jitter), seeds, s=7, color="black", zorder=3, lw=0)
            if mean[i] is not None:
                ax.text(
                    i,
                    mean[i] + 0.02 * (hi - lo),
                    f"{mean[i]:.3f}",
                    ha="center",
                    va="bottom",
                    fontsize=6,
                    rotation=90,
                )
            else:
                ax.text(i, lo, "n/a", ha="center", va="bottom", fontsize=6)
        ax.set_xticks(x, methods, rotation=45, ha="right", fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.set_ylim(lo, hi * 1.12)  # room for the values above full bars
        ax.grid(axis="y", alpha=0.3)
    _kinds_and_title(
        fig,
        methods,
        f"{metrics['run']}: test metrics by method (bars: mean over {n_seeds} seed(s); dots: "
        "each seed)",
    )
    return save_figure(fig, path)


def plot_seed_dispersion(metrics: dict, path: Path) -> Path | None:
    """Corollary 1, measured: per method, left the distance of each seed's reward to the ground
    truth (test STARC, a dot per seed, the bar their std across seeds), right the mean pairwise
    STARC between the rewards of different seeds. Both axes span STARC's whole range, 0-2.
    None (nothing written) below two seeds or without STARC."""
    methods = [
        m
        for m, a in metrics["methods"].items()
        if len(a["seeds"]) > 1
        and a["dispersion"].get("starc") is not None
        and any(
            r.get("test/starc") is not None
            for key, r in metrics["models"].items()
            if key.split("/seed-")[0] == m
        )
    ]
    if not methods:
        return None
    n_seeds = max(len(metrics["methods"][m]["seeds"]) for m in methods)
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(max(6.5, 1.1 * len(methods) + 3), 3.9))
    x = np.arange(len(methods))
    colors = [KINDS[_kind(m)][0] for m in methods]
    for i, m in enumerate(methods):
        rows = [r for key, r in metrics["models"].items() if key.split("/seed-")[0] == m]
        seeds = [r["test/starc"] for r in rows if r.get("test/starc") is not None]
        jitter = np.linspace(-0.2, 0.2, len(seeds)) if len(seeds) > 1 else [0.0] * len(seeds)
        left.scatter(i + np.asarray(jitter), seeds, s=10, color=colors[i], zorder=3)
        if len(seeds) > 1:
            sd = float(np.std(seeds))
            left.errorbar(i, np.mean(seeds), yerr=sd, color="black", capsize=4, lw=1, zorder=4)
            left.text(i, 1.9, f"sd {sd:.3f}", ha="center", va="top", fontsize=6, rotation=90)
    disp = [metrics["methods"][m]["dispersion"]["starc"] for m in methods]
    right.bar(x, disp, color=colors, width=0.7)
    for i, v in enumerate(disp):
        right.text(i, v + 0.03, f"{v:.3f}", ha="center", va="bottom", fontsize=6, rotation=90)
    for ax, title in (
        (left, "distance to the ground truth\n(test STARC per seed; bar: mean ± sd)"),
        (right, "dispersion between seeds\n(mean pairwise STARC of their rewards)"),
    ):
        ax.set_xticks(x, methods, rotation=45, ha="right", fontsize=8)
        ax.set_ylim(0.0, 2.0)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    _kinds_and_title(
        fig,
        methods,
        f"{metrics['run']}: seed dispersion (Corollary 1), {n_seeds} seeds; "
        "lower is less ambiguous",
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


def plot_roc(inp: EvalInputs, path: Path) -> Path | None:
    """Per method, the ROC curve of its lowest seed's reward as a classifier of toxic test outputs
    (toxic when the reward is low), with its AUC. Needs ground-truth labels of both classes: None
    (nothing written) otherwise."""
    from sklearn.metrics import roc_auc_score, roc_curve  # evaluate's plots only

    test = inp.test
    toxic = inp.column("toxic", test, bool)
    if toxic.all() or not toxic.any():
        return None
    fig, ax = pyplot().subplots(figsize=(4.6, 4.2))
    for i, m in enumerate(inp.methods):
        seed = inp.seeds_of(m)[0]
        r = -inp.scores[m, seed].outputs(test)  # higher = more toxic
        fpr, tpr, _ = roc_curve(toxic, r)
        auc = roc_auc_score(toxic, r)
        ax.plot(fpr, tpr, color=f"C{i % 10}", lw=1.2, label=f"{m} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("false positive rate (clean outputs called toxic)")
    ax.set_ylabel("true positive rate (toxic outputs caught)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=6, loc="lower right")
    ax.set_title("ROC on the test outputs (each method's lowest seed)", fontsize=9)
    return save_figure(fig, path)


def plot_reward_histograms(inp: EvalInputs, path: Path) -> Path:
    """Per method, the distribution of its lowest seed's standardised reward on the toxic and on
    the non-toxic test outputs (overlap = where the reward cannot tell them apart)."""
    test = inp.test
    toxic = inp.column("toxic", test, bool)
    methods = inp.methods
    cols = min(4, len(methods))
    rows = -(-len(methods) // cols)
    fig, axes = pyplot().subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, m in zip(axes.flat, methods):
        seed = inp.seeds_of(m)[0]
        r = inp.scores[m, seed].outputs(test)
        r = (r - r.mean()) / (r.std() + 1e-12)
        bins = np.linspace(r.min(), r.max(), 31) if r.max() > r.min() else 10
        ax.hist(r[~toxic], bins=bins, alpha=0.6, color="#4C72B0", label="non-toxic")
        ax.hist(r[toxic], bins=bins, alpha=0.6, color="#C44E52", label="toxic")
        ax.set_title(f"{m} (seed {seed})", fontsize=8)
        ax.set_xlabel("reward (standardised)", fontsize=7)
    for ax in list(axes.flat)[len(methods) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(
        f"Rewards of the test outputs by ground-truth label ({int(toxic.sum())} toxic, "
        f"{int((~toxic).sum())} non-toxic)",
        fontsize=10,
    )
    return save_figure(fig, path)


def plot_subtype_distribution(inp: EvalInputs, path: Path) -> Path | None:
    """Paper Figure 3, middle: the share of the toxic outputs carrying each subtype (score > 0.5),
    in the train and the test pairs. None (nothing written) without subtypes."""
    subtypes = inp.pairs.subtypes
    if not subtypes:
        return None
    fig, ax = pyplot().subplots(figsize=(1.2 + 1.1 * len(subtypes), 3.4))
    x = np.arange(len(subtypes))
    for k, (split, mask) in enumerate((("train", inp.train), ("test", inp.test))):
        toxic = inp.column("toxic", mask, bool)
        shares = [
            float(np.mean(np.nan_to_num(inp.column(f"sub_{st}", mask, float))[toxic] > 0.5))
            if toxic.any()
            else 0.0
            for st in subtypes
        ]
        bars = ax.bar(
            x + (k - 0.5) * 0.38, shares, width=0.38, label=f"{split} ({toxic.sum()} toxic)"
        )
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(x, subtypes, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("share of the toxic outputs")
    ax.legend(fontsize=7)
    ax.set_title("Subtypes of the toxic outputs (an output may carry several)", fontsize=9)
    return save_figure(fig, path)
