"""Distances between a learned reward r_hat and the ground truth r_gt on the same N outputs.

The paper reports "STARC" with two different formulas; fairl computes both and the standard
forms, each under its own name:

    starc            paper Eq. 4, L1/L1: s(r) = (r - mean r) / ||r - mean r||_1,
                     d = ||s(r_hat) - s(r_gt)||_1, range [0, 2]. The headline number.
    affine_mse       paper Eq. 10: min_{a>0, b} mean((r_hat - (a r_gt + b))^2). Not scale
                     invariant in r_hat and not symmetric (its range is [0, var(r_hat)]).
    affine_mse_std   Eq. 10 with both rewards standardised first: 1 - rho^2 if rho > 0 else 1.
    starc_l2         STARC (Skalse et al. 2024), L2/L2 with global centering, halved: [0, 1].
    starc_val        the same with per-prompt centering (the contextual-bandit canonical form).
    epic             EPIC (Gleave et al. 2021): sqrt((1 - rho) / 2) of the canonicalised rewards.

All are pure functions of 1-D tensors (float64 internally). A reward that is constant on the
outputs (zero norm after centering) raises `DegenerateReward`: the distances are undefined.
"""

from __future__ import annotations

import torch


class DegenerateReward(ValueError):
    """A reward vector is constant (after canonicalisation): distances are undefined."""


def _vec(r) -> torch.Tensor:
    r = torch.as_tensor(r, dtype=torch.float64).flatten()
    if r.numel() < 2:
        raise DegenerateReward("need at least two outputs to compare rewards")
    return r


def _centre(r: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Canonicalise: subtract the mean, globally or within each group (e.g. each prompt)."""
    if groups is None:
        return r - r.mean()
    groups = torch.as_tensor(groups)
    _, inv = torch.unique(groups, return_inverse=True)
    sums = torch.zeros(int(inv.max()) + 1, dtype=r.dtype).index_add_(0, inv, r)
    counts = torch.zeros_like(sums).index_add_(0, inv, torch.ones_like(r))
    return r - (sums / counts)[inv]


def _normalise(c: torch.Tensor, p: int, what: str) -> torch.Tensor:
    norm = torch.linalg.vector_norm(c, ord=p)
    if norm <= 1e-12 * max(1.0, float(c.abs().max())) or norm == 0:
        raise DegenerateReward(f"{what} reward is constant on these outputs: distance undefined")
    return c / norm


def starc_l1(r_hat, r_gt) -> float:
    """Paper Eq. 4."""
    a, b = _vec(r_hat), _vec(r_gt)
    return float(
        (_normalise(_centre(a), 1, "learned") - _normalise(_centre(b), 1, "ground-truth"))
        .abs()
        .sum()
    )


def starc_l2(r_hat, r_gt, groups=None) -> float:
    """STARC with L2 normalisation and half the L2 distance; per-group centering if `groups`."""
    a, b = _vec(r_hat), _vec(r_gt)
    sa = _normalise(_centre(a, groups), 2, "learned")
    sb = _normalise(_centre(b, groups), 2, "ground-truth")
    return float(0.5 * torch.linalg.vector_norm(sa - sb))


def epic(r_hat, r_gt, groups=None) -> float:
    """sqrt((1 - rho) / 2), rho the Pearson correlation of the canonicalised rewards."""
    a, b = _centre(_vec(r_hat), groups), _centre(_vec(r_gt), groups)
    _normalise(a, 2, "learned"), _normalise(b, 2, "ground-truth")
    rho = torch.corrcoef(torch.stack([a, b]))[0, 1].clamp(-1.0, 1.0)
    return float(torch.sqrt((1.0 - rho) / 2.0))


def affine_mse(r_hat, r_gt) -> float:
    """Paper Eq. 10: min over a > 0, b of mean((r_hat - a r_gt - b)^2). When the best
    unconstrained slope is <= 0 the infimum is at a -> 0: the variance of r_hat. A constant
    r_hat would score a perfect 0 here, so it raises like every other distance."""
    xc, yc = _centre(_vec(r_hat)), _centre(_vec(r_gt))
    _normalise(xc, 2, "learned"), _normalise(yc, 2, "ground-truth")
    a = float((xc * yc).sum() / (yc * yc).sum())
    return float(((xc - max(a, 0.0) * yc) ** 2).mean())


def affine_mse_std(r_hat, r_gt) -> float:
    """Eq. 10 with r_hat standardised first: 1 - rho^2 if rho > 0 else 1; in [0, 1], symmetric."""
    xc = _centre(_vec(r_hat))
    _normalise(xc, 2, "learned")
    return affine_mse(xc / xc.std(unbiased=False), r_gt)


def all_distances(r_hat, r_gt, groups=None) -> dict[str, float | None]:
    """Every distance, by name; None (with the reason in `_notes`) where undefined."""
    out: dict = {}
    notes = []
    fns = {
        "starc": lambda: starc_l1(r_hat, r_gt),
        "affine_mse": lambda: affine_mse(r_hat, r_gt),
        "affine_mse_std": lambda: affine_mse_std(r_hat, r_gt),
        "starc_l2": lambda: starc_l2(r_hat, r_gt),
        "epic": lambda: epic(r_hat, r_gt),
    }
    if groups is not None:
        fns["starc_val"] = lambda: starc_l2(r_hat, r_gt, groups)
    for name, fn in fns.items():
        try:
            out[name] = fn()
        except DegenerateReward as e:
            out[name] = None
            notes.append(f"{name}: {e}")
    if notes:
        out["_notes"] = notes
    return out
