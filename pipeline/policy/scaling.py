"""DR-IRL's dynamic reward scaling for GRPO (`re_rlhf.dynamic_scaling`; seeds/dr-irl-abstract.txt).

The abstract names two signals and no formula: data-level hardness from text-encoder cosine
similarity, and model-level responsiveness from reward gaps. fairl's formulas, for a category
reward r_c (standardised, pipeline.scorers.CategoryRewardScorer), a prompt x and its completion y:

    d_c(x)  = clip((1 + cos(h(x), mu_c^unsafe) - cos(h(x), mu_c^safe)) / 2, 0, 1)
              hardness: how much nearer the prompt lies to category c's unsafe demonstrations
              than to its safe ones (h the reward's sentence encoder, mu the centroids irl wrote)
    g_c     <- momentum * g_c + (1 - momentum) * (mean_batch r_c(y) - mean_ref r_c)
              the reward gap of the policy over the base LM (reference samples drawn before RL),
              0 before the first batch and that batch's gap after it; each batch is scaled with
              the gaps of the batches before it
    rho_c   = tanh(max(g_c, 0) / sigma_c)
              responsiveness: 0 while the policy has not moved on c, towards 1 once it has
              gained a reference std sigma_c of r_c
    s_c(x)  = (1 + alpha d_c(x)) (1 + beta (1 - rho_c)), divided by the batch's mean s
    R(x, y) = sum over the active categories c of s_c(x) r_c(y)

The active categories are all of them (`sum`) or the prompt's routed one (`route`). Dividing by
the batch mean makes the scales reweight prompts and categories without resizing the reward, so
the KL coefficient means what it means unscaled; GRPO must not divide advantages by the group's
std (re_rlhf.trl.scale_rewards: batch or none), which would cancel a prompt's scale.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from pipeline.irl.categories import cosine
from pipeline.policy.models import batch_seed
from pipeline.policy.ppo import reference_samples
from pipeline.scorers import CategoryRewardScorer, Scorer, Scores

log = logging.getLogger("fairl.scaling")


def hardness(h_prompt: torch.Tensor, mu_unsafe: torch.Tensor, mu_safe: torch.Tensor):
    """[n, C] d_c(x) of each prompt embedding (h_prompt [n, d]) for each category (mu [C, d])."""
    d = (1 + cosine(h_prompt, mu_unsafe) - cosine(h_prompt, mu_safe)) / 2
    return d.clamp(0.0, 1.0)


def responsiveness(gap: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """[C] rho_c = tanh(max(g_c, 0) / sigma_c)."""
    return torch.tanh(gap.clamp_min(0.0) / sigma.clamp_min(1e-8))


def scale(d: torch.Tensor, rho: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """[n, C] s_c(x) = (1 + alpha d_c(x)) (1 + beta (1 - rho_c)), before the batch division."""
    return (1 + alpha * d) * (1 + beta * (1 - rho))[None, :]


class GapTracker:
    """g_c: the moving average (momentum) of the policy's batch mean r_c minus the reference's."""

    def __init__(self, ref_mean: torch.Tensor, momentum: float):
        self.ref_mean, self.momentum = ref_mean, momentum
        self.gap: torch.Tensor | None = None

    def update(self, batch_mean: torch.Tensor) -> torch.Tensor:
        """One batch's mean r_c ([C]; NaN for a category no completion of the batch counted
        for, whose gap stays as it was) -> the gaps g_c [C]."""
        g = batch_mean - self.ref_mean
        if self.gap is None:
            self.gap = torch.nan_to_num(g)
        else:
            ema = self.momentum * self.gap + (1 - self.momentum) * g
            self.gap = torch.where(torch.isnan(g), self.gap, ema)
        return self.gap


class ScaledCategoryScorer(Scorer):
    """A category reward with dynamic scaling, for TRL's GRPO (module docstring). `prepare`
    draws the reference samples; each `score_for` call (one GRPO generation batch) scales with
    the gaps tracked so far, then updates them, and reports the batch's mean scale, hardness,
    gap and responsiveness per category through `log_metric` (TRL's, into its log)."""

    name = "scaled-categories"

    def __init__(self, inner: CategoryRewardScorer, cfg):
        self.inner, self.cfg = inner, cfg
        self.tracker: GapTracker | None = None
        self.sigma: torch.Tensor | None = None
        self.log_metric = None  # TRL's log_metric, set by the reward function

    def describe(self):
        return {"kind": self.name, "inner": self.inner.describe(), "scaling": self.cfg.model_dump()}

    def prepare(self, model, tok, prompts: Sequence[str], gen, seed: int) -> None:
        """The base LM's (`model`) mean and std of each r_c on `reference_samples` prompts."""
        prompts = list(prompts[: self.cfg.reference_samples])
        comps = []
        for batch, texts in reference_samples(
            model, tok, prompts, gen, batch_seed(seed, "scaling-reference")
        ):
            r = self.inner.components(texts, batch)
            comps.append(torch.where(self.inner.active(batch, len(texts)), r, torch.nan))
        r = torch.cat(comps, 1)
        mean, std = r.nanmean(1), _nanstd(r)
        self.tracker = GapTracker(torch.nan_to_num(mean), self.cfg.momentum)
        self.sigma = torch.where(torch.isfinite(std) & (std > 1e-8), std, torch.ones_like(std))
        log.info(
            "dynamic scaling: reference r_c mean %s, std %s on %d base-LM samples",
            _fmt(self.inner.categories, mean),
            _fmt(self.inner.categories, self.sigma),
            len(prompts),
        )

    def score(self, texts):
        raise NotImplementedError("a scaled category reward scores completions to their prompts")

    def score_for(self, texts, prompts) -> Scores:
        if self.tracker is None:
            raise RuntimeError("ScaledCategoryScorer.prepare() must run before scoring")
        inner, cfg, cats = self.inner, self.cfg, self.inner.categories
        r = inner.components(texts, prompts)  # [C, n]
        active = inner.active(prompts, len(texts))  # [C, n]
        h = inner.embed_prompts(prompts)
        d = hardness(h, inner.mu["unsafe"], inner.mu["safe"]).T  # [C, n]
        gap = self.tracker.gap if self.tracker.gap is not None else torch.zeros(len(cats))
        rho = responsiveness(gap, self.sigma)  # from the gaps of the batches before this one
        s = scale(d.T, rho, cfg.alpha, cfg.beta).T  # [C, n]
        s = s / s[active].mean()  # reweight, do not resize
        reward = (s * r * active).sum(0)
        batch_mean = torch.where(active, r, torch.nan).nanmean(1)
        self.tracker.update(batch_mean)  # for the next batch
        stats = {}
        for i, c in enumerate(cats):
            if active[i].any():
                stats[f"scale/{c}"] = float(s[i][active[i]].mean())
                stats[f"hardness/{c}"] = float(d[i][active[i]].mean())
            stats[f"gap/{c}"] = float(gap[i])  # the gap rho_c was computed from
            stats[f"responsiveness/{c}"] = float(rho[i])
        self.last_stats = stats
        if self.log_metric is not None:
            for k, v in stats.items():
                self.log_metric(k, v)
        return Scores(reward=reward.double().numpy())


def _nanstd(r: torch.Tensor) -> torch.Tensor:
    mean = r.nanmean(1, keepdim=True)
    n = (~torch.isnan(r)).sum(1)
    var = ((r - mean) ** 2).nansum(1) / (n - 1).clamp_min(1)
    return var.sqrt()


def _fmt(names: list[str], values: torch.Tensor) -> str:
    return ", ".join(f"{c} {v:.3g}" for c, v in zip(names, np.asarray(values)))
