"""DR-IRL's category rewards (`irl.categories`; seeds/dr-irl-abstract.txt): which pairs demonstrate
each harm category, the category-balanced training set, and the prompt routing of the rewards.

The abstract says "a balanced harm-category demonstration set" and names no rule; fairl's, written
down in `balance` and in each run's `irl/categories/categories.json`: a category's demonstrations
are the training pairs whose rejected output carries it (subtype score > 0.5); every category keeps
each of its own pairs once and draws more of them uniformly with replacement, seeded by run.seed
and the category, up to n* = the largest category's count. A pair carrying two categories
demonstrates both. Pure functions over numpy / torch: the irl stage and RL call them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from pipeline.errors import DataError
from pipeline.seeds import derive_seed

CARRIES = 0.5  # a subtype score above this: the output carries the category (as irl.subtype)


def pair_categories(df: pd.DataFrame) -> list[str]:
    """The categories the pairs carry scores for (on both sides), sorted."""
    names = [c.removeprefix("rejected_sub_") for c in df.columns if c.startswith("rejected_sub_")]
    return sorted(c for c in names if f"chosen_sub_{c}" in df)


def resolve_categories(df: pd.DataFrame, wanted: list[str] | str) -> list[str]:
    """`irl.categories` (a list, or `all`) checked against the pairs: a DataError, naming what
    the data carries, for pairs without subtype scores, a name they do not carry, or a category
    no training pair demonstrates."""
    have = pair_categories(df)
    if not have:
        raise DataError(
            "irl.categories needs the pairs' subtype scores (chosen_subtypes / rejected_subtypes), "
            "and these pairs have none",
            hint="use pairs with subtype scores (make-pairs with a ground truth that scores "
            "subtypes, or RealToxicityPrompts' Perspective attributes), or drop irl.categories",
        )
    names = have if wanted == "all" else list(wanted)
    unknown = [c for c in names if c not in have]
    if unknown:
        raise DataError(
            f"irl.categories {unknown}: the pairs carry no such category",
            hint=f"the categories these pairs carry: {', '.join(have)}",
        )
    train = (df["split"] == "train").to_numpy()
    empty = [c for c in names if not (train & carries(df, c)).any()]
    if empty:
        rest = [c for c in names if c not in empty]
        raise DataError(
            f"irl.categories {empty}: no training pair's rejected output carries "
            f"{'it' if len(empty) == 1 else 'them'}, so there is nothing to learn the reward from",
            hint=f"set irl.categories to those with demonstrations, {rest}, or add pairs that "
            "demonstrate the others",
        )
    return names


def carries(df: pd.DataFrame, category: str, side: str = "rejected") -> np.ndarray:
    """[N] bool: the `side` output carries `category` (a null score does not)."""
    return np.nan_to_num(df[f"{side}_sub_{category}"].to_numpy(float)) > CARRIES


def balance(df: pd.DataFrame, categories: list[str], seed: int) -> tuple[dict, dict]:
    """The balanced training rows of each category: {c: int64 row indices into df} (each own
    training pair once, then draws with replacement up to n*), and the counts per category
    ({carrying, resampled, total, val}) with the rule, for categories.json."""
    train = (df["split"] == "train").to_numpy()
    val = (df["split"] == "val").to_numpy()
    own = {c: np.flatnonzero(train & carries(df, c)) for c in categories}
    n_star = max(len(v) for v in own.values())
    rows, counts = {}, {}
    for c in categories:
        rng = np.random.default_rng(derive_seed(seed, "irl.categories", c))
        extra = rng.choice(own[c], size=n_star - len(own[c]), replace=True)
        rows[c] = np.concatenate([own[c], extra]).astype(np.int64)
        counts[c] = {
            "carrying": len(own[c]),
            "resampled": len(extra),
            "total": len(rows[c]),
            "val": int((val & carries(df, c)).sum()),
        }
    rule = (
        f"each category: its training pairs whose rejected output carries it (score > {CARRIES}) "
        f"once, plus draws with replacement from them up to n* = {n_star} (the largest "
        "category's count), seeded by run.seed and the category"
    )
    return rows, {"rule": rule, "n_star": n_star, "categories": counts}


def centroids(h: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """The unit-norm mean direction of the embeddings h[rows] ([d])."""
    m = h[torch.as_tensor(rows, dtype=torch.long)].mean(0)
    return m / m.norm().clamp_min(1e-12)


def cosine(h: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """[n, k] cosine of each row of h [n, d] to each centroid mu [k, d]."""
    h = h / h.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    mu = mu / mu.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return h @ mu.T


def route(h_prompt: torch.Tensor, mu_prompt: torch.Tensor) -> torch.Tensor:
    """[n] index of each prompt's category: the one whose demonstrations' prompt centroid
    (mu_prompt [C, d]) is most cosine-similar to the prompt's embedding (h_prompt [n, d])."""
    return cosine(h_prompt, mu_prompt).argmax(-1)
