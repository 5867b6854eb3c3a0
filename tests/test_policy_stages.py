"""The policy stages on the micro world, through the CLI: train-expert (PPO and GRPO),
make-pairs (resumable), re-rlhf, and the bad inputs a user can give them."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import PPO_STATS, micro_config
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_every_command_end_to_end_on_the_micro_world(tmp_path, micro_world):
    """Acceptance 2 and 4: the whole pipeline through the CLI; the expert at least halves the
    ground-truth toxicity of held-out completions (same prompts, same sampling). With
    run.device=cpu given explicitly (issue 12: the CPU path is the default's)."""
    cfg = micro_config(tmp_path, run__device="cpu", run__precision="fp32")
    run = tmp_path / "runs" / "m"
    for command in ("train-expert", "make-pairs", "irl", "evaluate", "re-rlhf"):
        res = invoke(command, cfg)
        assert res.exit_code == 0, f"{command}: {res.output}"
        stage = command.replace("-", "_")
        assert json.loads((run / stage / "manifest.json").read_text())["status"] == "complete"

    assert (run / "train_expert" / "training_curves.png").stat().st_size > 10_000
    ev = json.loads((run / "train_expert" / "eval.json").read_text())
    assert ev["expert"]["toxicity_rate"] <= 0.5 * ev["base"]["toxicity_rate"], ev
    assert ev["expert"]["kl_to_base"] > 0
    assert (run / "train_expert" / "model" / "config.json").is_file()
    card = (run / "train_expert" / "model" / "README.md").read_text()  # its model card
    assert card.startswith("---\nlibrary_name: transformers\n") and "base_model:" not in card
    before, after = ev["base"]["toxicity_rate"], ev["expert"]["toxicity_rate"]
    assert f"{before:.3f} (base) -> {after:.3f} (expert)" in card
    assert (run / "train_expert" / "samples.jsonl").is_file()
    log = pd.read_json(run / "train_expert" / "metrics.jsonl", lines=True)
    for key in PPO_STATS:
        assert key in log and log[key].notna().all()

    pairs = pd.read_parquet(run / "make_pairs" / "pairs.parquet")
    assert {"prompt", "chosen", "rejected", "chosen_score", "rejected_toxic", "split"} <= set(pairs)
    assert set(pairs["split"]) == {"train", "test"}
    assert pairs.groupby("prompt")["split"].nunique().max() == 1
    assert pairs["chosen_toxic"].mean() < pairs["rejected_toxic"].mean()

    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())
    assert metrics["data"]["heldout"]["n"] == 200 and "insult" in metrics["data"]["subtypes"]

    curves = json.loads((run / "re_rlhf" / "curves.json").read_text())
    assert set(curves) == {"ground_truth", "fa-irl", "irl"}
    for name, c in curves.items():
        points = c["seeds"]["0"]["points"]
        assert [p["step"] for p in points] == [0, 3, 6]
        assert points[-1]["toxicity_rate"] < points[0]["toxicity_rate"], name
    assert (run / "re_rlhf" / "curves.png").stat().st_size > 5000
    assert not list((run / "re_rlhf").rglob("*checkpoint*"))  # finished runs drop checkpoints

    # Other prompt parts than the expert was trained with could overlap its training prompts.
    before = (run / "make_pairs" / "manifest.json").read_bytes()
    res = invoke("make-pairs", cfg, "--set", "prompts.pairs_fraction=0.5")
    assert res.exit_code == 2 and "reuse prompts the expert was trained on" in res.output, (
        res.output
    )
    assert (run / "make_pairs" / "manifest.json").read_bytes() == before


def test_grpo_expert_halves_toxicity_too(tmp_path, micro_world):
    res = invoke("train-expert", micro_config(tmp_path, train_expert__algorithm="grpo"))
    assert res.exit_code == 0, res.output
    ev = json.loads((tmp_path / "runs/m/train_expert/eval.json").read_text())
    assert ev["algorithm"] == "grpo"
    assert ev["expert"]["toxicity_rate"] <= 0.5 * ev["base"]["toxicity_rate"], ev
    assert "kl_to_base" in ev["expert"]


def test_make_pairs_killed_half_way_resumes_to_the_same_pairs(tmp_path, micro_world, monkeypatch):
    import pipeline.stages.make_pairs as stage

    cfg = micro_config(
        tmp_path,
        make_pairs__expert_model="world",
        make_pairs__generation={"batch_size": 16, "max_new_tokens": 10},
    )
    clean = micro_config(
        tmp_path / "clean",
        make_pairs__expert_model="world",
        make_pairs__generation={"batch_size": 16, "max_new_tokens": 10},
    )
    assert invoke("make-pairs", clean).exit_code == 0
    expected = pd.read_parquet(tmp_path / "clean/runs/m/make_pairs/pairs.parquet")

    real_sample, calls = stage.sample, {"n": 0}

    def dying_sample(*a, **k):
        calls["n"] += 1
        if calls["n"] > 6:  # three batches of (base, expert), then "Ctrl-C"
            raise KeyboardInterrupt
        return real_sample(*a, **k)

    monkeypatch.setattr(stage, "sample", dying_sample)
    res = invoke("make-pairs", cfg)
    assert res.exit_code == 130
    assert not (tmp_path / "runs/m/make_pairs").exists()
    done = sorted((tmp_path / "runs/m/.make_pairs.partial/batches").glob("*.jsonl"))
    assert len(done) == 3
    done[1].write_bytes(done[1].read_bytes()[:-40])  # a damaged batch is sampled again
    monkeypatch.setattr(stage, "sample", real_sample)
    res = invoke("make-pairs", cfg)
    assert res.exit_code == 0 and "resuming" in res.output
    assert "is damaged" in res.output, res.output
    got = pd.read_parquet(tmp_path / "runs/m/make_pairs/pairs.parquet")
    pd.testing.assert_frame_equal(got, expected)


# ------------------------------------------------------------------------- bad input
def test_a_model_path_that_does_not_exist(tmp_path, micro_world):
    res = invoke(
        "train-expert", micro_config(tmp_path, train_expert__base_model=str(tmp_path / "nope"))
    )
    assert res.exit_code == 1 and "does not exist" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("manifest.json"))


def test_a_classifier_without_the_configured_label(tmp_path, micro_world):
    from tiny_models import build_roberta_classifier

    clf = build_roberta_classifier(tmp_path / "clf", labels=("LABEL_0", "LABEL_1"))
    res = invoke(
        "train-expert",
        micro_config(tmp_path, ground_truth={"kind": "hf-classifier", "model": str(clf)}),
    )
    assert res.exit_code == 2
    assert "has no label 'neutral'" in res.output and "label_0" in res.output.lower()


def test_a_prompts_file_without_prompt_text(tmp_path, micro_world):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text(
        "".join(
            json.dumps({"prompt": {"toxicity": 0.9}, "continuation": {"text": "x"}}) + "\n"
            for _ in range(5)
        )
    )
    res = invoke("train-expert", micro_config(tmp_path, prompts={"source": [str(bad)]}))
    assert res.exit_code == 3 and "prompt.text" in res.output


def test_zero_prompts_left_after_filtering_and_nothing_lost(tmp_path, micro_world):
    cfg = micro_config(tmp_path)
    assert invoke("make-pairs", cfg, "--set", "make_pairs.expert_model=world").exit_code == 0
    before = (tmp_path / "runs/m/make_pairs/manifest.json").read_bytes()
    res = invoke(
        "make-pairs",
        cfg,
        "--set",
        "make_pairs.expert_model=world",
        "--set",
        "make_pairs.prompt_toxicity_min=0.99",
    )
    assert res.exit_code == 3 and "no prompts left" in res.output
    assert (tmp_path / "runs/m/make_pairs/manifest.json").read_bytes() == before


def test_re_rlhf_needs_the_irl_rewards_it_names(tmp_path, micro_world):
    res = invoke("re-rlhf", micro_config(tmp_path))
    assert res.exit_code == 4 and "fairl irl" in res.output


def test_re_rlhf_killed_and_resumed_measures_each_step_once(tmp_path, micro_world, monkeypatch):
    """Killed after the step-4 measurement with the checkpoint at step 3: the resumed run redoes
    step 4 and its measurement replaces the first one, so the curve never runs backwards."""
    from pipeline.policy import ppo

    cfg = micro_config(
        tmp_path,
        re_rlhf__rewards={"ground_truth": "ground_truth"},
        re_rlhf__eval_every=1,
        re_rlhf__ppo={
            "steps": 6,
            "batch_size": 16,
            "mini_batch_size": 8,
            "checkpoint_every": 3,
            "lr": 3.0e-4,
        },
    )
    real_step, calls = ppo.PPOTrainer.step, {"n": 0}

    def dying_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(ppo.PPOTrainer, "step", dying_step)
    assert invoke("re-rlhf", cfg).exit_code == 130
    partial = tmp_path / "runs/m/.re_rlhf.partial/runs/ground_truth/seed-0"
    assert [p["step"] for p in json.loads((partial / "points.json").read_text())] == [0, 1, 2, 3, 4]
    assert json.loads((partial / "checkpoint/trainer_state.json").read_text())["step"] == 3
    monkeypatch.setattr(ppo.PPOTrainer, "step", real_step)
    res = invoke("re-rlhf", cfg)
    assert res.exit_code == 0 and "resuming" in res.output, res.output
    curves = json.loads((tmp_path / "runs/m/re_rlhf/curves.json").read_text())
    assert [p["step"] for p in curves["ground_truth"]["seeds"]["0"]["points"]] == list(range(7))
    assert not list((tmp_path / "runs/m/re_rlhf").rglob("*checkpoint*"))


def test_re_rlhf_seeds_give_distinct_curves_and_the_band_spans_them(tmp_path, micro_world):
    """Issue 9, item 2: each RL seed is its own run (its own prompt order and rollouts); the
    summary's final toxicity is the mean over the seeds with a t interval, and the plotted band
    is computed over the same runs."""
    import numpy as np
    from scipy import stats

    from pipeline.policy.plots import seed_band

    cfg = micro_config(
        tmp_path, re_rlhf__rewards={"ground_truth": "ground_truth"}, re_rlhf__seeds=[0, 1, 2]
    )
    res = invoke("re-rlhf", cfg)
    assert res.exit_code == 0, res.output
    out = tmp_path / "runs/m/re_rlhf"
    runs = json.loads((out / "curves.json").read_text())["ground_truth"]["seeds"]
    assert sorted(runs) == ["0", "1", "2"]
    kl = {s: [p["kl_to_base"] for p in r["points"][1:]] for s, r in runs.items()}
    assert kl["0"] != kl["1"] != kl["2"] != kl["0"]  # distinct RL runs, not one run copied
    assert len({r["points"][0]["toxicity_rate"] for r in runs.values()}) == 1  # same base

    finals = [runs[s]["points"][-1]["toxicity_rate"] for s in ("0", "1", "2")]
    s = json.loads((out / "summary.json").read_text())["ground_truth"]
    assert s["seeds"] == [0, 1, 2]
    assert s["final_toxicity"] == pytest.approx(np.mean(finals))
    half = stats.t.ppf(0.975, 2) * np.std(finals, ddof=1) / np.sqrt(3)
    # a rate's interval is clipped to [0, 1]
    lo_hi = [max(np.mean(finals) - half, 0.0), min(np.mean(finals) + half, 1.0)]
    assert s["final_toxicity_ci95"] == pytest.approx(lo_hi)
    assert s["final_toxicity_per_seed"] == dict(zip(["0", "1", "2"], finals, strict=True))

    steps, mean, lo, hi = seed_band(runs, "kl_to_base")
    assert steps == [0, 3, 6]
    kl = {s: [0.0, *v] for s, v in kl.items()}
    assert mean.tolist() == pytest.approx(np.mean(list(kl.values()), axis=0).tolist())
    assert lo.tolist() == np.min(list(kl.values()), axis=0).tolist()
    assert hi.tolist() == np.max(list(kl.values()), axis=0).tolist()
    assert (lo[1:] < hi[1:]).all()
    assert (out / "curves.png").stat().st_size > 5000
    log = pd.read_json(out / "metrics.jsonl", lines=True)
    for seed in (0, 1, 2):
        assert log[f"re_rlhf/ground_truth/seed-{seed}/kl_to_base"].notna().sum() == 2
