"""`fairl train-expert`: RLHF a base LM into a detoxified expert (paper Section 5).

The base LM is trained by RL against the ground truth on the prompts' training part with
prompt.toxicity > 0.3 (PPO, or TRL's GRPO / RLOO). Writes `train_expert/model/`
(save_pretrained, tokenizer included), `eval.json` (ground-truth toxicity of base vs expert on
held-out prompts, same sampling; mean KL of the expert to the base), `eval_samples.jsonl`,
`metrics.jsonl`, `samples.jsonl`, `training_curves.png` (score, KL, entropy, clipped fraction
by step).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pipeline import world
from pipeline.artifacts import StageRun, run_stage, write_json
from pipeline.config import ExperimentConfig, fingerprint
from pipeline.data.prompts import prompts_config, select_prompts
from pipeline.hub import model_inputs, resolve_model
from pipeline.metrics import stage_sink
from pipeline.policy.models import expert_card, load_policy, never_emitted
from pipeline.policy.plots import plot_rl_curves
from pipeline.policy.rl import discard_checkpoints, measure_toxicity, train_ppo, train_trl
from pipeline.scorers import make_scorer

log = logging.getLogger("fairl.train_expert")


def run(cfg: ExperimentConfig, force: bool = False) -> Path:
    te = cfg.train_expert
    # 1. The base LM, the RL prompts (train part) and the held-out prompts (eval part).
    base = resolve_model(world.resolve(te.base_model, cfg, "base-lm"), "base model")
    train_prompts = [p.text for p in select_prompts(cfg, "train", te.prompt_toxicity_min)]
    eval_prompts = [
        p.text
        for p in select_prompts(cfg, "eval", te.prompt_toxicity_min, cfg.prompts.max_eval_prompts)
    ]
    gt = make_scorer(cfg.ground_truth)
    config = {"train_expert": fingerprint(te), **prompts_config(cfg), "base_model": base}

    def recipe(run: StageRun) -> None:
        log.info(
            "train-expert: %s with %s on %d prompts (toxicity > %s); %d held out",
            base,
            te.algorithm,
            len(train_prompts),
            te.prompt_toxicity_min,
            len(eval_prompts),
        )
        # 2. RL against the ground truth (resumes from the work directory's checkpoint).
        with stage_sink(run, cfg.run.trackers, cfg.run.name) as sink, run.timed("train"):
            if te.algorithm == "ppo":
                trainer = train_ppo(
                    base,
                    gt,
                    train_prompts,
                    te.ppo,
                    te.generation,
                    cfg.run.seed,
                    run.work_dir,
                    sink,
                    namespace="ppo",
                )
                expert, tok = trainer.policy, trainer.tok
            else:
                expert, tok = train_trl(
                    te.algorithm,
                    base,
                    gt,
                    train_prompts,
                    te.trl,
                    te.generation,
                    cfg.run.seed,
                    run.work_dir,
                    sink,
                    namespace=te.algorithm,
                    report_to=cfg.run.trackers,
                )
        if not run.is_main:
            return  # other ranks trained with rank 0; rank 0 writes and evaluates
        # the sampling fairl evaluates the expert with (pipeline.policy.models.sample), so that
        # `generate()` on the saved model reproduces it: no top-k, PAD suppressed
        expert.generation_config.update(
            do_sample=True,
            temperature=te.generation.temperature,
            top_p=te.generation.top_p,
            top_k=0,
            max_new_tokens=te.generation.max_new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            suppress_tokens=never_emitted(expert, tok),
        )
        expert.save_pretrained(str(run.path("model")))
        tok.save_pretrained(str(run.path("model")))
        # 3. Base vs expert on the held-out prompts, same sampling seeds.
        with run.timed("evaluate"):
            base_model, base_tok = load_policy(base)
            before, base_texts = measure_toxicity(
                base_model, base_tok, eval_prompts, te.generation, cfg.run.seed, gt
            )
            after, expert_texts = measure_toxicity(
                expert.eval(),
                tok,
                eval_prompts,
                te.generation,
                cfg.run.seed,
                gt,
                reference=base_model,
            )
        report = {
            "algorithm": te.algorithm,
            "base_model": base,
            "n_eval_prompts": len(eval_prompts),
            "base": before,
            "expert": after,
            "toxicity_reduction": 1 - after["toxicity_rate"] / before["toxicity_rate"]
            if before["toxicity_rate"] > 0
            else None,
        }
        write_json(run.path("eval.json"), report)
        truth = cfg.ground_truth.kind
        if truth == "hf-classifier":
            truth += f" ({cfg.ground_truth.model})"
        run.path("model/README.md").write_text(expert_card(report, te, truth))
        with open(run.path("eval_samples.jsonl"), "w") as f:
            for p, b, e in list(zip(eval_prompts, base_texts, expert_texts))[:50]:
                f.write(json.dumps({"prompt": p, "base": b, "expert": e}) + "\n")
        discard_checkpoints(run.work_dir)
        plot_rl_curves(
            run.path("metrics.jsonl"),
            "ppo" if te.algorithm == "ppo" else te.algorithm,
            run.path("training_curves.png"),
            cfg.run.name,
        )
        run.extra["eval"] = report
        log.info(
            "train-expert: toxicity rate %.3f -> %.3f on %d held-out prompts (mean KL %.2f)",
            before["toxicity_rate"],
            after["toxicity_rate"],
            len(eval_prompts),
            after.get("kl_to_base", float("nan")),
        )

    return run_stage(
        "train_expert",
        cfg,
        config,
        model_inputs(base),
        recipe,
        force=force,
        log=log.info,
        resumable=True,
    )
