"""The pairs schema: one preference pair per record, JSONL or parquet.

Required columns
    prompt            str   the context the two completions answer
    chosen            str   o+, the preferred completion (e.g. the expert's)
    rejected          str   o-, the less preferred completion (e.g. the base model's)
Optional columns (each pair of columns comes together or not at all)
    chosen_score, rejected_score      float  ground-truth reward, higher is better
    chosen_toxic, rejected_toxic      bool   ground-truth toxic label (or 0/1)
    chosen_subtypes, rejected_subtypes  {name: float}  per-subtype scores in [0, 1] or 0/1
                                      labels; flat columns chosen_sub_<name> also work
    chosen_prompt, rejected_prompt    str    per-side prompts when the two completions answer
                                      different prompts (used instead of `prompt` for embedding;
                                      a null falls back to `prompt`)
    split             "train" | "val" | "test"   else the config's split rule applies
Other columns are carried along (as text) and otherwise ignored.

Nulls: a null text is always an error. A null score or label is an error by default
(`irl.null_scores: error`); `drop` removes those rows and says how many.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import pandas as pd

from pipeline.errors import DataError

REQUIRED = ("prompt", "chosen", "rejected")
SIDES = ("chosen", "rejected")
SPLITS = ("train", "val", "test")
SCHEMA_HINT = "the pairs schema is documented in README.md, section 'Pairs schema'"


@dataclass
class PairSet:
    """Validated pairs. `df` has the required columns, `pair_id`, `split` in {train, val, test},
    and whichever optional columns the file provided, in normalised form
    (`<side>_score` float, `<side>_toxic` bool, `<side>_sub_<name>` float)."""

    df: pd.DataFrame
    source: str
    dropped: int = 0

    @property
    def has_scores(self) -> bool:
        return "chosen_score" in self.df

    @property
    def has_labels(self) -> bool:
        return "chosen_toxic" in self.df

    @property
    def subtypes(self) -> list[str]:
        pre = "chosen_sub_"
        return sorted(c[len(pre):] for c in self.df.columns
                      if c.startswith(pre) and f"rejected_sub_{c[len(pre):]}" in self.df)

    def split(self, name: str) -> pd.DataFrame:
        return self.df[self.df["split"] == name]

    def texts(self, side: str, mode: str, rows: Optional[pd.DataFrame] = None) -> list[str]:
        """Text h(o) is computed on: the completion, or its prompt followed by it."""
        d = self.df if rows is None else rows
        if mode == "completion":
            return d[side].tolist()
        prompts = d[f"{side}_prompt"] if f"{side}_prompt" in d else d["prompt"]
        return [p + c for p, c in zip(prompts.tolist(), d[side].tolist())]


# --------------------------------------------------------------------------------- read
def read_table(path: Path) -> pd.DataFrame:
    """A JSONL / JSON-lines or parquet file as a DataFrame, with line numbers in parse errors."""
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"pairs file {path} does not exist",
            hint="run `fairl make-pairs` first, or point irl.pairs at your pairs file",
        )
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several unrelated types for bad files
            raise DataError(f"{path} is not a readable parquet file: {e}") from None
    if suffix in (".jsonl", ".json"):
        rows = []
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}, line {i}: not valid JSON ({e.msg})",
                                    hint="one JSON object per line") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}, line {i}: expected a JSON object, got "
                                    f"{type(row).__name__}")
                rows.append(row)
        try:
            return pd.DataFrame(rows)
        except UnicodeEncodeError:   # pandas' arrow-backed strings reject lone surrogates
            bad = [i for i, r in enumerate(rows, 1) if not _encodable(json.dumps(r, ensure_ascii=False))]
            raise DataError(f"{path}: invalid Unicode (lone surrogates) in record(s) {_rows(bad)}",
                            hint="re-encode those texts") from None
    raise DataError(f"{path}: unsupported file type {suffix!r}", hint="use .jsonl or .parquet")


def load_pairs(
    path: Path,
    null_scores: Literal["error", "drop"] = "error",
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> PairSet:
    df = read_table(path)
    if len(df) == 0:
        raise DataError(f"pairs file {path} is empty", hint=SCHEMA_HINT)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DataError(
            f"pairs file {path} lacks required column(s) {missing}; it has {list(df.columns)}",
            hint=SCHEMA_HINT,
        )
    df = df.reset_index(drop=True)
    _check_text(df, path)
    df = _flatten_subtypes(df, path)
    df, dropped = _normalise_ground_truth(df, path, null_scores)
    if len(df) == 0:
        raise DataError(f"pairs file {path}: no rows left after dropping {dropped} with nulls")
    if "pair_id" not in df:
        df.insert(0, "pair_id", np.arange(len(df)))
    known = {*REQUIRED, "pair_id", "split", *(f"{s}_{k}" for s in SIDES
                                                for k in ("prompt", "score", "toxic"))}
    for c in df.columns:   # anything else is carried along as text, so it always serialises
        if c not in known and "_sub_" not in c and df[c].dtype == object:
            df[c] = df[c].map(lambda v: None if v is None else str(v))
    df = assign_splits(df, path, test_fraction, val_fraction, seed)
    return PairSet(df=df.reset_index(drop=True), source=str(path), dropped=dropped)


def _check_text(df: pd.DataFrame, path: Path) -> None:
    for col in ("chosen_prompt", "rejected_prompt"):  # optional per row: default to `prompt`
        if col in df:
            df[col] = df[col].where(df[col].map(lambda v: isinstance(v, str)), df["prompt"])
    text_cols = [*REQUIRED, *(c for c in ("chosen_prompt", "rejected_prompt") if c in df)]
    for col in text_cols:
        bad = df.index[~df[col].map(lambda v: isinstance(v, str))].tolist()
        if bad:
            raise DataError(
                f"pairs file {path}: column {col!r} must be text; rows {_rows(bad)} are null "
                "or not strings",
                hint="fix or remove those rows",
            )
        bad = df.index[~df[col].map(_encodable)].tolist()
        if bad:
            raise DataError(f"pairs file {path}: column {col!r} holds invalid Unicode (lone "
                            f"surrogates) in rows {_rows(bad)}", hint="re-encode those texts")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _flatten_subtypes(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    for side in SIDES:
        col = f"{side}_subtypes"
        if col not in df:
            continue
        expanded: dict[str, list] = {}
        for i, v in enumerate(df[col].tolist()):
            if v is None or (isinstance(v, float) and math.isnan(v)):
                v = {}
            if isinstance(v, (list, np.ndarray)):  # parquet map columns come back as pairs
                v = dict(v)
            if not isinstance(v, dict):
                raise DataError(f"pairs file {path}: {col} in row {i} must be an object "
                                f"{{name: score}}, got {type(v).__name__}")
            for name, score in v.items():
                expanded.setdefault(str(name), [None] * len(df))[i] = score
        df = df.drop(columns=[col])
        for name, values in expanded.items():
            df[f"{side}_sub_{name}"] = values
    # A subtype given for one side only is unknown (NaN) on the other.
    for side, other in (("chosen", "rejected"), ("rejected", "chosen")):
        for c in [c for c in df.columns if c.startswith(f"{side}_sub_")]:
            twin = f"{other}_sub_{c[len(side) + 5:]}"
            if twin not in df:
                df[twin] = None
    return df


def _as_float(series: pd.Series, col: str, path: Path) -> pd.Series:
    def conv(v):
        if v is None or isinstance(v, bool):
            return None if v is None else float(v)
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise DataError(f"pairs file {path}: {col} must be numeric, got {v!r}") from None
        return f if math.isfinite(f) else None
    return series.map(conv).astype("float64")


def _normalise_ground_truth(
    df: pd.DataFrame, path: Path, null_scores: str
) -> tuple[pd.DataFrame, int]:
    for a, b in (("chosen_score", "rejected_score"), ("chosen_toxic", "rejected_toxic")):
        if (a in df) != (b in df):
            have, lack = (a, b) if a in df else (b, a)
            raise DataError(f"pairs file {path} has {have} but not {lack}; give both or neither",
                            hint=SCHEMA_HINT)
    for side in SIDES:
        if f"{side}_score" in df:
            df[f"{side}_score"] = _as_float(df[f"{side}_score"], f"{side}_score", path)
        if f"{side}_toxic" in df:
            df[f"{side}_toxic"] = _as_float(df[f"{side}_toxic"], f"{side}_toxic", path)
            bad = df[f"{side}_toxic"].dropna()
            bad = bad[~bad.isin([0.0, 1.0])]
            if len(bad):
                raise DataError(f"pairs file {path}: {side}_toxic must be true/false or 0/1; "
                                f"rows {_rows(bad.index.tolist())} are not")
    gt_cols = [c for c in ("chosen_score", "rejected_score", "chosen_toxic", "rejected_toxic")
               if c in df]
    null_rows = df.index[df[gt_cols].isna().any(axis=1)].tolist() if gt_cols else []
    dropped = 0
    if null_rows:
        cols = [c for c in gt_cols if df[c].isna().any()]
        if null_scores == "error":
            raise DataError(
                f"pairs file {path}: {len(null_rows)} row(s) have null ground truth in {cols} "
                f"(rows {_rows(null_rows)})",
                hint="fix the file, or set irl.null_scores=drop to drop those rows",
            )
        df = df.drop(index=null_rows)
        dropped = len(null_rows)
    for side in SIDES:
        if f"{side}_toxic" in df:
            df[f"{side}_toxic"] = df[f"{side}_toxic"].astype(bool)
        for c in [c for c in df.columns if c.startswith(f"{side}_sub_")]:
            df[c] = _as_float(df[c], c, path)
    return df, dropped


def assign_splits(
    df: pd.DataFrame, path: Path, test_fraction: float, val_fraction: float, seed: int
) -> pd.DataFrame:
    """Resolve `split` to train/val/test. Splits are by prompt, so no prompt is in two splits:
    a file's own split column wins; missing test and val parts are carved out by prompt."""
    rng = np.random.default_rng(seed)
    if "split" in df:
        split = df["split"].map(lambda s: {"validation": "val"}.get(s, s))
        bad = sorted({str(s) for s in split.unique() if s not in SPLITS})
        if bad:
            raise DataError(f"pairs file {path}: unknown split value(s) {bad}",
                            hint="use train, val or test")
    else:
        split = _by_prompt(df["prompt"], test_fraction, rng, "test", "train")
    df = df.assign(split=split.values)
    if not (df["split"] == "train").any():
        raise DataError(f"pairs file {path} has no training pairs",
                        hint="mark some rows split=train, or drop the split column")
    for part, fraction in (("test", test_fraction), ("val", val_fraction)):
        if not (df["split"] == part).any():   # carve the missing part out of train, by prompt
            train = df["split"] == "train"
            df.loc[train, "split"] = _by_prompt(df.loc[train, "prompt"], fraction, rng, part, "train").values
    counts = df["split"].value_counts()
    if any(counts.get(p, 0) == 0 for p in SPLITS):
        raise DataError(
            f"pairs file {path}: cannot form train, val and test splits "
            f"({dict(counts)}); splits are by prompt and there are only "
            f"{df['prompt'].nunique()} distinct prompt(s)",
            hint="give the pairs more distinct prompts, or a split column with train, val and test rows")
    return df


def _by_prompt(prompts: pd.Series, fraction: float, rng, held: str, rest: str) -> pd.Series:
    unique = np.array(sorted(set(prompts.tolist())), dtype=object)
    rng.shuffle(unique)
    n_held = int(round(fraction * len(unique)))
    if len(unique) > 1:
        n_held = min(max(n_held, 1), len(unique) - 1)
    held_set = set(unique[:n_held].tolist())
    return prompts.map(lambda p: held if p in held_set else rest)


def _rows(idx: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(i) for i in idx[:limit])
    return shown + (f", ... ({len(idx)} in all)" if len(idx) > limit else "")
