"""The PPO details of docs/ppo.md, tested, and the sampling details they rest on."""

from __future__ import annotations

import pytest
import torch
from conftest import PPO_STATS

from pipeline.config import GenerationSection, PPOSection
from pipeline.policy import ppo
from pipeline.policy.models import load_policy, position_ids, sample


# --------------------------------------------------------------------- pure functions
def gae_loop(rewards, values, mask, gamma, lam):
    """GAE one sequence and one step at a time, as in the papers."""
    B, T = rewards.shape
    adv = torch.zeros(B, T)
    for b in range(B):
        n = int(mask[b].sum())
        last = 0.0
        for t in reversed(range(n)):
            next_v = values[b, t + 1].item() if t + 1 < n else 0.0
            delta = rewards[b, t].item() + gamma * next_v - values[b, t].item()
            last = delta + gamma * lam * last
            adv[b, t] = last
    return adv, (adv + values) * mask


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0)])
def test_vectorised_gae_equals_a_plain_loop(gamma, lam):
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(5, 9, generator=g), torch.randn(5, 9, generator=g)
    lengths = torch.tensor([9, 4, 1, 7, 0])
    mask = (torch.arange(9)[None] < lengths[:, None]).float()
    adv, ret = ppo.gae(rewards, values, mask, gamma, lam)
    adv_ref, ret_ref = gae_loop(rewards, values, mask, gamma, lam)
    assert torch.allclose(adv, adv_ref, atol=1e-5) and torch.allclose(ret, ret_ref, atol=1e-5)
    assert (adv[mask == 0] == 0).all()


def test_masked_whitening_has_mean_zero_and_std_one_over_valid_tokens():
    x = torch.randn(6, 10) * 5 + 3
    mask = torch.rand(6, 10) < 0.6
    x[~mask] = 1e6  # padding must not leak in
    w = ppo.masked_whiten(x, mask.float())
    valid = w[mask]
    assert valid.mean().abs() < 1e-5
    assert valid.std(unbiased=False) == pytest.approx(1.0, abs=1e-3)
    assert (w[~mask] == 0).all()


def test_kl_controller_moves_the_coefficient_the_right_way():
    up = ppo.AdaptiveKLController(0.2, target=6.0, horizon=10000)
    up.update(current_kl=12.0, n_steps=64)
    assert up.value > 0.2
    assert up.value == pytest.approx(0.2 * (1 + 0.2 * 64 / 10000))  # error clipped at 0.2
    down = ppo.AdaptiveKLController(0.2, target=6.0, horizon=10000)
    down.update(current_kl=3.0, n_steps=64)
    assert down.value == pytest.approx(0.2 * (1 - 0.2 * 64 / 10000)) and down.value < 0.2  # clipped
    fixed = ppo.FixedKLController(0.2)
    fixed.update(50.0, 64)
    assert fixed.value == 0.2


def test_score_lands_on_the_last_real_token_and_kl_is_per_token():
    lp = torch.tensor([[-1.0, -2.0, -3.0, 0.0], [-1.0, -1.0, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0, 0.0], [-2.0, -1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 0]])
    rewards, kl = ppo.kl_penalised_rewards(torch.tensor([10.0, 20.0]), lp, ref, mask, kl_coef=0.5)
    assert kl.tolist() == [[0.5, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0]]
    assert rewards.tolist() == [[-0.25, 0.0, 10.5, 0.0], [-0.5, 20.0, 0.0, 0.0]]


def test_clipped_losses():
    lp = torch.tensor([[0.0, 0.0]])
    old = torch.log(torch.tensor([[0.5, 0.5]]))  # ratio = 2 on both tokens
    adv = torch.tensor([[1.0, -1.0]])
    v = torch.tensor([[1.0, 0.0]])
    loss, stats = ppo.ppo_losses(
        lp,
        old,
        adv,
        v,
        torch.zeros(1, 2),
        torch.ones(1, 2),
        torch.ones(1, 2),
        cliprange=0.2,
        cliprange_value=0.2,
        vf_coef=0.1,
    )
    # pg: max(-A r, -A clip(r)) = [max(-2, -1.2), max(2, 1.2)] -> mean 0.4
    assert stats["pg_loss"] == pytest.approx(0.4)
    # vf: token 0: max((1-1)^2, (0.2-1)^2) = 0.64; token 1: max(1, 1) = 1 -> 0.5 * mean = 0.41
    assert stats["vf_loss"] == pytest.approx(0.41)
    assert stats["clipfrac"] == pytest.approx(0.5)
    assert loss.item() == pytest.approx(0.4 + 0.1 * 0.41)


def test_position_ids_follow_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


# ------------------------------------------------------------------ on the micro world
def test_pad_is_distinct_from_eos_and_responses_stop_after_eos(micro_world):
    model, tok = load_policy(str(micro_world.base_lm))
    assert tok.pad_token_id != tok.eos_token_id and tok.padding_side == "left"
    p_ids, p_mask, r_ids, r_mask, texts = sample(
        model, tok, ["the quiet dog", "you idiot, the"], 24, seed=0
    )
    for row, m in zip(r_ids, r_mask):
        eos = (row == tok.eos_token_id).nonzero()
        if len(eos):
            first = int(eos[0])
            assert m[: first + 1].all() and not m[first + 1 :].any()  # EOS kept, the rest masked
    assert p_mask[1].all() and not p_mask[0, 0]  # left padded


def test_logprobs_use_the_sampling_temperature(micro_world):
    model, tok = load_policy(str(micro_world.base_lm))
    p_ids, p_mask, r_ids, r_mask, _ = sample(
        model, tok, ["the old cat"], 8, temperature=0.7, seed=1
    )
    ids, mask = torch.cat([p_ids, r_ids], 1), torch.cat([p_mask, r_mask], 1)
    lp, _, _ = ppo.response_forward(model, ids, mask, p_ids.shape[1], 0.7, with_values=False)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
    manual = torch.log_softmax(logits[:, p_ids.shape[1] - 1 : -1] / 0.7, -1).gather(
        2, r_ids[..., None]
    )[..., 0]
    assert torch.allclose(lp, manual, atol=1e-5)


def _trainer(world, **over):
    from pipeline.policy.rl import accelerator
    from pipeline.world.grammar import lexicon_score

    model, tok = load_policy(str(world.base_lm))
    cfg = PPOSection(batch_size=32, mini_batch_size=8, lr=3e-4, init_kl_coef=0.05, **over)
    gen = GenerationSection(max_new_tokens=12, batch_size=32)
    score = lambda texts, prompts=None: torch.tensor([lexicon_score(t).reward for t in texts])
    return ppo.PPOTrainer(model, tok, score, cfg, gen, accelerator()), gen


def _toxic_prompts(world, n=32):
    import json

    recs = [json.loads(line) for line in open(world.prompts)]
    return [r["prompt"]["text"] for r in recs if r["prompt"]["toxicity"] > 0.5][:n]


def test_one_step_changes_the_policy_and_not_the_reference(micro_world):
    trainer, _ = _trainer(micro_world)
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    ref_before = {k: v.clone() for k, v in trainer.ref.state_dict().items()}
    stats = trainer.step(_toxic_prompts(micro_world), seed=0)
    changed = [k for k, v in trainer.policy.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) > 0.8 * len(before)
    assert all(torch.equal(v, ref_before[k]) for k, v in trainer.ref.state_dict().items())
    for key in PPO_STATS:
        assert key in stats and stats[key] == stats[key]  # present and not NaN


def test_score_rises_while_kl_stays_bounded(micro_world):
    trainer, _ = _trainer(micro_world)
    prompts = _toxic_prompts(micro_world, 64)
    scores, kls = [], []
    for step in range(12):
        s = trainer.step(prompts[(step * 32) % 64 : (step * 32) % 64 + 32], seed=step)
        scores.append(s["ppo/score"])
        kls.append(s["ppo/kl"])
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3 + 0.1
    assert max(kls) < 15.0


def test_checkpoint_round_trip(micro_world, tmp_path):
    trainer, _ = _trainer(micro_world)
    trainer.step(_toxic_prompts(micro_world), seed=0)
    trainer.save_checkpoint(tmp_path / "ck")
    assert {p.name for p in (tmp_path / "ck").iterdir()} == {
        "model.safetensors",
        "optimizer.safetensors",
        "optimizer.json",
        "trainer_state.json",
    }
    other, _ = _trainer(micro_world)
    other.load_checkpoint(tmp_path / "ck")
    assert other.step_count == 1 and other.kl_ctl.value == trainer.kl_ctl.value
    for (k, a), b in zip(trainer.policy.state_dict().items(), other.policy.state_dict().values()):
        assert torch.equal(a, b), k


def test_pad_is_never_sampled_and_gets_no_probability(micro_world):
    """Even when the model favours PAD (here: +30 on its logit), a response holds no PAD and its
    mask is one contiguous run; logprobs give PAD probability 0, as sampling does."""
    model, tok = load_policy(str(micro_world.base_lm))
    pad = tok.pad_token_id

    def favour_pad(module, inputs, out):
        out = out.clone()
        out[..., pad] += 30.0
        return out

    model.get_output_embeddings().register_forward_hook(favour_pad)
    p_ids, p_mask, r_ids, r_mask, texts = sample(
        model, tok, ["the quiet dog", "you idiot, the"] * 8, 16, seed=0
    )
    assert r_mask[:, 0].all() and not (r_ids[r_mask.bool()] == pad).any()
    lengths = r_mask.sum(-1)
    assert torch.equal(
        r_mask, (torch.arange(r_mask.shape[1]) < lengths[:, None]).long()
    )  # no holes
    ids, mask = torch.cat([p_ids, r_ids], 1), torch.cat([p_mask, r_mask], 1)
    lp, _, ent = ppo.response_forward(
        model, ids, mask, p_ids.shape[1], 1.0, with_values=False, exclude_token=pad
    )
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
    logits = logits[:, p_ids.shape[1] - 1 : -1]
    keep = torch.arange(logits.shape[-1]) != pad
    manual = torch.log_softmax(logits[..., keep], -1)
    column = r_ids - (r_ids > pad).long()  # token ids in the PAD-less vocabulary
    manual = manual.gather(2, column.clamp(min=0)[..., None])[..., 0]
    m = r_mask.bool()
    assert torch.allclose(lp[m], manual[m], atol=1e-5) and torch.isfinite(ent).all()


def test_an_added_pad_token_is_initialised_the_same_in_every_process(tmp_path):
    """Pythia-style tokenizers have no PAD: the row added for it must not depend on the global
    RNG (restarts, ranks and the reference model must agree), and must not consume it."""
    from tiny_models import build_causal_lm

    path = str(build_causal_lm("gpt_neox", tmp_path / "neox"))
    torch.manual_seed(1)
    state = torch.random.get_rng_state()
    m1, t1 = load_policy(path)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(2)
    m2, t2 = load_policy(path)
    assert t1.pad_token_id == t2.pad_token_id != t1.eos_token_id
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k


def test_minibatches_count_over_all_ranks():
    from types import SimpleNamespace

    from pipeline.errors import ConfigError

    cfg, gen = PPOSection(batch_size=64, mini_batch_size=16), GenerationSection()
    with pytest.raises(ConfigError, match="multiples of the rank count"):
        ppo.PPOTrainer(None, None, None, cfg, gen, SimpleNamespace(num_processes=3))


def test_a_checkpoint_is_swapped_in_whole(micro_world, tmp_path, monkeypatch):
    """A kill while writing keeps the previous checkpoint; a kill between the swap's two renames
    leaves the previous one where resuming finds it."""
    import os

    trainer, _ = _trainer(micro_world)
    ck = tmp_path / "checkpoint"
    trainer.step(_toxic_prompts(micro_world), seed=0)
    trainer.save_checkpoint(ck)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    saved = {p.name: p.read_bytes() for p in ck.iterdir()}

    trainer.step_count = 2

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ppo, "save_optimizer", killed)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint(ck)
    assert {p.name: p.read_bytes() for p in ck.iterdir()} == saved  # untouched
    assert ppo.latest_checkpoint(ck) == ck

    os.replace(ck, tmp_path / ".checkpoint.old")  # killed mid-swap
    assert ppo.latest_checkpoint(ck) == ck  # the previous one is back
    assert {p.name: p.read_bytes() for p in ck.iterdir()} == saved
    assert not (tmp_path / ".checkpoint.old").exists()  # (the killed save's .tmp is ignored)

    os.replace(ck, tmp_path / ".checkpoint.old")  # killed mid-swap again,
    monkeypatch.undo()
    trainer.save_checkpoint(ck)  # then the next save
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert '"step": 2' in (ck / "trainer_state.json").read_text()
