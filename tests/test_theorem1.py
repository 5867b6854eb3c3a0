"""Theorem 1 and Corollary 1, measured on a small problem.

Max-margin: the feasible set F = {theta : Delta_i(theta) >= M for every pair, |theta|_inf <= B}
and F_FA = F with the failures' constraints tightened to M_fail > M. The failures are the ones
fairl's own code identifies (lowest margins of a reward trained with Max-Margin IRL). We measure
F and F_FA by linear programs (directional widths, the ambiguity measure of Corollary 1) and by
sampling: adding failure constraints never enlarges the set, and shrinks it when failures exist.

Max-entropy: with up-weighted failures the FA-IRL loss dominates the base loss at every theta,
so every sublevel set is nested. With sharpened failures (tau_fail < tau) it does not: the
paper's proof assumes l_tau_fail >= l_tau for every Delta, true only for Delta <= 0.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from pipeline.config import IRLSection
from pipeline.irl import objectives as obj
from pipeline.irl.bank import train_bank
from pipeline.irl.common import Optim, PairTensors
from pipeline.irl.heads import make_head
from pipeline.irl.methods import method_spec

M, M_FAIL, BOX = 0.8, 1.6, 10.0


def small_problem(seed=0, n=40, d=3):
    g = torch.Generator().manual_seed(seed)
    theta = torch.tensor([2.0, -1.0, 0.5])
    a, b = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    # Separable preferences with a margin, so the max-margin feasible set is non-empty.
    keep = ((a - b) @ theta).abs() > 0.6
    a, b = a[keep], b[keep]
    prefer_a = (a @ theta) > (b @ theta)
    h_pos, h_neg = torch.where(prefer_a[:, None], a, b), torch.where(prefer_a[:, None], b, a)
    n = len(h_pos)
    return PairTensors(
        h_pos=h_pos, h_neg=h_neg, train=torch.arange(n - 6), val=torch.arange(n - 6, n)
    )


def identified_failures(data: PairTensors, frac: float = 0.2) -> np.ndarray:
    """Failures as FA-IRL finds them: the lowest-margin pairs under a Max-Margin reward."""
    head = make_head("linear", data.h_pos.shape[1])
    r = train_bank(
        data,
        [method_spec("mm", IRLSection())],
        [0],
        head,
        Optim(max_epochs=30, patience=30),
        progress=False,
    )[0]
    delta = (data.h_pos - data.h_neg) @ r.base["w"]
    return obj.bottom_k_failures(delta[data.train], frac).numpy()


def constraints(data: PairTensors, failures: np.ndarray | None):
    """A_ub theta <= b_ub form of Delta_i >= margin_i."""
    x = (data.h_pos - data.h_neg)[data.train].double().numpy()
    margins = np.full(len(x), M)
    if failures is not None:
        margins[failures] = M_FAIL
    return -x, -margins


def width(direction, A, b) -> float:
    """max u.theta - min u.theta over {A theta <= b, |theta|_inf <= BOX}."""
    bounds = [(-BOX, BOX)] * len(direction)
    hi = linprog(-direction, A_ub=A, b_ub=b, bounds=bounds, method="highs")
    lo = linprog(direction, A_ub=A, b_ub=b, bounds=bounds, method="highs")
    assert hi.status == 0 and lo.status == 0, "feasible set must be non-empty"
    return float(-hi.fun - lo.fun)


def test_failure_constraints_never_enlarge_the_max_margin_feasible_set():
    data = small_problem()
    failures = identified_failures(data)
    assert failures.sum() > 0
    A, b = constraints(data, None)
    A_fa, b_fa = constraints(data, failures)
    rng = np.random.default_rng(0)
    widths = []
    for _ in range(40):
        u = rng.normal(size=3)
        u /= np.linalg.norm(u)
        widths.append((width(u, A, b), width(u, A_fa, b_fa)))
    widths = np.array(widths)
    assert (widths[:, 1] <= widths[:, 0] + 1e-7).all()  # F_FA subset of F: never wider
    assert (widths[:, 1] < widths[:, 0] - 1e-3).any()  # and strictly narrower somewhere
    print(
        f"\nmean directional width: IRL {widths[:, 0].mean():.3f}, FA-IRL {widths[:, 1].mean():.3f}"
    )

    # Sampled parameters: everything FA-feasible is IRL-feasible, and fewer points survive.
    theta = rng.uniform(-BOX, BOX, size=(200_000, 3))
    feasible = (theta @ A.T <= b).all(1)
    feasible_fa = (theta @ A_fa.T <= b_fa).all(1)
    assert not (feasible_fa & ~feasible).any()
    assert feasible.sum() > feasible_fa.sum() > 0
    print(f"sampled feasible parameters: IRL {feasible.sum()}, FA-IRL {feasible_fa.sum()}")


def test_without_failures_the_feasible_set_is_unchanged():
    data = small_problem(seed=1)
    A, b = constraints(data, None)
    A_fa, b_fa = constraints(data, np.zeros(len(data.train), dtype=bool))
    u = np.array([1.0, 0.0, 0.0])
    assert width(u, A, b) == pytest.approx(width(u, A_fa, b_fa))


def test_max_entropy_up_weighting_nests_every_sublevel_set():
    data = small_problem(seed=2)
    failures = torch.tensor(identified_failures(data))
    x = (data.h_pos - data.h_neg)[data.train]
    thetas = torch.randn(5000, 3) * 3
    delta = thetas @ x.T  # [thetas, pairs]
    base = obj.max_entropy_loss(delta, 1.0).sum(1)
    up = base + (2.0 - 1.0) * (obj.max_entropy_loss(delta, 1.0) * failures).sum(1)  # w_fail = 2
    assert (up >= base).all()  # L_FA >= L_base pointwise ...
    for eta in torch.quantile(base, torch.tensor([0.1, 0.5, 0.9])):
        assert not ((up <= eta) & ~(base <= eta)).any()  # ... so F_FA(eta) is in F(eta)


def test_max_entropy_sharpening_does_not_nest_sublevel_sets_for_positive_margins():
    """A documented gap in Appendix B: with tau_fail < tau, a failure pair with Delta > 0 gets a
    *smaller* loss, so some theta is inside the FA-IRL sublevel set but not the IRL one."""
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # pair 0 is the failure
    thetas = torch.stack(
        torch.meshgrid(torch.linspace(-3, 3, 61), torch.linspace(-3, 3, 61), indexing="ij"), -1
    ).reshape(-1, 2)
    delta = thetas @ x.T
    base = obj.max_entropy_loss(delta, 1.0).sum(1)
    sharp = obj.max_entropy_loss(delta[:, 0], 0.5) + obj.max_entropy_loss(delta[:, 1], 1.0)
    eta = torch.quantile(base, 0.2)
    assert ((sharp <= eta) & ~(base <= eta)).any()
