"""`fairl make-pairs`: preference pairs in the pairs schema (README).

source: dataset   Pair existing, already-scored continuations (RealToxicityPrompts records with
                  Perspective scores): records are split train/test first (so no prompt is in
                  both), shuffled within each split, and paired two by two; the continuation
                  with lower toxicity is preferred. Pairs whose toxicity differs by less than
                  `min_gap` are dropped (a near-tie is not a preference). Ground truth:
                  score = 1 - toxicity, toxic = toxicity > toxic_threshold, subtypes = the other
                  Perspective attributes. Records with a null continuation toxicity are dropped
                  and counted. The two continuations answer different prompts, so the pair
                  records both (`chosen_prompt`, `rejected_prompt`); `prompt` is the chosen one's.
source: generate  One base and one expert completion per prompt (paper Section 5). Not built yet.

Writes `runs/<name>/make_pairs/pairs.parquet` (+ pairs.jsonl for reading) and summary.json.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts import StageSkipped, stage_run, write_json
from pipeline.config import ExperimentConfig, to_dict
from pipeline.data.rtp import SCORES, load_rtp
from pipeline.errors import DataError, NotBuiltError

log = logging.getLogger("fairl.make_pairs")


def run(cfg: ExperimentConfig, force: bool = False) -> Path:
    mp = cfg.make_pairs
    if mp.source == "generate":
        raise NotBuiltError(
            "make-pairs with source=generate (base vs expert completions) is not built yet; "
            "nothing was written",
            hint="set make_pairs.source=dataset to pair scored dataset continuations, or bring "
                 "your own pairs file (irl.pairs)")
    files = mp.dataset.files
    local = {f"file{i}": Path(f) for i, f in enumerate(files) if Path(f).is_file()}
    config = {"make_pairs": to_dict(mp), "run.seed": cfg.run.seed}
    try:
        with stage_run("make_pairs", cfg.run.root / cfg.run.name, config, local,
                       seed=cfg.run.seed, force=force, log=log.info) as run_:
            df, stats = pairs_from_continuations(load_rtp(files), mp.dataset, cfg.run.seed)
            df.to_parquet(run_.path("pairs.parquet"), index=False)
            df.to_json(run_.path("pairs.jsonl"), orient="records", lines=True, force_ascii=False)
            write_json(run_.path("summary.json"), stats)
            log.info("make-pairs: %d pairs (%d train, %d test) from %d records; %s",
                     len(df), stats["n_train"], stats["n_test"], stats["records"],
                     f"dropped {stats['dropped_null_toxicity']} with null toxicity")
    except StageSkipped:
        pass
    return cfg.stage_dir("make_pairs")


def pairs_from_continuations(ds, settings, seed: int) -> tuple[pd.DataFrame, dict]:
    """Pairs of scored continuations, lower toxicity preferred (see module docstring)."""
    records = [r for r in ds if r["continuation"] and r["continuation"].get("text")
               and r["prompt"] and r["prompt"].get("text") is not None]
    if not records:
        raise DataError("no record has both prompt.text and continuation.text",
                        hint="the files must follow the RealToxicityPrompts schema")
    scored = [r for r in records if r["continuation"]["toxicity"] is not None]
    dropped = len(records) - len(scored)
    if len(scored) < 4:
        raise DataError(f"only {len(scored)} records have a continuation toxicity score; "
                        "need at least 4 to form train and test pairs")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(scored))
    n_test = max(2, int(round(settings.test_fraction * len(scored))))
    rows = []
    for split, idx in (("test", order[:n_test]), ("train", order[n_test:])):
        idx = rng.permutation(idx)
        for a, b in zip(idx[0::2], idx[1::2]):
            ra, rb = scored[a], scored[b]
            ta, tb = ra["continuation"]["toxicity"], rb["continuation"]["toxicity"]
            if abs(ta - tb) < settings.min_gap:
                continue
            good, bad = (ra, rb) if ta < tb else (rb, ra)
            rows.append(_pair(good, bad, split, settings.toxic_threshold))
    if settings.max_pairs is not None:
        rows = rows[:settings.max_pairs]
    df = pd.DataFrame(rows)
    if df.empty:
        raise DataError(f"no pairs left: every candidate pair's toxicity gap is below "
                        f"min_gap={settings.min_gap}", hint="lower make_pairs.dataset.min_gap")
    stats = {"records": len(records), "dropped_null_toxicity": dropped, "pairs": len(df),
             "n_train": int((df["split"] == "train").sum()), "n_test": int((df["split"] == "test").sum()),
             "toxic_rate_chosen": float(df["chosen_toxic"].mean()),
             "toxic_rate_rejected": float(df["rejected_toxic"].mean()),
             "t_to_nt_fraction": float((df["rejected_toxic"] & ~df["chosen_toxic"]).mean())}
    return df, stats


def _pair(good: dict, bad: dict, split: str, threshold: float) -> dict:
    def side(r):
        c = r["continuation"]
        return {"text": c["text"], "prompt": r["prompt"]["text"], "score": 1.0 - c["toxicity"],
                "toxic": bool(c["toxicity"] > threshold),
                "subtypes": {k: c[k] for k in SCORES if k != "toxicity" and c[k] is not None}}

    g, b = side(good), side(bad)
    return {"prompt": g["prompt"], "chosen": g["text"], "rejected": b["text"],
            "chosen_score": g["score"], "rejected_score": b["score"],
            "chosen_toxic": g["toxic"], "rejected_toxic": b["toxic"],
            **{f"chosen_sub_{k}": v for k, v in g["subtypes"].items()},
            **{f"rejected_sub_{k}": v for k, v in b["subtypes"].items()},
            "chosen_prompt": g["prompt"], "rejected_prompt": b["prompt"], "split": split}
