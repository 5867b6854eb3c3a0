"""Algorithm 1 for one model at a time, written plainly with torch.nn and torch.optim.Adam.

This is the readable statement of what fairl trains, and the oracle the vectorised bank
(pipeline.irl.bank) is tested against: for every method and seed, the bank's result equals this
loop's to float32 rounding (bit for bit where the BLAS path allows). It is also the "naive
loop" of scripts/bench_irl.py.

Names follow the paper: R_D and R_F are the two reward paths (R = R_D + R_F), delta the margin
Delta_i = R(o_i+) - R(o_i-) (delta_D, delta_F: each path's part of it), F_t the failures, S_t
the sampled subset, and lambda_t, gamma_t, p_t, M_fail, tau_fail as in Algorithm 1.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.errors import TrainingDiverged
from pipeline.irl import objectives as obj
from pipeline.irl.common import Optim, PairTensors, TrainedReward, n_used, stream
from pipeline.irl.heads import RewardHead
from pipeline.irl.methods import MethodSpec
from pipeline.runtime import Interrupted, run_flushing_denormals


class RewardPath(nn.Module):
    """One reward path (R_D or R_F) of one model, as an nn.Module.

    It calls the head's functions on a bank of one (G = 1, M = 1) rather than a hand-written
    matmul: the arithmetic of one model is then the same as inside the bank (bit for bit where
    the BLAS path does not depend on the batch shape), which makes "equal to the model trained
    alone" testable to a tight tolerance, even for MLPs whose float32 trajectories would
    otherwise amplify rounding differences."""

    def __init__(self, head: RewardHead, params: dict[str, torch.Tensor]):
        super().__init__()
        self.head = head
        bank_of_one = head.stack([[params]])
        self.p = nn.ParameterDict({k: nn.Parameter(v.clone()) for k, v in bank_of_one.items()})

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h [n, d] -> R [n]"""
        return self.head.forward(dict(self.p), h[None])[0, :, 0]

    def forward_pair(self, h_pos: torch.Tensor, h_neg: torch.Tensor):
        """(h(o+) [b, d], h(o-) [b, d]) -> (R(o+) [b], R(o-) [b])"""
        h = torch.cat([h_pos, h_neg])[None]
        r_pos, r_neg = self.head.forward_pair(dict(self.p), h, len(h_pos))
        return r_pos[0, :, 0], r_neg[0, :, 0]

    def snapshot(self) -> dict[str, torch.Tensor]:
        return self.head.unstack({k: v.detach() for k, v in self.p.items()}, 0, 0)


def train_reference(
    data: PairTensors, spec: MethodSpec, seed: int, head: RewardHead, optim: Optim = Optim()
) -> TrainedReward:
    return run_flushing_denormals(lambda stop: _train(data, spec, seed, head, optim, stop))


def _train(data, spec, seed, head, optim, stop) -> TrainedReward:
    R_D = RewardPath(head, head.init(stream(seed, "init/base")))
    R_F = RewardPath(head, head.init(stream(seed, "init/failure"))) if spec.failure_aware else None
    params = list(R_D.parameters()) + (list(R_F.parameters()) if R_F else [])
    opt = torch.optim.Adam(params, lr=optim.lr, fused=True)  # as the bank: same rounding
    order_gen = stream(seed, "order")
    sample_gen = stream(seed, f"sample/{spec.name}") if R_F else None
    if spec.needs_labels and not data.has_labels:
        raise ValueError(f"{spec.name} needs toxic labels")

    def reward(h):
        return R_D(h) + R_F(h) if R_F else R_D(h)

    train, n, B = data.train, len(data.train), optim.batch_size
    track = R_F is not None and (spec.uses_bottom_k or spec.needs_labels)
    last_r: torch.Tensor | None = None
    best_val, best_epoch, since_best = float("inf"), -1, 0
    best_D, best_F = R_D.snapshot(), (R_F.snapshot() if R_F else None)
    history = []
    for t in range(optim.max_epochs):  # --- 1: one round t per epoch
        # --- 13: schedules at round t (anneal gamma_t, decay lambda_t, adjust p_t)
        lambda_t, gamma_t, p_t = spec.lambda_t(t), spec.gamma_t(t), spec.sample_rate_t(t)
        penalty_t = spec.penalty_t(t)  # weight of (1/2) ||w_F||^2: lambda_t in Eq. 3 as printed
        # Round-level failure statistics, from the latest R(o+), R(o-) of every training pair:
        # recorded by the minibatches of the previous round (a full pass before round 0).
        F_bottom_k: torch.Tensor | None = None  # F_t^margin of the bottom-k schedule
        threshold = None  # c of F_t^sup (objectives.best_threshold)
        if track:
            if last_r is None:
                with torch.no_grad():
                    last_r = torch.stack(
                        [reward(data.h_pos[train]), reward(data.h_neg[train])]
                    )  # [2, n]
            if spec.uses_bottom_k:
                delta = last_r[0] - last_r[1]
                F_bottom_k = obj.bottom_k_failures(delta, spec.bottom_k_t(t))
            if spec.needs_labels:
                threshold = obj.best_threshold(
                    torch.cat([last_r[0], last_r[1]]),
                    torch.cat([data.y_pos[train], data.y_neg[train]]) > 0,
                )
        perm = torch.randperm(n, generator=order_gen)
        # One uniform draw u_i per training pair: a failure enters S_t if u_i < p_t (line 10).
        u = torch.rand(n, generator=sample_gen) if R_F else None

        train_loss, n_fail = 0.0, 0
        for s0 in range(0, n_used(n, B), B):
            if stop.is_set():
                raise Interrupted()
            pos = perm[s0 : s0 + B]
            rows = train[pos]
            # --- 2: minibatch rewards and margins Delta_i = R(o_i+) - R(o_i-), per path
            rD_pos, rD_neg = R_D.forward_pair(data.h_pos[rows], data.h_neg[rows])
            delta_D = rD_pos - rD_neg
            is_mm = spec.objective == "mm"
            if R_F is None:
                # --- 11-12 without failures: L_t = L_base
                L_t = obj.pair_loss(delta_D, is_mm, spec.margin, spec.tau).mean()
            else:
                rF_pos, rF_neg = R_F.forward_pair(data.h_pos[rows], data.h_neg[rows])
                delta_F = rF_pos - rF_neg
                # --- 11: L_base (Eq. 1 or 2) on Delta = Delta_D + Delta_F
                delta_base = delta_D + (
                    delta_F if spec.base_loss_trains_failure_path else delta_F.detach()
                )
                L_base = obj.pair_loss(delta_base, is_mm, spec.margin, spec.tau).mean()
                # --- 3-10: identify failures F_t with the current reward, sample S_t at rate p_t
                F_t = torch.zeros(len(pos), dtype=torch.bool)
                if spec.uses_threshold:
                    # --- 4: F_t^margin = {i : Delta_i <= gamma_t}
                    delta = (delta_D + delta_F).detach()
                    F_t |= obj.margin_failures(delta, gamma_t)
                if spec.uses_bottom_k:
                    F_t |= F_bottom_k[pos]  # --- 4, bottom-k schedule: chosen at round start
                if track:  # R = R_D + R_F on the minibatch, kept for the next round's statistics
                    R_pos, R_neg = (rD_pos + rF_pos).detach(), (rD_neg + rF_neg).detach()
                    if spec.needs_labels:
                        # --- 5-9: F_t^sup, outputs the reward misclassifies (objectives: why c)
                        F_t |= obj.supervised_failures(
                            R_pos, R_neg, data.y_pos[rows], data.y_neg[rows], threshold
                        )
                    last_r[0, pos], last_r[1, pos] = R_pos, R_neg
                S_t = F_t & (u[s0 : s0 + len(pos)] < p_t)
                n_fail += int(F_t.sum())
                # --- 11: the stricter failure loss on S_t (M_fail > M or tau_fail < tau)
                M_fail, tau_fail = spec.margin_fail, spec.tau_fail
                delta_fail = (
                    delta_D if spec.failure_loss_trains_base_path else delta_D.detach()
                ) + delta_F
                l_fail = obj.pair_loss(delta_fail, is_mm, M_fail, tau_fail)
                L_fail = (l_fail * spec.fail_weight * S_t).sum() / S_t.sum().clamp(min=1)
                # --- 12: L_t = L_base + lambda_t L_fail(S_t) + (lambda_t / 2) ||w_F||^2
                L_t = L_base + lambda_t * L_fail  # the penalty is added after backward()
            if not torch.isfinite(L_t):
                raise TrainingDiverged(
                    f"{spec.name} seed {seed}: loss is {L_t.item()} at epoch {t}",
                    hint="lower irl.lr, and check the embeddings for NaN or inf",
                )
            opt.zero_grad()
            L_t.backward()
            if R_F:
                # The penalty's gradient penalty_t * w_F, added after backward() as the bank
                # does, so the three contributions to a weight's gradient sum in the same order.
                with torch.no_grad():
                    w_sq = sum((R_F.p[k] ** 2).sum() for k in head.weight_names)
                    for k in head.weight_names:
                        R_F.p[k].grad.add_(R_F.p[k], alpha=float(torch.tensor(penalty_t)))
                L_t = L_t + penalty_t / 2 * w_sq
            opt.step()
            train_loss += L_t.item() * len(pos)
        train_loss /= n_used(n, B)

        # --- validation and early stopping on the base objective
        with torch.no_grad():
            delta = reward(data.h_pos[data.val]) - reward(data.h_neg[data.val])
            val = obj.pair_loss(delta, spec.objective == "mm", spec.margin, spec.tau).mean().item()
        history.append(
            {
                "epoch": t,
                "train_loss": train_loss,
                "val_loss": val,
                "val_pair_acc": (delta > 0).float().mean().item(),
                "failures": n_fail,
                "lambda": lambda_t if R_F else 0.0,
            }
        )
        # The last epoch is always eligible, so a run shorter than the schedule keeps its end state.
        if t < spec.first_stoppable_epoch and t < optim.max_epochs - 1:
            continue
        if val < best_val:
            best_val, best_epoch, since_best = val, t, 0
            best_D, best_F = R_D.snapshot(), (R_F.snapshot() if R_F else None)
        else:
            since_best += 1
            if since_best >= optim.patience:
                break
    return TrainedReward(
        method=spec,
        seed=seed,
        base=best_D,
        failure=best_F,
        best_epoch=best_epoch,
        epochs_run=len(history),
        best_val_loss=best_val,
        history=history,
    )
