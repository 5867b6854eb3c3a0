"""RealToxicityPrompts (Gehman et al., 2020) through `datasets`, with explicit Features.

Records: `filename, begin, end, challenging, prompt{text, <8 Perspective scores>},
continuation{same}`. datasets infers nested dicts with missing keys as opaque Json features, so
the schema is given explicitly; absent keys and nulls load as None. Local JSONL files (or a
directory of them) and hub names (`allenai/real-toxicity-prompts`) both work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from pipeline.errors import DataError

SCORES = ("toxicity", "severe_toxicity", "profanity", "sexually_explicit", "identity_attack",
          "insult", "threat", "flirtation")


def features():
    from datasets import Features, Value

    part = {"text": Value("string"), **{k: Value("float64") for k in SCORES}}
    return Features({"filename": Value("string"), "begin": Value("int64"), "end": Value("int64"),
                     "challenging": Value("bool"), "prompt": part, "continuation": part})


def load_rtp(sources: Sequence[str] | str):
    """A `datasets.Dataset` of RealToxicityPrompts records."""
    import datasets

    sources = [sources] if isinstance(sources, str) else list(sources)
    if not sources:
        raise DataError("no RealToxicityPrompts source given",
                        hint="list JSONL files (or a hub dataset name) in the config")
    files: list[str] = []
    for s in sources:
        p = Path(s).expanduser()
        if p.is_dir():
            files += sorted(str(f) for f in p.glob("*.jsonl"))
        elif p.is_file():
            files.append(str(p))
        elif len(sources) == 1 and "/" in s and not p.suffix:
            try:
                return datasets.load_dataset(s, split="train", features=features())
            except Exception as e:  # offline, unknown name, schema drift
                raise DataError(f"cannot load dataset {s!r} from the hub: {e}",
                                hint="download it once online, or point to local JSONL files") from None
        else:
            raise DataError(f"RealToxicityPrompts file {s} does not exist")
    if not files:
        raise DataError(f"no .jsonl files in {sources}")
    try:
        ds = datasets.load_dataset("json", data_files=files, split="train", features=features())
    except Exception as e:  # pyarrow / datasets raise many types on malformed input
        raise DataError(f"cannot read {files} as RealToxicityPrompts records: {e}",
                        hint="each line must be a JSON object with prompt.text and continuation.text") from None
    if len(ds) == 0:
        raise DataError(f"{files} hold no records")
    return ds
