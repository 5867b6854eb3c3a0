"""PPO for a causal LM with a scalar sequence reward (docs/ppo.md; TRL no longer ships PPO).

Follows the implementation details published re-implementations agree on (Huang et al., "The N
Implementation Details of RLHF with PPO"; OpenAI lm-human-preferences; TRL 0.4-0.11):

 1. per-token reward -kl_coef * (logp - logp_ref), plus the score at the last real token
 2. adaptive KL controller (Ziegler et al. 2019) or a fixed coefficient
 3. a zero-initialised scalar value head on the policy's last hidden state
 4. advantages whitened over valid tokens; learned rewards normalised by reference samples
 5. GAE with gamma = 1, lam = 0.95; the value after the last token is 0
 6. clipped policy loss (0.2) and clipped value loss (0.2, 0.5 * max, vf_coef 0.1)
 7. 4 PPO epochs over minibatches
 8. left padding, position ids from the mask, PAD != EOS, responses cut after the first EOS
 9. the sampling temperature divides the logits in every logprob (policy and reference)
10. dropout off; 11. Adam, eps 1e-5

Written with `accelerate`: the same loop runs single-process on CPU and data-parallel over
several GPUs or CPU ranks (launch with torchrun; see DEVELOPERS.md).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, save_model
from torch import nn

from pipeline.artifacts import atomic_dir, remove_path, sha256_file
from pipeline.errors import ConfigError
from pipeline.policy.models import never_emitted, position_ids, sample

log = logging.getLogger("fairl.ppo")


# ------------------------------------------------------------------- pure tensor functions
def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits [B, T, V], labels [B, T] -> log p(labels) [B, T]."""
    return torch.gather(F.log_softmax(logits, -1), 2, labels[..., None]).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    p = F.softmax(logits, -1)
    return torch.logsumexp(logits, -1) - (p * logits).sum(-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Population variance (unbiased=False) over the valid entries."""
    return masked_mean((x - masked_mean(x, mask)) ** 2, mask)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over valid entries; invalid entries are left as 0 contributions."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens, vectorised over the batch.

    rewards, values, mask [B, T]. Rewards and values past the response are zeroed, so the
    value after the last real token is 0. Returns (advantages, returns), both [B, T]."""
    values, rewards = values * mask, rewards * mask
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        adv[:, t] = running
    adv = adv * mask
    return adv, (adv + values) * mask


def kl_penalised_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards -kl_coef * kl_t, plus the scalar score at the last real token.
    scores [B]; logprobs, ref_logprobs, mask [B, T] (responses start at t = 0).
    Returns (rewards, kl), both [B, T]."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    length = mask.sum(-1).long()
    rows = (length > 0).nonzero().squeeze(-1)
    rewards[rows, length[rows] - 1] += scores[rows]
    return rewards * mask, kl


def ppo_losses(
    logprobs,
    old_logprobs,
    advantages,
    values,
    old_values,
    returns,
    mask,
    cliprange: float,
    cliprange_value: float,
    vf_coef: float,
):
    """Clipped surrogate and clipped value loss over valid tokens; returns (loss, stats)."""
    ratio = torch.exp(logprobs - old_logprobs)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange)
    pg_loss = masked_mean(torch.max(pg1, pg2), mask)
    v_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    vf1, vf2 = (values - returns) ** 2, (v_clipped - returns) ** 2
    vf_loss = 0.5 * masked_mean(torch.max(vf1, vf2), mask)
    with torch.no_grad():
        log_ratio = logprobs - old_logprobs
        stats = {
            "pg_loss": pg_loss.item(),
            "vf_loss": vf_loss.item(),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask).item(),
            "clipfrac": masked_mean((pg2 > pg1).float(), mask).item(),
            "vf_clipfrac": masked_mean((vf2 > vf1).float(), mask).item(),
        }
    return pg_loss + vf_coef * vf_loss, stats


class AdaptiveKLController:
    """Ziegler et al. (2019): kl_coef *= 1 + clip(KL / target - 1, -0.2, 0.2) * n_steps
    / horizon."""

    def __init__(self, init: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        err = max(-0.2, min(0.2, current_kl / self.target - 1.0))
        self.value *= 1.0 + err * n_steps / self.horizon


class FixedKLController:
    def __init__(self, init: float):
        self.value = init

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


# ----------------------------------------------------------------------------- the model
class PolicyWithValue(nn.Module):
    """The policy LM and a zero-initialised scalar value head on its last hidden state."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy
        hidden = policy.get_input_embeddings().embedding_dim
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask):
        out = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            output_hidden_states=True,
        )
        return out.logits, self.value_head(out.hidden_states[-1]).squeeze(-1)


def response_forward(
    model,
    input_ids,
    attention_mask,
    n_prompt: int,
    temperature: float,
    with_values: bool = True,
    exclude_token: int | Sequence[int] | None = None,
):
    """Logprobs (and values, entropy) of the response tokens, logits divided by the sampling
    temperature. input_ids = prompt (n_prompt, left-padded) + response. `exclude_token` (PAD)
    gets probability 0, as in sampling, which suppresses it."""
    if with_values:
        logits, values = model(input_ids, attention_mask)
    else:
        logits = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
        ).logits
        values = None
    logits = logits[:, n_prompt - 1 : -1] / temperature  # predicts response tokens
    if exclude_token is not None:  # one id, or several (models.never_emitted)
        ids = [exclude_token] if isinstance(exclude_token, int) else list(exclude_token)
        column = torch.tensor(ids, device=logits.device)
        logits = logits.index_fill(-1, column, torch.finfo(logits.dtype).min)
    resp = input_ids[:, n_prompt:]
    lp = logprobs_from_logits(logits, resp)
    ent = entropy_from_logits(logits)
    if values is not None:
        values = values[:, n_prompt - 1 : -1]
    return lp, values, ent


# --------------------------------------------------------------------------- the trainer
@dataclass
class RewardNorm:
    """score' = gain * score + bias: mean 0, std 1 under the reference policy (docs/ppo.md,
    detail 4)."""

    gain: float = 1.0
    bias: float = 0.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain * x + self.bias


def check_batch_split(cfg, n_ranks: int) -> None:
    """Batch and minibatch sizes count rollouts over all ranks: every rank must take the same
    number of gradient steps (DDP synchronises each one), so both divide by the rank count."""
    if cfg.batch_size % n_ranks or cfg.mini_batch_size % n_ranks:
        raise ConfigError(
            f"ppo.batch_size ({cfg.batch_size}) and ppo.mini_batch_size ({cfg.mini_batch_size}) "
            f"count rollouts over all {n_ranks} ranks and must both be multiples of the rank count",
            hint="every rank must take the same number of gradient steps (DDP syncs each one)",
        )


class PPOTrainer:
    """One PPO loop: `step(prompts)` samples, scores, and updates. Rank-aware via accelerate."""

    def __init__(
        self,
        model,
        tokenizer,
        score_fn: Callable[..., torch.Tensor],  # (completions, prompts) -> rewards
        cfg,
        gen,
        accelerator,
        reward_norm: RewardNorm | None = None,
    ):
        check_batch_split(cfg, accelerator.num_processes)
        self.rank_mini_batch = cfg.mini_batch_size // accelerator.num_processes
        self.cfg, self.gen, self.acc, self.tok = cfg, gen, accelerator, tokenizer
        self.score_fn = score_fn
        self.reward_norm = reward_norm or RewardNorm()
        self.never = never_emitted(model, tokenizer)  # PAD and spare rows: out of every logprob
        self.ref = copy.deepcopy(model).eval().to(accelerator.device)  # frozen reference policy
        for p in self.ref.parameters():
            p.requires_grad_(False)
        wrapped = PolicyWithValue(model)
        opt = torch.optim.Adam(wrapped.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
        self.model, self.opt = accelerator.prepare(wrapped, opt)
        self.kl_ctl = (
            AdaptiveKLController(cfg.init_kl_coef, cfg.target_kl, cfg.horizon)
            if cfg.adaptive_kl
            else FixedKLController(cfg.init_kl_coef)
        )
        self.step_count = 0

    @property
    def policy(self):
        return self.acc.unwrap_model(self.model).policy

    def step(self, prompts: Sequence[str], seed: int) -> dict:
        cfg, gen, acc = self.cfg, self.gen, self.acc
        # ---- 1. rollout: sample responses (this rank's share of the prompts) and score them
        self.model.eval()
        p_ids, p_mask, r_ids, r_mask, texts = sample(
            self.policy,
            self.tok,
            prompts,
            gen.max_new_tokens,
            gen.temperature,
            gen.top_p,
            seed=seed,
            max_prompt_tokens=gen.max_prompt_tokens,
        )
        raw = self.score_fn(texts, list(prompts)).float().to(r_ids.device)
        scores = self.reward_norm(raw)
        if cfg.missing_eos_penalty is not None:
            ended = ((r_ids == self.tok.eos_token_id) & (r_mask > 0)).any(-1)
            scores = torch.where(ended, scores, scores - cfg.missing_eos_penalty)
        ids = torch.cat([p_ids, r_ids], 1)
        mask = torch.cat([p_mask, r_mask], 1)
        n_prompt, pad = p_ids.shape[1], self.never
        with torch.no_grad():
            old_lp, old_values, _ = response_forward(
                self.model, ids, mask, n_prompt, gen.temperature, exclude_token=pad
            )
            ref_lp, _, _ = response_forward(
                self.ref, ids, mask, n_prompt, gen.temperature, with_values=False, exclude_token=pad
            )
            # ---- 2. per-token rewards with the KL penalty, then GAE and whitened advantages
            rewards, kl = kl_penalised_rewards(scores, old_lp, ref_lp, r_mask, self.kl_ctl.value)
            if cfg.whiten_rewards:
                rewards = masked_whiten(rewards, r_mask, shift_mean=False)
            adv, returns = gae(rewards, old_values, r_mask, cfg.gamma, cfg.lam)
            adv = masked_whiten(adv, r_mask)
        # ---- 3. PPO epochs over minibatches
        self.model.train()
        B = len(prompts)
        stats: dict[str, list] = {}
        g = torch.Generator().manual_seed(seed)
        for _ in range(cfg.ppo_epochs):
            for idx in torch.randperm(B, generator=g).split(self.rank_mini_batch):
                lp, values, ent = response_forward(
                    self.model, ids[idx], mask[idx], n_prompt, gen.temperature, exclude_token=pad
                )
                loss, s = ppo_losses(
                    lp,
                    old_lp[idx],
                    adv[idx],
                    values,
                    old_values[idx],
                    returns[idx],
                    r_mask[idx],
                    cfg.cliprange,
                    cfg.cliprange_value,
                    cfg.vf_coef,
                )
                self.opt.zero_grad()
                acc.backward(loss)
                if cfg.max_grad_norm:
                    acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                self.opt.step()
                s["entropy"] = masked_mean(ent.detach(), r_mask[idx]).item()
                for k, v in s.items():
                    stats.setdefault(k, []).append(v)
        self.model.eval()
        # ---- 4. KL controller on the batch-mean sequence KL, identical on every rank
        seq_kl = kl.sum(-1)
        mean_kl = self._mean(seq_kl)
        self.kl_ctl.update(mean_kl, B * acc.num_processes)
        self.step_count += 1
        var_ret = masked_var(returns, r_mask)
        out = {
            "ppo/score": self._mean(raw),
            "ppo/score_normalised": self._mean(scores),
            "ppo/kl": mean_kl,
            "ppo/kl_coef": self.kl_ctl.value,
            "ppo/response_length": self._mean(r_mask.sum(-1).float()),
            "ppo/explained_var": float(1 - masked_var(returns - old_values, r_mask) / var_ret)
            if var_ret > 0
            else math.nan,
            **{f"ppo/{k}": sum(v) / len(v) for k, v in stats.items()},
        }
        self.last_samples = list(zip(prompts, texts, raw.tolist()))
        return out

    def _mean(self, x: torch.Tensor) -> float:
        return self.acc.gather(x.detach().reshape(-1).contiguous()).float().mean().item()

    # --------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, path: Path) -> None:
        """Policy + value head, optimizer state and controller: safetensors and JSON, no pickle.
        `trainer_state.json`, written last, records each file's size and sha256, so that a
        resume tells a damaged checkpoint from a good one. Written beside `path`, flushed to disk
        and swapped in whole, so a kill (or a power cut) mid-write keeps the previous one."""
        if self.acc.is_main_process:
            latest_checkpoint(path)  # puts back a previous checkpoint a kill left mid-swap
            # the previous one stays beside it until the new one is in
            with atomic_dir(path, fsync=True) as tmp:
                save_model(self.acc.unwrap_model(self.model), str(tmp / "model.safetensors"))
                save_optimizer(self.opt, tmp)
                files = {
                    name: {"size": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)}
                    for name in CHECKPOINT_FILES
                }
                (tmp / "trainer_state.json").write_text(
                    json.dumps(
                        {"kl_coef": self.kl_ctl.value, "step": self.step_count, "files": files}
                    )
                )
        self.acc.wait_for_everyone()

    def load_checkpoint(self, path: Path) -> None:
        """Load the checkpoint at `path`. Everything is read and checked before anything is
        changed: a damaged file raises `CheckpointUnreadable` and leaves the trainer as it was."""
        self._apply(self._read(path))

    def resume(self, path: Path) -> bool:
        """Load the newest intact checkpoint: the one at `path`, else the previous one that a
        kill mid-swap left beside it. An unreadable one is a leftover that would fail every
        later resume too: it is named in a warning and removed. With none intact the run
        restarts from step 0, saying so. Returns whether it resumed."""
        state, found, bad = None, None, []
        for candidate in (path, _previous(path)):
            if not os.path.lexists(candidate):
                continue
            try:
                state, found = self._read(candidate), candidate
                break
            except CheckpointUnreadable as e:
                bad.append((candidate, e))
        self.acc.wait_for_everyone()  # every rank has read before rank 0 moves anything
        if self.acc.is_main_process:
            for candidate, e in bad:
                log.warning("%s; removing %s", e, candidate)
                remove_path(candidate)
            if found is not None and found != path:
                os.replace(found, path)
            if bad and state is not None:
                log.warning("resuming from the previous checkpoint, at step %d", state["step"])
            elif bad:
                log.warning("no intact checkpoint left in %s: restarting from step 0", path.parent)
        if state is None:
            return False
        self._apply(state)
        return True

    def _read(self, path: Path) -> dict:
        name = "trainer_state.json"
        try:
            state = json.loads((path / name).read_text())
            if not isinstance(state, dict):
                raise ValueError("not a JSON object")
            step, kl_coef = state["step"], state["kl_coef"]
            if (
                type(step) is not int
                or step < 0
                or not isinstance(kl_coef, (int, float))
                or not math.isfinite(kl_coef)
            ):
                raise ValueError(f"step {step!r} or kl_coef {kl_coef!r} out of range")
            recorded = state.get("files") or {}  # absent in checkpoints of earlier versions
            for name in CHECKPOINT_FILES:
                if name in recorded and (
                    (path / name).stat().st_size != recorded[name]["size"]
                    or sha256_file(path / name) != recorded[name]["sha256"]
                ):
                    raise ValueError("its size or sha256 differs from the one saved with it")
            name = "model.safetensors"
            model = load_file(str(path / name))
            _check_model_tensors(self.acc.unwrap_model(self.model), model)
            name = "optimizer.json"
            groups = json.loads((path / name).read_text())
            groups = groups["param_groups"] if isinstance(groups, dict) else None
            name = "optimizer.safetensors"
            opt_state = _optimizer_state(self.opt, load_file(str(path / name)), groups)
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
            raise CheckpointUnreadable(
                f"checkpoint file {path / name} is unreadable ({e})"
            ) from None
        return {
            "model": model,
            "optimizer": {"state": opt_state, "param_groups": groups},
            "step": step,
            "kl_coef": kl_coef,
        }

    def _apply(self, state: dict) -> None:
        self.acc.unwrap_model(self.model).load_state_dict(state["model"], strict=False)  # checked
        self.opt.load_state_dict(state["optimizer"])
        self.kl_ctl.value, self.step_count = state["kl_coef"], state["step"]


CHECKPOINT_FILES = ("model.safetensors", "optimizer.safetensors", "optimizer.json")


class CheckpointUnreadable(Exception):
    """A checkpoint that cannot be resumed from; the message names the file and the reason."""


def _previous(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def _check_model_tensors(model: nn.Module, tensors: dict) -> None:
    """Every saved tensor belongs to the model with its shape, and every model tensor is saved
    (or shares its storage with a saved one: `save_model` keeps one name of tied weights)."""
    expected = model.state_dict()
    for key, t in tensors.items():
        if key not in expected or t.shape != expected[key].shape:
            raise ValueError(f"tensor {key!r} {tuple(t.shape)} does not fit the model")
    saved = {(expected[k].data_ptr(), expected[k].shape) for k in tensors}
    missing = [
        k for k, t in expected.items() if k not in tensors and (t.data_ptr(), t.shape) not in saved
    ]
    if missing:
        raise ValueError(f"tensor {missing[0]!r} is missing")


def _optimizer_state(opt, tensors: dict, groups) -> dict:
    """The optimizer's per-parameter state from its saved tensors, checked against the model's
    parameters (Adam's moments have their parameter's shape)."""
    current = opt.state_dict()["param_groups"]
    if (
        not isinstance(groups, list)
        or len(groups) != len(current)
        or any(
            not isinstance(g, dict) or g.get("params") != c["params"]
            for g, c in zip(groups, current)
        )
    ):
        raise ValueError("its parameter groups do not match the model's")
    params = {
        i: p for c, g in zip(current, opt.param_groups) for i, p in zip(c["params"], g["params"])
    }
    state: dict = {}
    for key, v in tensors.items():
        i, name = key.split(".", 1)
        p = params.get(int(i))
        if p is None or (v.dim() > 0 and v.shape != p.shape):
            raise ValueError(f"state tensor {key!r} {tuple(v.shape)} does not fit the model")
        state.setdefault(int(i), {})[name] = v
    return state


def latest_checkpoint(path: Path) -> Path | None:
    """The checkpoint at `path`, or None. If a kill fell between the two renames of
    `save_checkpoint`'s swap, the previous checkpoint is moved back to `path` first (a later
    save would otherwise delete it before its replacement is in place)."""
    old = _previous(path)
    if not path.exists() and (old / "trainer_state.json").is_file():
        os.replace(old, path)
    return path if (path / "trainer_state.json").is_file() else None


def save_optimizer(opt, path: Path) -> None:
    sd = opt.state_dict()
    tensors = {
        f"{i}.{k}": v.detach().cpu().contiguous()
        for i, st in sd["state"].items()
        for k, v in st.items()
        if torch.is_tensor(v)
    }
    save_file(tensors, str(path / "optimizer.safetensors"))
    (path / "optimizer.json").write_text(json.dumps({"param_groups": sd["param_groups"]}))


def reference_samples(model, tokenizer, prompts: Sequence[str], gen, seed: int):
    """The reference policy's (`model`) completions to `prompts`, in batches of
    gen.batch_size: yields (prompts, completions) per batch, batch i seeded seed + i."""
    for i in range(0, len(prompts), gen.batch_size):
        batch = list(prompts[i : i + gen.batch_size])
        *_, texts = sample(
            model,
            tokenizer,
            batch,
            gen.max_new_tokens,
            gen.temperature,
            gen.top_p,
            seed=seed + i,
            max_prompt_tokens=gen.max_prompt_tokens,
        )
        yield batch, texts


def reference_reward_norm(
    model, tokenizer, score_fn, prompts: Sequence[str], gen, seed: int
) -> RewardNorm:
    """Gain and bias that give the reward mean 0 and std 1 on reference-policy samples."""
    scores = [
        score_fn(texts, batch).float()
        for batch, texts in reference_samples(model, tokenizer, prompts, gen, seed)
    ]
    s = torch.cat(scores)
    std = float(s.std()) if len(s) > 1 and float(s.std()) > 1e-8 else 1.0
    return RewardNorm(gain=1.0 / std, bias=-float(s.mean()) / std)
