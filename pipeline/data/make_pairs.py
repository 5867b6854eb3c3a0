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
source: generate  One completion from the base model (o-) and one from the expert (o+) per
                  prompt of the prompts' `pairs` part with prompt.toxicity > 0.5 (paper Section 5),
                  scored by the ground truth, split train/test by prompt. Batches are sampled with
                  seeds derived from their index and written one file each, so an interrupted run
                  resumes and yields exactly the pairs of an uninterrupted one.

Writes `runs/<name>/make_pairs/pairs.parquet` (+ pairs.jsonl for reading) and summary.json.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from pipeline.artifacts import StageSkipped, stage_run, write_json
from pipeline.config import ExperimentConfig, to_dict
from pipeline.data.rtp import SCORES, load_rtp
from pipeline.errors import ConfigError, DataError

log = logging.getLogger("fairl.make_pairs")


def run(cfg: ExperimentConfig, force: bool = False) -> Path:
    mp = cfg.make_pairs
    if mp.source == "generate":
        return _generate(cfg, force)
    files = mp.dataset.files
    local = {f"file{i}": Path(f) for i, f in enumerate(files) if Path(f).exists()}  # files or dirs
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
    by_split: dict[str, list] = {}
    for split, idx in (("train", order[n_test:]), ("test", order[:n_test])):
        idx = rng.permutation(idx)
        by_split[split] = []
        for a, b in zip(idx[0::2], idx[1::2]):
            ra, rb = scored[a], scored[b]
            ta, tb = ra["continuation"]["toxicity"], rb["continuation"]["toxicity"]
            if abs(ta - tb) < settings.min_gap:
                continue
            good, bad = (ra, rb) if ta < tb else (rb, ra)
            by_split[split].append(_pair(good, bad, split, settings.toxic_threshold))
    total = sum(len(v) for v in by_split.values())
    if settings.max_pairs is not None and total > settings.max_pairs:
        # Cap both splits in proportion, so the cap never empties one of them.
        keep_test = round(settings.max_pairs * len(by_split["test"]) / total)
        by_split = {"train": by_split["train"][:settings.max_pairs - keep_test],
                    "test": by_split["test"][:keep_test]}
    if not by_split["train"] or not by_split["test"]:
        raise DataError(
            f"too few pairs: {len(by_split['train'])} train and {len(by_split['test'])} test after "
            f"dropping pairs whose toxicity gap is below min_gap={settings.min_gap}",
            hint="lower make_pairs.dataset.min_gap, raise max_pairs, or add records")
    df = pd.DataFrame(by_split["train"] + by_split["test"])
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


# ------------------------------------------------------------------------ source: generate
def _check_disjoint_from_expert(trained: dict, cfg: ExperimentConfig) -> None:
    """Pair prompts must not be prompts the expert was trained on. A prompt's part comes from a
    hash of its text u in [0, 1): eval below eval_fraction, pairs up to eval + pairs fractions,
    RL training above. The expert trained on u >= its (eval + pairs); this run's pairs lie below
    this run's (eval + pairs), so they stay disjoint as long as that sum did not grow."""
    used = trained.get("config", {}).get("prompts") or {}
    if "eval_fraction" not in used or "pairs_fraction" not in used:
        log.warning("make-pairs: the train-expert manifest does not say which prompts it trained "
                    "on; cannot check that the pairs avoid them")
        return
    before = used["eval_fraction"] + used["pairs_fraction"]
    now = cfg.prompts.eval_fraction + cfg.prompts.pairs_fraction
    if now > before + 1e-12:
        raise ConfigError(
            f"prompts.eval_fraction + prompts.pairs_fraction is {now:g} here but was {before:g} "
            "when train-expert ran, so the pairs would reuse prompts the expert was trained on",
            hint="keep the sum at most the expert's, or re-run `fairl train-expert` (or `fairl run`) "
                 "with the new fractions")


def _generate(cfg: ExperimentConfig, force: bool) -> Path:
    from pipeline import world
    from pipeline.artifacts import require_stage
    from pipeline.data.prompts import select_prompts
    from pipeline.policy.models import resolve_model
    from pipeline.policy.stages import model_inputs, shared_config
    from pipeline.scorers import make_scorer

    mp = cfg.make_pairs
    base = resolve_model(world.resolve(mp.base_model or cfg.train_expert.base_model, cfg, "base-lm"),
                         "base model")
    if mp.expert_model:
        expert = resolve_model(world.resolve(mp.expert_model, cfg, "base-lm"), "expert model")
    else:
        trained = require_stage(cfg.stage_dir("train_expert"), "train_expert", "train-expert")
        expert = str(cfg.stage_dir("train_expert") / "model")
        _check_disjoint_from_expert(trained, cfg)
    prompts = select_prompts(cfg, "pairs", mp.prompt_toxicity_min, mp.n_pairs)
    gt = make_scorer(cfg.ground_truth)
    config = {"make_pairs": to_dict(mp), **shared_config(cfg), "base_model": base, "expert_model": expert}
    inputs = {**model_inputs(base), "expert_model": Path(expert) if Path(expert).is_dir() else None}
    try:
        with stage_run("make_pairs", cfg.run.root / cfg.run.name, config, inputs, seed=cfg.run.seed,
                       force=force, log=log.info, resumable=True) as run_:
            rows = _sample_batches(run_, prompts, base, expert, gt, mp.generation, cfg.run.seed)
            df = pd.DataFrame(rows)
            df["split"] = _split_by_prompt(df["prompt"], mp.test_fraction, cfg.run.seed)
            df.to_parquet(run_.path("pairs.parquet"), index=False)
            df.to_json(run_.path("pairs.jsonl"), orient="records", lines=True, force_ascii=False)
            stats = {"pairs": len(df), "n_train": int((df["split"] == "train").sum()),
                     "n_test": int((df["split"] == "test").sum()),
                     "toxic_rate_chosen": float(df["chosen_toxic"].mean()),
                     "toxic_rate_rejected": float(df["rejected_toxic"].mean()),
                     "base_model": base, "expert_model": expert}
            write_json(run_.path("summary.json"), stats)
            import shutil

            shutil.rmtree(run_.path("batches"))
            log.info("make-pairs: %d pairs; toxic rate expert %.3f, base %.3f", len(df),
                     stats["toxic_rate_chosen"], stats["toxic_rate_rejected"])
    except StageSkipped:
        pass
    return cfg.stage_dir("make_pairs")


def _sample_batches(run_, prompts, base: str, expert: str, gt, gen, seed: int) -> list[dict]:
    from tqdm.auto import tqdm

    from pipeline.artifacts import atomic_path
    from pipeline.policy.models import batch_seed, load_policy, sample

    batches = [prompts[i:i + gen.batch_size] for i in range(0, len(prompts), gen.batch_size)]
    out_dir = run_.path("batches", "x").parent
    done = {b: _read_batch(out_dir / f"{b:06d}.jsonl", len(batches[b])) for b in range(len(batches))}
    todo = [b for b, rows in done.items() if rows is None]
    if len(todo) < len(batches):
        log.info("make-pairs: %d of %d batches already sampled, resuming", len(batches) - len(todo), len(batches))
    if todo:
        models = {"base": load_policy(base), "expert": load_policy(expert)}
        for b in tqdm(todo, desc="make-pairs: sampling", unit="batch", disable=None, leave=False):
            texts = [p.text for p in batches[b]]
            comps = {}
            for name, (model, tok) in models.items():
                *_, comps[name] = sample(model, tok, texts, gen.max_new_tokens, gen.temperature,
                                         gen.top_p, seed=batch_seed(seed, "pairs", name, b),
                                         max_prompt_tokens=gen.max_prompt_tokens)
            s_exp, s_base = gt.score(comps["expert"]), gt.score(comps["base"])
            with atomic_path(out_dir / f"{b:06d}.jsonl") as tmp, open(tmp, "w") as f:
                for i, p in enumerate(batches[b]):
                    row = {"prompt": p.text, "prompt_id": p.id, "prompt_toxicity": p.toxicity,
                           "chosen": comps["expert"][i], "rejected": comps["base"][i],
                           "chosen_score": float(s_exp.reward[i]), "rejected_score": float(s_base.reward[i])}
                    if s_exp.toxic is not None:
                        row.update(chosen_toxic=bool(s_exp.toxic[i]), rejected_toxic=bool(s_base.toxic[i]))
                    for k in s_exp.subtypes:
                        row[f"chosen_sub_{k}"] = float(s_exp.subtypes[k][i])
                        row[f"rejected_sub_{k}"] = float(s_base.subtypes[k][i])
                    f.write(json.dumps(row) + "\n")
            done[b] = _read_batch(out_dir / f"{b:06d}.jsonl", len(batches[b]))
    return [row for b in range(len(batches)) for row in done[b]]


def _read_batch(path: Path, n: int) -> Optional[list[dict]]:
    """The rows of a batch sampled by an earlier (interrupted) run, or None when it must be
    sampled (again): absent, or unreadable / not `n` JSON objects (a damaged file is removed,
    with a warning, and re-sampled with the same seed, so the pairs are unchanged)."""
    if not path.is_file():
        return None
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        if len(rows) == n and all(isinstance(r, dict) for r in rows):
            return rows
        why = f"{len(rows)} rows, expected {n}"
    except (UnicodeDecodeError, ValueError) as e:
        why = f"{type(e).__name__}: {e}"
    log.warning("make-pairs: sampled batch %s is damaged (%s): sampling it again", path, why)
    path.unlink()
    return None


def _split_by_prompt(prompts: pd.Series, test_fraction: float, seed: int) -> list[str]:
    unique = sorted(set(prompts))
    rng = np.random.default_rng(seed)
    test = set(rng.permutation(np.array(unique, dtype=object))[:max(1, int(round(test_fraction * len(unique))))].tolist())
    return ["test" if p in test else "train" for p in prompts]
