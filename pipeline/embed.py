"""Frozen sentence embeddings h(o), computed once and cached on disk.

The cache is keyed by the encoder's fingerprint (hash of its files) and by the sha256 of each
text: a second run embeds nothing, and duplicate texts are embedded once. Each batch of new
embeddings is one safetensors shard holding `hashes` (uint8 [n, 32]) and `embeddings`
(float32 [n, d]), written atomically, so an interrupted run keeps every finished shard and
concurrent runs never clobber each other.

A cache is only a speed-up, so it never makes a run fail or lie:
- every shard records n, d, the encoder fingerprint and a sha256 of its two tensors, and is
  verified when read. A shard that does not verify (unreadable, checksum or row-count mismatch,
  a dimension other than the encoder's, or written by an older fairl without a checksum) is
  treated as missing: a warning names it, it is deleted (it lies inside the cache directory,
  which fairl owns) and its texts are embedded again. Random bytes in a shard would otherwise
  become plausible-looking embeddings and silently wrong rewards.
- a cache directory that cannot be created or written (a file in its place, a full disk, a
  read-only mount) gives one warning and the texts are embedded in memory only.

sentence-transformers has no persistent cache of its own, hence this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save as save_numpy

from pipeline.artifacts import atomic_path, dir_digest
from pipeline.data.pairs import PairSet
from pipeline.errors import DataError
from pipeline.hub import cache_root, resolve_encoder
from pipeline.runtime import placement, using_model_threads

log = logging.getLogger(__name__)

SHARD_FORMAT = "fairl-embeddings/2"  # /1 (no checksum) was written before shards were verified
_UNWRITABLE_WARNED: set[str] = set()  # cache dirs already warned about, once per process


class _BadShard(Exception):
    """A cache shard that does not verify; the message says why."""


def encoder_fingerprint(path: Path) -> str:
    """The cache key: the encoder's files (names and contents; hidden files, READMEs left out)."""
    return dir_digest(Path(path), lambda f: not f.name.startswith(".") and f.suffix != ".md")[:16]


def text_hashes(texts: Sequence[str]) -> np.ndarray:
    """sha256 digests, uint8 [n, 32]."""
    out = np.empty((len(texts), 32), dtype=np.uint8)
    for i, t in enumerate(texts):
        out[i] = np.frombuffer(hashlib.sha256(t.encode("utf-8")).digest(), dtype=np.uint8)
    return out


def shard_checksum(hashes: np.ndarray, emb: np.ndarray) -> str:
    """sha256 over a cache shard's tensors as stored (C order, little-endian): what a reader
    recomputes to tell a shard from one with damaged or foreign bytes."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(hashes, dtype=np.uint8).tobytes())
    h.update(np.ascontiguousarray(emb, dtype="<f4").tobytes())
    return h.hexdigest()


def default_cache_dir() -> Path:
    return cache_root() / "embeddings"


class Embedder:
    """Embeds texts with a frozen sentence encoder, through the on-disk cache."""

    def __init__(self, encoder: str, batch_size: int = 64, cache_dir: Path | None = None):
        self.name = encoder
        self.path = resolve_encoder(encoder)
        self.fingerprint = encoder_fingerprint(self.path)
        self.batch_size = batch_size
        # embeddings computed on another device (a GPU, TF32) differ in the last bits: their own
        # cache, so the CPU's stays what it always was
        device = placement().device.type
        key = self.fingerprint if device == "cpu" else f"{self.fingerprint}-{device}"
        self.cache = Path(cache_dir or default_cache_dir()) / key
        self._model = None
        self._writable = True  # False once the cache directory failed: embed in memory
        self.stats = {"requested": 0, "unique": 0, "cached": 0, "embedded": 0}

    @property
    def model(self):
        if self._model is None:
            # sentence-transformers takes seconds to import: only when a text is not cached
            from sentence_transformers import SentenceTransformer

            # on run.device, in float32: the cached embeddings must not depend on the machine
            self._model = SentenceTransformer(str(self.path), device=str(placement().device))
            self._model.eval()
        return self._model

    def describe(self) -> dict:
        return {"name": self.name, "path": str(self.path), "fingerprint": self.fingerprint}

    # ---------------------------------------------------------------------------- cache
    def _load_cache(self, dim: int | None = None) -> dict[bytes, np.ndarray]:
        """Embeddings from every shard that verifies; the others are dropped (see the module
        docstring). `dim` is the encoder's output dimension when the encoder is loaded anyway.
        Without it, shards that disagree on d load the encoder to decide: every shard under one
        fingerprint comes from one encoder, so they only disagree when one is foreign."""
        try:
            paths = sorted(self.cache.glob("shard-*.safetensors")) if self.cache.is_dir() else []
        except OSError as e:
            self._cache_unusable(e)
            return {}
        shards = []
        for path in paths:
            try:
                shards.append((path, *self._read_shard(path)))
            except _BadShard as e:
                self._drop_shard(path, str(e))
        if dim is None and len({emb.shape[1] for _, _, emb in shards}) > 1:
            dim = self.dim
        found: dict[bytes, np.ndarray] = {}
        for path, hashes, emb in shards:
            if dim is not None and emb.shape[1] != dim:
                self._drop_shard(path, f"has dimension {emb.shape[1]}, the encoder's is {dim}")
                continue
            found.update(zip((h.tobytes() for h in hashes), emb))
        return found

    def _read_shard(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """(hashes [n, 32], embeddings [n, d]) of a shard that verifies, else `_BadShard`."""
        try:
            with safe_open(str(path), framework="np") as f:
                raw = (f.metadata() or {}).get("fairl")
                names = sorted(f.keys())
                tensors = {k: f.get_tensor(k) for k in names if k in ("hashes", "embeddings")}
        except Exception as e:  # SafetensorError, OSError: truncated, or not a safetensors file
            raise _BadShard(f"is unreadable ({type(e).__name__}: {e})") from None
        try:
            meta = json.loads(raw) if raw else {}
        except ValueError:
            meta = {}
        if not isinstance(meta, dict) or meta.get("format") != SHARD_FORMAT:
            raise _BadShard("has no checksum (written by an older fairl, or not by fairl)")
        if meta.get("fingerprint") != self.fingerprint:
            raise _BadShard(
                f"was written for encoder {meta.get('fingerprint')}, not {self.fingerprint}"
            )
        if names != ["embeddings", "hashes"]:
            raise _BadShard(f"holds tensors {names}, expected ['embeddings', 'hashes']")
        hashes, emb = tensors["hashes"], tensors["embeddings"]
        if hashes.dtype != np.uint8 or hashes.ndim != 2 or hashes.shape[1] != 32:
            raise _BadShard(
                f"has hashes of {hashes.dtype} {list(hashes.shape)}, expected uint8 [n, 32]"
            )
        if emb.dtype != np.float32 or emb.ndim != 2:
            raise _BadShard(
                f"has embeddings of {emb.dtype} {list(emb.shape)}, expected float32 [n, d]"
            )
        if hashes.shape[0] != emb.shape[0]:
            raise _BadShard(f"holds {hashes.shape[0]} hashes but {emb.shape[0]} embeddings")
        if [meta.get("n"), meta.get("d")] != list(emb.shape):
            raise _BadShard(
                f"holds embeddings {list(emb.shape)} but records "
                f"n={meta.get('n')}, d={meta.get('d')}"
            )
        if shard_checksum(hashes, emb) != meta.get("sha256"):
            raise _BadShard("fails its checksum (damaged bytes)")
        return hashes, emb

    def _drop_shard(self, path: Path, why: str) -> None:
        """Warn, and delete the shard so that it is not checked again on every run. `path`
        comes from globbing the cache directory: fairl deletes nothing outside it."""
        log.warning(
            "embedding cache shard %s %s: ignoring it; its texts are embedded again", path, why
        )
        try:
            path.unlink(missing_ok=True)
        except OSError as e:
            log.warning("could not delete %s (%s); it will be checked again next time", path, e)

    def _cache_unusable(self, err: OSError) -> None:
        """Stop using the on-disk cache for this embedder; warn once per directory and process."""
        self._writable = False
        if str(self.cache) not in _UNWRITABLE_WARNED:
            _UNWRITABLE_WARNED.add(str(self.cache))
            log.warning(
                "embedding cache %s cannot be used (%s): embedding in memory, without "
                "caching\n  hint: point FAIRL_CACHE or irl.embed.cache_dir at a writable "
                "directory with free space",
                self.cache,
                err,
            )

    def _save_shard(self, hashes: np.ndarray, emb: np.ndarray) -> None:
        """Write one shard with its shapes and checksum. A cache that cannot be written makes
        the embedder warn and carry on in memory: the embeddings exist already."""
        if not self._writable:
            return
        hashes = np.ascontiguousarray(hashes, dtype=np.uint8)
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        meta = {
            "format": SHARD_FORMAT,
            "encoder": self.name,
            "fingerprint": self.fingerprint,
            "n": int(emb.shape[0]),
            "d": int(emb.shape[1]),
            "sha256": shard_checksum(hashes, emb),
        }
        data = save_numpy(
            {"hashes": hashes, "embeddings": emb}, metadata={"fairl": json.dumps(meta)}
        )
        path = self.cache / f"shard-{uuid.uuid4().hex}.safetensors"
        try:
            self.cache.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
        except OSError as e:  # a file in the way, disk full, read-only, permissions
            self._cache_unusable(e)

    # ---------------------------------------------------------------------------- embed
    def embed(
        self, texts: Sequence[str], shard_size: int = 4096, cache: bool = True
    ) -> torch.Tensor:
        """float32 [len(texts), d]; duplicate and cached texts are not re-embedded.
        `cache=False` embeds in memory only (RL samples: mostly new, many small batches)."""
        if not cache:
            if not texts:
                return torch.empty(0, self.dim)
            with using_model_threads(self.model, "sentence encoder"):
                return (
                    self.model.encode(
                        list(texts),
                        batch_size=self.batch_size,
                        show_progress_bar=False,
                        convert_to_tensor=True,
                    )
                    .float()
                    .cpu()
                )
        hashes = text_hashes(texts)
        keys = [h.tobytes() for h in hashes]
        first: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        cached = self._load_cache(self.dim if self._model is not None else None)
        todo = [i for k, i in first.items() if k not in cached]
        if todo and cached and self._model is None:
            # The encoder loads anyway: check the cached dimension against its output.
            if len(next(iter(cached.values()))) != self.dim:
                cached = self._load_cache(self.dim)
                todo = [i for k, i in first.items() if k not in cached]
        self.stats = {
            "requested": len(texts),
            "unique": len(first),
            "cached": len(first) - len(todo),
            "embedded": len(todo),
        }
        if todo:
            log.info(
                "embedding %d new texts with %s (%d cached)",
                len(todo),
                self.name,
                len(first) - len(todo),
            )
            for start in range(0, len(todo), shard_size):
                chunk = todo[start : start + shard_size]
                with using_model_threads(self.model, "sentence encoder"):
                    emb = self.model.encode(
                        [texts[i] for i in chunk],
                        batch_size=self.batch_size,
                        show_progress_bar=sys.stderr.isatty(),
                        convert_to_numpy=True,
                    ).astype(np.float32)
                self._save_shard(hashes[chunk], emb)
                cached.update({keys[i]: e for i, e in zip(chunk, emb)})
        if not keys:
            return torch.empty(0, self.dim)
        return torch.from_numpy(np.stack([cached[k] for k in keys]))

    @property
    def dim(self) -> int:
        model = self.model
        # sentence-transformers 6 renamed the method (the old name warns); 5.x has only the old
        get = (
            getattr(model, "get_embedding_dimension", None)
            or model.get_sentence_embedding_dimension
        )
        return int(get())


def embed_pairs(pairs: PairSet, embedder: Embedder, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """h(o+) and h(o-) for every pair, [N, d] each, through the cache. `text` says what is
    embedded: the completion alone, or prompt + completion (irl.embed.text)."""
    n = len(pairs.df)
    h = embedder.embed(pairs.texts("chosen", text) + pairs.texts("rejected", text))
    if not torch.isfinite(h).all():
        raise DataError(
            f"encoder {embedder.name} produced NaN or inf embeddings",
            hint="check the encoder files; delete its cache directory to re-embed",
        )
    return h[:n], h[n:]
