"""Algorithm 1 for one model at a time, written plainly with torch.nn and torch.optim.Adam.

This is the readable statement of what fairl trains, and the oracle the vectorised bank
(pipeline.irl.bank) is tested against: for every method and seed, the bank's result equals this
loop's to float32 rounding (bit for bit where the BLAS path allows). It is also the "naive loop" of scripts/bench_irl.py.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from pipeline.errors import TrainingDiverged
from pipeline.irl import objectives as obj
from pipeline.irl.common import (
    Interrupted, Optim, PairTensors, TrainedReward, n_used, run_flushing_denormals, stream,
)
from pipeline.irl.heads import RewardHead
from pipeline.irl.methods import MethodSpec


class Path_(nn.Module):
    """One reward path (R_D or R_F) of one model, as an nn.Module.

    It calls the head's functions on a bank of one (G = 1, M = 1) rather than a hand-written
    matmul: the arithmetic of one model is then the same as inside the bank (bit for bit where
    the BLAS path does not depend on the batch shape), which makes "equal to the model trained
    alone" testable to a tight tolerance, even for MLPs whose float32 trajectories would
    otherwise amplify rounding differences."""

    def __init__(self, head: RewardHead, params: dict[str, torch.Tensor]):
        super().__init__()
        self.head = head
        self.p = nn.ParameterDict({k: nn.Parameter(v.clone()) for k, v in head.stack([[params]]).items()})

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h [n, d] -> R [n]"""
        return self.head.forward(dict(self.p), h[None])[0, :, 0]

    def forward_pair(self, h_pos: torch.Tensor, h_neg: torch.Tensor):
        """(h(o+) [b, d], h(o-) [b, d]) -> (R(o+) [b], R(o-) [b])"""
        r_pos, r_neg = self.head.forward_pair(dict(self.p), torch.cat([h_pos, h_neg])[None], len(h_pos))
        return r_pos[0, :, 0], r_neg[0, :, 0]

    def snapshot(self) -> dict[str, torch.Tensor]:
        return self.head.unstack({k: v.detach() for k, v in self.p.items()}, 0, 0)


def train_reference(
    data: PairTensors, spec: MethodSpec, seed: int, head: RewardHead, optim: Optim = Optim()
) -> TrainedReward:
    return run_flushing_denormals(lambda stop: _train(data, spec, seed, head, optim, stop))


def _train(data, spec, seed, head, optim, stop) -> TrainedReward:
    R_D = Path_(head, head.init(stream(seed, "init/base")))
    R_F = Path_(head, head.init(stream(seed, "init/failure"))) if spec.failure_aware else None
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
    last_r: Optional[torch.Tensor] = None
    best_val, best_epoch, since_best = float("inf"), -1, 0
    best_D, best_F = R_D.snapshot(), (R_F.snapshot() if R_F else None)
    history = []
    for t in range(optim.max_epochs):
        # --- round start: schedules and the round-level failure statistics (Algorithm 1 l.13)
        lam, gamma, p = spec.lambda_t(t), spec.gamma_t(t), spec.sample_rate_t(t)
        round_fail: Optional[torch.Tensor] = None
        threshold = None
        if track:
            # Latest R(o+), R(o-) of every training pair: recorded by the minibatches of the
            # previous round (a full pass before round 0).
            if last_r is None:
                with torch.no_grad():
                    last_r = torch.stack([reward(data.hc[train]), reward(data.hr[train])])  # [2, n]
            rc, rr = last_r[0], last_r[1]
            if spec.uses_bottom_k:
                round_fail = obj.bottom_k_failures(rc - rr, spec.bottom_k_t(t))
            if spec.needs_labels:
                threshold = obj.best_threshold(
                    torch.cat([rc, rr]), torch.cat([data.yc[train], data.yr[train]]) > 0)
        perm = torch.randperm(n, generator=order_gen)
        u = torch.rand(n, generator=sample_gen) if R_F else None

        train_loss, n_fail = 0.0, 0
        for s0 in range(0, n_used(n, B), B):
            if stop.is_set():
                raise Interrupted()
            pos = perm[s0:s0 + B]
            rows = train[pos]
            # --- 2: minibatch rewards and margins Delta_i, per path
            rD_pos, rD_neg = R_D.forward_pair(data.hc[rows], data.hr[rows])
            dD = rD_pos - rD_neg
            is_mm = spec.objective == "mm"
            if R_F is None:
                loss = obj.pair_loss(dD, is_mm, spec.margin, spec.tau).mean()
            else:
                rF_pos, rF_neg = R_F.forward_pair(data.hc[rows], data.hr[rows])
                dF = rF_pos - rF_neg
                d_base = dD + (dF if spec.base_loss_trains_failure_path else dF.detach())
                l_base = obj.pair_loss(d_base, is_mm, spec.margin, spec.tau).mean()
                # --- 3-10: identify failures F_t with the current reward, sample S_t at rate p_t
                fail = torch.zeros(len(pos), dtype=torch.bool)
                if spec.uses_threshold:
                    fail |= obj.margin_failures((dD + dF).detach(), gamma)
                if spec.uses_bottom_k:
                    fail |= round_fail[pos]
                if spec.needs_labels:
                    fail |= obj.supervised_failures(
                        (rD_pos + rF_pos).detach(), (rD_neg + rF_neg).detach(),
                        data.yc[rows], data.yr[rows], threshold)
                if track:
                    last_r[0, pos] = (rD_pos + rF_pos).detach()
                    last_r[1, pos] = (rD_neg + rF_neg).detach()
                S = fail & (u[s0:s0 + len(pos)] < p)
                n_fail += int(fail.sum())
                # --- 11-12: stricter loss on S_t, lambda_t weighting, ||w_F||^2 penalty (Eq. 3)
                d_fail = (dD if spec.failure_loss_trains_base_path else dD.detach()) + dF
                l_fail = obj.pair_loss(d_fail, is_mm, spec.margin_fail, spec.tau_fail)
                L_fail = (l_fail * spec.fail_weight * S).sum() / S.sum().clamp(min=1)
                loss = l_base + lam * L_fail  # + (lambda_t / 2) ||w_F||^2, added below
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"{spec.name} seed {seed}: loss is {loss.item()} at epoch {t}",
                    hint="lower irl.lr, and check the embeddings for NaN or inf")
            opt.zero_grad()
            loss.backward()
            if R_F:
                # The penalty's gradient lambda_t * w_F, added after backward() as the bank does,
                # so the three contributions to a weight's gradient are summed in the same order.
                with torch.no_grad():
                    w_sq = sum((R_F.p[k] ** 2).sum() for k in head.weight_names)
                    for k in head.weight_names:
                        R_F.p[k].grad.add_(R_F.p[k], alpha=float(torch.tensor(lam)))
                loss = loss + lam / 2 * w_sq
            opt.step()
            train_loss += loss.item() * len(pos)
        train_loss /= n_used(n, B)

        # --- validation and early stopping on the base objective
        with torch.no_grad():
            dv = reward(data.hc[data.val]) - reward(data.hr[data.val])
            val = obj.pair_loss(dv, spec.objective == "mm", spec.margin, spec.tau).mean().item()
        history.append({"epoch": t, "train_loss": train_loss, "val_loss": val,
                        "val_pair_acc": (dv > 0).float().mean().item(), "failures": n_fail,
                        "lambda": lam if R_F else 0.0})
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
    return TrainedReward(method=spec, seed=seed, base=best_D, failure=best_F,
                         best_epoch=best_epoch, epochs_run=len(history),
                         best_val_loss=best_val, history=history)

