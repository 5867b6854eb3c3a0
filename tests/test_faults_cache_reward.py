"""Issue 7, cases 2 and 3b: a damaged embedding cache is re-embedded, never used; a cache
directory that cannot be written is not fatal; a damaged reward directory is a clear error.

Embeddings of the same texts computed in different batches differ in the last bits (a
transformer's float32 output depends on the padding of its batch), so embeddings recomputed after
a shard is dropped are compared with a fresh in-memory computation to 1e-5, not bit for bit:
the damage these tests inject moves values by 1e-2 and more.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import struct
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_pairs_records, small_config, write_jsonl
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from cli.main import app
from pipeline import load_reward
from pipeline.embed import Embedder, text_hashes
from pipeline.errors import MissingArtifactError
from pipeline.irl.heads import make_head
from pipeline.irl.reward import RewardModel

ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
TEXTS = [
    "you are a lovely person",
    "shut up you idiot",
    "the weather is nice today",
    "what a stupid idea",
    "thanks for the help",
    "go away, nobody likes you",
]
ATOL = 1e-5  # batch-dependent float32 rounding of the encoder (see the module docstring)


@pytest.fixture(scope="module")
def fresh() -> torch.Tensor:
    """The texts embedded in memory, no cache involved: what every cached read must match."""
    return Embedder(ENCODER).embed(TEXTS, cache=False)


def _shards(cache: Path) -> list[Path]:
    return sorted(cache.rglob("shard-*.safetensors"))


def _embed(cache: Path, caplog, texts=TEXTS) -> tuple[Embedder, torch.Tensor]:
    emb = Embedder(ENCODER, cache_dir=cache)
    with caplog.at_level(logging.WARNING, logger="pipeline.embed"):
        out = emb.embed(texts)
    return emb, out


def _assert_like_fresh(got: torch.Tensor, fresh: torch.Tensor) -> None:
    assert got.shape == fresh.shape
    assert torch.allclose(got, fresh, atol=ATOL, rtol=0), (got - fresh).abs().max()
    # and so are the rewards computed from them
    head = make_head("linear", fresh.shape[1])
    w = head.init(torch.Generator().manual_seed(0))
    assert torch.allclose(head.forward_one(w, got), head.forward_one(w, fresh), atol=ATOL, rtol=0)


def _assert_cache_verifies_again(cache: Path, fresh: torch.Tensor) -> None:
    """What was written instead of the bad shard is used on the next run, encoder unloaded."""
    again = Embedder(ENCODER, cache_dir=cache)
    _assert_like_fresh(again.embed(TEXTS), fresh)
    assert again.stats["embedded"] == 0 and again._model is None


# ------------------------------------------------------------------ case 2: bad shards
def test_shard_with_random_floats_over_half_its_vectors_is_re_embedded(tmp_path, caplog, fresh):
    Embedder(ENCODER, cache_dir=tmp_path).embed(TEXTS)
    [shard] = _shards(tmp_path)
    data = bytearray(shard.read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    start, end = json.loads(data[8 : 8 + n])["embeddings"]["data_offsets"]
    start, end = 8 + n + start, 8 + n + end
    mid = start + (end - start) // 8 * 4  # the second half of the vectors
    noise = np.random.default_rng(0).uniform(-0.2, 0.2, (end - mid) // 4).astype("<f4")
    data[mid:end] = noise.tobytes()  # finite, plausible-looking floats
    shard.write_bytes(bytes(data))

    emb, got = _embed(tmp_path, caplog)
    _assert_like_fresh(got, fresh)
    assert emb.stats["embedded"] == len(TEXTS)  # nothing from the bad shard is used
    assert shard.name in caplog.text and "checksum" in caplog.text
    assert not shard.exists()  # dropped: not checked every run
    _assert_cache_verifies_again(tmp_path, fresh)


def test_shard_with_5_hashes_and_3_vectors_is_re_embedded(tmp_path, caplog, fresh):
    writer = Embedder(ENCODER, cache_dir=tmp_path)
    writer._save_shard(text_hashes(TEXTS[:5]), fresh[[3, 4, 0]].numpy())  # vectors of others
    [shard] = _shards(tmp_path)

    emb, got = _embed(tmp_path, caplog)
    _assert_like_fresh(got, fresh)
    assert "5 hashes but 3 embeddings" in caplog.text and shard.name in caplog.text
    assert emb.stats["embedded"] == len(TEXTS) and not shard.exists()


@pytest.mark.parametrize("good_shard", [True, False], ids=["beside-a-good-shard", "alone"])
def test_shard_of_another_dimension_is_re_embedded(tmp_path, caplog, fresh, good_shard):
    writer = Embedder(ENCODER, cache_dir=tmp_path)
    if good_shard:
        writer.embed(TEXTS[:3])
    writer._save_shard(text_hashes(TEXTS[3:]), np.full((3, 10), 0.1, np.float32))
    bad = [s for s in _shards(tmp_path) if load_file(str(s))["embeddings"].shape[1] == 10]

    emb, got = _embed(tmp_path, caplog)
    assert "dimension 10" in caplog.text and bad[0].name in caplog.text
    assert emb.stats["embedded"] == (3 if good_shard else len(TEXTS))
    _assert_like_fresh(got, fresh)
    _assert_cache_verifies_again(tmp_path, fresh)


def test_shard_without_checksum_from_an_older_fairl_is_not_trusted(tmp_path, caplog, fresh):
    """The pre-checksum format (no sha256, no shapes): its bytes cannot be verified."""
    emb0 = Embedder(ENCODER, cache_dir=tmp_path)
    old = emb0.cache / "shard-0123.safetensors"
    old.parent.mkdir(parents=True)
    save_file(
        {
            "hashes": torch.from_numpy(text_hashes(TEXTS)),
            "embeddings": fresh.flip(0).contiguous(),
        },  # readable, but the wrong vectors
        str(old),
        metadata={"fairl": json.dumps({"encoder": ENCODER, "fingerprint": emb0.fingerprint})},
    )
    emb, got = _embed(tmp_path, caplog)
    _assert_like_fresh(got, fresh)
    assert "no checksum" in caplog.text and old.name in caplog.text and not old.exists()


def test_truncated_shard_is_re_embedded(tmp_path, caplog, fresh):
    Embedder(ENCODER, cache_dir=tmp_path).embed(TEXTS)
    [shard] = _shards(tmp_path)
    shard.write_bytes(shard.read_bytes()[:-100])
    emb, got = _embed(tmp_path, caplog)
    assert "unreadable" in caplog.text and shard.name in caplog.text and not shard.exists()
    assert emb.stats["embedded"] == len(TEXTS)
    _assert_like_fresh(got, fresh)


# ------------------------------------------------- case 5 (cache): the directory fails
def _unusable_warnings(caplog, path: Path) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING
        and "cannot be used" in r.getMessage()
        and str(path) in r.getMessage()
    ]


def test_fairl_cache_that_is_a_file_warns_once_and_embeds_in_memory(
    tmp_path, monkeypatch, caplog, fresh
):
    blocker = tmp_path / "cache-file"
    blocker.write_text("not a directory\n")
    monkeypatch.setenv("FAIRL_CACHE", str(blocker))
    emb = Embedder(ENCODER)
    with caplog.at_level(logging.WARNING, logger="pipeline.embed"):
        got = emb.embed(TEXTS)
        again = emb.embed(TEXTS[:2] + ["one more text"])
    _assert_like_fresh(got, fresh)
    assert again.shape == (3, fresh.shape[1])
    [warning] = _unusable_warnings(caplog, blocker)  # once, naming the path
    assert "FAIRL_CACHE" in warning and "irl.embed.cache_dir" in warning
    assert blocker.read_text() == "not a directory\n"


def test_disk_full_on_shard_write_warns_and_embeds_in_memory(tmp_path, monkeypatch, caplog, fresh):
    import pipeline.embed as embed_module

    @contextmanager
    def disk_full(path):
        """The write goes to a temporary file, then the disk is full (ENOSPC) on flush."""
        tmp = Path(path).parent / ".partial.tmp"
        try:
            yield tmp
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
        finally:
            tmp.unlink(missing_ok=True)

    monkeypatch.setattr(embed_module, "atomic_path", disk_full)
    emb = Embedder(ENCODER, cache_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="pipeline.embed"):
        got = emb.embed(TEXTS[:3])
        got2 = emb.embed(TEXTS)
    _assert_like_fresh(got2, fresh)
    assert torch.allclose(got, fresh[:3], atol=ATOL, rtol=0)
    [warning] = _unusable_warnings(caplog, emb.cache)
    assert os.strerror(errno.ENOSPC) in warning
    assert _shards(tmp_path) == []


# --------------------------------------------------------- case 3b: reward directories
def _saved_reward(path: Path, head_kind: str = "mlp") -> Path:
    head = make_head(head_kind, 384, 32)
    r = RewardModel(
        head,
        head.init(torch.Generator().manual_seed(0)),
        head.init(torch.Generator().manual_seed(1)),
        meta={
            "method": "fa-me-margin",
            "seed": 0,
            "text": "completion",
            "encoder": {"name": ENCODER, "fingerprint": "x"},
        },
    )
    r.save(path)
    return path


def _edit_json(**changes):
    def edit(d: Path) -> None:
        meta = json.loads((d / "reward.json").read_text())
        for k, v in changes.items():
            if v is None:
                del meta[k]
            else:
                meta[k] = v
        (d / "reward.json").write_text(json.dumps(meta))

    return edit


def _edit_tensors(fn):
    def edit(d: Path) -> None:
        t = load_file(str(d / "reward.safetensors"))
        fn(t)
        save_file(t, str(d / "reward.safetensors"))

    return edit


def _set(t: dict, name: str, value: torch.Tensor) -> None:
    t[name] = value


DAMAGE = {
    "json-missing": (lambda d: (d / "reward.json").unlink(), "reward.json"),
    "weights-missing": (lambda d: (d / "reward.safetensors").unlink(), "reward.safetensors"),
    "json-invalid": (
        lambda d: (d / "reward.json").write_text('{"format": "fairl-rew'),
        "reward.json",
    ),
    "json-not-utf8": (
        lambda d: (d / "reward.json").write_bytes(b'{"format": "\xff"}'),
        "reward.json",
    ),
    "json-a-list": (lambda d: (d / "reward.json").write_text("[]"), "reward.json"),
    "no-format": (_edit_json(format=None), "reward.json"),
    "no-version": (_edit_json(version=None), "reward.json"),
    "no-head": (_edit_json(head=None), "reward.json"),
    "no-in_dim": (_edit_json(in_dim=None), "reward.json"),
    "no-hidden": (_edit_json(hidden=None), "reward.json"),
    "no-encoder": (_edit_json(encoder=None), "reward.json"),
    "other-format": (_edit_json(format="something-else"), "reward.json"),
    "future-version": (_edit_json(version=2), "reward.json"),
    "unknown-head": (_edit_json(head="transformer"), "reward.json"),
    "in_dim-a-string": (_edit_json(in_dim="384"), "reward.json"),
    "in_dim-mismatch": (_edit_json(in_dim=100), "reward.safetensors"),
    "hidden-mismatch": (_edit_json(hidden=16), "reward.safetensors"),
    "truncated": (
        lambda d: (d / "reward.safetensors").write_bytes(
            (d / "reward.safetensors").read_bytes()[:-1000]
        ),
        "reward.safetensors",
    ),
    "not-safetensors": (
        lambda d: (d / "reward.safetensors").write_text("hello"),
        "reward.safetensors",
    ),
    "base-tensor-missing": (_edit_tensors(lambda t: t.pop("base.b1")), "reward.safetensors"),
    "failure-half-present": (_edit_tensors(lambda t: t.pop("failure.w2")), "reward.safetensors"),
    "stray-tensor": (
        _edit_tensors(lambda t: _set(t, "extra", torch.zeros(3))),
        "reward.safetensors",
    ),
    "wrong-shape": (
        _edit_tensors(lambda t: _set(t, "base.w2", torch.zeros(31))),
        "reward.safetensors",
    ),
    "float64": (
        _edit_tensors(lambda t: _set(t, "base.w2", t["base.w2"].double())),
        "reward.safetensors",
    ),
    "nan-weight": (
        _edit_tensors(lambda t: t["base.W1"].view(-1)[7].fill_(float("nan"))),
        "reward.safetensors",
    ),
    "inf-weight": (
        _edit_tensors(lambda t: t["failure.b2"].fill_(float("inf"))),
        "reward.safetensors",
    ),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_reward_directory_is_a_clear_error(tmp_path, case):
    damage, file = DAMAGE[case]
    d = _saved_reward(tmp_path / "r")
    damage(d)
    with pytest.raises(MissingArtifactError) as info:
        load_reward(d)
    assert str(d / file) in info.value.message or f"no {file}" in info.value.message
    assert "fairl irl --force" in info.value.hint


# ------------------------------------------------------------------------ through the CLI
runner = CliRunner()


def _irl(tmp_path: Path):
    """`fairl irl` on a small config (the CLI's logging, set up with force=True, writes to the
    runner's stderr, which is part of `output`)."""
    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_pairs_records(60))
    cfg = small_config(tmp_path, pairs, seeds=[0], max_epochs=5)
    res = runner.invoke(app, ["irl", str(cfg)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return cfg, tmp_path / "runs" / "t" / "irl", res.output


def test_cli_irl_with_fairl_cache_a_file_runs_and_warns(tmp_path, monkeypatch):
    blocker = tmp_path / "cache-file"
    blocker.write_text("x")
    monkeypatch.setenv("FAIRL_CACHE", str(blocker))
    _, irl_dir, output = _irl(tmp_path)
    assert (irl_dir / "manifest.json").is_file()
    assert output.count("cannot be used") == 1 and str(blocker) in output
    assert "FAIRL_CACHE" in output


def test_cli_evaluate_with_a_truncated_reward_is_a_clear_error(tmp_path):
    cfg, irl_dir, _ = _irl(tmp_path)
    weights = sorted(irl_dir.glob("rewards/*/seed-0/reward.safetensors"))[0]
    weights.write_bytes(weights.read_bytes()[:-64])
    res = runner.invoke(app, ["evaluate", str(cfg)], catch_exceptions=False)
    assert res.exit_code not in (0, 1), res.output  # a FairlError with its own code
    assert "reward.safetensors" in res.output and "--force" in res.output
    assert "Traceback" not in res.output
