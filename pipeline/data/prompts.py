"""Prompts for the policy stages, from RealToxicityPrompts-schema records.

Each prompt belongs to exactly one part, by a hash of its text (stable whatever the filters):
`train` (RL in train-expert and re-rlhf), `eval` (held out, to measure toxicity) and `pairs`
(make-pairs). The pairs therefore share no prompt with the ones the expert was trained on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pipeline import world
from pipeline.config import fingerprint, to_dict
from pipeline.data.rtp import load_rtp
from pipeline.errors import DataError


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    toxicity: float


def part_of(text: str, eval_fraction: float, pairs_fraction: float) -> str:
    u = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") / 2**64
    if u < eval_fraction:
        return "eval"
    if u < eval_fraction + pairs_fraction:
        return "pairs"
    return "train"


def sources(cfg) -> list[str]:
    return [world.resolve(s, cfg, "prompts") for s in cfg.prompts.source]


def select_prompts(cfg, part: str, min_toxicity: float, limit: int | None = None) -> list[Prompt]:
    """Prompts of one part with prompt.toxicity > min_toxicity (nulls dropped), in file order."""
    pc = cfg.prompts
    ds = load_rtp(sources(cfg))
    records = [(i, r["prompt"]) for i, r in enumerate(ds)]
    with_text = [
        (i, p) for i, p in records if p and isinstance(p.get("text"), str) and p["text"].strip()
    ]
    if not with_text:
        raise DataError(
            f"no record in {pc.source} has a prompt.text",
            hint="prompts must follow the RealToxicityPrompts schema: {prompt: {text, toxicity}}",
        )
    out = [
        Prompt(id=str(i), text=p["text"], toxicity=float(p["toxicity"]))
        for i, p in with_text
        if p.get("toxicity") is not None
        and p["toxicity"] > min_toxicity
        and part_of(p["text"], pc.eval_fraction, pc.pairs_fraction) == part
    ]
    if not out:
        scored = sum(1 for _, p in with_text if p.get("toxicity") is not None)
        above = sum(
            1
            for _, p in with_text
            if p.get("toxicity") is not None and p["toxicity"] > min_toxicity
        )
        raise DataError(
            f"no prompts left for {part!r}: {len(with_text)} records with text, {scored} with a "
            f"toxicity score, {above} above {min_toxicity}, none of them in the {part} part",
            hint="lower the toxicity threshold, change prompts.*_fraction, or add prompts",
        )
    return out[:limit] if limit else out


def prompts_config(cfg) -> dict:
    """The settings every stage that samples prompts depends on (its fingerprint includes
    them): which prompts, which part each falls in, how they are scored, the run's seed."""
    return {
        "ground_truth": fingerprint(cfg.ground_truth),
        "prompts": to_dict(cfg.prompts),
        "world": fingerprint(cfg.world) if cfg.world else None,
        "run.seed": cfg.run.seed,
    }
