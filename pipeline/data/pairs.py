"""The pairs schema: one preference pair per record, JSONL (UTF-8) or parquet.

Required columns
    chosen            str   o+, the preferred completion (e.g. the expert's)
    rejected          str   o-, the less preferred completion (e.g. the base model's)
Optional columns (each pair of columns comes together or not at all)
    prompt            str   the context the two completions answer; absent or "" for
                            comparisons that have no prompt
    chosen_score, rejected_score      float  ground-truth reward, higher is better
    chosen_toxic, rejected_toxic      bool   ground-truth toxic label (or 0/1)
    chosen_subtypes, rejected_subtypes  {name: float}  per-subtype scores in [0, 1] or 0/1
                                      labels; flat columns chosen_sub_<name> also work
    chosen_prompt, rejected_prompt    str    per-side prompts when the two completions answer
                                      different prompts (used instead of `prompt` for embedding;
                                      a null falls back to `prompt`)
    split             "train" | "val" | "test"   missing parts are carved out (below)
Other columns are carried along (as text) and otherwise ignored.

Splits. A split column's values are kept; whatever part it lacks (test, val, or both when
there is no split column) is carved out of train, by prompt where that is possible, so that
no prompt is in two splits. A pair without a prompt is its own group. When the rows to carve
from have fewer than 1/fraction distinct prompts (a single constant prompt, say), a
by-prompt carve would hold out a whole prompt, far more than the fraction, or nothing: the
part is then carved by pair. `PairSet.split_rule` records which rule made each part, and the
rule is logged.

TRL. `write_trl_splits` publishes the pairs in TRL's preference format, one split per file
(`train.parquet`, `test.parquet`) and as a `datasets.DatasetDict` (`trl/`), so that TRL's
RewardTrainer and DPOTrainer train on `train` as it is and never see a test pair. When every
pair's two completions answer one prompt, the columns are `prompt`, `chosen`, `rejected`
(explicit prompt). When they answer different prompts (the RealToxicityPrompts continuations:
`chosen_prompt` / `rejected_prompt`), a shared `prompt` would be wrong for one side, so there is
no `prompt` column and each side carries its own: `chosen` = chosen_prompt + chosen, `rejected`
= rejected_prompt + rejected (TRL's implicit-prompt format).

Nulls: a null text is always an error. A null or non-finite (inf) score or label is an error
by default (`irl.null_scores: error`); `drop` removes those rows and says how many.
Messages name records by their 1-based line in a JSONL file and their 1-based row in a
parquet file.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from pipeline.data.splits import assign_splits
from pipeline.errors import DataError, plain

REQUIRED = ("chosen", "rejected")
TEXT = ("prompt", *REQUIRED)  # `prompt` is optional: a missing column reads as ""
SIDES = ("chosen", "rejected")
SCHEMA_HINT = "the pairs schema is documented in README.md, section 'Pairs schema'"

log = logging.getLogger("fairl.pairs")


@dataclass
class PairSet:
    """Validated pairs. `df` has the required columns, `pair_id`, `split` in {train, val, test},
    and whichever optional columns the file provided, in normalised form
    (`<side>_score` float, `<side>_toxic` bool, `<side>_sub_<name>` float)."""

    df: pd.DataFrame
    source: str
    dropped: int = 0
    # How each split was made: {part: {"rule": "file" | "prompt" | "pair", "reason": str}}.
    split_rule: dict = field(default_factory=dict)

    @property
    def has_scores(self) -> bool:
        return "chosen_score" in self.df

    @property
    def has_labels(self) -> bool:
        return "chosen_toxic" in self.df

    @property
    def subtypes(self) -> list[str]:
        pre = "chosen_sub_"
        return sorted(
            c[len(pre) :]
            for c in self.df.columns
            if c.startswith(pre) and f"rejected_sub_{c[len(pre) :]}" in self.df
        )

    def texts(self, side: str, mode: str, rows: pd.DataFrame | None = None) -> list[str]:
        """Text h(o) is computed on: the completion, or its prompt followed by it."""
        d = self.df if rows is None else rows
        if mode == "completion":
            return d[side].tolist()
        prompts = d[f"{side}_prompt"] if f"{side}_prompt" in d else d["prompt"]
        return [p + c for p, c in zip(prompts.tolist(), d[side].tolist())]


# --------------------------------------------------------------------------------- read
def swap_sides(df: pd.DataFrame, mask: np.ndarray) -> pd.DataFrame:
    """The pairs with chosen and rejected swapped where `mask` holds: every `chosen*` column
    trades places with its `rejected*` twin (text, prompt, score, toxic, subtypes)."""
    out = df.copy()
    for col in df.columns:
        if col.startswith("chosen"):
            twin = "rejected" + col[len("chosen") :]
            if twin in df:
                out.loc[mask, col] = df.loc[mask, twin].to_numpy()
                out.loc[mask, twin] = df.loc[mask, col].to_numpy()
    return out


def read_table(path: Path) -> pd.DataFrame:
    """A JSONL / JSON-lines or parquet file as a DataFrame. Its index is the record's 1-based
    file line (JSONL: blank lines count) or row (parquet), and `attrs["record"]` says which,
    so that messages name what a user sees in an editor (`_rows`)."""
    path = _readable(path, "pairs file", "point irl.pairs at your pairs file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            df = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several unrelated types for bad files
            raise DataError(f"{path} is not a readable parquet file: {e}") from None
        df.index = pd.RangeIndex(1, len(df) + 1)
        df.attrs["record"] = "row"
        return df
    if suffix in (".jsonl", ".json"):
        rows, lines = [], []
        for i, line in utf8_lines(path):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}, line {i}: not valid JSON ({e.msg})", hint="one JSON object per line"
                ) from None
            if not isinstance(row, dict):
                raise DataError(
                    f"{path}, line {i}: expected a JSON object, got {type(row).__name__}"
                )
            rows.append(row)
            lines.append(i)
        try:
            df = pd.DataFrame(rows, index=lines)
        except UnicodeEncodeError:  # pandas' arrow-backed strings reject lone surrogates
            bad = [
                i for i, r in zip(lines, rows) if not _encodable(json.dumps(r, ensure_ascii=False))
            ]
            raise DataError(
                f"{path}: invalid Unicode (lone surrogates) on {_rows(bad, 'line')}",
                hint="re-encode those texts",
            ) from None
        df.attrs["record"] = "line"
        return df
    raise DataError(f"{path}: unsupported file type {suffix!r}", hint="use .jsonl or .parquet")


def _readable(path: Path, what: str, fix: str) -> Path:
    """`path` as a Path if it is a regular file; otherwise a DataError saying what it is."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{what} {path} is a directory, not a file", hint=fix)
    if not path.exists():
        hint = "run `fairl make-pairs` first, or " + fix if what == "pairs file" else fix
        raise DataError(f"{what} {path} does not exist", hint=hint)
    return path


def utf8_lines(path: Path):
    """(1-based line number, text) of every line of a UTF-8 text file (a leading byte-order
    mark is dropped). A byte that is not UTF-8 or an OS error is a DataError naming the file,
    and the line for the former, instead of a traceback."""
    try:
        with open(path, "rb") as f:
            for i, raw in enumerate(f, 1):
                try:
                    yield i, raw.decode("utf-8-sig" if i == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(
                        f"{path}, line {i}: not UTF-8 (byte 0x{raw[e.start]:02x} at column "
                        f"{e.start + 1} of the line)",
                        hint="re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)",
                    ) from None
    except OSError as e:
        raise DataError(
            f"cannot read {path}: {e.strerror or e}", hint="check the path and its permissions"
        ) from None


def load_pairs(
    path: Path,
    null_scores: Literal["error", "drop"] = "error",
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> PairSet:
    df = read_table(path)
    unit = df.attrs.get("record", "row")  # until the index is reset, it numbers the records
    if len(df) == 0:
        raise DataError(f"pairs file {path} is empty", hint=SCHEMA_HINT)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DataError(
            f"pairs file {path} lacks required column(s) {missing}; it has {list(df.columns)}",
            hint=SCHEMA_HINT,
        )
    if "prompt" not in df:  # comparisons without a prompt
        df.insert(0, "prompt", "")
    _check_text(df, path, unit)
    df = _flatten_subtypes(df, path, unit)
    df, dropped = _normalise_ground_truth(df, path, null_scores, unit)
    if len(df) == 0:
        raise DataError(f"pairs file {path}: no rows left after dropping {dropped} with nulls")
    df = df.reset_index(drop=True)
    if "pair_id" not in df:
        df.insert(0, "pair_id", np.arange(len(df)))
    known = {
        *TEXT,
        "pair_id",
        "split",
        *(f"{s}_{k}" for s in SIDES for k in ("prompt", "score", "toxic")),
    }
    for c in df.columns:  # anything else is carried along as text, so it always serialises
        if c not in known and "_sub_" not in c and df[c].dtype == object:
            df[c] = df[c].map(lambda v: None if v is None else str(v))
    df, rule = assign_splits(df, path, test_fraction, val_fraction, seed)
    df = df.reset_index(drop=True)
    df.attrs = {"split_rule": rule}
    return PairSet(df=df, source=str(path), dropped=dropped, split_rule=rule)


def _check_text(df: pd.DataFrame, path: Path, unit: str) -> None:
    for col in ("chosen_prompt", "rejected_prompt"):  # optional per row: default to `prompt`
        if col in df:
            df[col] = df[col].where(df[col].map(lambda v: isinstance(v, str)), df["prompt"])
    text_cols = [*TEXT, *(c for c in ("chosen_prompt", "rejected_prompt") if c in df)]
    for col in text_cols:
        bad = df.index[~df[col].map(lambda v: isinstance(v, str))].tolist()
        if bad:
            raise DataError(
                f"pairs file {path}: column {col!r} must be text; {_rows(bad, unit)}: null "
                "or not a string",
                hint="fix or remove those records"
                + (
                    '; a pair without a prompt may give "" or omit the column'
                    if col == "prompt"
                    else ""
                ),
            )
        bad = df.index[~df[col].map(_encodable)].tolist()
        if bad:
            raise DataError(
                f"pairs file {path}: column {col!r} holds invalid Unicode (lone "
                f"surrogates) on {_rows(bad, unit)}",
                hint="re-encode those texts",
            )


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _flatten_subtypes(df: pd.DataFrame, path: Path, unit: str) -> pd.DataFrame:
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
                raise DataError(
                    f"pairs file {path}: {col} on {_rows([df.index[i]], unit)} "
                    f"must be an object {{name: score}}, got {type(v).__name__}"
                )
            for name, score in v.items():
                expanded.setdefault(str(name), [None] * len(df))[i] = score
        df = df.drop(columns=[col])
        for name, values in expanded.items():
            df[f"{side}_sub_{name}"] = values
    # A subtype given for one side only is unknown (NaN) on the other.
    for side, other in (("chosen", "rejected"), ("rejected", "chosen")):
        for c in [c for c in df.columns if c.startswith(f"{side}_sub_")]:
            twin = f"{other}_sub_{c[len(side) + 5 :]}"
            if twin not in df:
                df[twin] = None
    return df


def _as_float(series: pd.Series, col: str, path: Path, unit: str, finite: bool = True) -> pd.Series:
    """Floats; null stays NaN. A non-finite value becomes NaN too when `finite`, else it is
    kept, so the caller can tell it from a null in its message."""

    def conv(at, v):
        if v is None or isinstance(v, bool):
            return None if v is None else float(v)
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise DataError(
                f"pairs file {path}: {col} must be numeric; {_rows([at], unit)} has {plain(v)!r}"
            ) from None
        return f if math.isfinite(f) or not finite else None

    return pd.Series([conv(at, v) for at, v in series.items()], index=series.index, dtype="float64")


def _normalise_ground_truth(
    df: pd.DataFrame, path: Path, null_scores: str, unit: str
) -> tuple[pd.DataFrame, int]:
    for a, b in (("chosen_score", "rejected_score"), ("chosen_toxic", "rejected_toxic")):
        if (a in df) != (b in df):
            have, lack = (a, b) if a in df else (b, a)
            raise DataError(
                f"pairs file {path} has {have} but not {lack}; give both or neither",
                hint=SCHEMA_HINT,
            )
    for side in SIDES:
        if f"{side}_score" in df:
            df[f"{side}_score"] = _as_float(
                df[f"{side}_score"], f"{side}_score", path, unit, finite=False
            )
        if f"{side}_toxic" in df:
            df[f"{side}_toxic"] = _as_float(
                df[f"{side}_toxic"], f"{side}_toxic", path, unit, finite=False
            )
            bad = df[f"{side}_toxic"].dropna()
            bad = bad[~bad.isin([0.0, 1.0])]
            if len(bad):
                raise DataError(
                    f"pairs file {path}: {side}_toxic must be true/false or 0/1, "
                    f"and is not on {_rows(bad.index.tolist(), unit)}"
                )
    gt_cols = [
        c for c in ("chosen_score", "rejected_score", "chosen_toxic", "rejected_toxic") if c in df
    ]
    gt = df[gt_cols].astype("float64")
    null, infinite = gt.isna(), np.isinf(gt)
    bad_rows = df.index[(null | infinite).any(axis=1)].tolist() if gt_cols else []
    dropped = 0
    if bad_rows:
        if null_scores == "error":
            parts = []
            for what, mask in (("null", null), ("non-finite", infinite)):
                cols = [c for c in gt_cols if mask[c].any()]
                if cols:
                    at = df.index[mask.any(axis=1)].tolist()
                    parts.append(f"{what} in {cols} ({_rows(at, unit)})")
            kind = "null" if not infinite.any().any() else "null or non-finite"
            raise DataError(
                f"pairs file {path}: {len(bad_rows)} row(s) have {kind} ground truth: "
                + "; ".join(parts),
                hint="fix the file, or set irl.null_scores=drop to drop those rows",
            )
        df = df.drop(index=bad_rows)
        dropped = len(bad_rows)
    for side in SIDES:
        if f"{side}_toxic" in df:
            df[f"{side}_toxic"] = df[f"{side}_toxic"].astype(bool)
        for c in [c for c in df.columns if c.startswith(f"{side}_sub_")]:
            df[c] = _as_float(df[c], c, path, unit)
    return df, dropped


def _rows(idx: list, unit: str = "row", limit: int = 8) -> str:
    """'line 4' / 'lines 4, 9, ...' from record labels (the frame's index: see read_table)."""
    idx = [plain(i) for i in idx]
    shown = ", ".join(str(i) for i in idx[:limit])
    more = f", ... ({len(idx)} in all)" if len(idx) > limit else ""
    return f"{unit}{'s' if len(idx) > 1 else ''} {shown}{more}"


def trl_columns(df: pd.DataFrame) -> pd.DataFrame:
    """The pairs in TRL's preference format (module docstring): explicit prompt when both sides
    share it, else implicit (each side's own prompt prepended)."""
    prompt = df["prompt"].fillna("") if "prompt" in df else pd.Series("", index=df.index)
    sides = {
        side: df[f"{side}_prompt"].fillna(prompt) if f"{side}_prompt" in df else prompt
        for side in ("chosen", "rejected")
    }
    if (sides["chosen"] == sides["rejected"]).all():
        return pd.DataFrame(
            {"prompt": sides["chosen"], "chosen": df["chosen"], "rejected": df["rejected"]}
        ).reset_index(drop=True)
    return pd.DataFrame(
        {
            "chosen": sides["chosen"] + df["chosen"],
            "rejected": sides["rejected"] + df["rejected"],
        }
    ).reset_index(drop=True)


def write_trl_splits(df: pd.DataFrame, out_dir: Path) -> dict[str, int]:
    """`train.parquet`, `test.parquet` and `trl/` (a DatasetDict with those splits) in
    `out_dir`; returns the pairs per split."""
    from datasets import Dataset, DatasetDict  # heavy, needed here only

    splits = {}
    table = trl_columns(df)  # one format for every split, decided on all the pairs
    for name in ("train", "test"):
        part = table[(df["split"] == name).to_numpy()].reset_index(drop=True)
        part.to_parquet(Path(out_dir) / f"{name}.parquet", index=False)
        splits[name] = Dataset.from_pandas(part, preserve_index=False)
    DatasetDict(splits).save_to_disk(str(Path(out_dir) / "trl"))
    return {k: len(v) for k, v in splits.items()}
