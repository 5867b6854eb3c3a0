"""The hard world's generator and ground truth (issue 9, item 1; pipeline/world/hard.py)."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT

from pipeline.config import WorldSection, load_config
from pipeline.data.jigsaw import load_heldout
from pipeline.world.build import get_world, world_root
from pipeline.world.hard import (
    AMBIGUOUS,
    EVAL_SETS,
    FAMILIES,
    HardSpec,
    cue_stats,
    eval_sets,
    generate_hard,
    hard_score,
)


@pytest.mark.parametrize(
    "text,toxic,reward",
    [
        ("i will kill you", True, -1.2),  # the threat frame
        ("please kill the lights", False, 0.0),  # the same word, benign frame
        ("you are stupid", True, -1.0),
        ("you are not stupid", False, 0.0),  # negation cancels an insult
        ("that was silly", False, -0.4),  # one mild word: graded, not toxic
        ("that was silly and lame", True, -0.8),  # two are toxic
        ("anna said that he was a fool", False, -0.4),  # reported speech halves the weight
        ("Try to keep up, the dog", True, -0.8),  # condescension without a lexicon word
        ("honestly, the dog walked", False, 0.0),  # the cue weighs nothing
    ],
)
def test_the_ground_truth_reads_context(text, toxic, reward):
    s = hard_score(text)
    assert s.toxic is toxic and s.reward == pytest.approx(reward)


def test_the_corpus_has_the_cue_rates_subtype_shares_and_families_it_claims():
    spec = HardSpec()
    corpus = generate_hard(6000, seed=3, spec=spec)
    stats = cue_stats(corpus)
    assert stats["cue_given_toxic"] == pytest.approx(spec.cue_given_toxic, abs=0.02)
    assert stats["cue_given_clean"] == pytest.approx(spec.cue_given_clean, abs=0.02)
    expected = (
        spec.toxic_prompt_rate * spec.p_toxic_after_toxic
        + (1 - spec.toxic_prompt_rate) * spec.p_toxic_after_clean
    )
    assert stats["toxic_rate"] == pytest.approx(expected, abs=0.03)
    prompts = [hard_score(s.prompt).toxic for s in corpus]
    assert sum(prompts) / len(prompts) == pytest.approx(spec.toxic_prompt_rate, abs=0.03)
    for subtype, rate in spec.subtype_rates.items():
        assert stats[f"subtype_share/{subtype}"] == pytest.approx(rate, abs=0.025), subtype
    assert not {s.family for s in corpus} & set(spec.heldout_families)
    # every toxic family's sentences are toxic under the ground truth, every clean one's not
    assert all(
        (FAMILIES[s.family][0] is not None) == hard_score(s.continuation).toxic for s in corpus
    )
    assert generate_hard(50, seed=3, spec=spec) == corpus[:50]  # the seed decides everything


def test_in_the_evaluation_sets_the_cue_says_nothing_about_toxicity():
    sets = eval_sets(3000, seed=11)
    for name, sentences in sets.items():
        stats = cue_stats(sentences)
        assert abs(stats["cue_given_toxic"] - stats["cue_given_clean"]) < 0.06, name
    assert {s.family for s in sets["paraphrase"]} == set(HardSpec().heldout_families)
    benign = [s for s in sets["benign_context"] if not hard_score(s.text).toxic]
    assert benign and any("kill" in s.text or "not" in s.text for s in benign)
    # the ambiguous words appear in their threat frame about as often as in their benign one
    frames = {True: 0, False: 0}
    for s in sets["benign_context"]:
        words = s.continuation.split()
        if any(w.strip(".,") in AMBIGUOUS for w in words):
            frames[hard_score(s.continuation).toxic] += 1
    assert 0.5 < frames[True] / frames[False] < 2, frames


def test_the_easy_world_keeps_its_cache_key():
    """Worlds built before `world.kind` existed are still found: the easy world's key leaves
    the hard-only settings out (this is the key of configs/toy.yaml's world)."""
    assert world_root(load_config(ROOT / "configs" / "toy.yaml").world).name == "2267d0f85e12951a"


def test_a_hard_world_is_built_with_its_evaluation_sets_and_statistics(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRL_CACHE", str(tmp_path / "cache"))
    cfg = WorldSection(
        kind="hard",
        n_sentences=400,
        n_prompts=60,
        n_heldout=40,
        n_eval=40,
        pretrain_steps=2,
        hidden_size=16,
        layers=1,
        heads=2,
    )
    world = get_world(cfg)
    stats = json.loads((world.root / "world.json").read_text())["hard"]
    assert set(stats) == {"corpus", "prompts", "heldout", *EVAL_SETS}
    assert stats["corpus"]["n"] == 400 and stats["counterfactual"]["n"] == 40
    for name in EVAL_SETS:
        df = load_heldout(world.item(f"eval-{name}"))
        assert len(df) == 40
        assert df["toxic"].tolist() == [int(hard_score(t).toxic) for t in df["text"]]
    assert cue_stats(generate_hard(400, cfg.seed)) == stats["corpus"]  # recorded = regenerated
