"""Algorithm 1 for every (seed, method) at once: one optimiser step updates all models.

Layout: G groups (one per seed) x P paths. A group holds the base path R_D of each of its M
methods, then the failure path R_F of each of its Mf FA-IRL methods (P = M + Mf). Models of a
group share their minibatch order (see pipeline.irl.common), so a group's first layer is one
GEMM over all its paths and both outputs of every pair. Because Adam is elementwise and the
total loss is a sum of per-model losses, one Adam over the stacked tensors performs exactly each
model's own Adam update. Per-model hyper-parameters (objective, M, tau, schedules, failure mode)
are tensors broadcast over the model axis, so a step has no Python loop over models.

For each model the result equals `pipeline.irl.reference.train_reference` training that model
alone, to float32 rounding: the same arithmetic, bit-identical where the BLAS code path does not
depend on the batch shape (DEVELOPERS.md says when); tests/test_irl_training.py checks it to a
stated tolerance, with identical epochs, best epoch and failure counts.
"""

from __future__ import annotations

from typing import Optional

import torch
from tqdm.auto import tqdm

from pipeline.errors import TrainingDiverged
from pipeline.irl import objectives as obj
from pipeline.irl.common import (
    Interrupted, Optim, PairTensors, TrainedReward, n_used, run_flushing_denormals, stream,
    tune_allocator,
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
    tune_allocator()
    return run_flushing_denormals(
        lambda stop: _Bank(data, specs, seeds, head, optim, sink, progress, stop).fit())


def _uniform(flags: list[bool]) -> Optional[bool]:
    """The common value of per-model flags, or None when they differ (then masks are used)."""
    return flags[0] if flags and all(f == flags[0] for f in flags) else None


class _Bank:
    def __init__(self, data, specs, seeds, head, optim, sink, progress, stop):
        self.data, self.specs, self.seeds, self.head = data, specs, seeds, head
        self.optim, self.sink, self.progress, self.stop = optim, sink, progress, stop
        self.G, self.M = len(seeds), len(specs)
        fa = [i for i, s in enumerate(specs) if s.failure_aware]
        self.fa_specs = [specs[i] for i in fa]
        self.fa_idx = torch.tensor(fa, dtype=torch.long)
        self.Mf = len(fa)
        # o+ rows then o- rows of one table, so a minibatch is a single index_select
        self.H = torch.cat([data.hc, data.hr])
        self.N = len(data.hc)

        # Paths: R_D of every method, then R_F of the FA-IRL ones; same streams as the reference.
        paths = [[head.init(stream(s, "init/base")) for _ in specs]
                 + [head.init(stream(s, "init/failure")) for _ in self.fa_specs] for s in seeds]
        self.p = {k: v.contiguous().requires_grad_(True) for k, v in head.stack(paths).items()}
        # fused: one pass over the stacked Adam state instead of ~10 (CPU support: torch >= 2.4)
        self.opt = torch.optim.Adam(list(self.p.values()), lr=optim.lr, fused=True)
        self.order_gens = [stream(s, "order") for s in seeds]
        self.last_r: Optional[torch.Tensor] = None  # [G, Mf, 2, n_train] latest R(o+), R(o-)
        self.sample_gens = [[stream(s, f"sample/{sp.name}") for sp in self.fa_specs] for s in seeds]

        def vec(values, dtype=torch.float32):
            return torch.tensor(values, dtype=dtype)

        # Per-model constants, broadcast over [G, b, M] or [G, b, Mf].
        self.first_stoppable = vec([s.first_stoppable_epoch for s in specs], torch.long)
        self.is_mm = vec([s.objective == "mm" for s in specs], torch.bool)
        self.margin = vec([s.margin for s in specs])
        self.tau = vec([s.tau for s in specs])
        f = self.fa_specs
        self.f_is_mm = vec([s.objective == "mm" for s in f], torch.bool)
        self.margin_fail = vec([s.margin_fail for s in f])
        self.tau_fail = vec([s.tau_fail for s in f])
        self.fail_weight = vec([s.fail_weight for s in f])
        self.f_threshold = vec([s.uses_threshold for s in f], torch.bool)
        self.f_supervised = vec([s.needs_labels for s in f], torch.bool)
        self.any_threshold = bool(self.f_threshold.any())
        self.any_bottom_k = any(s.uses_bottom_k for s in f)
        self.any_supervised = bool(self.f_supervised.any())
        # Gradient routing between the paths (pipeline.config.FailureSection)
        self.base_trains_F = _uniform([s.base_loss_trains_failure_path for s in f])
        self.base_trains_F_mask = vec([s.base_loss_trains_failure_path for s in f], torch.bool)
        self.fail_trains_D = _uniform([s.failure_loss_trains_base_path for s in f])
        self.fail_trains_D_mask = vec([s.failure_loss_trains_base_path for s in f], torch.bool)

    # ------------------------------------------------------------------------- rewards
    def _split(self, r: torch.Tensor):
        """Path rewards [..., P] -> (R_D [..., M], R_F [..., Mf])."""
        return r[..., :self.M], r[..., self.M:]

    def _total(self, r: torch.Tensor) -> torch.Tensor:
        """Path rewards [..., P] -> R = R_D + R_F per model [..., M]."""
        rD, rF = self._split(r)
        return rD.index_add(-1, self.fa_idx, rF) if self.Mf else rD

    @torch.no_grad()
    def _total_reward(self, rows: torch.Tensor, side: torch.Tensor, fa_only: bool = False,
                      chunk: int = 1024):
        """R = R_D + R_F for the given rows of hc or hr: [G, n, M], or [G, n, Mf] for the
        FA-IRL models alone (round-start statistics need no others)."""
        if fa_only:
            p = self.head.select(self.p, torch.cat([self.fa_idx, torch.arange(self.M, self.M + self.Mf)]))
            total = lambda r: r[..., :self.Mf] + r[..., self.Mf:]  # noqa: E731
        else:
            p, total = self.p, self._total
        out = [total(self.head.forward_shared(p, side[rows[i:i + chunk]]))
               for i in range(0, len(rows), chunk)]
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
        best = {k: v.detach().clone() for k, v in self.p.items()}
        history: list[list[list[dict]]] = [[[] for _ in range(M)] for _ in range(G)]

        bar = tqdm(range(optim.max_epochs), desc=f"irl: {G * M} rewards", unit="epoch",
                   disable=None if self.progress else True, leave=False)  # None: off without a TTY
        for t in bar:
            train_loss, n_fail = self._epoch(t, n)
            val_loss, val_acc = self._validate()
            # --- early stopping, per model; a model's R_F follows its R_D
            eligible = (self.first_stoppable <= t) | (t == optim.max_epochs - 1)    # [M]
            improved = active & eligible & (val_loss < best_val)
            best_val = torch.where(improved, val_loss, best_val)
            best_epoch = torch.where(improved, t, best_epoch)
            paths_improved = torch.cat([improved, improved[:, self.fa_idx]], 1)
            for k in best:
                mask = self.head.model_mask(k, paths_improved, best[k])
                best[k] = torch.where(mask, self.p[k].detach(), best[k])
            since_best = torch.where(improved, 0, since_best + eligible.long())
            epochs_run += active.long()
            self._record(t, active, train_loss, val_loss, val_acc, n_fail, history)
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
                    method=spec, seed=seed, base=self.head.unstack(best, g, m),
                    failure=self.head.unstack(best, g, M + int(f)) if len(f) else None,
                    best_epoch=int(best_epoch[g, m]), epochs_run=int(epochs_run[g, m]),
                    best_val_loss=float(best_val[g, m]), history=history[g][m]))
        return out

    def _record(self, t, active, train_loss, val_loss, val_acc, n_fail, history):
        lam = {int(i): s.lambda_t(t) for i, s in zip(self.fa_idx, self.fa_specs)}
        for g, m in active.nonzero().tolist():
            row = {"epoch": t, "train_loss": train_loss[g, m].item(),
                   "val_loss": val_loss[g, m].item(), "val_pair_acc": val_acc[g, m].item(),
                   "failures": int(n_fail[g, m]), "lambda": lam.get(m, 0.0)}
            history[g][m].append(row)
            if self.sink:
                self.sink.log(t, {f"irl/{k}": v for k, v in row.items() if k != "epoch"},
                              method=self.specs[m].name, seed=self.seeds[g])

    def _epoch(self, t: int, n: int):
        data, G, M, Mf, B = self.data, self.G, self.M, self.Mf, self.optim.batch_size
        f = self.fa_specs
        # Loss math runs model-major, [G, M, b]: each model's values are one contiguous row, as
        # for a model trained alone, so vectorised transcendental kernels (softplus, sigmoid)
        # round them identically. Per-model constants are [M, 1] columns.
        col = lambda v: v[:, None]  # noqa: E731
        # --- round start: schedules (Algorithm 1 line 13) and round-level failure statistics
        lam = torch.tensor([s.lambda_t(t) for s in f])
        gamma = col(torch.tensor([s.gamma_t(t) for s in f]))
        p = col(torch.tensor([s.sample_rate_t(t) for s in f]))
        round_fail = threshold = None
        track = self.any_bottom_k or self.any_supervised
        if track:
            # Round statistics come from each training output's latest reward, recorded as the
            # minibatches pass (R as Algorithm 1 line 2 computes it); one full pass at round 0.
            if self.last_r is None:
                self.last_r = torch.stack([
                    self._total_reward(data.train, data.hc, fa_only=True).transpose(1, 2),
                    self._total_reward(data.train, data.hr, fa_only=True).transpose(1, 2)], 2)
            rc, rr = self.last_r[:, :, 0], self.last_r[:, :, 1]                       # [G, Mf, n]
            if self.any_bottom_k:
                round_fail = torch.zeros(G, Mf, n, dtype=torch.bool)
                for j, s in enumerate(f):
                    if s.uses_bottom_k:
                        round_fail[:, j] = obj.bottom_k_failures(rc[:, j] - rr[:, j], s.bottom_k_t(t))
            if self.any_supervised:
                y = torch.cat([data.yc[data.train], data.yr[data.train]]) > 0
                threshold = obj.best_threshold(torch.cat([rc, rr], -1), y)[..., None]  # [G, Mf, 1]
        perm = torch.stack([torch.randperm(n, generator=g) for g in self.order_gens])  # [G, n]
        rows_epoch = data.train[perm]
        idx_epoch = torch.cat([rows_epoch, rows_epoch + self.N], 1)                   # [G, 2n]
        if Mf:
            sampled = torch.stack([torch.stack([torch.rand(n, generator=gen) for gen in row])
                                   for row in self.sample_gens]) < p                  # [G, Mf, n]
            if round_fail is not None:
                round_fail = torch.gather(round_fail, 2, perm[:, None].expand(-1, Mf, -1))
            if threshold is not None:
                yc_epoch, yr_epoch = data.yc[rows_epoch][:, None], data.yr[rows_epoch][:, None]
            lam_F = lam[None].expand(G, -1)                                             # [G, Mf]
            lam_uniform = float(lam[0]) if bool((lam == lam[0]).all()) else None
        is_mm, margin, tau = col(self.is_mm), col(self.margin), col(self.tau)
        f_is_mm, margin_fail = col(self.f_is_mm), col(self.margin_fail)
        tau_fail, fail_weight = col(self.tau_fail), col(self.fail_weight)
        f_threshold, f_supervised = col(self.f_threshold), col(self.f_supervised)

        train_loss = torch.zeros(G, M)
        n_fail = torch.zeros(G, M, dtype=torch.long)
        for s0 in range(0, n_used(n, B), B):
            if self.stop.is_set():
                raise Interrupted()
            b = min(B, n - s0)
            sl = slice(s0, s0 + b)
            idx = torch.cat([idx_epoch[:, sl], idx_epoch[:, n + s0:n + s0 + b]], 1)
            h = self.H.index_select(0, idx.reshape(-1)).view(G, 2 * b, -1)          # [G, 2b, d]
            r_pos, r_neg = self.head.forward_pair(self.p, h, b)                      # [G, b, P]
            r_pos = r_pos.transpose(1, 2).contiguous()                               # [G, P, b]
            r_neg = r_neg.transpose(1, 2).contiguous()
            dD = r_pos[:, :M] - r_neg[:, :M]                                         # [G, M, b]
            if not Mf:
                L = obj.pair_loss(dD, is_mm, margin, tau).mean(-1)                  # [G, M]
            else:
                dF = r_pos[:, M:] - r_neg[:, M:]                                     # [G, Mf, b]
                dF_base = self._route(dF, self.base_trains_F, col(self.base_trains_F_mask))
                d_base = dD.index_add(1, self.fa_idx, dF_base)
                L_base = obj.pair_loss(d_base, is_mm, margin, tau).mean(-1)
                # --- identify failures F_t with the current reward, sample S_t at rate p_t
                dD_fa = dD[:, self.fa_idx]
                fail = torch.zeros_like(dF, dtype=torch.bool)
                if self.any_threshold:
                    fail |= f_threshold & obj.margin_failures((dD_fa + dF).detach(), gamma)
                if round_fail is not None:
                    fail |= round_fail[..., sl]
                if threshold is not None:
                    fail |= f_supervised & obj.supervised_failures(
                        (r_pos[:, self.fa_idx] + r_pos[:, M:]).detach(),
                        (r_neg[:, self.fa_idx] + r_neg[:, M:]).detach(),
                        yc_epoch[..., sl], yr_epoch[..., sl], threshold)
                if track:
                    r_tot = torch.stack([r_pos[:, self.fa_idx] + r_pos[:, M:],
                                         r_neg[:, self.fa_idx] + r_neg[:, M:]], 2).detach()
                    at = perm[:, None, None, sl].expand(G, Mf, 2, b)
                    self.last_r.scatter_(3, at, r_tot)                               # [G, Mf, 2, n]
                S = (fail & sampled[..., sl]).float()
                n_fail.index_add_(1, self.fa_idx, fail.sum(-1))
                # --- stricter failure loss on S_t, weighted by lambda_t (Eq. 3)
                d_fail = self._route(dD_fa, self.fail_trains_D, col(self.fail_trains_D_mask)) + dF
                l_fail = obj.pair_loss(d_fail, f_is_mm, margin_fail, tau_fail)
                L_fail = (l_fail * fail_weight * S).sum(-1) / S.sum(-1).clamp(min=1)
                L = L_base.index_add(1, self.fa_idx, lam * L_fail)
            if not torch.isfinite(L).all():
                g, m = (~torch.isfinite(L)).nonzero()[0].tolist()
                raise TrainingDiverged(
                    f"{self.specs[m].name} seed {self.seeds[g]}: loss is {L[g, m].item()} "
                    f"at epoch {t}",
                    hint="lower irl.lr, and check the embeddings for NaN or inf")
            self.opt.zero_grad(set_to_none=True)
            L.sum().backward()
            if Mf:
                # (lambda_t / 2) ||w_F||^2 of Eq. 3, added as its gradient lambda_t * w_F after
                # backward() (autograd would sum it into each weight's gradient in another order)
                for k in self.head.weight_names:
                    grad_F = self.head.path_view(k, self.p[k].grad)[:, :, M:]
                    w_F = self.head.path_view(k, self.p[k].detach())[:, :, M:]
                    if lam_uniform is not None:
                        grad_F.add_(w_F, alpha=lam_uniform)  # one pass; the reference makes the same call
                    else:
                        grad_F.add_(w_F * lam_F.reshape(G, 1, Mf, *[1] * (w_F.dim() - 3)))
            self.opt.step()
            train_loss += L.detach() * b
        if Mf:  # log the penalty term too (at end-of-epoch weights; the reference uses each step's)
            w_sq = self.head.sq_weight_norm({k: v.detach() for k, v in self.p.items()})[:, M:]
            train_loss.index_add_(1, self.fa_idx, lam / 2 * w_sq * n_used(n, B))
        return train_loss / n_used(n, B), n_fail

    @staticmethod
    def _route(x: torch.Tensor, uniform: Optional[bool], mask: torch.Tensor) -> torch.Tensor:
        """x where gradient flows for the model, x.detach() where it must not."""
        if uniform is not None:
            return x if uniform else x.detach()
        return torch.where(mask, x, x.detach())

    @torch.no_grad()
    def _validate(self):
        d = (self._total_reward(self.data.val, self.data.hc)
             - self._total_reward(self.data.val, self.data.hr))
        # Reduce each model's losses as one contiguous row, the way a lone model would, so the
        # early-stopping comparisons are computed as the reference computes them.
        loss = obj.pair_loss(d, self.is_mm, self.margin, self.tau).transpose(1, 2).contiguous()
        return loss.mean(-1), (d > 0).float().mean(1)
