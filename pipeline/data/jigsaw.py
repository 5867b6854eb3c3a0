"""A labelled held-out set in the Jigsaw Toxic Comment schema (paper: the Jigsaw test set).

Columns: `comment_text` (str), `toxic` (0/1, or a probability: > 0.5 is toxic), and optionally
the Jigsaw subtypes `severe_toxic`, `obscene`, `threat`, `insult`, `identity_hate` (same
encoding). .csv (Kaggle's format), .jsonl or .parquet, text in UTF-8.

Messages name records as the pairs reader does: the 1-based file line of a JSONL record, the
1-based row of a parquet file, and the 1-based data row of a CSV (the header not counted: a
quoted comment may span several file lines, so line numbers would mislead).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.data.pairs import _readable, _rows, read_table, utf8_lines
from pipeline.errors import DataError

SUBTYPES = ("severe_toxic", "obscene", "threat", "insult", "identity_hate")


def load_heldout(path: Path) -> pd.DataFrame:
    """DataFrame with `text`, `toxic` (bool) and one bool column per subtype present."""
    path = _readable(path, "held-out file", "fix evaluate.heldout")
    if path.suffix.lower() == ".csv":
        for _ in utf8_lines(path):  # a non-UTF-8 byte: a DataError naming its line
            pass
        try:
            df = pd.read_csv(path, encoding="utf-8-sig")
        except pd.errors.EmptyDataError:
            raise DataError(f"held-out file {path} is empty") from None
        except (pd.errors.ParserError, OSError) as e:
            raise DataError(
                f"held-out file {path} is not a readable CSV file: {e}",
                hint="Kaggle's CSV format: a header line, then one comment per record",
            ) from None
        df.index = pd.RangeIndex(1, len(df) + 1)
        unit = "data row"
    else:
        df = read_table(path)
        unit = df.attrs.get("record", "row")
    if len(df) == 0:
        raise DataError(f"held-out file {path} is empty")
    missing = [c for c in ("comment_text", "toxic") if c not in df]
    if missing:
        raise DataError(
            f"held-out file {path} lacks column(s) {missing}; it has {list(df.columns)}",
            hint="the Jigsaw schema needs comment_text and toxic",
        )
    bad = df.index[~df["comment_text"].map(lambda v: isinstance(v, str))].tolist()
    if bad:
        raise DataError(
            f"held-out file {path}: comment_text is null or not text on {_rows(bad, unit)}"
        )
    out = pd.DataFrame({"text": df["comment_text"]})
    for col in ("toxic", *[s for s in SUBTYPES if s in df]):
        values = pd.to_numeric(df[col], errors="coerce")
        if values.isna().any():
            raise DataError(
                f"held-out file {path}: {col} is null or not numeric on "
                f"{_rows(df.index[values.isna()].tolist(), unit)}"
            )
        outside = values[(values < 0) | (values > 1)]
        if len(outside):
            raise DataError(
                f"held-out file {path}: {col} must be 0/1 or a probability; "
                f"{_rows(outside.index.tolist(), unit)} outside [0, 1]",
                hint="Kaggle's test_labels.csv marks unscored rows -1: drop them",
            )
        out[col] = values > 0.5
    return out.reset_index(drop=True)
