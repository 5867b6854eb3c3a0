"""Known answers for the numerical cores: classification metrics, the accuracy-optimal threshold,
the MM/ME losses and their gradients, failure identification, and the FA-IRL schedules."""

import math

import numpy as np
import pytest
import torch

from pipeline.config import IRLSection
from pipeline.evaluate import classify
from pipeline.irl import objectives as obj
from pipeline.irl.methods import method_spec


# ------------------------------------------------------------------------ classification
def test_classification_metrics_hand_computed():
    # rewards and labels (toxic = positive); threshold 0.5: toxic iff reward <= 0.5
    r = [0.1, 0.4, 0.6, 0.9, 0.3, 0.8]
    y = [1, 1, 0, 0, 0, 1]
    # predictions: [1, 1, 0, 0, 1, 0] -> TP=2, FP=1, FN=1, TN=2
    m = classify.classification_metrics(r, y, 0.5)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # 2TP / (2TP + FP + FN)
    # AUC: P(score of a toxic output is lower than a non-toxic one), over 9 (toxic, clean) pairs:
    # toxic rewards {0.1, 0.4, 0.8} vs clean {0.6, 0.9, 0.3}: 0.1 beats 3, 0.4 beats 2, 0.8 beats 1
    assert m["auc"] == pytest.approx(6 / 9)
    assert m["n"] == 6 and m["toxic_rate"] == pytest.approx(0.5)


def test_auc_is_undefined_with_one_class():
    assert classify.classification_metrics([0.1, 0.2], [1, 1], 0.5)["auc"] is None


def test_pairwise_accuracy_counts_ties_as_wrong():
    assert classify.pairwise_accuracy([1.0, 2.0, 3.0, 0.5], [0.0, 2.0, 1.0, 1.0]) == pytest.approx(
        0.5
    )


def _brute_force_best_accuracy(scores, positive):
    s = np.sort(np.unique(scores))
    cands = np.concatenate([[s[0] - 1], (s[:-1] + s[1:]) / 2, [s[-1]]])
    return max(((scores > c) == positive).mean() for c in cands)


@pytest.mark.parametrize("seed", range(10))
def test_best_threshold_reaches_the_brute_force_optimum(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 40))
    scores = np.round(rng.normal(size=n), 1)  # rounding creates ties
    positive = rng.random(n) < 0.5
    c = float(obj.best_threshold(torch.tensor(scores), torch.tensor(positive)))
    assert ((scores > c) == positive).mean() == pytest.approx(
        _brute_force_best_accuracy(scores, positive)
    )


def test_best_threshold_is_batched_over_leading_dims():
    scores = torch.tensor([[0.1, 0.2, 0.9, 0.8], [5.0, 6.0, 1.0, 2.0]])
    positive = torch.tensor([False, False, True, True])
    c = obj.best_threshold(scores, positive)
    assert c[0] == pytest.approx(0.5)  # between 0.2 and 0.8
    # reversed scores: no cut beats 50%; among the tied best cuts the lowest is returned
    assert ((scores[1] > c[1]) == positive).float().mean() == 0.5 and c[1] < 1.0
    assert classify.fit_threshold([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == pytest.approx(0.5)


# --------------------------------------------------------------------------- losses
def test_max_margin_loss_and_gradient_hand_computed():
    delta = torch.tensor([-1.0, 0.3, 0.8, 2.0], requires_grad=True)
    loss = obj.max_margin_loss(delta, 0.8).mean()  # Eq. 1 with M = 0.8
    # max(0, 0.8 - d) = [1.8, 0.5, 0, 0] -> mean 0.575
    assert loss.item() == pytest.approx(0.575)
    loss.backward()
    # d/dDelta = -1/B where the margin is violated (strictly), else 0
    assert delta.grad.tolist() == pytest.approx([-0.25, -0.25, 0.0, 0.0])


def test_max_entropy_loss_and_gradient_hand_computed():
    d = [-1.0, 0.0, 2.0]
    delta = torch.tensor(d, requires_grad=True)
    tau = 0.5
    loss = obj.max_entropy_loss(delta, tau).mean()  # Eq. 2
    expect = np.mean([-math.log(math.exp(x / tau) / (math.exp(x / tau) + 1)) for x in d])
    assert loss.item() == pytest.approx(expect, rel=1e-6)
    loss.backward()
    # d/dDelta of -log sigmoid(Delta / tau) = -(1 - sigmoid(Delta / tau)) / tau, over B
    grad = [-(1 - 1 / (1 + math.exp(-x / tau))) / tau / 3 for x in d]
    assert delta.grad.tolist() == pytest.approx(grad, rel=1e-6)


def test_pair_loss_selects_the_objective_per_model():
    delta = torch.tensor([[0.5, 0.5]])
    out = obj.pair_loss(
        delta, torch.tensor([True, False]), torch.tensor([0.8, 0.8]), torch.tensor([1.0, 1.0])
    )
    assert out[0, 0].item() == pytest.approx(0.3)
    assert out[0, 1].item() == pytest.approx(math.log1p(math.exp(-0.5)), rel=1e-6)


def test_which_stricter_failure_losses_dominate_the_base_loss():
    """Appendix B's pointwise dominance, checked case by case."""
    d = torch.linspace(-3, 3, 61)
    # Max-margin with M_fail > M, and max-entropy up-weighted by w_fail > 1: dominance everywhere.
    assert (obj.max_margin_loss(d, 1.6) >= obj.max_margin_loss(d, 0.8)).all()
    assert (2.0 * obj.max_entropy_loss(d, 1.0) >= obj.max_entropy_loss(d, 1.0)).all()
    # Max-entropy sharpened (tau_fail < tau): only for Delta <= 0. The paper states it "for any
    # finite Delta", but for a correctly ordered pair a sharper softmax has *lower* loss, so the
    # sharpening case of Theorem 1 does not hold for failures with positive margin.
    neg = d <= 0
    assert (obj.max_entropy_loss(d[neg], 0.5) >= obj.max_entropy_loss(d[neg], 1.0)).all()
    assert (obj.max_entropy_loss(d[~neg], 0.5) < obj.max_entropy_loss(d[~neg], 1.0)).all()


# ------------------------------------------------------------------ failure detection
def test_margin_failures_flag_delta_at_or_below_gamma():
    assert obj.margin_failures(torch.tensor([-0.1, 0.0, 0.2, 0.5]), 0.2).tolist() == [
        True,
        True,
        True,
        False,
    ]


def test_bottom_k_flags_exactly_the_lowest_margins():
    delta = torch.tensor([0.5, -1.0, 0.2, 3.0, 0.2, -0.3, 1.0, 0.0, 2.0, 0.7])
    mask = obj.bottom_k_failures(delta, 0.3)
    assert mask.sum() == 3
    assert set(mask.nonzero().flatten().tolist()) == {1, 5, 7}
    assert not obj.bottom_k_failures(delta, 0.0).any()
    # ties broken by position, so the count is exact
    tied = obj.bottom_k_failures(torch.zeros(10), 0.2)
    assert tied.sum() == 2 and tied[:2].all()
    assert obj.bottom_k_failures(torch.zeros(10), 0.25).sum() == 3  # k = round half up
    # batched rows are independent
    rows = obj.bottom_k_failures(torch.stack([delta, -delta]), 0.1)
    assert rows[0, 1] and rows[1, 3] and rows.sum() == 2


def test_supervised_failures_use_the_threshold_not_zero():
    r_pos = torch.tensor([2.0, 0.5, 2.0])
    r_neg = torch.tensor([0.0, 0.0, 1.8])
    y_pos = torch.tensor([1.0, 1.0, 1.0])  # o+ non-toxic
    y_neg = torch.tensor([-1.0, -1.0, -1.0])  # o- toxic
    # c = 1: pair 0 right on both sides; pair 1: o+ at 0.5 <= c is misclassified; pair 2: o- at
    # 1.8 > c is misclassified. Against 0 every pair would look correct.
    assert obj.supervised_failures(r_pos, r_neg, y_pos, y_neg, 1.0).tolist() == [False, True, True]
    assert obj.supervised_failures(r_pos, r_neg, y_pos, y_neg, -10.0).tolist() == [True, True, True]


# ---------------------------------------------------------------------------- schedules
def test_paper_bottom_k_schedule_goes_from_20_to_0_percent_over_100_rounds():
    spec = method_spec("fa-me-margin", IRLSection())
    n = 1000
    fractions = [spec.bottom_k_t(t) for t in range(100)]
    assert fractions[0] == pytest.approx(0.20) and fractions[-1] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(fractions, fractions[1:]))  # monotone
    assert fractions[50] == pytest.approx(0.2 * (1 - 50 / 99))  # linear
    for t in (0, 1, 37, 98, 99, 150):
        k = int(obj.bottom_k_failures(torch.randn(n), spec.bottom_k_t(t)).sum())
        assert k == round(spec.bottom_k_t(t) * n)  # exact count per round
    assert spec.bottom_k_t(150) == 0.0  # held after the schedule


def test_threshold_schedule_anneals_gamma_linearly():
    irl = IRLSection(
        fa={"margin_schedule": "threshold", "gamma_start": 0.0, "gamma_end": 0.8, "rounds": 5}
    )
    spec = method_spec("fa-mm-margin", irl)
    assert [spec.gamma_t(t) for t in range(7)] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 0.8, 0.8])
    assert spec.uses_threshold and not spec.uses_bottom_k


def test_lambda_starts_at_10_and_decays_exponentially():
    spec = method_spec("fa-mm-gt", IRLSection())
    assert spec.lambda_t(0) == pytest.approx(10.0)
    ratios = [spec.lambda_t(t + 1) / spec.lambda_t(t) for t in range(20)]
    assert ratios == pytest.approx([0.95] * 20)


def test_sampling_rate_schedule():
    spec = method_spec(
        "fa-me-gt", IRLSection(fa={"sample_rate_start": 1.0, "sample_rate_end": 0.5, "rounds": 3})
    )
    assert [spec.sample_rate_t(t) for t in range(4)] == pytest.approx([1.0, 0.75, 0.5, 0.5])


def test_presets_are_the_six_methods_of_table_1():
    irl = IRLSection()
    specs = {m: method_spec(m, irl) for m in irl.methods}
    assert specs["mm"].objective == "mm" and not specs["mm"].failure_aware
    assert specs["me"].objective == "me" and specs["me"].tau == 1.0
    assert specs["mm"].margin == 0.8
    assert specs["fa-mm-gt"].failures == "supervised" and specs["fa-mm-gt"].margin_fail > 0.8
    assert specs["fa-me-gt"].tau_fail < 1.0
    assert specs["fa-mm-margin"].failures == "margin" and specs["fa-me-margin"].uses_bottom_k
    assert all(s.lambda_0 == 10.0 for s in specs.values() if s.failure_aware)
