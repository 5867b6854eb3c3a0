"""Drive RL fine-tuning against any scorer: fairl's PPO, or TRL's GRPO / RLOO.

`train_ppo` is the loop both policy stages share: sample a batch of training prompts per step,
split it across ranks, run one PPO step, log, checkpoint (and resume from the checkpoint).
`measure_toxicity` reports the ground-truth toxicity of a policy's completions on held-out prompts,
with the same seeded sampling for every model compared.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.metrics import MetricsSink, drop_rows
from pipeline.policy.models import batch_seed, load_policy, never_emitted, sample
from pipeline.policy.ppo import (
    PPOTrainer,
    check_batch_split,
    reference_reward_norm,
    response_forward,
)
from pipeline.runtime import placement
from pipeline.scorers import Scorer

log = logging.getLogger("fairl.rl")


def accelerator():
    from accelerate import Accelerator  # heavy, needed here only: imported on first use

    return Accelerator(cpu=placement().device.type == "cpu")  # run.device


def score_fn_for(scorer: Scorer) -> Callable[..., torch.Tensor]:
    """(completions, their prompts) -> float32 rewards."""
    return lambda texts, prompts=None: torch.tensor(
        scorer.score_for(texts, prompts).reward, dtype=torch.float32
    )


def should_normalise(setting: str, scorer: Scorer) -> bool:
    # auto: the rewards whose scale is arbitrary (recovered, or another project's reward model)
    return setting == "always" or (
        setting == "auto" and scorer.name in ("learned", "hf-reward", "categories")
    )


def train_ppo(
    base_model: str,
    scorer: Scorer,
    prompts: Sequence[str],
    ppo_cfg,
    gen,
    seed: int,
    work_dir: Path,
    sink: MetricsSink,
    on_step: Callable | None = None,
    namespace: str = "ppo",
):
    """PPO from `base_model` against `scorer`; returns the trainer (its .policy is the result).
    Resumes from `work_dir/checkpoint` when an intact one exists (see `PPOTrainer.resume`), and
    first drops the log rows of the steps it will replay, so each step is logged once."""
    acc = accelerator()
    check_batch_split(ppo_cfg, acc.num_processes)  # before any model is loaded or sampled
    model, tok = load_policy(base_model)
    score_fn = score_fn_for(scorer)
    norm = None
    if should_normalise(ppo_cfg.normalize_reward, scorer):
        norm = reference_reward_norm(
            model,
            tok,
            score_fn,
            list(prompts[: ppo_cfg.normalize_samples]),
            gen,
            batch_seed(seed, "norm"),
        )
        log.info(
            "reward normalised on reference samples: gain %.4g, bias %.4g", norm.gain, norm.bias
        )
    trainer = PPOTrainer(model, tok, score_fn, ppo_cfg, gen, acc, norm)
    ckpt = work_dir / "checkpoint"
    if trainer.resume(ckpt):
        log.info("resuming PPO from step %d", trainer.step_count)
    samples_path = work_dir / "samples.jsonl"
    if acc.is_main_process:  # rows a killed run logged past its checkpoint (or any, without one)
        sink.rewind(trainer.step_count, f"{namespace}/score")
        drop_rows(samples_path, trainer.step_count)
    bar = tqdm(
        range(trainer.step_count, ppo_cfg.steps),
        desc=f"{namespace}: PPO",
        unit="step",
        disable=None if acc.is_main_process else True,
        leave=False,
    )
    for step in bar:
        rng = random.Random(batch_seed(seed, "prompts", step))
        batch = [prompts[rng.randrange(len(prompts))] for _ in range(ppo_cfg.batch_size)]
        mine = batch[acc.process_index :: acc.num_processes]
        stats = trainer.step(mine, seed=batch_seed(seed, "rollout", step, acc.process_index))
        stats = {k.replace("ppo/", f"{namespace}/"): v for k, v in stats.items()}
        if acc.is_main_process:
            sink.log(step, stats)
            bar.set_postfix(
                score=f"{stats[f'{namespace}/score']:.3f}", kl=f"{stats[f'{namespace}/kl']:.2f}"
            )
            if step % ppo_cfg.sample_every == 0 or step == ppo_cfg.steps - 1:
                with open(samples_path, "a") as f:
                    for p, c, r in trainer.last_samples[:4]:
                        f.write(
                            json.dumps({"step": step, "prompt": p, "completion": c, "score": r})
                            + "\n"
                        )
        if on_step is not None:
            on_step(step + 1, trainer)
        if (step + 1) % ppo_cfg.checkpoint_every == 0 and step + 1 < ppo_cfg.steps:
            trainer.save_checkpoint(ckpt)
    bar.close()
    return trainer


def discard_checkpoints(work_dir: Path) -> None:
    """Drop the RL checkpoints of a finished run, so they are not published with the stage."""
    for name in ("checkpoint", "checkpoint.tmp", ".checkpoint.old"):
        if (work_dir / name).exists():
            shutil.rmtree(work_dir / name)


def train_trl(
    algorithm: str,
    base_model: str,
    scorer: Scorer,
    prompts: Sequence[str],
    trl_cfg,
    gen,
    seed: int,
    work_dir: Path,
    sink: MetricsSink,
    namespace: str = "trl",
    report_to: Sequence[str] = (),
):
    """GRPO or RLOO through TRL, with the same reward interface. Returns (model, tokenizer).
    `report_to` (run.report_to's trackers) goes to TRL, which logs to them live (tensorboard:
    under <work_dir>/trl/runs/); the metrics sink then gets TRL's log history for
    metrics.jsonl only, so no tracker sees a value twice. TRL's progress bar is on."""
    from datasets import Dataset  # TRL's path only: imported on first use

    model, tok = load_policy(base_model)
    score_fn = score_fn_for(scorer)
    if hasattr(scorer, "prepare"):  # dynamic scaling: the base LM's reference samples, first
        scorer.prepare(model, tok, prompts, gen, seed)
    common = dict(
        output_dir=str(work_dir / "trl"),
        use_cpu=placement().device.type == "cpu",  # run.device
        bf16=placement().dtype == torch.bfloat16,  # run.precision (fp32 on the CPU)
        disable_dropout=True,
        per_device_train_batch_size=trl_cfg.batch_size,
        num_generations=trl_cfg.num_generations,
        max_completion_length=gen.max_new_tokens,
        temperature=gen.temperature,
        top_p=gen.top_p,
        learning_rate=trl_cfg.lr,
        beta=trl_cfg.beta,
        max_steps=trl_cfg.steps,
        logging_steps=1,
        report_to=list(report_to),
        disable_tqdm=False,
        save_strategy="no",
        seed=seed,
        data_seed=seed,
        generation_kwargs={"suppress_tokens": never_emitted(model, tok)},
    )  # PAD is never a response token
    if algorithm == "grpo":
        from trl import GRPOConfig as Config  # TRL (seconds to import): GRPO / RLOO only
        from trl import GRPOTrainer as Trainer

        common["scale_rewards"] = trl_cfg.scale_rewards
    else:
        from trl import RLOOConfig as Config
        from trl import RLOOTrainer as Trainer

    def reward(prompts=None, completions=None, log_metric=None, **_):
        if hasattr(scorer, "log_metric"):  # a scaled reward reports its scales into TRL's log
            scorer.log_metric = log_metric
        return score_fn(list(completions), list(prompts)).tolist()

    trainer = Trainer(
        model=model,
        reward_funcs=[reward],
        args=Config(**common),
        train_dataset=Dataset.from_dict({"prompt": list(prompts)}),
        processing_class=tok,
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback  # TRL path only

    class Bar(ProgressCallback):  # the progress bar without its dump of every log dict
        def on_log(self, *args, **kwargs):
            pass

    for cb in (PrinterCallback, ProgressCallback):  # their dict dumps duplicate our metrics sink
        trainer.remove_callback(cb)
    trainer.add_callback(Bar())
    sink.rewind(0, namespace)  # this run starts afresh: rows of a killed one are replaced
    trainer.train()
    for i, row in enumerate(trainer.state.log_history):
        sink.log(
            int(row.get("step", i)),
            {
                f"{namespace}/{k}": v
                for k, v in row.items()
                if isinstance(v, (int, float)) and k != "step"
            },
            track=not report_to,  # TRL logged these to the trackers itself
        )
    return trainer.model.eval(), tok


@torch.no_grad()
def measure_toxicity(
    model, tok, prompts: Sequence[str], gen, seed: int, ground_truth: Scorer, reference=None
) -> tuple[dict, list[str]]:
    """Ground-truth toxicity rate and mean reward of completions to `prompts` (seeded per batch,
    so every model sees the same sampling noise), and the mean sequence KL to `reference`."""
    texts, kls = [], []
    if reference is not None:
        reference = reference.to(model.device)
    starts = range(0, len(prompts), gen.batch_size)
    bar = tqdm(starts, desc="measure: held-out prompts", unit="batch", disable=None, leave=False)
    for b, i in enumerate(bar):
        p_ids, p_mask, r_ids, r_mask, t = sample(
            model,
            tok,
            prompts[i : i + gen.batch_size],
            gen.max_new_tokens,
            gen.temperature,
            gen.top_p,
            seed=batch_seed(seed, "measure", b),
            max_prompt_tokens=gen.max_prompt_tokens,
        )
        texts += t
        if reference is not None:
            ids, mask = torch.cat([p_ids, r_ids], 1), torch.cat([p_mask, r_mask], 1)
            n, pad = p_ids.shape[1], never_emitted(model, tok)
            lp, _, _ = response_forward(model, ids, mask, n, gen.temperature, False, pad)
            rl, _, _ = response_forward(reference, ids, mask, n, gen.temperature, False, pad)
            kls.append(((lp - rl) * r_mask).sum(-1))
    s = ground_truth.score(texts)
    out = {
        "toxicity_rate": float(np.mean(s.toxic)),
        "mean_reward": float(np.mean(s.reward)),
        "n": len(texts),
    }
    if s.toxicity is not None:
        out["mean_toxicity"] = float(np.mean(s.toxicity))
    for c, v in s.subtypes.items():  # the share of completions carrying each category
        out[f"toxicity_rate/{c}"] = float(np.mean(np.asarray(v, float) > 0.5))
    if kls:
        out["kl_to_base"] = float(torch.cat(kls).float().mean().cpu())
    return out, texts
