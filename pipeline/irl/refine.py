"""The correction a refined reward adds to its parent (`fairl refine`): pure tensor functions.

The parent R_P is frozen (its scores are inputs); a small head C of the parent's kind is
trained so that R = R_P + C satisfies the accepted audit findings, FA-IRL's way (paper Eq. 3):

    L = mean_pairs  l_ME(Delta_R)                      the original pairs: nothing breaks
      + lambda_F  mean_fail  l_fail(Delta_R)           accepted verdict findings, as failure
                                                       pairs (the right output preferred)
      + lambda_I  mean_inv  ((R(a) - R(b)) / sigma)^2  accepted neutral findings: the edit
                                                       and its source score alike
      + mu ||w_C||^2                                   kept small

with l_ME Eq. 2 at tau and l_fail Eq. 2 at tau_fail < tau (the stricter failure temperature),
sigma the std of R_P on the training outputs. C starts at exactly 0 (its output layer is zero),
so R starts as R_P; with no finding the pairs' term alone still moves C (it refits the pairs),
which is why `fairl refine` refuses a triage that accepts nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.errors import TrainingDiverged
from pipeline.irl.heads import RewardHead
from pipeline.irl.objectives import max_entropy_loss


@dataclass(frozen=True)
class CorrectionData:
    """Embeddings and the parent's scores, each [n, d] / [n]: the original training pairs
    (pos preferred), the failure pairs, and the invariance pairs (a, b: should tie)."""

    h_pos: torch.Tensor
    h_neg: torch.Tensor
    r_pos: torch.Tensor
    r_neg: torch.Tensor
    f_pos: torch.Tensor
    f_neg: torch.Tensor
    rf_pos: torch.Tensor
    rf_neg: torch.Tensor
    i_a: torch.Tensor
    i_b: torch.Tensor
    ri_a: torch.Tensor
    ri_b: torch.Tensor
    sigma: float


def zero_init(head: RewardHead, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The head's default init with its output layer zeroed: C(h) = 0 everywhere."""
    p = head.init(gen)
    if "w2" in p:
        p["w2"] = torch.zeros_like(p["w2"])
        p["b2"] = torch.zeros_like(p["b2"])
    else:
        p["w"] = torch.zeros_like(p["w"])
        p["b"] = torch.zeros_like(p["b"])
    return p


def correction_loss(
    head: RewardHead,
    params: dict[str, torch.Tensor],
    data: CorrectionData,
    tau: float,
    tau_fail: float,
    lambda_f: float,
    lambda_i: float,
    mu: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L of the module docstring and its parts (floats, for the log)."""

    def c(h: torch.Tensor) -> torch.Tensor:
        return head.forward_one(params, h) if len(h) else h.new_zeros(0)

    parts = {}
    d = (data.r_pos + c(data.h_pos)) - (data.r_neg + c(data.h_neg))
    loss = max_entropy_loss(d, tau).mean()
    parts["pairs"] = float(loss.detach())
    if len(data.f_pos):
        d_f = (data.rf_pos + c(data.f_pos)) - (data.rf_neg + c(data.f_neg))
        l_f = max_entropy_loss(d_f, tau_fail).mean()
        loss = loss + lambda_f * l_f
        parts["fail"] = float(l_f.detach())
    if len(data.i_a):
        gap = ((data.ri_a + c(data.i_a)) - (data.ri_b + c(data.i_b))) / max(data.sigma, 1e-8)
        l_i = (gap**2).mean()
        loss = loss + lambda_i * l_i
        parts["invariance"] = float(l_i.detach())
    norm = sum((params[k] ** 2).sum() for k in head.weight_names)
    loss = loss + mu * norm
    parts["penalty"] = float(norm.detach())
    return loss, parts


def train_correction(
    head: RewardHead,
    data: CorrectionData,
    *,
    epochs: int,
    lr: float,
    tau: float,
    tau_fail: float,
    lambda_f: float,
    lambda_i: float,
    mu: float,
    seed: int,
) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    """Full-batch Adam on `correction_loss` from `zero_init`; returns the parameters and the
    per-epoch log. Full batch: the findings are tens to hundreds, the pairs a few thousand."""
    params = {
        k: v.requires_grad_()
        for k, v in zero_init(head, torch.Generator().manual_seed(seed)).items()
    }
    opt = torch.optim.Adam(params.values(), lr=lr)
    log = []
    for _ in range(epochs):
        loss, parts = correction_loss(head, params, data, tau, tau_fail, lambda_f, lambda_i, mu)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"the correction's loss is {float(loss)} at epoch {len(log)}",
                hint="lower refine.lr, or raise refine.tau_fail",
            )
        opt.zero_grad()
        loss.backward()
        opt.step()
        log.append({"loss": float(loss.detach()), **parts})
    return {k: v.detach().clone() for k, v in params.items()}, log
