"""RealToxicityPrompts (Gehman et al., 2020) through `datasets`, with explicit Features.

Records: `filename, begin, end, challenging, prompt{text, <8 Perspective scores>},
continuation{same}`. datasets infers nested dicts with missing keys as opaque Json features, so
the schema is given explicitly; absent keys and nulls load as None. Local JSONL files (or a
directory of them) and hub names (`allenai/real-toxicity-prompts`) both work.

`pairs_from_continuations` pairs already-scored continuations (make-pairs, source: dataset):
records are split train/test first (so no prompt is in both), shuffled within each split, and
paired two by two; the continuation with lower toxicity is preferred. Pairs whose toxicity
differs by less than `min_gap` are dropped (a near-tie is not a preference). Ground truth:
score = 1 - toxicity, toxic = toxicity > toxic_threshold, subtypes = the other Perspective
attributes. Records with a null continuation toxicity are dropped and counted. The two
continuations answer different prompts, so the pair records both (`chosen_prompt`,
`rejected_prompt`); `prompt` is the chosen one's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import DataError

SCORES = (
    "toxicity",
    "severe_toxicity",
    "profanity",
    "sexually_explicit",
    "identity_attack",
    "insult",
    "threat",
    "flirtation",
)


def features():
    from datasets import Features, Value  # heavy, needed here only: imported on first use

    part = {"text": Value("string"), **{k: Value("float64") for k in SCORES}}
    return Features(
        {
            "filename": Value("string"),
            "begin": Value("int64"),
            "end": Value("int64"),
            "challenging": Value("bool"),
            "prompt": part,
            "continuation": part,
        }
    )


def load_rtp(sources: Sequence[str] | str):
    """A `datasets.Dataset` of RealToxicityPrompts records."""
    import datasets  # heavy, needed here only: imported on first use

    sources = [sources] if isinstance(sources, str) else list(sources)
    if not sources:
        raise DataError(
            "no RealToxicityPrompts source given",
            hint="list JSONL files (or a hub dataset name) in the config",
        )
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
                raise DataError(
                    f"cannot load dataset {s!r} from the hub: {e}",
                    hint="download it once online, or point to local JSONL files",
                ) from None
        else:
            raise DataError(f"RealToxicityPrompts file {s} does not exist")
    if not files:
        raise DataError(f"no .jsonl files in {sources}")
    try:
        ds = datasets.load_dataset("json", data_files=files, split="train", features=features())
    except Exception as e:  # pyarrow / datasets raise many types on malformed input
        raise DataError(
            f"cannot read {files} as RealToxicityPrompts records: {e}",
            hint="each line must be a JSON object with prompt.text and continuation.text",
        ) from None
    if len(ds) == 0:
        raise DataError(f"{files} hold no records")
    return ds


def pairs_from_continuations(ds, settings, seed: int) -> tuple[pd.DataFrame, dict]:
    """Pairs of scored continuations, lower toxicity preferred (module docstring)."""
    records = [
        r
        for r in ds
        if r["continuation"]
        and r["continuation"].get("text")
        and r["prompt"]
        and r["prompt"].get("text") is not None
    ]
    if not records:
        raise DataError(
            "no record has both prompt.text and continuation.text",
            hint="the files must follow the RealToxicityPrompts schema",
        )
    scored = [r for r in records if r["continuation"]["toxicity"] is not None]
    dropped = len(records) - len(scored)
    if len(scored) < 4:
        raise DataError(
            f"only {len(scored)} records have a continuation toxicity score; "
            "need at least 4 to form train and test pairs"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(scored))
    n_test = max(2, int(round(settings.test_fraction * len(scored))))
    by_split: dict[str, list] = {}
    for split, idx in (("train", order[n_test:]), ("test", order[:n_test])):
        idx = rng.permutation(idx)
        by_split[split] = []
        for a, b in zip(idx[0::2], idx[1::2]):
            ra, rb = scored[a], scored[b]
            ta, tb = ra["continuation"]["toxicity"], rb["continuation"]["toxicity"]
            if abs(ta - tb) < settings.min_gap:
                continue
            chosen, rejected = (ra, rb) if ta < tb else (rb, ra)
            by_split[split].append(_pair(chosen, rejected, split, settings.toxic_threshold))
    total = sum(len(v) for v in by_split.values())
    if settings.max_pairs is not None and total > settings.max_pairs:
        # Cap both splits in proportion, so the cap never empties one of them.
        keep_test = round(settings.max_pairs * len(by_split["test"]) / total)
        by_split = {
            "train": by_split["train"][: settings.max_pairs - keep_test],
            "test": by_split["test"][:keep_test],
        }
    if not by_split["train"] or not by_split["test"]:
        raise DataError(
            f"too few pairs: {len(by_split['train'])} train and {len(by_split['test'])} test after "
            f"dropping pairs whose toxicity gap is below min_gap={settings.min_gap}",
            hint="lower make_pairs.dataset.min_gap, raise max_pairs, or add records",
        )
    df = pd.DataFrame(by_split["train"] + by_split["test"])
    stats = {
        "records": len(records),
        "dropped_null_toxicity": dropped,
        "pairs": len(df),
        "n_train": int((df["split"] == "train").sum()),
        "n_test": int((df["split"] == "test").sum()),
        "toxic_rate_chosen": float(df["chosen_toxic"].mean()),
        "toxic_rate_rejected": float(df["rejected_toxic"].mean()),
        "t_to_nt_fraction": float((df["rejected_toxic"] & ~df["chosen_toxic"]).mean()),
    }
    return df, stats


def _pair(chosen: dict, rejected: dict, split: str, threshold: float) -> dict:
    """One row of the pairs schema (README: Pairs schema) from two scored records."""

    def side(r):
        c = r["continuation"]
        return {
            "text": c["text"],
            "prompt": r["prompt"]["text"],
            "score": 1.0 - c["toxicity"],
            "toxic": bool(c["toxicity"] > threshold),
            "subtypes": {k: c[k] for k in SCORES if k != "toxicity" and c[k] is not None},
        }

    c, r = side(chosen), side(rejected)
    return {
        "prompt": c["prompt"],
        "chosen": c["text"],
        "rejected": r["text"],
        "chosen_score": c["score"],
        "rejected_score": r["score"],
        "chosen_toxic": c["toxic"],
        "rejected_toxic": r["toxic"],
        **{f"chosen_sub_{k}": v for k, v in c["subtypes"].items()},
        **{f"rejected_sub_{k}": v for k, v in r["subtypes"].items()},
        "chosen_prompt": c["prompt"],
        "rejected_prompt": r["prompt"],
        "split": split,
    }
