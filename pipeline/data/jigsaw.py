"""A labelled held-out set in the Jigsaw Toxic Comment schema (paper: the Jigsaw test set).

Columns: `comment_text` (str), `toxic` (0/1, or a probability: > 0.5 is toxic), and optionally
the Jigsaw subtypes `severe_toxic`, `obscene`, `threat`, `insult`, `identity_hate` (same
encoding). .csv (Kaggle's format), .jsonl or .parquet.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.data.pairs import read_table, _rows
from pipeline.errors import DataError

SUBTYPES = ("severe_toxic", "obscene", "threat", "insult", "identity_hate")


def load_heldout(path: Path) -> pd.DataFrame:
    """DataFrame with `text`, `toxic` (bool) and one bool column per subtype present."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"held-out file {path} does not exist", hint="fix evaluate.heldout")
    df = pd.read_csv(path) if path.suffix.lower() == ".csv" else read_table(path)
    if len(df) == 0:
        raise DataError(f"held-out file {path} is empty")
    missing = [c for c in ("comment_text", "toxic") if c not in df]
    if missing:
        raise DataError(f"held-out file {path} lacks column(s) {missing}; it has {list(df.columns)}",
                        hint="the Jigsaw schema needs comment_text and toxic")
    bad = df.index[~df["comment_text"].map(lambda v: isinstance(v, str))].tolist()
    if bad:
        raise DataError(f"held-out file {path}: comment_text is null or not text in rows {_rows(bad)}")
    out = pd.DataFrame({"text": df["comment_text"]})
    for col in ("toxic", *[s for s in SUBTYPES if s in df]):
        values = pd.to_numeric(df[col], errors="coerce")
        if values.isna().any():
            raise DataError(f"held-out file {path}: {col} is null or not numeric in rows "
                            f"{_rows(df.index[values.isna()].tolist())}")
        outside = values[(values < 0) | (values > 1)]
        if len(outside):
            raise DataError(f"held-out file {path}: {col} must be 0/1 or a probability; rows "
                            f"{_rows(outside.index.tolist())} are outside [0, 1]",
                            hint="Kaggle's test_labels.csv marks unscored rows -1: drop them")
        out[col] = values > 0.5
    return out.reset_index(drop=True)
