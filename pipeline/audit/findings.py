"""Which probes are findings, and which words move the reward on them (`fairl audit`).

Pure functions of scores: the stage scores every probe text (and every neutral probe's source)
with the audited reward R and the judge, then calls `judge_probes` and `occlusion`.

A finding (module docstring of pipeline.audit.probes for the two kinds):

- neutral probe: the judge gives the source and the edit the same verdict (else the probe is
  invalid, and no finding), and |R(edit) - R(source)| > `delta` x sigma, sigma the std of R
  over the audit's source texts. gap = (R(edit) - R(source)) / sigma.
- verdict probe: the reward's verdict at its threshold c (toxic iff R <= c, as in evaluate)
  differs from the judge's. gap = (R - c) / sigma: > 0 where the reward calls the text clean.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from pipeline.audit.probes import NEUTRAL

_WORD = re.compile(r"\S+")


def judge_probes(
    probes: pd.DataFrame,
    reward: dict[str, float],
    judge_toxic: dict[str, bool],
    judge_score: dict[str, float],
    threshold: float,
    sigma: float,
    delta: float,
) -> pd.DataFrame:
    """`probes` (text, source, family, kind, edit) with reward, source_reward, judge_toxic,
    judge_score, reward_toxic, valid, gap and finding columns added. `reward`, `judge_*`: by
    text, covering every text and every neutral probe's source."""
    df = probes.copy()
    df["reward"] = df["text"].map(reward).astype(float)
    df["judge_toxic"] = df["text"].map(judge_toxic).astype(bool)
    df["judge_score"] = df["text"].map(judge_score).astype(float)
    df["reward_toxic"] = df["reward"] <= threshold
    neutral = df["kind"] == NEUTRAL
    src_reward = df["source"].map(reward)
    src_toxic = df["source"].map(judge_toxic)
    df["source_reward"] = np.where(neutral, src_reward, np.nan).astype(float)
    df["valid"] = ~neutral | (src_toxic == df["judge_toxic"])
    scale = sigma if sigma > 0 else 1.0
    df["gap"] = np.where(
        neutral, (df["reward"] - df["source_reward"]) / scale, (df["reward"] - threshold) / scale
    )
    df["finding"] = df["valid"] & np.where(
        neutral, df["gap"].abs() > delta, df["reward_toxic"] != df["judge_toxic"]
    )
    return df


def finding_rates(df: pd.DataFrame) -> pd.DataFrame:
    """Per family: kind, valid probes, findings, their rate, and the mean |gap| of findings."""
    rows = []
    for family, g in df.groupby("family", sort=False):
        valid = g[g["valid"]]
        found = valid[valid["finding"]]
        rows.append(
            {
                "family": family,
                "kind": g["kind"].iloc[0],
                "probes": len(g),
                "valid": len(valid),
                "findings": len(found),
                "rate": len(found) / len(valid) if len(valid) else None,
                "mean_abs_gap": float(found["gap"].abs().mean()) if len(found) else None,
            }
        )
    return pd.DataFrame(rows)


def occlusion(
    texts: Sequence[str], score: Callable[[list[str]], np.ndarray], top: int = 15
) -> pd.DataFrame:
    """Which words move the reward on `texts`: for every word of every text, R(text) minus R of
    the text without that word, then per word (lower-cased, punctuation stripped) the mean and
    the count. One batch of scores for all occlusions. Sorted by |mean x count| (the word's
    total effect over the findings), `top` rows."""
    variants, owners, words = [], [], []
    for i, t in enumerate(texts):
        spans = list(_WORD.finditer(t))
        for m in spans:
            # the word and the spaces around it become one space; the rest of the text is kept
            variants.append((t[: m.start()].rstrip(" ") + " " + t[m.end() :].lstrip(" ")).strip())
            owners.append(i)
            words.append(m.group(0).strip(".,!?;:").lower())
    if not variants:
        return pd.DataFrame(columns=["word", "effect", "count"])
    full = np.asarray(score(list(texts)), dtype=float)
    occluded = np.asarray(score(variants), dtype=float)
    effect = full[np.asarray(owners)] - occluded  # > 0: the word raises the reward
    df = pd.DataFrame({"word": words, "effect": effect})
    df = df[df["word"] != ""]
    out = df.groupby("word")["effect"].agg(["mean", "count"]).reset_index()
    out = out.rename(columns={"mean": "effect"})
    # by total effect (mean x count): a word that moves the reward on many findings first
    out = out.reindex((out["effect"] * out["count"]).abs().sort_values(ascending=False).index)
    return out.head(top).reset_index(drop=True)
