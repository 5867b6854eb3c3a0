"""A synthetic IRL problem with a known reward, and how close two trainers must come on it.

The IRL tests (tests/test_irl_training.py) and the benchmark (scripts/bench_irl.py) train on
these pairs: Gaussian embeddings h(o), a linear ground-truth reward r = theta^T h, and o+ drawn
by Bradley-Terry, so recovery of the reward can be checked against theta without an encoder.
Both compare the vectorised bank with the one-model reference loop at the tolerance below, which
is calibrated on the parameters trained on this data; it lives here so that the test and the
benchmark read the same numbers without importing each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from pipeline.irl.common import PairTensors

if TYPE_CHECKING:
    from pipeline.irl.common import TrainedReward


def synthetic_pairs(n: int, d: int, seed: int = 0, val_fraction: float = 0.1) -> PairTensors:
    """Gaussian h(o), reward r = theta^T h, o+ drawn by Bradley-Terry, labels y = sign(r)."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(d, generator=g) / d**0.5 * 3
    a, b = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    a_wins = torch.rand(n, generator=g) < torch.sigmoid(a @ theta - b @ theta)
    h_pos = torch.where(a_wins[:, None], a, b)
    h_neg = torch.where(a_wins[:, None], b, a)
    n_val = int(n * val_fraction)
    return PairTensors(
        h_pos=h_pos,
        h_neg=h_neg,
        train=torch.arange(n - n_val),
        val=torch.arange(n - n_val, n),
        y_pos=torch.where(h_pos @ theta > 0, 1.0, -1.0),
        y_neg=torch.where(h_neg @ theta > 0, 1.0, -1.0),
    )


# Bank vs the one-model loop: |bank - alone| <= BANK_ATOL + BANK_RTOL * |alone| for every
# parameter. The two run the same head functions, but not always the same BLAS kernels (a
# batched GEMM vs a one-model GEMM, other memory offsets), so on some CPUs their float32 sums
# round differently, by ~1e-8 on parameters up to ~0.5 in size (median ~0.03). RTOL 1e-5 is
# ~100 float32 ulps of relative error; ATOL 1e-6 covers entries that pass near zero, where a
# relative bound means nothing. A real difference (one Adam step computed differently: ~lr =
# 1e-3 on a parameter) is 1,000x ATOL.
BANK_RTOL, BANK_ATOL = 1e-5, 1e-6


def compare_params(a: TrainedReward, b: TrainedReward) -> tuple[float, float]:
    """(largest |a - b|, largest |a - b| / (BANK_ATOL + BANK_RTOL |b|)) over every parameter of
    both paths of two TrainedRewards; the second is <= 1 when a is within tolerance of b."""
    diff = ratio = 0.0
    for path in ("base", "failure"):
        pa, pb = getattr(a, path), getattr(b, path)
        if (pa is None) != (pb is None):
            raise ValueError(f"one model has a {path} path and the other has none")
        for k in pa or {}:
            d = (pa[k] - pb[k]).abs()
            diff = max(diff, d.max().item())
            ratio = max(ratio, (d / (BANK_ATOL + BANK_RTOL * pb[k].abs())).max().item())
    return diff, ratio
