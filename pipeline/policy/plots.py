"""The re-RLHF curves (the paper's Figure 3, right): per reward, the mean over RL seeds with a
band, the ground-truth toxicity and the KL to the base each on its own axis."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.figures import pyplot, save_figure

PANELS = {
    "toxicity_rate": "ground-truth toxicity rate\n(held-out prompts)",
    "kl_to_base": "KL to the base LM (nats / sample)",
}


def seed_band(runs: dict, key: str) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """Steps measured by every seed, and at each the mean, min and max of `key` over the seeds.
    The band is the range of the seeds: with the few seeds an RL run affords, a standard
    deviation or a t interval says less than the runs themselves."""
    per_seed = [{p["step"]: p.get(key) for p in r["points"]} for r in runs.values()]
    steps = sorted(
        set.intersection(*[{s for s, v in d.items() if v is not None} for d in per_seed])
    )
    values = np.array([[d[s] for s in steps] for d in per_seed], dtype=float).reshape(
        len(per_seed), len(steps)
    )
    return steps, values.mean(0), values.min(0), values.max(0)


def plot_curves(curves: dict, path: Path, title: str, markers: tuple[str, ...] = ()) -> Path:
    panels = {**PANELS, **{m: f"{m.replace('_', ' ')} of the samples" for m in markers}}
    fig, axes = pyplot().subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    n_seeds = max((len(c["seeds"]) for c in curves.values()), default=1)
    for ax, (key, label) in zip(axes, panels.items(), strict=True):
        for i, (name, c) in enumerate(curves.items()):
            steps, mean, lo, hi = seed_band(c["seeds"], key)
            if not steps:
                continue
            color = f"C{i}"
            ax.plot(steps, mean, marker="o", ms=3, color=color, label=name)
            if len(c["seeds"]) > 1:
                ax.fill_between(steps, lo, hi, color=color, alpha=0.2, lw=0)
        ax.set_xlabel("RL step")
        ax.set_ylabel(label)
        if key != "kl_to_base":  # a rate; a KL estimate from samples can dip below 0
            ax.set_ylim(0, None)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    band = f"mean over {n_seeds} RL seeds, band: their range" if n_seeds > 1 else "one RL seed"
    fig.suptitle(f"{title}: re-RLHF with each reward ({band})", fontsize=10)
    return save_figure(fig, path)


RL_PANELS = (  # (statistic, label): what every PPO step logs (docs/ppo.md, detail 7)
    ("score", "score (ground-truth reward)"),
    ("reward", "mean reward (TRL)"),
    ("kl", "KL to the reference (per sample)"),
    ("entropy", "policy entropy"),
    ("clipfrac", "clipped fraction"),
)


def plot_rl_curves(metrics_jsonl: Path, namespace: str, path: Path, title: str) -> Path | None:
    """The RL run's statistics by step, from its metrics.jsonl rows under `namespace/` (fairl's
    PPO logs every panel; TRL logs its own names, of which those it shares are drawn). None
    (nothing written) when the log holds none of them."""
    rows = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line]
    panels = [(k, label) for k, label in RL_PANELS if any(f"{namespace}/{k}" in r for r in rows)]
    if not panels:
        return None
    fig, axes = pyplot().subplots(1, len(panels), figsize=(3.8 * len(panels), 3.2), squeeze=False)
    for ax, (k, label) in zip(axes[0], panels, strict=True):
        pts = sorted((r["step"], r[f"{namespace}/{k}"]) for r in rows if f"{namespace}/{k}" in r)
        ax.plot([s for s, _ in pts], [v for _, v in pts], lw=1.2)
        ax.set_xlabel("RL step")
        ax.set_ylabel(label, fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: {namespace} training", fontsize=10)
    return save_figure(fig, path)
