"""The six methods of the paper's Table 1, as named presets.

    mm            Max-Margin IRL (Eq. 1, M = 0.8)
    me            Max-Entropy IRL (Eq. 2, tau = 1)
    fa-mm-gt      FA-IRL on Eq. 1, failures = outputs the reward misclassifies ("Ground Truth
                  Failures"; needs toxic labels), stricter margin M_fail on them
    fa-me-gt      FA-IRL on Eq. 2, same failures, sharper tau_fail
    fa-mm-margin  FA-IRL on Eq. 1, failures = lowest-margin pairs ("IRL Margin Failures",
                  self-supervised: bottom-k schedule 20% -> 0% over 100 rounds, or a threshold)
    fa-me-margin  FA-IRL on Eq. 2, same failures

FA-IRL presets use the dual-path reward R = R_D + R_F (Section 4.1); the plain ones R = R_D.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from pipeline.config import IRLSection
from pipeline.irl import objectives as obj


@dataclass(frozen=True)
class MethodSpec:
    name: str
    objective: Literal["mm", "me"]
    failures: Literal["none", "supervised", "margin", "both"]
    margin: float
    tau: float
    # FA-IRL only (ignored when failures == "none")
    margin_fail: float = 0.0
    tau_fail: float = 1.0
    fail_weight: float = 1.0
    lambda_0: float = 0.0
    lambda_decay: float = 1.0
    rounds: int = 1
    margin_schedule: Literal["bottom_k", "threshold"] = "bottom_k"
    bottom_k_start: float = 0.0
    bottom_k_end: float = 0.0
    gamma_start: float = 0.0
    gamma_end: float = 0.0
    sample_rate_start: float = 1.0
    sample_rate_end: float = 1.0
    base_loss_trains_failure_path: bool = False
    failure_loss_trains_base_path: bool = True
    early_stop_after_rounds: bool = True

    @property
    def failure_aware(self) -> bool:
        return self.failures != "none"

    @property
    def uses_bottom_k(self) -> bool:
        return self.failures in ("margin", "both") and self.margin_schedule == "bottom_k"

    @property
    def uses_threshold(self) -> bool:
        return self.failures in ("margin", "both") and self.margin_schedule == "threshold"

    @property
    def needs_labels(self) -> bool:
        return self.failures in ("supervised", "both")

    @property
    def first_stoppable_epoch(self) -> int:
        """Epochs before this one are never chosen as best, nor counted towards patience."""
        return self.rounds if self.failure_aware and self.early_stop_after_rounds else 0

    # Schedules at round t (Algorithm 1 line 13).
    def lambda_t(self, t: int) -> float:
        return obj.exponential_decay(self.lambda_0, self.lambda_decay, t)

    def gamma_t(self, t: int) -> float:
        return obj.linear_anneal(self.gamma_start, self.gamma_end, t, self.rounds)

    def bottom_k_t(self, t: int) -> float:
        return obj.linear_anneal(self.bottom_k_start, self.bottom_k_end, t, self.rounds)

    def sample_rate_t(self, t: int) -> float:
        return obj.linear_anneal(self.sample_rate_start, self.sample_rate_end, t, self.rounds)

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.failure_aware:
            d = {k: d[k] for k in ("name", "objective", "failures", "margin", "tau")}
        return d


def method_spec(name: str, irl: IRLSection) -> MethodSpec:
    objective = "mm" if name in ("mm", "fa-mm-gt", "fa-mm-margin") else "me"
    if name in ("mm", "me"):
        return MethodSpec(name=name, objective=objective, failures="none",
                          margin=irl.margin, tau=irl.tau)
    fa = irl.fa
    if name.endswith("-gt"):
        failures = "both" if fa.gt_failures == "union" else "supervised"
    else:
        failures = "margin"
    return MethodSpec(
        name=name, objective=objective, failures=failures, margin=irl.margin, tau=irl.tau,
        # The stricter failure loss is the one matching the base objective (Section 4.2).
        margin_fail=fa.margin_fail if objective == "mm" else irl.margin,
        tau_fail=fa.tau_fail if objective == "me" else irl.tau,
        fail_weight=fa.fail_weight, lambda_0=fa.lambda_0, lambda_decay=fa.lambda_decay,
        rounds=fa.rounds, margin_schedule=fa.margin_schedule,
        bottom_k_start=fa.bottom_k_start, bottom_k_end=fa.bottom_k_end,
        gamma_start=fa.gamma_start, gamma_end=fa.gamma_end,
        sample_rate_start=fa.sample_rate_start, sample_rate_end=fa.sample_rate_end,
        base_loss_trains_failure_path=fa.base_loss_trains_failure_path,
        failure_loss_trains_base_path=fa.failure_loss_trains_base_path,
        early_stop_after_rounds=fa.early_stop_after_rounds,
    )
