"""Pure tensor functions of FA-IRL (paper Sections 4.2-4.3, Algorithm 1). No I/O, no state.

Shapes: `delta` is any tensor of reward margins Delta_i = R(o_i+) - R(o_i-); losses are
elementwise, callers reduce. Hyper-parameters broadcast against `delta`, so one call serves one
model or a whole bank of models (leading dims) with per-model values.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


# --------------------------------------------------------------------------- Eq. 1 and 2
def max_margin_loss(delta: torch.Tensor, margin) -> torch.Tensor:
    """Eq. 1, per pair: max(0, M - Delta)."""
    return torch.relu(margin - delta)


def max_entropy_loss(delta: torch.Tensor, tau) -> torch.Tensor:
    """Eq. 2, per pair: -log(exp(Delta/tau) / (exp(Delta/tau) + 1)) = softplus(-Delta/tau)."""
    return F.softplus(-delta / tau)


def pair_loss(delta: torch.Tensor, is_mm, margin, tau) -> torch.Tensor:
    """Eq. 1 where `is_mm`, else Eq. 2; `is_mm`, `margin`, `tau` broadcast per model.

    Algorithm 1 line 11 calls it twice: L_base with (M, tau), and the stricter L_fail(S_t) with
    (M_fail, tau_fail), M_fail > M or tau_fail < tau."""
    if isinstance(is_mm, bool):
        return max_margin_loss(delta, margin) if is_mm else max_entropy_loss(delta, tau)
    return torch.where(is_mm, max_margin_loss(delta, margin), max_entropy_loss(delta, tau))


# ---------------------------------------------------------------------------- schedules
def linear_anneal(start: float, end: float, t: int, rounds: int) -> float:
    """Value at round t of a linear schedule from `start` (t=0) to `end` (t=rounds-1), then held.
    A one-round schedule is `start` for that round and `end` afterwards."""
    if rounds <= 1:
        return start if t < 1 else end
    frac = min(max(t, 0), rounds - 1) / (rounds - 1)
    return start + (end - start) * frac


def exponential_decay(lambda_0: float, decay: float, t: int) -> float:
    """lambda_t = lambda_0 * decay**t ('initialized at 10.0 and decayed exponentially')."""
    return lambda_0 * decay ** max(t, 0)


def bottom_k_count(frac: float, n: int) -> int:
    """k_t = round(frac_t * n), the number of pairs flagged as failures in a round."""
    return int(math.floor(frac * n + 0.5))


# --------------------------------------------------------------------- failure detection
def margin_failures(delta: torch.Tensor, gamma_t) -> torch.Tensor:
    """Algorithm 1 line 4: F_t^margin = {i : Delta_i <= gamma_t}."""
    return delta <= gamma_t


def bottom_k_failures(delta: torch.Tensor, frac: float) -> torch.Tensor:
    """The k_t = round(frac * n) pairs with the lowest margins along the last dim, as a mask.

    Ties are broken by position (stable sort), so the count is exact and deterministic.
    `delta` [..., n] -> bool [..., n].
    """
    n = delta.shape[-1]
    k = bottom_k_count(frac, n)
    mask = torch.zeros_like(delta, dtype=torch.bool)
    if k > 0:
        order = torch.sort(delta, dim=-1, stable=True).indices[..., :k]
        mask.scatter_(-1, order, True)
    return mask


def supervised_failures(r_pos, r_neg, y_pos, y_neg, threshold) -> torch.Tensor:
    """A pair fails when either output is misclassified: y(o) * (R(o) - c) <= 0.

    y = +1 for a non-toxic (good) output, -1 for a toxic one. Pairwise losses leave the reward's
    offset free, so the boundary is a threshold c fitted for accuracy (`best_threshold`), not 0.
    Algorithm 1 line 6 prints `y(o-) R(o-) >= 0` for the rejected side; that flags every
    correctly classified toxic output, contradicting the text ('flag any output o for which
    y(o)R(o) <= 0'), so the text's rule is applied to both sides.
    """
    return (y_pos * (r_pos - threshold) <= 0) | (y_neg * (r_neg - threshold) <= 0)


def best_threshold(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Threshold c maximising accuracy of the rule `positive iff score > c`.

    scores [..., n] (any leading dims: one row per model), positive bool [n] or [..., n].
    Returns c [...]: the midpoint between the two sorted scores where the cut is made (or just
    below the minimum / at the maximum when everything is one class). Ties in accuracy go to
    the lowest cut, so the result is deterministic.
    """
    n = scores.shape[-1]
    positive = positive.expand_as(scores)
    s, order = torch.sort(scores, dim=-1)
    pos_sorted = torch.gather(positive.to(scores.dtype), -1, order)
    neg_sorted = 1.0 - pos_sorted
    # Cutting before sorted position j predicts the first j as negative:
    # correct = negatives among the first j + positives among the rest.
    zeros = torch.zeros_like(s[..., :1])
    neg_before = torch.cat([zeros, torch.cumsum(neg_sorted, -1)], -1)  # [..., n+1]
    pos_after = pos_sorted.sum(-1, keepdim=True) - torch.cat(
        [zeros, torch.cumsum(pos_sorted, -1)], -1
    )
    correct = neg_before + pos_after
    # A cut between equal scores is not realisable.
    valid = torch.ones_like(correct, dtype=torch.bool)
    valid[..., 1:n] = s[..., 1:] > s[..., :-1]
    correct = torch.where(valid, correct, torch.full_like(correct, -1.0))
    j = torch.argmax(correct, dim=-1, keepdim=True)  # first max
    lo = torch.gather(torch.cat([s[..., :1] - 1.0, s], -1), -1, j)
    hi = torch.gather(torch.cat([s, s[..., -1:]], -1), -1, j)
    c = torch.where(j == 0, lo, torch.where(j == n, hi, (lo + hi) / 2))
    return c.squeeze(-1)
