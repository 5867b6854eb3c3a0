"""Every property a reward distance must have (identity, positive-affine invariance, maximal for
a negated reward, symmetry, a clear error for constant rewards), for every distance fairl
reports, plus hand-computed values."""

import math

import numpy as np
import pytest
import torch

from pipeline.evaluate import distances as D

R = torch.tensor([0.3, -1.2, 2.5, 0.0, 1.1, -0.4, 0.9, 3.3], dtype=torch.float64)
R2 = torch.tensor([1.0, 0.2, 1.5, -0.7, 0.4, 0.1, -1.1, 2.0], dtype=torch.float64)
# EPIC takes a square root: a 1e-16 residue in rho becomes 1e-8.
ZERO_TOL = {"epic": 1e-7}
GROUPS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])

# name -> (function, maximum of its range for r_gt = -r_hat)
SYMMETRIC = {
    "starc": (D.starc_l1, lambda r: 2.0),
    "starc_l2": (D.starc_l2, lambda r: 1.0),
    "starc_val": (lambda a, b: D.starc_l2(a, b, GROUPS), lambda r: 1.0),
    "epic": (D.epic, lambda r: 1.0),
    "affine_mse_std": (D.affine_mse_std, lambda r: 1.0),
}
ALL = {**SYMMETRIC, "affine_mse": (D.affine_mse, lambda r: float(((r - r.mean()) ** 2).mean()))}


@pytest.mark.parametrize("name", ALL)
def test_identical_rewards_have_distance_zero(name):
    fn, _ = ALL[name]
    assert fn(R, R) == pytest.approx(0.0, abs=ZERO_TOL.get(name, 1e-12))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("a,b", [(2.0, 0.0), (0.3, -5.0), (17.0, 3.0)])
def test_positive_affine_transform_has_distance_zero(name, a, b):
    fn, _ = ALL[name]
    assert fn(R, a * R + b) == pytest.approx(0.0, abs=ZERO_TOL.get(name, 1e-10))


@pytest.mark.parametrize("name", ALL)
def test_negated_reward_is_the_maximum_of_the_range(name):
    fn, top = ALL[name]
    assert fn(R, -R) == pytest.approx(top(R.double()), rel=1e-9)
    assert fn(R, R2) < top(R.double())


@pytest.mark.parametrize("name", SYMMETRIC)
def test_symmetric(name):
    fn, _ = SYMMETRIC[name]
    assert fn(R, R2) == pytest.approx(fn(R2, R), rel=1e-12)


def test_eq10_is_not_symmetric_nor_scale_invariant_in_the_learned_reward():
    # Documented behaviour of paper Eq. 10, which is why the standardised variant exists.
    assert D.affine_mse(R, R2) != pytest.approx(D.affine_mse(R2, R), rel=1e-3)
    assert D.affine_mse(3 * R, R2) == pytest.approx(9 * D.affine_mse(R, R2), rel=1e-9)
    assert D.affine_mse_std(3 * R, R2) == pytest.approx(D.affine_mse_std(R, R2), rel=1e-9)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("constant_side", ["learned", "truth"])
def test_constant_reward_raises_a_clear_error(name, constant_side):
    fn, _ = ALL[name]
    const = torch.full_like(R, 0.7)
    args = (const, R) if constant_side == "learned" else (R, const)
    with pytest.raises(D.DegenerateReward, match="constant"):
        fn(*args)


def test_l2_starc_equals_sqrt_of_one_minus_pearson_over_two():
    # With global centering 0.5 ||s1 - s2||_2 = sqrt((1 - rho)/2).
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.normal(size=50), rng.normal(size=50)
        rho = np.corrcoef(a, b)[0, 1]
        assert D.starc_l2(a, b) == pytest.approx(math.sqrt((1 - rho) / 2), rel=1e-10)
        assert D.epic(a, b) == pytest.approx(D.starc_l2(a, b), rel=1e-10)


def test_eq4_hand_computed():
    # r_hat = [0, 1, 2]: centred [-1, 0, 1], L1 norm 2, s = [-.5, 0, .5]
    # r_gt  = [0, 0, 3]: centred [-1, -1, 2], L1 norm 4, s = [-.25, -.25, .5]
    # |s_hat - s_gt| = .25 + .25 + 0 = 0.5
    assert D.starc_l1([0, 1, 2], [0, 0, 3]) == pytest.approx(0.5)


def test_eq10_hand_computed():
    # r_gt = [0, 1, 2], r_hat = [0, 2, 3]: best a = 1.5, b = 1/6; residuals [-1/6, 1/3, -1/6]
    assert D.affine_mse([0, 2, 3], [0, 1, 2]) == pytest.approx((1 / 36 + 1 / 9 + 1 / 36) / 3)
    # a negative best slope is clipped to 0 (a > 0): the value is var(r_hat)
    assert D.affine_mse([2, 1, 0], [0, 1, 2]) == pytest.approx(2 / 3)


def test_per_prompt_centering_ignores_prompt_offsets():
    # Adding any per-prompt constant (potential shaping in a contextual bandit) changes nothing.
    shift = torch.tensor([5.0, 5.0, -3.0, -3.0, 0.5, 0.5, 9.0, 9.0], dtype=torch.float64)
    assert D.starc_l2(R + shift, R, GROUPS) == pytest.approx(0.0, abs=1e-12)
    assert D.starc_l2(R + shift, R) > 0.1  # global centering does not forgive it


def test_all_distances_reports_undefined_values_with_a_reason():
    out = D.all_distances(torch.ones(6), torch.arange(6.0))
    assert out["starc"] is None and any("constant" in n for n in out["_notes"])
