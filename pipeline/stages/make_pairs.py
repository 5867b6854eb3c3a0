"""`fairl make-pairs`: preference pairs in the pairs schema (README: Pairs schema).

source: dataset   Pair existing, already-scored continuations (RealToxicityPrompts records with
                  Perspective scores; pipeline.data.rtp.pairs_from_continuations).
source: generate  One completion from the base model (o-, `rejected`) and one from the expert
                  (o+, `chosen`) per prompt of the prompts' `pairs` part with prompt.toxicity >
                  0.5 (paper Section 5), scored by the ground truth, split train/test by prompt
                  (by pair when too few prompts: pipeline.data.splits.carve). Batches are sampled
                  with seeds derived from their index and written one file each, so an
                  interrupted run resumes and yields exactly the pairs of an uninterrupted one.

Writes `runs/<name>/make_pairs/pairs.parquet` (+ pairs.jsonl for reading) and summary.json, and
the pairs in TRL's preference format (pipeline.data.pairs.write_trl_splits): `train.parquet`,
`test.parquet` and `trl/` (a DatasetDict), so TRL trainers never see a test pair.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pipeline import world
from pipeline.artifacts import (
    StageRun,
    atomic_path,
    remove_path,
    require_stage,
    run_stage,
    write_json,
)
from pipeline.config import ExperimentConfig, fingerprint, to_dict
from pipeline.data.pairs import swap_sides, write_trl_splits
from pipeline.data.prompts import prompts_config, select_prompts
from pipeline.data.rtp import load_rtp, pairs_from_continuations
from pipeline.data.splits import carve
from pipeline.distributed import distributed_rank, wait_for_all_ranks, world_size
from pipeline.errors import ConfigError, FairlError
from pipeline.hub import model_inputs, resolve_model
from pipeline.policy.models import batch_seed, load_policy, sample
from pipeline.scorers import make_scorer
from pipeline.seeds import derive_seed

log = logging.getLogger("fairl.make_pairs")


def run(cfg: ExperimentConfig, force: bool = False) -> Path:
    if cfg.make_pairs.source == "generate":
        return _generate(cfg, force)
    return _from_dataset(cfg, force)


# ------------------------------------------------------------------------- source: dataset
def _from_dataset(cfg: ExperimentConfig, force: bool) -> Path:
    mp = cfg.make_pairs
    files = mp.dataset.files
    local = {f"file{i}": Path(f) for i, f in enumerate(files) if Path(f).exists()}  # files or dirs
    config = {"make_pairs": fingerprint(mp), "run.seed": cfg.run.seed}

    def recipe(run: StageRun) -> None:
        if not run.is_main:
            return  # pairing scored records is quick: rank 0 alone
        df, stats = pairs_from_continuations(load_rtp(files), mp.dataset, cfg.run.seed)
        df.to_parquet(run.path("pairs.parquet"), index=False)
        df.to_json(run.path("pairs.jsonl"), orient="records", lines=True, force_ascii=False)
        write_trl_splits(df, run.work_dir)  # train.parquet, test.parquet, trl/ (for TRL)
        write_json(run.path("summary.json"), stats)
        log.info(
            "make-pairs: %d pairs (%d train, %d test) from %d records; %s",
            len(df),
            stats["n_train"],
            stats["n_test"],
            stats["records"],
            f"dropped {stats['dropped_null_toxicity']} with null toxicity",
        )

    return run_stage("make_pairs", cfg, config, local, recipe, force=force, log=log.info)


# ------------------------------------------------------------------------ source: generate
def _generate(cfg: ExperimentConfig, force: bool) -> Path:
    mp = cfg.make_pairs
    # 1. The base model (o-) and the expert (o+): the published train-expert model by default.
    base = resolve_model(
        world.resolve(mp.base_model or cfg.train_expert.base_model, cfg, "base-lm"), "base model"
    )
    if mp.expert_model:
        expert = resolve_model(world.resolve(mp.expert_model, cfg, "base-lm"), "expert model")
    else:
        trained = require_stage(cfg.stage_dir("train_expert"), "train_expert", "train-expert")
        expert = str(cfg.stage_dir("train_expert") / "model")
        _check_disjoint_from_expert(trained, cfg)
    # 2. The prompts of the `pairs` part, and the ground truth that scores both completions.
    prompts = select_prompts(cfg, "pairs", mp.prompt_toxicity_min, mp.n_pairs)
    gt = make_scorer(cfg.ground_truth)
    config = {
        "make_pairs": to_dict(mp),
        **prompts_config(cfg),
        "base_model": base,
        "expert_model": expert,
    }
    inputs = {**model_inputs(base), "expert_model": Path(expert) if Path(expert).is_dir() else None}

    def recipe(run: StageRun) -> None:
        # 3. Sample and score, batch by batch (resumable).
        rows = _sample_batches(run, prompts, base, expert, gt, mp.generation, cfg.run.seed)
        if not run.is_main:
            return  # this rank sampled its share of the batches; rank 0 writes the pairs
        by_rank = Counter(str(r.pop("_rank", "earlier run")) for r in rows)
        # 4. Split train / test by prompt, write the pairs and their statistics.
        df = pd.DataFrame(rows)
        # Preference noise: a seeded fraction of pairs flipped (annotators disagree too).
        flipped = np.zeros(len(df), dtype=bool)
        if mp.preference_noise > 0:
            rng = np.random.default_rng(derive_seed(cfg.run.seed, "preference-noise"))
            flipped = rng.random(len(df)) < mp.preference_noise
            df = swap_sides(df, flipped)
        held, rule = carve(
            df["prompt"].tolist(), mp.test_fraction, np.random.default_rng(cfg.run.seed), "test"
        )
        df["split"] = np.where(held, "test", "train")
        df.to_parquet(run.path("pairs.parquet"), index=False)
        df.to_json(run.path("pairs.jsonl"), orient="records", lines=True, force_ascii=False)
        write_trl_splits(df, run.work_dir)  # train.parquet, test.parquet, trl/ (for TRL)
        stats = {
            "pairs": len(df),
            "flipped": int(flipped.sum()),
            "n_train": int((df["split"] == "train").sum()),
            "n_test": int((df["split"] == "test").sum()),
            "split": rule,
            "pairs_sampled_by_rank": dict(sorted(by_rank.items())),
            "toxic_rate_chosen": float(df["chosen_toxic"].mean()),
            "toxic_rate_rejected": float(df["rejected_toxic"].mean()),
            "base_model": base,
            "expert_model": expert,
        }
        write_json(run.path("summary.json"), stats)
        remove_path(run.path("batches"))
        log.info(
            "make-pairs: %d pairs; toxic rate expert %.3f, base %.3f",
            len(df),
            stats["toxic_rate_chosen"],
            stats["toxic_rate_rejected"],
        )

    return run_stage(
        "make_pairs", cfg, config, inputs, recipe, force=force, log=log.info, resumable=True
    )


def _check_disjoint_from_expert(trained: dict, cfg: ExperimentConfig) -> None:
    """Pair prompts must not be prompts the expert was trained on. A prompt's part comes from a
    hash of its text u in [0, 1): eval below eval_fraction, pairs up to eval + pairs fractions,
    RL training above. The expert trained on u >= its (eval + pairs); this run's pairs lie below
    this run's (eval + pairs), so they stay disjoint as long as that sum did not grow."""
    used = trained.get("config", {}).get("prompts") or {}
    if "eval_fraction" not in used or "pairs_fraction" not in used:
        log.warning(
            "make-pairs: the train-expert manifest does not say which prompts it trained "
            "on; cannot check that the pairs avoid them"
        )
        return
    before = used["eval_fraction"] + used["pairs_fraction"]
    now = cfg.prompts.eval_fraction + cfg.prompts.pairs_fraction
    if now > before + 1e-12:
        raise ConfigError(
            f"prompts.eval_fraction + prompts.pairs_fraction is {now:g} here but was {before:g} "
            "when train-expert ran, so the pairs would reuse prompts the expert was trained on",
            hint="keep the sum at most the expert's, or re-run `fairl train-expert` (or "
            "`fairl run`) with the new fractions",
        )


def _sample_batches(
    run: StageRun, prompts, base: str, expert: str, gt, gen, seed: int
) -> list[dict]:
    """One completion of the base model (o-, `rejected`) and one of the expert (o+, `chosen`) per
    prompt, scored by the ground truth. Each batch is sampled with a seed derived from its
    index and written to a file of its own, so a resumed run samples only the batches missing
    and yields exactly the pairs of an uninterrupted one. Under a data-parallel launch, rank r
    samples the batches b with b % world_size == r (the same seeds, so the same pairs as one
    process), every rank writes its own files, and rank 0 reads them all after a barrier; the
    other ranks return nothing."""
    batches = [prompts[i : i + gen.batch_size] for i in range(0, len(prompts), gen.batch_size)]
    out_dir = run.work_dir / "batches"
    out_dir.mkdir(parents=True, exist_ok=True)
    rank, ranks = distributed_rank(), world_size()
    # each rank looks at its own share only (a damaged file is removed by its owner alone)
    done = {
        b: _read_batch(out_dir / f"{b:06d}.jsonl", len(batches[b]))
        for b in range(len(batches))
        if b % ranks == rank
    }
    todo = [b for b, rows in done.items() if rows is None]
    if len(todo) < len(batches) and ranks == 1:
        log.info(
            "make-pairs: %d of %d batches already sampled, resuming",
            len(batches) - len(todo),
            len(batches),
        )
    if todo:
        models = {
            "base": load_policy(base, "base model", inference=True),
            "expert": load_policy(expert, "expert", inference=True),
        }
        bar = None if run.is_main else True  # one progress bar: rank 0's
        for b in tqdm(todo, desc="make-pairs: sampling", unit="batch", disable=bar, leave=False):
            texts = [p.text for p in batches[b]]
            comps = {}
            for name, (model, tok) in models.items():
                *_, comps[name] = sample(
                    model,
                    tok,
                    texts,
                    gen.max_new_tokens,
                    gen.temperature,
                    gen.top_p,
                    seed=batch_seed(seed, "pairs", name, b),
                    max_prompt_tokens=gen.max_prompt_tokens,
                )
            s_exp, s_base = gt.score(comps["expert"]), gt.score(comps["base"])
            with atomic_path(out_dir / f"{b:06d}.jsonl") as tmp, open(tmp, "w") as f:
                for i, p in enumerate(batches[b]):
                    row = {
                        "prompt": p.text,
                        "prompt_id": p.id,
                        "prompt_toxicity": p.toxicity,
                        "chosen": comps["expert"][i],
                        "rejected": comps["base"][i],
                        "chosen_score": float(s_exp.reward[i]),
                        "rejected_score": float(s_base.reward[i]),
                        "_rank": rank,  # who sampled it (summary.json), not a pairs column
                    }
                    if s_exp.toxic is not None:
                        row.update(
                            chosen_toxic=bool(s_exp.toxic[i]), rejected_toxic=bool(s_base.toxic[i])
                        )
                    for k in s_exp.subtypes:
                        row[f"chosen_sub_{k}"] = float(s_exp.subtypes[k][i])
                        row[f"rejected_sub_{k}"] = float(s_base.subtypes[k][i])
                    f.write(json.dumps(row) + "\n")
            done[b] = _read_batch(out_dir / f"{b:06d}.jsonl", len(batches[b]))
    if ranks > 1:
        wait_for_all_ranks()  # every rank's batches are written
        if not run.is_main:
            return []
        done = {
            b: _read_batch(out_dir / f"{b:06d}.jsonl", len(batches[b])) for b in range(len(batches))
        }
        missing = [b for b, rows in done.items() if rows is None]
        if missing:
            raise FairlError(
                f"make-pairs: batches {missing[:5]} were not written by their ranks",
                hint="run make-pairs again: it resumes from the batches that were",
            )
    return [row for b in range(len(batches)) for row in done[b]]


def _read_batch(path: Path, n: int) -> list[dict] | None:
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
    path.unlink(missing_ok=True)
    return None
