"""`fairl re-rlhf`: fine-tune the base LM with extracted rewards and measure its toxicity.

Each reward of `re_rlhf.rewards` (the ground truth, an FA-IRL reward, a standard IRL reward, ...)
fine-tunes the base LM once per RL seed of `re_rlhf.seeds`; the ground-truth toxicity rate on
held-out prompts, the KL to the base and (in the hard world) the spurious cue's rate are measured
every `eval_every` steps. Writes `curves.json` (every run's measurements), `curves.png` (the
paper's Figure 3, right: mean over seeds with a band, the KL on its own axis), `metrics.jsonl`,
`summary.json` (per reward, the final values' mean and 95% CI over seeds). An interrupted run
resumes: runs already done are kept, the current one continues from its checkpoint with the
measurements saved beside it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import world
from pipeline.artifacts import StageRun, require_stage, run_stage, write_json, write_text
from pipeline.config import ExperimentConfig, fingerprint
from pipeline.data.prompts import prompts_config, select_prompts
from pipeline.distributed import wait_for_all_ranks
from pipeline.errors import ConfigError, FairlError
from pipeline.evaluate.metrics import t_interval
from pipeline.hub import model_inputs, resolve_model
from pipeline.irl.reward import reward_dir
from pipeline.metrics import MetricsSink, stage_sink
from pipeline.policy.models import load_policy
from pipeline.policy.plots import plot_curves
from pipeline.policy.report import rare_category, report
from pipeline.policy.rl import discard_checkpoints, measure_toxicity, train_ppo, train_trl
from pipeline.policy.scaling import ScaledCategoryScorer
from pipeline.scorers import Scorer, make_scorer, reward_inputs, reward_scorer

log = logging.getLogger("fairl.re_rlhf")


def run(cfg: ExperimentConfig, force: bool = False) -> Path:
    rr = cfg.re_rlhf
    if not rr.rewards:
        raise ConfigError("re_rlhf.rewards is empty", hint="name at least one reward")
    # 1. The base LM and each reward (a scorer name, or an irl:<method> reward directory).
    base = resolve_model(
        world.resolve(rr.base_model or cfg.train_expert.base_model, cfg, "base-lm"), "base model"
    )
    rewards = {name: resolve_reward(spec, cfg) for name, spec in rr.rewards.items()}
    # 2. The RL prompts and the held-out prompts of train-expert, and the ground truth.
    tox_min = cfg.train_expert.prompt_toxicity_min
    train_prompts = [p.text for p in select_prompts(cfg, "train", tox_min)]
    eval_prompts = [
        p.text
        for p in select_prompts(cfg, "eval", tox_min, cfg.prompts.max_eval_prompts)
        for _ in range(rr.eval_samples)  # each sampled eval_samples times (seeded per batch)
    ]
    gt = make_scorer(cfg.ground_truth)
    inputs = {
        **model_inputs(base),
        **{f"reward:{k}": p for k, v in rewards.items() for p in reward_inputs(v).values()},
    }
    config = {
        "re_rlhf": fingerprint(rr),
        **prompts_config(cfg),
        "base_model": base,
        "rewards": rewards,
        "prompt_toxicity_min": tox_min,
    }

    def recipe(run: StageRun) -> None:
        # 3. RL with each reward, then the curves and the summary.
        _re_rlhf(run, cfg, base, rewards, train_prompts, eval_prompts, gt)

    return run_stage(
        "re_rlhf", cfg, config, inputs, recipe, force=force, log=log.info, resumable=True
    )


def resolve_reward(spec: str, cfg: ExperimentConfig) -> str:
    """`irl:<method>`: the published reward of that method at the smallest irl seed;
    `irl-categories:<method>[#route]`: the category rewards of that method and seed
    (pipeline.scorers.CategoryRewardScorer); any other spec (a scorer name, a reward directory)
    is returned as it is."""
    if spec.startswith("irl-categories:"):
        method, _, mode = spec.removeprefix("irl-categories:").partition("#")
        if mode not in ("", "route", "sum"):
            raise ConfigError(
                f"re_rlhf reward {spec!r}: #{mode} is not a way to combine category rewards",
                hint="irl-categories:<method> sums them, irl-categories:<method>#route routes",
            )
        if cfg.irl.categories is None:
            raise ConfigError(
                f"re_rlhf reward {spec!r} needs category rewards, and irl.categories is not set",
                hint="set irl.categories (a list of subtypes, or all) and run irl",
            )
        root = cfg.stage_dir("irl") / "categories"
        require_stage(cfg.stage_dir("irl"), "irl", "irl")
        if not (root / "categories.json").is_file():
            raise FairlError(
                f"re_rlhf reward {spec!r}: the published irl has no category rewards ({root})",
                hint="run irl again with irl.categories set (fairl irl --force)",
            )
        if method not in cfg.irl.methods:
            raise FairlError(
                f"re_rlhf reward {spec!r}: irl trained no {method!r}",
                hint=f"irl trained {', '.join(cfg.irl.methods)}",
            )
        return f"categories:{mode or 'sum'}:{method}:{min(cfg.irl.seeds)}:{root}"
    if not spec.startswith("irl:"):
        return spec
    method = spec.split(":", 1)[1]
    irl_dir = cfg.stage_dir("irl")
    require_stage(irl_dir, "irl", "irl")
    path = reward_dir(irl_dir, method, min(cfg.irl.seeds))
    if not path.is_dir():
        raise FairlError(
            f"re_rlhf reward {spec!r}: {path} does not exist",
            hint=f"irl trained {', '.join(cfg.irl.methods)}",
        )
    return str(path)


def _re_rlhf(run: StageRun, cfg, base, rewards, train_prompts, eval_prompts, gt) -> None:
    """Fine-tune the base LM with each reward and each RL seed in turn, measuring toxicity (and
    the world's style markers) every eval_every steps."""
    rr = cfg.re_rlhf
    jobs = [(name, spec, seed) for name, spec in rewards.items() for seed in rr.seeds]
    if not run.is_main:  # another rank of a data-parallel launch: train alongside rank 0 only
        done = _read_curves(run.work_dir / "curves.json", is_main=False)
        for name, spec, seed in jobs:
            if _is_done(done, name, seed):
                continue
            work = _work_dir(run, name, seed)
            _read_points(work, name, is_main=False)
            train_ppo(
                base,
                reward_scorer(spec, gt),
                train_prompts,
                rr.ppo,
                rr.generation,
                cfg.run.seed + seed,
                work,
                MetricsSink(None),
            )
        return
    markers = world.style_markers(cfg)
    curves_path = run.path("curves.json")
    curves = _read_curves(curves_path, is_main=True)
    base_model, base_tok = load_policy(base)

    def measure(model, tok, reference=None) -> dict:
        # the same sampling seed for every policy: differences are the policies'
        m, texts = measure_toxicity(
            model, tok, eval_prompts, rr.generation, cfg.run.seed, gt, reference=reference
        )
        for key, phrase in markers.items():
            m[key] = float(np.mean([phrase in t.lower() for t in texts])) if texts else 0.0
        return m

    start = {**measure(base_model, base_tok), "kl_to_base": 0.0}  # the base, at KL 0 to itself
    with stage_sink(run, cfg.run.trackers, cfg.run.name) as sink:
        for name, spec, seed in jobs:
            work = _work_dir(run, name, seed)
            if _is_done(curves, name, seed):
                discard_checkpoints(work)
                continue  # finished before an interruption
            scorer = scorer_for(name, spec, gt, rr)
            work.mkdir(parents=True, exist_ok=True)
            saved = work / "points.json"  # measurements survive an interruption with the checkpoint
            points = _read_points(work, name, is_main=True) or [{"step": 0, **start}]
            namespace = f"re_rlhf/{name}/seed-{seed}"
            log.info("re-rlhf: %s reward (%s), RL seed %d", name, spec, seed)
            rewound = []

            def on_step(step, trainer, points=points, ns=namespace, rewound=rewound, saved=saved):
                if step % rr.eval_every == 0 or step == rr.ppo.steps:
                    # after a resume from an earlier checkpoint, steps past it are measured anew
                    # (the first measurement is the first step past it)
                    points[:] = [p for p in points if p["step"] < step]
                    if not rewound:
                        sink.rewind(step, f"{ns}/toxicity_rate")
                        rewound.append(step)
                    m = measure(trainer.policy, trainer.tok, reference=base_model)
                    points.append({"step": step, **m})
                    write_json(saved, points)
                    sink.log(step, {f"{ns}/{k}": m[k] for k in logged(m, markers)})

            if rr.algorithm == "ppo":
                train_ppo(
                    base,
                    scorer,
                    train_prompts,
                    rr.ppo,
                    rr.generation,
                    cfg.run.seed + seed,
                    work,
                    sink,
                    on_step=on_step,
                    namespace=namespace,
                )
            else:
                model, tok = train_trl(
                    rr.algorithm,
                    base,
                    scorer,
                    train_prompts,
                    rr.trl,
                    rr.generation,
                    cfg.run.seed + seed,
                    work,
                    sink,
                    namespace=namespace,
                    report_to=cfg.run.trackers,
                )
                points.append({"step": rr.trl.steps, **measure(model, tok, reference=base_model)})
            entry = curves.setdefault(name, {"reward": spec, "seeds": {}})
            entry["seeds"][str(seed)] = {"points": points, "done": True}
            write_json(curves_path, curves)
            discard_checkpoints(work)
    plot_curves(curves, run.path("curves.png"), cfg.run.name, markers=tuple(markers))
    summary = {name: summarise(c, tuple(markers)) for name, c in curves.items()}
    write_json(run.path("summary.json"), summary)
    run.extra["summary"] = summary
    if any(k.startswith("initial_toxicity/") for s in summary.values() for k in s):
        rare = rare_category(rewards)
        write_text(run.path("report.md"), report(summary, cfg.run.name, rare))
    for name, s in summary.items():
        ci = s["final_toxicity_ci95"]
        log.info(
            "re-rlhf: %-14s toxicity %.3f -> %.3f%s over %d seed(s)",
            name,
            s["initial_toxicity"],
            s["final_toxicity"],
            f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "",
            len(s["seeds"]),
        )


def scorer_for(name: str, spec: str, gt, rr) -> Scorer:
    """The reward `name` (resolved `spec`) as a scorer, with DR-IRL's dynamic scaling when
    re_rlhf.dynamic_scaling.rewards names it."""
    scorer = reward_scorer(spec, gt)
    if name in rr.dynamic_scaling.rewards:
        return ScaledCategoryScorer(scorer, rr.dynamic_scaling)
    return scorer


CURVE_KEYS = ("toxicity_rate", "kl_to_base")  # logged at every measurement of a run


def logged(m: dict, markers) -> list[str]:
    """The keys of a measurement logged at every step: toxicity, KL, style markers and the
    per-category toxicity rates."""
    return [*CURVE_KEYS, *markers, *(k for k in m if k.startswith("toxicity_rate/"))]


def summarise(curve: dict, markers: tuple[str, ...] = ()) -> dict:
    """One reward's runs: the toxicity before RL, and at the last step the mean over RL seeds
    with a 95% CI (Student t; None for one seed) and each seed's value, for the toxicity rate,
    the KL to the base, each style marker's rate and each category's toxicity rate (with its
    rate before RL). A rate's interval is clipped to [0, 1], where a rate lives, and the KL's
    at 0 (with few seeds near 0 the t interval reaches below it)."""
    runs = curve["seeds"]
    seeds = sorted(runs, key=int)
    out: dict[str, Any] = {
        "reward": curve["reward"],
        "seeds": [int(s) for s in seeds],
        "initial_toxicity": runs[seeds[0]]["points"][0]["toxicity_rate"],
    }
    categories = [k for k in runs[seeds[0]]["points"][-1] if k.startswith("toxicity_rate/")]
    for key, label in (
        ("toxicity_rate", "toxicity"),
        ("kl_to_base", "kl"),
        *[(m, m) for m in markers],
        *[(k, k.replace("toxicity_rate/", "toxicity/")) for k in categories],
    ):
        finals = [runs[s]["points"][-1].get(key) for s in seeds]
        if any(v is None for v in finals):
            continue
        mean, ci = t_interval(finals)
        if ci is not None:  # a rate lives in [0, 1], a KL (an expectation of one) above 0
            ci = [max(ci[0], 0.0), ci[1] if key == "kl_to_base" else min(ci[1], 1.0)]
        if key in categories:
            out[f"initial_{label}"] = runs[seeds[0]]["points"][0].get(key)
        out[f"final_{label}"] = mean
        out[f"final_{label}_ci95"] = ci
        out[f"final_{label}_per_seed"] = dict(zip(seeds, finals, strict=True))
    if "final_kl" not in out:
        out["final_kl"] = None
    return out


def _work_dir(run: StageRun, name: str, seed: int) -> Path:
    return run.work_dir / "runs" / name / f"seed-{seed}"


def _is_done(curves: dict, name: str, seed: int) -> bool:
    return bool(curves.get(name, {}).get("seeds", {}).get(str(seed), {}).get("done"))


# ------------------------------------------------------------------- resumable state
def _read_state(path: Path, valid) -> tuple[Any, str | None]:
    """A JSON state file that a resumed run reads: (state, None), or (None, None) when it is
    absent, or (None, why) when it does not parse or fails `valid` (a write cut short, a damaged
    disk). Such a file would fail every later resume: the caller removes it and redoes its part."""
    if not path.is_file():
        return None, None
    try:
        state = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:  # ValueError: bad JSON or not UTF-8
        return None, str(e)
    return (state, None) if valid(state) else (None, "not the structure fairl writes")


def _read_curves(path: Path, is_main: bool) -> dict:
    """The rewards re-rlhf finished before an interruption. Unreadable, it is removed and every
    reward is redone (any rank reading it later sees it absent: the same answer)."""
    curves, problem = _read_state(path, _valid_curves)
    if problem and is_main:
        log.warning("%s is unreadable (%s): removing it and redoing every reward", path, problem)
        path.unlink()
    return curves or {}


def _read_points(work: Path, name: str, is_main: bool) -> list | None:
    """The measurements saved beside a reward's checkpoint. Unreadable, they are lost, so the
    checkpoint cannot be resumed either: both are removed and the reward restarts from step 0.
    Every rank decides on the same file before rank 0 removes anything."""
    saved = work / "points.json"
    points, problem = _read_state(saved, _valid_points)
    if problem:
        wait_for_all_ranks()
        if is_main:
            log.warning(
                "%s is unreadable (%s): removing it and the checkpoint beside it; the %s "
                "reward restarts from step 0",
                saved,
                problem,
                name,
            )
            saved.unlink()
            discard_checkpoints(work)
        wait_for_all_ranks()
    return points


def _valid_points(points) -> bool:
    return (
        isinstance(points, list)
        and len(points) > 0
        and all(
            isinstance(p, dict)
            and type(p.get("step")) is int
            and isinstance(p.get("toxicity_rate"), (int, float))
            for p in points
        )
        and points[0]["step"] == 0
    )


def _valid_curves(curves) -> bool:
    return isinstance(curves, dict) and all(
        isinstance(c, dict)
        and isinstance(c.get("reward"), str)
        and isinstance(c.get("seeds"), dict)
        and all(isinstance(r, dict) and _valid_points(r.get("points")) for r in c["seeds"].values())
        for c in curves.values()
    )
