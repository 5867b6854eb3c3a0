"""Train / val / test splits of preference pairs: by prompt where the pairs allow it.

Pairs that share a prompt must land in the same split, or a reward could be tested on prompts
it was trained on. `carve` holds out a fraction of pairs by prompt when there are at least
1/fraction distinct prompts (a pair without a prompt counts as its own group), else by pair,
and says which rule it used. make-pairs carves its test part with it; irl carves whatever test
or val part a pairs file does not give (`assign_splits`).
"""

from __future__ import annotations

import logging
import math
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


def subsample_train(
    df: pd.DataFrame, n_pairs: int, pair_mix: float | None, seed: int
) -> tuple[pd.DataFrame, dict]:
    """Keep `n_pairs` of the training pairs, drawn with `seed` (val and test rows are kept
    whole); with `pair_mix`, exactly k = pair_mix * n_pairs (rounded half up) of them toxic ->
    non-toxic (rejected toxic, chosen not) and n_pairs - k of the others (paper Appendix D).
    Returns the frame (rows in their original order) and what was drawn. Refuses a mix the
    training pairs cannot supply, saying which mixes they can."""
    train = (df["split"] == "train").to_numpy()
    if pair_mix is not None and "chosen_toxic" not in df:
        raise DataError(
            "irl.pair_mix needs the pairs' chosen_toxic / rejected_toxic labels",
            hint="use pairs with labels, or leave irl.pair_mix unset",
        )
    rng = np.random.default_rng(seed)
    if pair_mix is None:
        pools = {"train": np.flatnonzero(train)}
        want = {"train": n_pairs}
    else:
        tox = train & df["rejected_toxic"].to_numpy(bool) & ~df["chosen_toxic"].to_numpy(bool)
        pools = {"toxic_to_nontoxic": np.flatnonzero(tox), "other": np.flatnonzero(train & ~tox)}
        k = math.floor(round(pair_mix * n_pairs, 9) + 0.5)  # half up: 0.5 x 5 -> 3, not 2
        want = {"toxic_to_nontoxic": k, "other": n_pairs - k}
    have = {name: len(pool) for name, pool in pools.items()}
    if any(have[name] < want[name] for name in pools):
        if pair_mix is None:
            hint = f"set irl.n_pairs to at most {have['train']}"
        else:
            t, o = have["toxic_to_nontoxic"], have["other"]
            lo, hi = max(0, n_pairs - o), min(n_pairs, t)
            hint = (
                f"with irl.n_pairs {n_pairs}, irl.pair_mix can be {lo / n_pairs:.3g} to "
                f"{hi / n_pairs:.3g}"
                if lo <= hi
                else f"lower irl.n_pairs to at most {t + o}"
            )
        raise DataError(
            f"the training split cannot supply {', '.join(f'{v} {k}' for k, v in want.items())} "
            f"pairs: it has {', '.join(f'{v} {k}' for k, v in have.items())}",
            hint=hint,
        )
    keep = ~train
    for name, pool in pools.items():
        keep[rng.choice(pool, want[name], replace=False)] = True
    drawn = {"n_pairs": n_pairs, "pair_mix": pair_mix, "drawn": want, "available": have}
    return df[keep].reset_index(drop=True), drawn


def subtype_train(df: pd.DataFrame, subtype: str) -> tuple[pd.DataFrame, dict]:
    """Keep, of the training pairs, those whose rejected output carries `subtype` (its score >
    0.5) and those with no toxic output (val and test rows are kept whole): a reward that
    learns toxicity from one subtype only (paper Figure 3, left). Refuses pairs without subtype
    scores or labels, and a subtype no training pair carries."""
    column = f"rejected_sub_{subtype}"
    if "chosen_toxic" not in df or column not in df:
        have = sorted(
            c[len("rejected_sub_") :] for c in df.columns if c.startswith("rejected_sub_")
        )
        raise DataError(
            f"irl.subtype {subtype!r} needs the pairs' toxicity labels and subtype scores "
            f"({column})",
            hint=f"subtypes in these pairs: {', '.join(have) or 'none'}",
        )
    train = (df["split"] == "train").to_numpy()
    carries = np.nan_to_num(df[column].to_numpy(float)) > 0.5
    clean = ~df["chosen_toxic"].to_numpy(bool) & ~df["rejected_toxic"].to_numpy(bool)
    keep_train = train & (carries | clean)
    if not (train & carries).any():
        raise DataError(
            f"no training pair's rejected output carries the subtype {subtype!r}",
            hint="choose a subtype the pairs carry (see evaluate's Table 3)",
        )
    drawn = {
        "subtype": subtype,
        "carrying": int((train & carries).sum()),
        "clean": int((train & clean & ~carries).sum()),
    }
    return df[~train | keep_train].reset_index(drop=True), drawn
