"""`fairl train-expert` and `fairl re-rlhf`.

train-expert  base LM -> detoxified expert by RL against the ground truth (paper Section 5), on
              the prompts' training part with prompt.toxicity > 0.3. Writes
              `train_expert/model/` (save_pretrained, tokenizer included), `eval.json` (ground-truth
              toxicity of base vs expert on held-out prompts, same sampling; mean KL of the expert
              to the base), `metrics.jsonl`, `samples.jsonl`.
re-rlhf       fine-tunes the base LM with each reward of `re_rlhf.rewards` (the ground truth, an
              FA-IRL reward, a standard IRL reward, ...), measuring the ground-truth toxicity rate
              on held-out prompts every `eval_every` steps. Writes `curves.json`, `curves.png`
              (the paper's Figure 3, right), `metrics.jsonl`, `summary.json`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from pipeline import world
from pipeline.artifacts import (StageSkipped, require_stage, stage_run, wait_for_all_ranks,
                                write_json)
from pipeline.config import ExperimentConfig, to_dict
from pipeline.data.prompts import select_prompts
from pipeline.errors import ConfigError, FairlError
from pipeline.metrics import MetricsSink
from pipeline.policy.models import load_policy, resolve_model
from pipeline.policy.rl import discard_checkpoints, measure, rl_train, trl_train
from pipeline.scorers import make_scorer, reward_scorer

log = logging.getLogger("fairl.policy")


def shared_config(cfg: ExperimentConfig) -> dict:
    return {"ground_truth": to_dict(cfg.ground_truth), "prompts": to_dict(cfg.prompts),
            "world": to_dict(cfg.world) if cfg.world else None, "run.seed": cfg.run.seed}


def model_inputs(path: str) -> dict:
    """A local model directory is an input whose files are hashed; a hub name is its own id."""
    return {"base_model": Path(path)} if Path(path).is_dir() else {}


# --------------------------------------------------------------------------- train-expert
def train_expert_run(cfg: ExperimentConfig, force: bool = False) -> Path:
    te = cfg.train_expert
    base = resolve_model(world.resolve(te.base_model, cfg, "base-lm"), "base model")
    train_prompts = [p.text for p in select_prompts(cfg, "train", te.prompt_toxicity_min)]
    eval_prompts = [p.text for p in select_prompts(cfg, "eval", te.prompt_toxicity_min,
                                                   cfg.prompts.max_eval_prompts)]
    gt = make_scorer(cfg.ground_truth)
    config = {"train_expert": to_dict(te), **shared_config(cfg), "base_model": base}
    try:
        with stage_run("train_expert", cfg.run.root / cfg.run.name, config, model_inputs(base),
                       seed=cfg.run.seed, force=force, log=log.info, resumable=True) as run_:
            log.info("train-expert: %s with %s on %d prompts (toxicity > %s); %d held out",
                     base, te.algorithm, len(train_prompts), te.prompt_toxicity_min, len(eval_prompts))
            with MetricsSink(run_.path("metrics.jsonl") if run_.is_main else None) as sink, run_.timed("train"):
                if te.algorithm == "ppo":
                    trainer = rl_train(base, gt, train_prompts, te.ppo, te.generation, cfg.run.seed,
                                       run_.work_dir, sink, namespace="ppo")
                    expert, tok = trainer.policy, trainer.tok
                else:
                    expert, tok = trl_train(te.algorithm, base, gt, train_prompts, te.trl,
                                            te.generation, cfg.run.seed, run_.work_dir, sink,
                                            namespace=te.algorithm)
            if not run_.is_main:
                return run_.final_dir   # other ranks trained with rank 0; rank 0 writes and evaluates
            expert.save_pretrained(str(run_.path("model")))
            tok.save_pretrained(str(run_.path("model")))
            # Base vs expert on held-out prompts, same sampling seeds.
            with run_.timed("evaluate"):
                base_model, base_tok = load_policy(base)
                before, base_texts = measure(base_model, base_tok, eval_prompts, te.generation,
                                             cfg.run.seed, gt)
                after, expert_texts = measure(expert.eval(), tok, eval_prompts, te.generation,
                                              cfg.run.seed, gt, reference=base_model)
            report = {"algorithm": te.algorithm, "base_model": base, "n_eval_prompts": len(eval_prompts),
                      "base": before, "expert": after,
                      "toxicity_reduction": 1 - after["toxicity_rate"] / before["toxicity_rate"]
                      if before["toxicity_rate"] > 0 else None}
            write_json(run_.path("eval.json"), report)
            with open(run_.path("eval_samples.jsonl"), "w") as f:
                for p, b, e in list(zip(eval_prompts, base_texts, expert_texts))[:50]:
                    f.write(json.dumps({"prompt": p, "base": b, "expert": e}) + "\n")
            discard_checkpoints(run_.work_dir)
            run_.extra["eval"] = report
            log.info("train-expert: toxicity rate %.3f -> %.3f on %d held-out prompts (mean KL %.2f)",
                     before["toxicity_rate"], after["toxicity_rate"], len(eval_prompts),
                     after.get("kl_to_base", float("nan")))
    except StageSkipped:
        pass
    return cfg.stage_dir("train_expert")


# ------------------------------------------------------------------------------- re-rlhf
def read_state(path: Path, valid) -> tuple[Any, Optional[str]]:
    """A JSON state file that a resumed run reads: (state, None), or (None, None) when it is
    absent, or (None, why) when it does not parse or fails `valid` (a write cut short, a damaged
    disk). Such a file would fail every later resume: the caller removes it and redoes its part."""
    if not path.is_file():
        return None, None
    try:
        state = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:   # ValueError: bad JSON or not UTF-8
        return None, str(e)
    return (state, None) if valid(state) else (None, "not the structure fairl writes")


def _read_curves(path: Path, is_main: bool) -> dict:
    """The rewards re-rlhf finished before an interruption. Unreadable, it is removed and every
    reward is redone (any rank reading it later sees it absent: the same answer)."""
    curves, problem = read_state(path, _valid_curves)
    if problem and is_main:
        log.warning("%s is unreadable (%s): removing it and redoing every reward", path, problem)
        path.unlink()
    return curves or {}


def _read_points(work: Path, name: str, is_main: bool) -> Optional[list]:
    """The measurements saved beside a reward's checkpoint. Unreadable, they are lost, so the
    checkpoint cannot be resumed either: both are removed and the reward restarts from step 0.
    Every rank decides on the same file before rank 0 removes anything."""
    saved = work / "points.json"
    points, problem = read_state(saved, _valid_points)
    if problem:
        wait_for_all_ranks()
        if is_main:
            log.warning("%s is unreadable (%s): removing it and the checkpoint beside it; the %s "
                        "reward restarts from step 0", saved, problem, name)
            saved.unlink()
            discard_checkpoints(work)
        wait_for_all_ranks()
    return points


def _valid_points(points) -> bool:
    return (isinstance(points, list) and len(points) > 0
            and all(isinstance(p, dict) and type(p.get("step")) is int
                    and isinstance(p.get("toxicity_rate"), (int, float)) for p in points)
            and points[0]["step"] == 0)


def _valid_curves(curves) -> bool:
    return isinstance(curves, dict) and all(
        isinstance(c, dict) and isinstance(c.get("reward"), str) and _valid_points(c.get("points"))
        for c in curves.values())


def resolve_reward(spec: str, cfg: ExperimentConfig) -> str:
    if spec.startswith("irl:"):
        method = spec.split(":", 1)[1]
        irl_dir = cfg.stage_dir("irl")
        require_stage(irl_dir, "irl", "irl")
        seed = min(cfg.irl.seeds)
        path = irl_dir / "rewards" / method / f"seed-{seed}"
        if not path.is_dir():
            raise FairlError(f"re_rlhf reward {spec!r}: {path} does not exist",
                             hint=f"irl trained {', '.join(cfg.irl.methods)}")
        return str(path)
    return spec


def re_rlhf_run(cfg: ExperimentConfig, force: bool = False) -> Path:
    rr = cfg.re_rlhf
    if not rr.rewards:
        raise ConfigError("re_rlhf.rewards is empty", hint="name at least one reward")
    base = resolve_model(world.resolve(rr.base_model or cfg.train_expert.base_model, cfg, "base-lm"),
                         "base model")
    rewards = {name: resolve_reward(spec, cfg) for name, spec in rr.rewards.items()}
    tox_min = cfg.train_expert.prompt_toxicity_min
    train_prompts = [p.text for p in select_prompts(cfg, "train", tox_min)]
    eval_prompts = [p.text for p in select_prompts(cfg, "eval", tox_min, cfg.prompts.max_eval_prompts)]
    gt = make_scorer(cfg.ground_truth)
    inputs = {**model_inputs(base), **{f"reward:{k}": Path(v) for k, v in rewards.items() if Path(v).is_dir()}}
    config = {"re_rlhf": to_dict(rr), **shared_config(cfg), "base_model": base, "rewards": rewards,
              "prompt_toxicity_min": tox_min}
    try:
        with stage_run("re_rlhf", cfg.run.root / cfg.run.name, config, inputs, seed=cfg.run.seed,
                       force=force, log=log.info, resumable=True) as run_:
            _re_rlhf(run_, cfg, base, rewards, train_prompts, eval_prompts, gt)
    except StageSkipped:
        pass
    return cfg.stage_dir("re_rlhf")


def _re_rlhf(run_, cfg, base, rewards, train_prompts, eval_prompts, gt) -> None:
    rr = cfg.re_rlhf
    if not run_.is_main:   # another rank of a data-parallel launch: train alongside rank 0 only
        done = _read_curves(run_.work_dir / "curves.json", is_main=False)
        for name, spec in rewards.items():
            if done.get(name, {}).get("done"):
                continue
            _read_points(run_.work_dir / "runs" / name, name, is_main=False)
            rl_train(base, reward_scorer(spec, gt), train_prompts, rr.ppo, rr.generation,
                     cfg.run.seed, run_.work_dir / "runs" / name, MetricsSink(None))
        return
    curves_path = run_.path("curves.json")
    curves = _read_curves(curves_path, is_main=True)
    base_model, base_tok = load_policy(base)
    start, _ = measure(base_model, base_tok, eval_prompts, rr.generation, cfg.run.seed, gt)
    with MetricsSink(run_.path("metrics.jsonl")) as sink:
        for name, spec in rewards.items():
            if curves.get(name, {}).get("done"):
                discard_checkpoints(run_.work_dir / "runs" / name)
                continue   # finished before an interruption
            scorer = reward_scorer(spec, gt)
            work = run_.work_dir / "runs" / name
            work.mkdir(parents=True, exist_ok=True)
            saved = work / "points.json"   # measurements survive an interruption with the checkpoint
            points = _read_points(work, name, is_main=True) or [{"step": 0, **start}]
            log.info("re-rlhf: %s reward (%s)", name, spec)
            rewound = []

            def on_step(step, trainer, points=points, name=name, rewound=rewound):
                if step % rr.eval_every == 0 or step == rr.ppo.steps:
                    # after a resume from an earlier checkpoint, steps past it are measured anew
                    # (the first measurement is the first step past it)
                    points[:] = [p for p in points if p["step"] < step]
                    if not rewound:
                        sink.rewind(step, f"re_rlhf/{name}/toxicity_rate")
                        rewound.append(step)
                    m, _ = measure(trainer.policy, trainer.tok, eval_prompts, rr.generation,
                                   cfg.run.seed, gt, reference=base_model)
                    points.append({"step": step, **m})
                    write_json(saved, points)
                    sink.log(step, {f"re_rlhf/{name}/toxicity_rate": m["toxicity_rate"],
                                    f"re_rlhf/{name}/kl_to_base": m["kl_to_base"]})

            if rr.algorithm == "ppo":
                rl_train(base, scorer, train_prompts, rr.ppo, rr.generation, cfg.run.seed, work, sink,
                         on_step=on_step, namespace=f"re_rlhf/{name}")
            else:
                model, tok = trl_train(rr.algorithm, base, scorer, train_prompts, rr.trl, rr.generation,
                                       cfg.run.seed, work, sink, namespace=f"re_rlhf/{name}")
                m, _ = measure(model, tok, eval_prompts, rr.generation, cfg.run.seed, gt, reference=base_model)
                points.append({"step": rr.trl.steps, **m})
            curves[name] = {"reward": spec, "points": points, "done": True}
            write_json(curves_path, curves)
            discard_checkpoints(work)
    from pipeline.policy.plots import plot_curves

    plot_curves(curves, run_.path("curves.png"), cfg.run.name)
    summary = {name: {"reward": c["reward"], "initial_toxicity": c["points"][0]["toxicity_rate"],
                      "final_toxicity": c["points"][-1]["toxicity_rate"],
                      "final_kl": c["points"][-1].get("kl_to_base")} for name, c in curves.items()}
    write_json(run_.path("summary.json"), summary)
    run_.extra["summary"] = summary
    for name, s in summary.items():
        log.info("re-rlhf: %-14s toxicity %.3f -> %.3f", name, s["initial_toxicity"], s["final_toxicity"])
