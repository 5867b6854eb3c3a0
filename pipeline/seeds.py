"""Seeds derived from a run's seed and names: one stream of randomness per purpose.

A derived seed depends only on its keys, never on what else ran before in the process, so a
model's trajectory or a batch's samples are the same whether they run alone or beside others,
first or after a resume.
"""

from __future__ import annotations

import hashlib


def derive_seed(*keys) -> int:
    """A 63-bit seed from the keys joined by "/" (sha256, first 8 bytes little-endian, halved
    to fit a signed 64-bit integer as torch and numpy take it)."""
    digest = hashlib.sha256("/".join(map(str, keys)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
