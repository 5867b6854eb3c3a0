"""Algorithm 1 for every (seed, method) at once: one optimiser step updates all models.

Layout: G groups (one per seed) x P paths. A group holds the base path R_D of each of its M
methods, then the failure path R_F of each of its Mf FA-IRL methods (P = M + Mf). Models of a
group share their minibatch order (see pipeline.irl.common), so a group's first layer is one
GEMM over all its paths and both outputs of every pair. Because Adam is elementwise and the
total loss is a sum of per-model losses, one Adam over the stacked tensors performs exactly each
model's own Adam update. Per-model hyper-parameters (objective, M, tau, schedules, failure mode)
are tensors broadcast over the model axis, so a step has no Python loop over models.

The bank's tensors live on `device` (run.device: the stage passes pipeline.runtime.placement()).
Its random streams stay CPU generators whose draws are moved there, so a model sees the same
initial weights, minibatch orders and S_t draws on any device. It trains in IEEE float32 there
(TF32 off); a GPU's kernels round differently, so its rewards match the CPU's to float32
rounding, not bit for bit. Off the CPU a step makes no host sync: the loss is checked for NaN
once per epoch.

For each model the result equals `pipeline.irl.reference.train_reference` training that model
alone, to float32 rounding: the same arithmetic, bit-identical where the BLAS code path does not
depend on the batch shape (DEVELOPERS.md says when); tests/test_irl_training.py checks it to a
stated tolerance, with identical epochs, best epoch and failure counts.

Algorithm 1's steps, for all models at once: `_epoch` is one round t (line 1), `_start_round`
fixes the round's schedules lambda_t, gamma_t, p_t (line 13), its minibatch order and S_t
draws, `_step` runs lines 2-12 on one minibatch, `_failures` identifies F_t (lines 3-10) and
`_update` minimises L_t (line 12). Names follow the paper and pipeline.irl.reference: delta is
the margin Delta_i = R(o_i+) - R(o_i-) (delta_D, delta_F: each path's part of it), F_t the
failures, S_t the sampled subset, M_fail and tau_fail the failure loss's margin and temperature.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from pipeline.errors import TrainingDiverged
from pipeline.irl import objectives as obj
from pipeline.irl.common import Optim, PairTensors, TrainedReward, n_used, stream
from pipeline.irl.heads import RewardHead
from pipeline.irl.methods import MethodSpec
from pipeline.metrics import MetricsSink
from pipeline.runtime import Interrupted, run_flushing_denormals, tune_allocator


def train_bank(
    data: PairTensors,
    specs: list[MethodSpec],
    seeds: list[int],
    head: RewardHead,
    optim: Optim = Optim(),
    sink: MetricsSink | None = None,
    progress: bool = True,
    device: torch.device | str = "cpu",
) -> list[TrainedReward]:
    """Train len(seeds) x len(specs) rewards on `device`; returns them seed-major, in the given
    order, with their parameters on the CPU."""
    if any(s.needs_labels for s in specs) and not data.has_labels:
        raise ValueError("a ground-truth-failure method needs toxic labels")
    tune_allocator()
    with _ieee_float32(device):
        return run_flushing_denormals(
            lambda stop: _Bank(data, specs, seeds, head, optim, sink, progress, stop, device).fit()
        )


@contextmanager
def _ieee_float32(device: torch.device | str):
    """TF32 off on a GPU while the bank trains (run.device turns it on for the policies): the
    bank's GEMMs are small, so TF32 would save little, and IEEE float32 keeps a GPU's rewards
    within float32 rounding of the CPU's through hundreds of epochs of early-stopping decisions."""
    if torch.device(device).type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def _uniform(flags: list[bool]) -> bool | None:
    """The common value of per-model flags, or None when they differ (then masks are used)."""
    return flags[0] if flags and all(f == flags[0] for f in flags) else None


def _column(v: torch.Tensor) -> torch.Tensor:
    """Per-model values [M] -> [M, 1]. Loss math runs model-major, [G, M, b]: each model's
    values are one contiguous row, as for a model trained alone, so vectorised transcendental
    kernels (softplus, sigmoid) round them identically."""
    return v[:, None]


@dataclass
class _Round:
    """What round t of Algorithm 1 fixes before its minibatches, for the FA-IRL models (Mf of
    them; the tensors are empty or None when there are none)."""

    t: int
    lambda_t: torch.Tensor  # [Mf]      failure weight (line 13)
    gamma_t: torch.Tensor  # [Mf, 1]   margin threshold of F_t^margin (line 13)
    p_t: torch.Tensor  # [Mf, 1]   rate at which failures enter S_t (line 13)
    perm: torch.Tensor  # [G, n]    minibatch order, positions in data.train
    idx: torch.Tensor  # [G, 2n]   rows of the o+ | o- table, in that order
    sampled: torch.Tensor | None  # [G, Mf, n] u_i < p_t: pair i enters S_t if in F_t
    F_bottom_k: torch.Tensor | None  # [G, Mf, n] F_t^margin of the bottom-k schedule
    threshold: torch.Tensor | None  # [G, Mf, 1] c of F_t^sup (objectives.best_threshold)
    y_pos: torch.Tensor | None  # [G, 1, n]  labels y(o+), y(o-) in minibatch order
    y_neg: torch.Tensor | None
    penalty_t: torch.Tensor  # [Mf]      weight of (1/2) ||w_F||^2 (lambda_t x penalty_scale)
    penalty_F: torch.Tensor | None  # [G, Mf]   penalty_t per failure path
    penalty_uniform: float | None  # penalty_t when all FA-IRL models share it


class _Bank:
    def __init__(self, data, specs, seeds, head, optim, sink, progress, stop, device="cpu"):
        self.dev = dev = torch.device(device)
        data = data.to(dev)
        self.data, self.specs, self.seeds, self.head = data, specs, seeds, head
        self.optim, self.sink, self.progress, self.stop = optim, sink, progress, stop
        self.G, self.M = len(seeds), len(specs)
        fa = [i for i, s in enumerate(specs) if s.failure_aware]
        self.fa_specs = [specs[i] for i in fa]
        self.fa = fa  # positions of the FA-IRL methods among specs
        self.fa_idx = torch.tensor(fa, dtype=torch.long, device=dev)
        self.Mf = len(fa)
        # o+ rows then o- rows of one table, so a minibatch is a single index_select
        self.H = torch.cat([data.h_pos, data.h_neg])
        self.N = len(data.h_pos)

        # Paths: R_D of every method, then R_F of the FA-IRL ones; same streams as the reference.
        paths = [
            [head.init(stream(s, "init/base")) for _ in specs]
            + [head.init(stream(s, "init/failure")) for _ in self.fa_specs]
            for s in seeds
        ]
        self.p = {
            k: v.to(dev).contiguous().requires_grad_(True) for k, v in head.stack(paths).items()
        }
        # fused: one pass over the stacked Adam state instead of ~10 (CPU support: torch >= 2.4)
        fused = dev.type in ("cpu", "cuda")  # (not on the meta device of the placement test)
        self.opt = torch.optim.Adam(list(self.p.values()), lr=optim.lr, fused=fused)
        self.order_gens = [stream(s, "order") for s in seeds]
        self.last_r: torch.Tensor | None = None  # [G, Mf, 2, n_train] latest R(o+), R(o-)
        self.sample_gens = [[stream(s, f"sample/{sp.name}") for sp in self.fa_specs] for s in seeds]

        def vec(values, dtype=torch.float32):
            return torch.tensor(values, dtype=dtype, device=dev)

        # Per-model constants. Those of every model are [M], broadcast over [G, n, M] at
        # validation (and as _column(...) over [G, M, b] in training); those of the FA-IRL models
        # serve training alone and are [Mf, 1] columns, broadcast over [G, Mf, b]. The paper's
        # margin M is `margin` here: M and Mf count models.
        self.first_stoppable = vec([s.first_stoppable_epoch for s in specs], torch.long)
        self.is_mm = vec([s.objective == "mm" for s in specs], torch.bool)
        self.margin = vec([s.margin for s in specs])
        self.tau = vec([s.tau for s in specs])
        f = self.fa_specs
        self.f_is_mm = _column(vec([s.objective == "mm" for s in f], torch.bool))
        self.M_fail = _column(vec([s.margin_fail for s in f]))
        self.tau_fail = _column(vec([s.tau_fail for s in f]))
        self.fail_weight = _column(vec([s.fail_weight for s in f]))
        self.f_threshold = _column(vec([s.uses_threshold for s in f], torch.bool))
        self.f_supervised = _column(vec([s.needs_labels for s in f], torch.bool))
        self.any_threshold = any(s.uses_threshold for s in f)
        self.any_bottom_k = any(s.uses_bottom_k for s in f)
        self.any_supervised = any(s.needs_labels for s in f)
        # Round-level failure statistics need every training pair's latest reward.
        self.track = self.any_bottom_k or self.any_supervised
        # Gradient routing between the paths (pipeline.config.FailureSection)
        self.base_trains_F = _uniform([s.base_loss_trains_failure_path for s in f])
        self.base_trains_F_mask = _column(
            vec([s.base_loss_trains_failure_path for s in f], torch.bool)
        )
        self.fail_trains_D = _uniform([s.failure_loss_trains_base_path for s in f])
        self.fail_trains_D_mask = _column(
            vec([s.failure_loss_trains_base_path for s in f], torch.bool)
        )

    # ------------------------------------------------------------------------- rewards
    def _split(self, r: torch.Tensor):
        """Path rewards [..., P] -> (R_D [..., M], R_F [..., Mf])."""
        return r[..., : self.M], r[..., self.M :]

    def _total(self, r: torch.Tensor) -> torch.Tensor:
        """Path rewards [..., P] -> R = R_D + R_F per model [..., M]."""
        R_D, R_F = self._split(r)
        return R_D.index_add(-1, self.fa_idx, R_F) if self.Mf else R_D

    def _total_fa(self, r: torch.Tensor) -> torch.Tensor:
        """Rewards of the FA-IRL models' paths [..., 2 Mf] (their R_D, then their R_F) -> R =
        R_D + R_F per FA-IRL model [..., Mf]."""
        return r[..., : self.Mf] + r[..., self.Mf :]

    @torch.no_grad()
    def _total_reward(
        self, rows: torch.Tensor, side: torch.Tensor, fa_only: bool = False, chunk: int = 1024
    ):
        """R = R_D + R_F for the given rows of h_pos or h_neg: [G, n, M], or [G, n, Mf] for the
        FA-IRL models alone (round-start statistics need no others)."""
        if fa_only:
            extra = torch.arange(self.M, self.M + self.Mf, device=self.dev)
            fa_paths = torch.cat([self.fa_idx, extra])
            p, total = self.head.select(self.p, fa_paths), self._total_fa
        else:
            p, total = self.p, self._total
        out = [
            total(self.head.forward_shared(p, side[rows[i : i + chunk]]))
            for i in range(0, len(rows), chunk)
        ]
        return torch.cat(out, 1)

    # -------------------------------------------------------------------------- fitting
    def fit(self) -> list[TrainedReward]:
        data, optim, G, M, dev = self.data, self.optim, self.G, self.M, self.dev
        n = len(data.train)
        best_val = torch.full((G, M), float("inf"), device=dev)
        best_epoch = torch.full((G, M), -1, dtype=torch.long, device=dev)
        since_best = torch.zeros((G, M), dtype=torch.long, device=dev)
        active = torch.ones((G, M), dtype=torch.bool, device=dev)
        epochs_run = torch.zeros((G, M), dtype=torch.long, device=dev)
        best = {k: v.detach().clone() for k, v in self.p.items()}
        history: list[list[list[dict]]] = [[[] for _ in range(M)] for _ in range(G)]

        bar = tqdm(
            range(optim.max_epochs),
            desc=f"irl: {G * M} rewards",
            unit="epoch",
            disable=None if self.progress else True,
            leave=False,
        )  # None: off without a TTY
        for t in bar:  # --- line 1: one round t per epoch
            train_loss, n_fail = self._epoch(t, n)
            val_loss, val_acc = self._validate()
            # --- early stopping on the base objective, per model; a model's R_F follows its R_D
            eligible = (self.first_stoppable <= t) | (t == optim.max_epochs - 1)  # [M]
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
            if self.progress:
                finite = torch.where(torch.isfinite(best_val), best_val, float("nan"))
                bar.set_postfix(
                    active=f"{int(active.sum())}/{G * M}", val=f"{finite.nanmean().item():.4f}"
                )
            if not active.any():
                break
        bar.close()

        best = {k: v.cpu() for k, v in best.items()}  # the rewards are saved from the CPU
        best_val, best_epoch, epochs_run = best_val.cpu(), best_epoch.cpu(), epochs_run.cpu()
        out = []
        for g, seed in enumerate(self.seeds):
            for m, spec in enumerate(self.specs):
                f = self.fa.index(m) if m in self.fa else None
                out.append(
                    TrainedReward(
                        method=spec,
                        seed=seed,
                        base=self.head.unstack(best, g, m),
                        failure=None if f is None else self.head.unstack(best, g, M + f),
                        best_epoch=int(best_epoch[g, m]),
                        epochs_run=int(epochs_run[g, m]),
                        best_val_loss=float(best_val[g, m]),
                        history=history[g][m],
                    )
                )
        return out

    def _record(self, t, active, train_loss, val_loss, val_acc, n_fail, history):
        # one copy to the CPU per epoch, not one .item() per value (counts are exact in float32)
        stats = torch.stack([train_loss, val_loss, val_acc, n_fail.float(), active.float()])
        train_loss, val_loss, val_acc, n_fail, active = stats.cpu()
        active = active.bool()
        lambda_t = {i: s.lambda_t(t) for i, s in zip(self.fa, self.fa_specs)}
        for g, m in active.nonzero().tolist():
            row = {
                "epoch": t,
                "train_loss": train_loss[g, m].item(),
                "val_loss": val_loss[g, m].item(),
                "val_pair_acc": val_acc[g, m].item(),
                "failures": int(n_fail[g, m]),
                "lambda": lambda_t.get(m, 0.0),
            }
            history[g][m].append(row)
            if self.sink:
                self.sink.log(
                    t,
                    {f"irl/{k}": v for k, v in row.items() if k != "epoch"},
                    method=self.specs[m].name,
                    seed=self.seeds[g],
                )

    # ------------------------------------------------------------ one round of Algorithm 1
    def _epoch(self, t: int, n: int):
        """Round t of Algorithm 1 (lines 1-14; one round is one epoch) for every model at once:
        -> (mean training loss L_t [G, M], failures |F_t| summed over the round [G, M])."""
        G, M, Mf, B = self.G, self.M, self.Mf, self.optim.batch_size
        rnd = self._start_round(t, n)
        train_loss = torch.zeros(G, M, device=self.dev)
        n_fail = torch.zeros(G, M, dtype=torch.long, device=self.dev)
        for s0 in range(0, n_used(n, B), B):
            if self.stop.is_set():
                raise Interrupted()
            b = min(B, n - s0)
            L_t = self._step(rnd, n, s0, b, n_fail)
            train_loss += L_t.detach() * b
        if self.dev.type != "cpu":  # a non-finite step leaves the epoch's sum non-finite
            self._check_finite(train_loss, t)
        if Mf:  # log the penalty term too (at end-of-epoch weights; the reference uses each step's)
            w_sq = self.head.sq_weight_norm({k: v.detach() for k, v in self.p.items()})[:, M:]
            train_loss.index_add_(1, self.fa_idx, rnd.penalty_t / 2 * w_sq * n_used(n, B))
        return train_loss / n_used(n, B), n_fail

    def _start_round(self, t: int, n: int) -> _Round:
        """What round t fixes before its minibatches: the schedules, the round-level failure
        statistics, the minibatch order and each training pair's draw for S_t."""
        data, G, Mf, f, dev = self.data, self.G, self.Mf, self.fa_specs, self.dev

        def vec(values):
            return torch.tensor(values, dtype=torch.float32, device=dev)

        # --- line 13: schedules at round t (anneal gamma_t, decay lambda_t, adjust p_t)
        penalties = [s.penalty_t(t) for s in f]
        lambda_t = vec([s.lambda_t(t) for s in f])
        penalty_t = vec(penalties)
        gamma_t = _column(vec([s.gamma_t(t) for s in f]))
        p_t = _column(vec([s.sample_rate_t(t) for s in f]))
        F_bottom_k, threshold = self._round_failures(t, n)
        # --- line 2: the round's minibatch order (the same stream as the reference's)
        # (CPU generators on every device: the same draws anywhere)
        perm = torch.stack([torch.randperm(n, generator=g) for g in self.order_gens]).to(dev)
        rows = data.train[perm]
        idx = torch.cat([rows, rows + self.N], 1)  # [G, 2n]
        sampled = y_pos = y_neg = penalty_F = penalty_uniform = None
        if Mf:
            # --- line 10: one uniform draw u_i per training pair; a failure enters S_t if u_i < p_t
            u = torch.stack(
                [
                    torch.stack([torch.rand(n, generator=gen) for gen in row])
                    for row in self.sample_gens
                ]
            ).to(dev)  # [G, Mf, n]
            sampled = u < p_t
            if F_bottom_k is not None:
                F_bottom_k = torch.gather(F_bottom_k, 2, perm[:, None].expand(-1, Mf, -1))
            if threshold is not None:
                y_pos, y_neg = data.y_pos[rows][:, None], data.y_neg[rows][:, None]
            penalty_F = penalty_t[None].expand(G, -1)  # [G, Mf]
            # float32 as the tensor holds it, compared without a device round trip
            p32 = torch.tensor(penalties, dtype=torch.float32).tolist()
            penalty_uniform = p32[0] if all(v == p32[0] for v in p32) else None
        return _Round(
            t=t,
            lambda_t=lambda_t,
            penalty_t=penalty_t,
            gamma_t=gamma_t,
            p_t=p_t,
            perm=perm,
            idx=idx,
            sampled=sampled,
            F_bottom_k=F_bottom_k,
            threshold=threshold,
            y_pos=y_pos,
            y_neg=y_neg,
            penalty_F=penalty_F,
            penalty_uniform=penalty_uniform,
        )

    def _round_failures(self, t: int, n: int):
        """Round-level failure statistics of round t, from each training pair's latest reward
        R = R_D + R_F (as line 2 computed it, recorded as the minibatches pass; one full pass
        before round 0): the bottom-k_t margin failures F_t^margin [G, Mf, n] (pairs in data.train
        order), and the threshold c of the supervised failures F_t^sup [G, Mf, 1]. None for
        what no model uses."""
        data, G, Mf = self.data, self.G, self.Mf
        if not self.track:
            return None, None
        if self.last_r is None:
            self.last_r = torch.stack(
                [
                    self._total_reward(data.train, data.h_pos, fa_only=True).transpose(1, 2),
                    self._total_reward(data.train, data.h_neg, fa_only=True).transpose(1, 2),
                ],
                2,
            )
        R_pos, R_neg = self.last_r[:, :, 0], self.last_r[:, :, 1]  # [G, Mf, n]
        F_bottom_k = threshold = None
        if self.any_bottom_k:
            F_bottom_k = torch.zeros(G, Mf, n, dtype=torch.bool, device=self.dev)
            for j, s in enumerate(self.fa_specs):
                if s.uses_bottom_k:
                    delta = R_pos[:, j] - R_neg[:, j]
                    F_bottom_k[:, j] = obj.bottom_k_failures(delta, s.bottom_k_t(t))
        if self.any_supervised:
            y = torch.cat([data.y_pos[data.train], data.y_neg[data.train]]) > 0
            threshold = obj.best_threshold(torch.cat([R_pos, R_neg], -1), y)[..., None]
        return F_bottom_k, threshold

    def _step(self, rnd: _Round, n: int, s0: int, b: int, n_fail: torch.Tensor) -> torch.Tensor:
        """One minibatch of round rnd.t (positions s0 to s0 + b of its order), lines 2-12:
        updates every model, adds each model's |F_t| in it to n_fail; -> L_t [G, M]."""
        G, M, Mf = self.G, self.M, self.Mf
        sl = slice(s0, s0 + b)
        # --- line 2: minibatch rewards of every path, margins Delta_i = R(o_i+) - R(o_i-)
        idx = torch.cat([rnd.idx[:, sl], rnd.idx[:, n + s0 : n + s0 + b]], 1)
        h = self.H.index_select(0, idx.reshape(-1)).view(G, 2 * b, -1)  # [G, 2b, d]
        r_pos, r_neg = self.head.forward_pair(self.p, h, b)  # [G, b, P]
        r_pos = r_pos.transpose(1, 2).contiguous()  # [G, P, b]
        r_neg = r_neg.transpose(1, 2).contiguous()
        delta_D = r_pos[:, :M] - r_neg[:, :M]  # [G, M, b]
        is_mm, margin, tau = _column(self.is_mm), _column(self.margin), _column(self.tau)
        if not Mf:
            # --- lines 11-12 without failures: L_t = L_base
            L_t = obj.pair_loss(delta_D, is_mm, margin, tau).mean(-1)  # [G, M]
        else:
            delta_F = r_pos[:, M:] - r_neg[:, M:]  # [G, Mf, b]
            # --- line 11: L_base (Eq. 1 or 2) on Delta = Delta_D + Delta_F
            delta_F_base = self._route(delta_F, self.base_trains_F, self.base_trains_F_mask)
            delta_base = delta_D.index_add(1, self.fa_idx, delta_F_base)
            L_base = obj.pair_loss(delta_base, is_mm, margin, tau).mean(-1)
            # --- lines 3-10: identify failures F_t with the current reward, sample S_t at rate p_t
            delta_D_fa = delta_D[:, self.fa_idx]
            F_t = self._failures(rnd, sl, r_pos, r_neg, delta_D_fa, delta_F)  # [G, Mf, b]
            S_t = (F_t & rnd.sampled[..., sl]).float()
            n_fail.index_add_(1, self.fa_idx, F_t.sum(-1))
            # --- line 11: the stricter failure loss on S_t (M_fail > M or tau_fail < tau)
            delta_D_fail = self._route(delta_D_fa, self.fail_trains_D, self.fail_trains_D_mask)
            delta_fail = delta_D_fail + delta_F
            l_fail = obj.pair_loss(delta_fail, self.f_is_mm, self.M_fail, self.tau_fail)
            L_fail = (l_fail * self.fail_weight * S_t).sum(-1) / S_t.sum(-1).clamp(min=1)
            # --- line 12: L_t = L_base + lambda_t L_fail(S_t) (+ the penalty, in _update)
            L_t = L_base.index_add(1, self.fa_idx, rnd.lambda_t * L_fail)
        if self.dev.type == "cpu":  # (elsewhere once per epoch, in _epoch: no sync per step)
            self._check_finite(L_t, rnd.t)
        self._update(L_t, rnd)
        return L_t

    def _check_finite(self, L_t: torch.Tensor, t: int) -> None:
        if not torch.isfinite(L_t).all():
            g, m = (~torch.isfinite(L_t)).nonzero()[0].tolist()
            raise TrainingDiverged(
                f"{self.specs[m].name} seed {self.seeds[g]}: loss is {L_t[g, m].item()} "
                f"at epoch {t}",
                hint="lower irl.lr, and check the embeddings for NaN or inf",
            )

    def _failures(self, rnd: _Round, sl: slice, r_pos, r_neg, delta_D_fa, delta_F) -> torch.Tensor:
        """Lines 3-10: the failure set F_t = F_t^margin | F_t^sup of each FA-IRL model in the
        minibatch [G, Mf, b], from the path rewards r_pos, r_neg [G, P, b] and margins Delta_D
        [G, Mf, b], Delta_F [G, Mf, b]. Records the minibatch's rewards for the next round's
        statistics."""
        G, M, Mf = self.G, self.M, self.Mf
        F_t = torch.zeros_like(delta_F, dtype=torch.bool)
        if self.any_threshold:
            # --- line 4: F_t^margin = {i : Delta_i <= gamma_t}
            delta = (delta_D_fa + delta_F).detach()
            F_t |= self.f_threshold & obj.margin_failures(delta, rnd.gamma_t)
        if rnd.F_bottom_k is not None:
            # --- line 4, bottom-k schedule: F_t^margin chosen at round start
            F_t |= rnd.F_bottom_k[..., sl]
        if not self.track:
            return F_t
        # R = R_D + R_F of each FA-IRL model on the minibatch
        R_pos = (r_pos[:, self.fa_idx] + r_pos[:, M:]).detach()
        R_neg = (r_neg[:, self.fa_idx] + r_neg[:, M:]).detach()
        if rnd.threshold is not None:
            # --- lines 5-9: F_t^sup, outputs the reward misclassifies (objectives says why c)
            F_t |= self.f_supervised & obj.supervised_failures(
                R_pos, R_neg, rnd.y_pos[..., sl], rnd.y_neg[..., sl], rnd.threshold
            )
        at = rnd.perm[:, None, None, sl].expand(G, Mf, 2, sl.stop - sl.start)
        self.last_r.scatter_(3, at, torch.stack([R_pos, R_neg], 2))  # [G, Mf, 2, n]
        return F_t

    def _update(self, L_t: torch.Tensor, rnd: _Round) -> None:
        """Line 12: one Adam step on sum over models of L_t + (penalty_t / 2) ||w_F||^2
        (penalty_t = lambda_t in Eq. 3 as printed; irl.fa.penalty_scale scales it apart)."""
        G, M, Mf = self.G, self.M, self.Mf
        self.opt.zero_grad(set_to_none=True)
        L_t.sum().backward()
        if Mf:
            # (penalty_t / 2) ||w_F||^2 of Eq. 3, added as its gradient penalty_t * w_F after
            # backward() (autograd would sum it into each weight's gradient in another order)
            for k in self.head.weight_names:
                grad_F = self.head.path_view(k, self.p[k].grad)[:, :, M:]
                w_F = self.head.path_view(k, self.p[k].detach())[:, :, M:]
                if rnd.penalty_uniform is not None:
                    # one pass; the reference makes the same call
                    grad_F.add_(w_F, alpha=rnd.penalty_uniform)
                else:
                    grad_F.add_(w_F * rnd.penalty_F.reshape(G, 1, Mf, *[1] * (w_F.dim() - 3)))
        self.opt.step()

    @staticmethod
    def _route(x: torch.Tensor, uniform: bool | None, mask: torch.Tensor) -> torch.Tensor:
        """x where gradient flows for the model, x.detach() where it must not."""
        if uniform is not None:
            return x if uniform else x.detach()
        return torch.where(mask, x, x.detach())

    @torch.no_grad()
    def _validate(self):
        delta = self._total_reward(self.data.val, self.data.h_pos) - self._total_reward(
            self.data.val, self.data.h_neg
        )
        # Reduce each model's losses as one contiguous row, the way a lone model would, so the
        # early-stopping comparisons are computed as the reference computes them.
        loss = obj.pair_loss(delta, self.is_mm, self.margin, self.tau).transpose(1, 2).contiguous()
        return loss.mean(-1), (delta > 0).float().mean(1)
