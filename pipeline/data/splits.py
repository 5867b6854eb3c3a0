"""Train / val / test splits of preference pairs: by prompt where the pairs allow it.

Pairs that share a prompt must land in the same split, or a reward could be tested on prompts
it was trained on. `carve` holds out a fraction of pairs by prompt when there are at least
1/fraction distinct prompts (a pair without a prompt counts as its own group), else by pair,
and says which rule it used. make-pairs carves its test part with it; irl carves whatever test
or val part a pairs file does not give (`assign_splits`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import DataError

log = logging.getLogger("fairl.pairs")
SPLITS = ("train", "val", "test")


def assign_splits(
    df: pd.DataFrame, path: Path, test_fraction: float, val_fraction: float, seed: int
) -> tuple[pd.DataFrame, dict]:
    """Resolve `split` to train/val/test: a file's own split column wins; a missing test or
    val part is carved out of train (module docstring: by prompt where possible, else by
    pair). Returns the frame and how each part was made (`PairSet.split_rule`)."""
    rng = np.random.default_rng(seed)
    rule: dict[str, dict] = {}
    if "split" in df:
        split = df["split"].map(lambda s: {"validation": "val"}.get(s, s))
        bad = sorted({str(s) for s in split.unique() if s not in SPLITS})
        if bad:
            raise DataError(
                f"pairs file {path}: unknown split value(s) {bad}", hint="use train, val or test"
            )
        df = df.assign(split=split.values)
        if not (df["split"] == "train").any():
            raise DataError(
                f"pairs file {path} has no training pairs",
                hint="mark some rows split=train, or drop the split column",
            )
    else:
        df = df.assign(split="train")
    for part, fraction in (("test", test_fraction), ("val", val_fraction)):
        if (df["split"] == part).any():
            rule[part] = {"rule": "file", "reason": "given by the file's split column"}
            continue
        train = (df["split"] == "train").to_numpy()
        held, rule[part] = carve(df.loc[train, "prompt"].tolist(), fraction, rng, part)
        df.loc[df.index[train][held], "split"] = part
    counts = {p: int((df["split"] == p).sum()) for p in SPLITS}
    if any(n == 0 for n in counts.values()):
        raise DataError(
            f"pairs file {path}: cannot form train, val and test splits from {len(df)} "
            f"pair(s) ({counts})",
            hint="give more pairs, or a split column with train, val and test rows",
        )
    log.info(
        "pairs: %s",
        "; ".join(
            f"{part} {'from the split column' if r['rule'] == 'file' else 'carved ' + r['reason']}"
            for part, r in rule.items()
        ),
    )
    return df, rule


def carve(prompts: list[str], fraction: float, rng, part: str) -> tuple[np.ndarray, dict]:
    """Which of these train rows to hold out as `part` (a boolean mask), and the rule used.

    By prompt, a pair without a prompt being its own group, when there are at least
    1/fraction groups: the held part is then at least one whole group without rounding up.
    Otherwise by pair: holding out one of two prompts would take half the data, not the
    fraction, and a single prompt cannot be split at all."""
    n = len(prompts)
    given = sorted({p for p in prompts if p})
    bare = [i for i, p in enumerate(prompts) if not p]
    n_groups = len(given) + len(bare)
    if given and fraction * n_groups >= 1 - 1e-9:
        order = rng.permutation(n_groups)
        n_held = min(int(round(fraction * n_groups)), n_groups - 1)
        chosen = order[:n_held]
        held_prompts = {given[g] for g in chosen if g < len(given)}
        held_bare = {bare[g - len(given)] for g in chosen if g >= len(given)}
        held = np.array(
            [p in held_prompts if p else i in held_bare for i, p in enumerate(prompts)], dtype=bool
        )
        reason = f"by prompt ({n_held} of {n_groups} prompts" + (
            f"; {len(bare)} pairs without a prompt count as one each)" if bare else ")"
        )
        return held, {"rule": "prompt", "reason": reason}
    if not given:
        why = "the pairs have no prompt"
    else:
        why = (
            f"only {len(given)} distinct prompt(s) among {n} pairs, fewer than "
            f"1/fraction = {1 / fraction:g} needed to carve {part} by prompt"
        )
    order = rng.permutation(n)
    n_held = min(max(int(round(fraction * n)), 1), n - 1) if n > 1 else 0
    held = np.zeros(n, dtype=bool)
    held[order[:n_held]] = True
    return held, {"rule": "pair", "reason": f"by pair ({n_held} of {n} pairs): {why}"}
