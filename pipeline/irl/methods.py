"""The six methods of the paper's Table 1 (`pipeline.config.METHOD_TABLE`), resolved into the
settings one reward is trained with.

Plain IRL (mm, me) trains R = R_D on Eq. 1 or Eq. 2. FA-IRL (fa-*) trains the dual-path reward
R = R_D + R_F (Section 4.1) on the same objective plus a stricter loss on the failures, which are
either the outputs the reward misclassifies (fa-*-gt, "Ground Truth Failures", needs toxic
labels) or the lowest-margin pairs (fa-*-margin, "IRL Margin Failures", self-supervised).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from pipeline.config import METHOD_TABLE, FailureSection, IRLSection, Method
from pipeline.errors import ConfigError
from pipeline.irl import objectives as obj


@dataclass(frozen=True)
class MethodSpec:
    """A Table 1 method with its settings: the base loss's M and tau, and for FA-IRL the
    `irl.fa` section (None for plain IRL). Everything else is derived from these, so the spec
    cannot disagree with the config it came from."""

    name: str
    margin: float  # M (Eq. 1)
    tau: float  # tau (Eq. 2)
    fa: FailureSection | None = None
    # A matched baseline (mm-matched, me-matched): the first epoch its selection may pick
    min_epoch: int = 0

    def __post_init__(self) -> None:
        if (self.fa is not None) != self.row.failure_aware:
            raise ValueError(
                f"{self.name}: fa (the FA-IRL settings) is given for the fa-* "
                "methods and only for them"
            )

    def __hash__(self) -> int:
        """Hashable like any frozen dataclass, though the FailureSection it holds is not: by
        value, through the flat dict written into reward.json."""
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    @property
    def row(self) -> Method:
        """This method's row of Table 1 (pipeline.config.METHOD_TABLE)."""
        return METHOD_TABLE[self.name]

    @property
    def objective(self) -> Literal["mm", "me"]:
        return self.row.objective

    @property
    def failures(self) -> Literal["none", "supervised", "margin", "both"]:
        """How F_t is formed (Algorithm 1 line 10): fa-*-gt takes the misclassified outputs
        (supervised), or with irl.fa.gt_failures = union those or the margin failures (both)."""
        if self.fa is None:
            return "none"
        if self.row.identified_by == "margin":
            return "margin"
        return "both" if self.fa.gt_failures == "union" else "supervised"

    @property
    def failure_aware(self) -> bool:
        return self.fa is not None

    @property
    def uses_bottom_k(self) -> bool:
        return self.failures in ("margin", "both") and self.fa.margin_schedule == "bottom_k"

    @property
    def uses_threshold(self) -> bool:
        return self.failures in ("margin", "both") and self.fa.margin_schedule == "threshold"

    @property
    def needs_labels(self) -> bool:
        return self.failures in ("supervised", "both")

    # The failure loss L_fail. The stricter setting is the one matching the base objective
    # (Section 4.2): fa-mm-* use M_fail with the base tau, fa-me-* tau_fail with the base M.
    # Plain IRL has no failure loss; its values are the neutral ones (weight 1, lambda_t = 0).
    @property
    def margin_fail(self) -> float:
        if self.fa is None:
            return 0.0
        return self.fa.margin_fail if self.objective == "mm" else self.margin

    @property
    def tau_fail(self) -> float:
        if self.fa is None:
            return 1.0
        return self.fa.tau_fail if self.objective == "me" else self.tau

    @property
    def fail_weight(self) -> float:
        return self.fa.fail_weight if self.fa is not None else 1.0

    @property
    def lambda_0(self) -> float:
        return self.fa.lambda_0 if self.fa is not None else 0.0

    # Gradient routing between the two paths (see FailureSection's help).
    @property
    def base_loss_trains_failure_path(self) -> bool:
        return self.fa.base_loss_trains_failure_path if self.fa is not None else False

    @property
    def failure_loss_trains_base_path(self) -> bool:
        return self.fa.failure_loss_trains_base_path if self.fa is not None else True

    @property
    def first_stoppable_epoch(self) -> int:
        """Epochs before this one are never chosen as best, nor counted towards patience."""
        if self.fa is not None and self.fa.early_stop_after_rounds:
            return self.fa.rounds
        return self.min_epoch

    # Schedules at round t (Algorithm 1 line 13).
    def lambda_t(self, t: int) -> float:
        if self.fa is None:
            return 0.0
        return obj.exponential_decay(self.fa.lambda_0, self.fa.lambda_decay, t)

    def penalty_t(self, t: int) -> float:
        """The weight of (1/2) ||w_F||^2 at round t: lambda_t scaled by irl.fa.penalty_scale
        (Eq. 3 as printed: scale 1, the penalty weighed like L_fail)."""
        if self.fa is None:
            return 0.0
        return self.fa.penalty_scale * self.lambda_t(t)

    def gamma_t(self, t: int) -> float:
        if self.fa is None:
            return 0.0
        return obj.linear_anneal(self.fa.gamma_start, self.fa.gamma_end, t, self.fa.rounds)

    def bottom_k_t(self, t: int) -> float:
        if self.fa is None:
            return 0.0
        return obj.linear_anneal(self.fa.bottom_k_start, self.fa.bottom_k_end, t, self.fa.rounds)

    def sample_rate_t(self, t: int) -> float:
        if self.fa is None:
            return 1.0
        fa = self.fa
        return obj.linear_anneal(fa.sample_rate_start, fa.sample_rate_end, t, fa.rounds)

    def to_dict(self) -> dict:
        """The flat dict written as reward.json's "spec" and irl/summary.json's "methods": the
        resolved M_fail / tau_fail instead of the section's, gt_failures folded into
        `failures`, and the keys in the order these files have always had."""
        d = {
            "name": self.name,
            "objective": self.objective,
            "failures": self.failures,
            "margin": self.margin,
            "tau": self.tau,
        }
        if self.fa is None:
            return {**d, "min_epoch": self.min_epoch} if self.min_epoch else d
        rest = self.fa.model_dump(exclude={"margin_fail", "tau_fail", "gt_failures"})
        rest["early_stop_after_rounds"] = rest.pop("early_stop_after_rounds")  # last, as ever
        return {**d, "margin_fail": self.margin_fail, "tau_fail": self.tau_fail, **rest}


def method_spec(name: str, irl: IRLSection) -> MethodSpec:
    """The spec of method `name` under `irl` (a copy of irl.fa: later edits of the config do
    not reach a spec already built)."""
    if name not in METHOD_TABLE:
        raise ConfigError(
            f"unknown method {name!r}", hint="the methods are " + ", ".join(METHOD_TABLE)
        )
    row = METHOD_TABLE[name]
    fa = irl.fa.model_copy() if row.failure_aware else None
    # a matched baseline starts selecting where FA-IRL does (MethodSpec.first_stoppable_epoch)
    min_epoch = irl.fa.rounds if row.matched and irl.fa.early_stop_after_rounds else 0
    return MethodSpec(name=name, margin=irl.margin, tau=irl.tau, fa=fa, min_epoch=min_epoch)
