"""Algorithm 1 for every (seed, method) at once: one optimiser step updates all models.

Layout: G groups (one per seed) x M models (one per method). Models of a group share their
minibatch order (see pipeline.irl.common), so each group's first layer is one wide GEMM. All
parameters live in stacked tensors; because Adam is elementwise and the total loss is a sum of
per-model losses, one Adam over the stack performs exactly each model's own Adam update. Per
model hyper-parameters (objective, M, tau, schedules, failure mode) are tensors broadcast over
the model axis, so a step has no Python loop over models.

The result for each model equals `pipeline.irl.reference.train_reference` for that model up to
float rounding (summation order inside the batched GEMMs); tests/test_irl_bank.py checks it.
"""

from __future__ import annotations

from typing import Optional

import torch
from tqdm.auto import tqdm

from pipeline.errors import TrainingDiverged
from pipeline.irl import objectives as obj
from pipeline.irl.common import (
    Optim, PairTensors, TrainedReward, flush_denormal, steps_per_epoch, stream,
)
from pipeline.irl.heads import RewardHead
from pipeline.irl.methods import MethodSpec
from pipeline.metrics import MetricsSink


def train_bank(
    data: PairTensors,
    specs: list[MethodSpec],
    seeds: list[int],
    head: RewardHead,
    optim: Optim = Optim(),
    sink: Optional[MetricsSink] = None,
    progress: bool = True,
) -> list[TrainedReward]:
    """Train len(seeds) x len(specs) rewards; returns them seed-major, in the given order."""
    if any(s.needs_labels for s in specs) and not data.has_labels:
        raise ValueError("a ground-truth-failure method needs toxic labels")
    with flush_denormal():
        return _Bank(data, specs, seeds, head, optim, sink, progress).fit()


class _Bank:
    def __init__(self, data, specs, seeds, head, optim, sink, progress):
        self.data, self.specs, self.seeds, self.head = data, specs, seeds, head
        self.optim, self.sink, self.progress = optim, sink, progress
        G, M = len(seeds), len(specs)
        self.G, self.M = G, M
        fa = [i for i, s in enumerate(specs) if s.failure_aware]
        self.fa_specs = [specs[i] for i in fa]
        self.fa_idx = torch.tensor(fa, dtype=torch.long)
        self.Mf = len(fa)

        # Parameters: R_D for every model, R_F for the FA-IRL ones; same streams as the reference.
        self.pD = self._stack([[head.init(stream(s, "init/base")) for _ in specs] for s in seeds])
        self.pF = self._stack([[head.init(stream(s, "init/failure")) for _ in self.fa_specs]
                               for s in seeds]) if self.Mf else {}
        params = list(self.pD.values()) + list(self.pF.values())
        # fused: one pass over the stacked state instead of ~10 (CPU-supported since torch 2.4)
        self.opt = torch.optim.Adam(params, lr=optim.lr, fused=True)
        self.order_gens = [stream(s, "order") for s in seeds]
        self.sample_gens = [[stream(s, f"sample/{sp.name}") for sp in self.fa_specs] for s in seeds]

        # Per-model constants, shaped to broadcast over [G, b, M] / [G, b, Mf].
        def vec(values, dtype=torch.float32):
            return torch.tensor(values, dtype=dtype)

        self.is_mm = vec([s.objective == "mm" for s in specs], torch.bool)
        self.margin = vec([s.margin for s in specs])
        self.tau = vec([s.tau for s in specs])
        f = self.fa_specs
        self.f_is_mm = vec([s.objective == "mm" for s in f], torch.bool)
        self.margin_fail = vec([s.margin_fail for s in f])
        self.tau_fail = vec([s.tau_fail for s in f])
        self.fail_weight = vec([s.fail_weight for s in f])
        self.f_threshold = vec([s.uses_threshold for s in f], torch.bool)
        self.f_bottom_k = vec([s.uses_bottom_k for s in f], torch.bool)
        self.f_supervised = vec([s.needs_labels for s in f], torch.bool)
        self.base_trains_F = vec([s.base_loss_trains_failure_path for s in f], torch.bool)
        self.fail_trains_D = vec([s.failure_loss_trains_base_path for s in f], torch.bool)

    @staticmethod
    def _stack_leaf(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous().requires_grad_(True)

    def _stack(self, models):
        return {k: self._stack_leaf(v) for k, v in self.head.stack(models).items()}

    # ------------------------------------------------------------------------- rewards
    def _rewards(self, h: torch.Tensor):
        """h [G, n, d] -> (R_D [G, n, M], R_F [G, n, Mf] or None)."""
        rD = self.head.forward(self.pD, h)
        rF = self.head.forward(self.pF, h) if self.Mf else None
        return rD, rF

    @torch.no_grad()
    def _total_reward(self, rows: torch.Tensor, side: torch.Tensor, chunk: int = 4096):
        """R = R_D + R_F for the given rows of hc or hr, all models: [G, n, M]."""
        out = []
        for s0 in range(0, len(rows), chunk):
            h = side[rows[s0:s0 + chunk]][None].expand(self.G, -1, -1)
            rD, rF = self._rewards(h)
            out.append(rD.index_add(-1, self.fa_idx, rF) if self.Mf else rD)
        return torch.cat(out, 1)

    # -------------------------------------------------------------------------- fitting
    def fit(self) -> list[TrainedReward]:
        data, optim, G, M = self.data, self.optim, self.G, self.M
        n = len(data.train)
        best_val = torch.full((G, M), float("inf"))
        best_epoch = torch.full((G, M), -1, dtype=torch.long)
        since_best = torch.zeros((G, M), dtype=torch.long)
        active = torch.ones((G, M), dtype=torch.bool)
        epochs_run = torch.zeros((G, M), dtype=torch.long)
        best_D = {k: v.detach().clone() for k, v in self.pD.items()}
        best_F = {k: v.detach().clone() for k, v in self.pF.items()}
        history: list[list[list[dict]]] = [[[] for _ in range(M)] for _ in range(G)]

        bar = tqdm(range(optim.max_epochs), desc=f"irl: {G * M} rewards", unit="epoch",
                   disable=not self.progress, leave=False)
        for t in bar:
            train_loss, n_fail = self._epoch(t, n)
            val_loss, val_acc = self._validate()
            # --- early stopping, per model
            improved = active & (val_loss < best_val)
            best_val = torch.where(improved, val_loss, best_val)
            best_epoch = torch.where(improved, t, best_epoch)
            for k in best_D:
                best_D[k] = torch.where(self.head.model_mask(k, improved), self.pD[k].detach(), best_D[k])
            for k in best_F:
                mask = self.head.model_mask(k, improved[:, self.fa_idx])
                best_F[k] = torch.where(mask, self.pF[k].detach(), best_F[k])
            since_best = torch.where(improved, 0, since_best + 1)
            epochs_run += active.long()
            lam = self._lambdas(t)
            for g in range(G):
                for m in range(M):
                    if not active[g, m]:
                        continue
                    row = {"epoch": t, "train_loss": train_loss[g, m].item() / n,
                           "val_loss": val_loss[g, m].item(), "val_pair_acc": val_acc[g, m].item(),
                           "failures": int(n_fail[g, m]), "lambda": float(lam[m])}
                    history[g][m].append(row)
                    if self.sink:
                        self.sink.log(t, {f"irl/{k}": v for k, v in row.items() if k != "epoch"},
                                      method=self.specs[m].name, seed=self.seeds[g])
            active &= since_best < optim.patience
            bar.set_postfix(active=f"{int(active.sum())}/{G * M}",
                            val=f"{best_val[torch.isfinite(best_val)].mean().item():.4f}")
            if not active.any():
                break
        bar.close()

        out = []
        for g, seed in enumerate(self.seeds):
            for m, spec in enumerate(self.specs):
                f = (self.fa_idx == m).nonzero()
                out.append(TrainedReward(
                    method=spec, seed=seed, base=self.head.unstack(best_D, g, m),
                    failure=self.head.unstack(best_F, g, int(f)) if len(f) else None,
                    best_epoch=int(best_epoch[g, m]), epochs_run=int(epochs_run[g, m]),
                    best_val_loss=float(best_val[g, m]), history=history[g][m]))
        return out

    def _lambdas(self, t: int) -> torch.Tensor:
        lam = torch.zeros(self.M)
        for i, s in zip(self.fa_idx.tolist(), self.fa_specs):
            lam[i] = s.lambda_t(t)
        return lam

    def _epoch(self, t: int, n: int):
        data, G, M, Mf, B = self.data, self.G, self.M, self.Mf, self.optim.batch_size
        # --- round start: schedules (Algorithm 1 line 13) and round-level failure statistics
        f = self.fa_specs
        lam = torch.tensor([s.lambda_t(t) for s in f])
        gamma = torch.tensor([s.gamma_t(t) for s in f])
        p = torch.tensor([s.sample_rate_t(t) for s in f])
        round_fail = threshold = None
        if Mf and (self.f_bottom_k.any() or self.f_supervised.any()):
            rc = self._total_reward(data.train, data.hc)[..., self.fa_idx]      # [G, n, Mf]
            rr = self._total_reward(data.train, data.hr)[..., self.fa_idx]
            if self.f_bottom_k.any():
                round_fail = torch.zeros(G, n, Mf, dtype=torch.bool)
                for j, s in enumerate(f):
                    if s.uses_bottom_k:
                        round_fail[..., j] = obj.bottom_k_failures((rc - rr)[..., j], s.bottom_k_t(t))
            if self.f_supervised.any():
                y = torch.cat([data.yc[data.train], data.yr[data.train]]) > 0
                threshold = obj.best_threshold(torch.cat([rc, rr], 1).transpose(1, 2), y)
                threshold = threshold[:, None, :]                                   # [G, 1, Mf]
        perm = torch.stack([torch.randperm(n, generator=g) for g in self.order_gens])  # [G, n]
        rows_epoch = data.train[perm]
        if Mf:
            u = torch.stack([torch.stack([torch.rand(n, generator=gen) for gen in row], -1)
                             for row in self.sample_gens])                            # [G, n, Mf]
            if round_fail is not None:
                round_fail = torch.gather(round_fail, 1, perm[..., None].expand(-1, -1, Mf))
            if self.f_supervised.any():
                yc_epoch, yr_epoch = data.yc[rows_epoch][..., None], data.yr[rows_epoch][..., None]

        train_loss = torch.zeros(G, M)
        n_fail = torch.zeros(G, M, dtype=torch.long)
        for s0 in range(0, n, B):
            rows = rows_epoch[:, s0:s0 + B]                                          # [G, b]
            b = rows.shape[1]
            # o+ and o- go through separate GEMMs, as in the reference: the output bias cancels
            # in Delta, and only separate passes make its gradient exactly 0 (sum g - sum g);
            # a joint pass leaves ~1e-9 of rounding that Adam would amplify to lr-sized steps.
            rD_pos, rF_pos = self._rewards(data.hc[rows])                            # [G, b, M|Mf]
            rD_neg, rF_neg = self._rewards(data.hr[rows])
            dD = rD_pos - rD_neg                                                     # [G, b, M]
            if not Mf:
                L = obj.pair_loss(dD, self.is_mm, self.margin, self.tau).mean(1)    # [G, M]
            else:
                dF = rF_pos - rF_neg                                                 # [G, b, Mf]
                d_base = dD.index_add(-1, self.fa_idx,
                                      torch.where(self.base_trains_F, dF, dF.detach()))
                L_base = obj.pair_loss(d_base, self.is_mm, self.margin, self.tau).mean(1)
                # --- identify failures with the current reward; sample S_t at rate p_t
                dD_fa = dD[..., self.fa_idx]
                delta = (dD_fa + dF).detach()
                fail = self.f_threshold & obj.margin_failures(delta, gamma)
                if round_fail is not None:
                    fail |= round_fail[:, s0:s0 + b]
                if threshold is not None:
                    fail |= self.f_supervised & obj.supervised_failures(
                        (rD_pos[..., self.fa_idx] + rF_pos).detach(),
                        (rD_neg[..., self.fa_idx] + rF_neg).detach(), yc_epoch[:, s0:s0 + b],
                        yr_epoch[:, s0:s0 + b], threshold)
                S = fail & (u[:, s0:s0 + b] < p)
                n_fail.index_add_(1, self.fa_idx, fail.sum(1))
                # --- stricter failure loss, lambda_t weighting, ||w_F||^2 penalty (Eq. 3)
                d_fail = torch.where(self.fail_trains_D, dD_fa, dD_fa.detach()) + dF
                l_fail = obj.pair_loss(d_fail, self.f_is_mm, self.margin_fail, self.tau_fail)
                L_fail = (l_fail * self.fail_weight * S).sum(1) / S.sum(1).clamp(min=1)
                w_sq = self.head.sq_weight_norm(self.pF)                            # [G, Mf]
                L = L_base.index_add(-1, self.fa_idx, lam * L_fail + lam / 2 * w_sq)
            if not torch.isfinite(L).all():
                g, m = (~torch.isfinite(L)).nonzero()[0].tolist()
                raise TrainingDiverged(
                    f"{self.specs[m].name} seed {self.seeds[g]}: loss is {L[g, m].item()} "
                    f"at epoch {t}",
                    hint="lower irl.lr, and check the embeddings for NaN or inf")
            self.opt.zero_grad(set_to_none=True)
            L.sum().backward()
            self.opt.step()
            train_loss += L.detach() * b
        return train_loss, n_fail

    @torch.no_grad()
    def _validate(self):
        d = self._total_reward(self.data.val, self.data.hc) - self._total_reward(self.data.val, self.data.hr)
        loss = obj.pair_loss(d, self.is_mm, self.margin, self.tau).mean(1)
        return loss, (d > 0).float().mean(1)
