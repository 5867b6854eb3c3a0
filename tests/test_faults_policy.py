"""Faults in the policy stages' resumable state (issue 7, cases 4 and 9), through the CLI on the
micro world: a damaged checkpoint or state file is reported, removed and replaced by the
previous checkpoint or a restart, never a traceback; a resumed run logs each step once."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest
from conftest import micro_config
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()
PPO = {
    "steps": 6,
    "batch_size": 16,
    "mini_batch_size": 8,
    "checkpoint_every": 2,
    "sample_every": 1,
    "lr": 3.0e-4,
}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def steps(path, key=None):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [r["step"] for r in rows if key is None or key in r]


def interrupt_at_call(monkeypatch, n):
    """Ctrl-C at the n-th PPO step of this process (the steps before it run and are logged)."""
    from pipeline.policy import ppo

    real_step, calls = ppo.PPOTrainer.step, {"n": 0}

    def dying_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(ppo.PPOTrainer, "step", dying_step)
    return lambda: monkeypatch.setattr(ppo.PPOTrainer, "step", real_step)


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def assert_expert_logs_each_step_once(run):
    assert steps(run / "train_expert" / "metrics.jsonl") == list(range(PPO["steps"]))
    per_step = Counter(steps(run / "train_expert" / "samples.jsonl"))
    assert sorted(per_step) == list(range(PPO["steps"])) and set(per_step.values()) == {4}


def test_resumed_train_expert_logs_each_step_once(tmp_path, micro_world, monkeypatch):
    """Killed in step 5 with the checkpoint at step 4: steps 0-4 are logged, 4 is redone."""
    cfg = micro_config(tmp_path, train_expert__ppo=PPO)
    restore = interrupt_at_call(monkeypatch, 6)
    assert invoke("train-expert", cfg).exit_code == 130
    partial = tmp_path / "runs/m/.train_expert.partial"
    assert json.loads((partial / "checkpoint/trainer_state.json").read_text())["step"] == 4
    assert steps(partial / "metrics.jsonl") == [0, 1, 2, 3, 4]
    restore()
    res = invoke("train-expert", cfg)
    assert res.exit_code == 0 and "resuming PPO from step 4" in res.output, res.output
    assert_expert_logs_each_step_once(tmp_path / "runs/m")


def test_truncated_checkpoint_restarts_train_expert_from_step_0(tmp_path, micro_world, monkeypatch):
    cfg = micro_config(tmp_path, train_expert__ppo=PPO)
    restore = interrupt_at_call(monkeypatch, 6)
    assert invoke("train-expert", cfg).exit_code == 130
    damaged = tmp_path / "runs/m/.train_expert.partial/checkpoint/model.safetensors"
    truncate(damaged)
    restore()
    res = invoke("train-expert", cfg)
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output and "resuming PPO" not in res.output
    assert f"{damaged} is unreadable" in res.output
    assert "restarting from step 0" in res.output
    assert_expert_logs_each_step_once(tmp_path / "runs/m")


def test_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, micro_world, monkeypatch):
    """A kill after the swap's second rename leaves the previous checkpoint beside the new one;
    when the new one is damaged, training resumes from the previous one."""
    cfg = micro_config(tmp_path, train_expert__ppo=PPO)
    partial = tmp_path / "runs/m/.train_expert.partial"
    restore = interrupt_at_call(monkeypatch, 4)  # checkpoint at step 2, rows 0-2
    assert invoke("train-expert", cfg).exit_code == 130
    shutil.copytree(partial / "checkpoint", tmp_path / "step2")
    restore()
    restore = interrupt_at_call(monkeypatch, 3)  # resumes at 2: checkpoint 4, rows 0-3
    assert invoke("train-expert", cfg).exit_code == 130
    assert json.loads((partial / "checkpoint/trainer_state.json").read_text())["step"] == 4
    shutil.copytree(tmp_path / "step2", partial / ".checkpoint.old")
    (partial / "checkpoint/trainer_state.json").write_text('{"kl_coef": 0.05, "st')
    restore()
    res = invoke("train-expert", cfg)
    assert res.exit_code == 0, res.output
    assert "trainer_state.json is unreadable" in res.output
    assert "resuming from the previous checkpoint, at step 2" in res.output
    assert "resuming PPO from step 2" in res.output
    assert_expert_logs_each_step_once(tmp_path / "runs/m")


def re_rlhf_config(tmp_path):
    return micro_config(
        tmp_path,
        re_rlhf__rewards={"ground_truth": "ground_truth"},
        re_rlhf__eval_every=1,
        re_rlhf__ppo={**PPO, "checkpoint_every": 3},
    )


def assert_re_rlhf_logs_each_step_once(run):
    log = run / "re_rlhf" / "metrics.jsonl"
    ns = "re_rlhf/ground_truth/seed-0"
    assert steps(log, f"{ns}/score") == list(range(PPO["steps"]))
    assert steps(log, f"{ns}/toxicity_rate") == list(range(1, PPO["steps"] + 1))
    per_step = Counter(steps(run / "re_rlhf/runs/ground_truth/seed-0/samples.jsonl"))
    assert sorted(per_step) == list(range(PPO["steps"])) and set(per_step.values()) == {4}
    curves = json.loads((run / "re_rlhf" / "curves.json").read_text())
    points = curves["ground_truth"]["seeds"]["0"]["points"]
    assert [p["step"] for p in points] == list(range(PPO["steps"] + 1))


@pytest.mark.parametrize("damage", [None, "points.json", "checkpoint/optimizer.safetensors"])
def test_resumed_re_rlhf_logs_each_step_once(tmp_path, micro_world, monkeypatch, damage):
    """Killed in step 4 with the checkpoint at step 3 and measurements up to step 4. Resumed
    as it is, or with its measurements or its checkpoint damaged (then it restarts)."""
    cfg = re_rlhf_config(tmp_path)
    restore = interrupt_at_call(monkeypatch, 5)
    assert invoke("re-rlhf", cfg).exit_code == 130
    partial = tmp_path / "runs/m/.re_rlhf.partial"
    assert steps(partial / "metrics.jsonl", "re_rlhf/ground_truth/seed-0/score") == [0, 1, 2, 3]
    if damage:
        truncate(partial / "runs/ground_truth/seed-0" / damage)
    restore()
    res = invoke("re-rlhf", cfg)
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    if damage:
        assert f"{partial / 'runs/ground_truth/seed-0' / damage} is unreadable" in res.output
        assert "resuming PPO" not in res.output
    else:
        assert "resuming PPO from step 3" in res.output
    assert_re_rlhf_logs_each_step_once(tmp_path / "runs/m")


def test_unreadable_re_rlhf_curves_redo_the_rewards(tmp_path, micro_world, monkeypatch):
    """curves.json records the finished rewards; damaged, they are redone, and logged once."""
    rewards = {"ground_truth": "ground_truth", "gt2": "ground_truth"}
    cfg = micro_config(
        tmp_path,
        re_rlhf__rewards=rewards,
        re_rlhf__eval_every=3,
        re_rlhf__ppo={**PPO, "checkpoint_every": 3},
    )
    restore = interrupt_at_call(monkeypatch, 8)  # ground_truth done, gt2 at step 1
    assert invoke("re-rlhf", cfg).exit_code == 130
    curves = tmp_path / "runs/m/.re_rlhf.partial/curves.json"
    curves.write_bytes(b"\xff" + curves.read_bytes())
    restore()
    res = invoke("re-rlhf", cfg)
    assert res.exit_code == 0, res.output
    assert f"{curves} is unreadable" in res.output
    log = tmp_path / "runs/m/re_rlhf/metrics.jsonl"
    for name in rewards:
        assert steps(log, f"re_rlhf/{name}/seed-0/score") == list(range(PPO["steps"])), name
        assert steps(log, f"re_rlhf/{name}/seed-0/toxicity_rate") == [3, 6], name


def test_drop_rows_keeps_earlier_steps_and_other_runs_and_drops_a_torn_line(tmp_path):
    from pipeline.metrics import MetricsSink

    with MetricsSink(tmp_path / "m.jsonl") as sink:
        for step in range(4):
            sink.log(step, {"a/score": 1.0})
            sink.log(step + 1, {"a/toxicity_rate": 0.5})
            sink.log(step, {"b/score": 2.0})
    with open(tmp_path / "m.jsonl", "a") as f:
        f.write('{"step": 4, "a/sco')  # a kill mid-write
    with MetricsSink(tmp_path / "m.jsonl") as sink:
        sink.rewind(2, "a/score")
        sink.log(2, {"a/score": 3.0})
    path = tmp_path / "m.jsonl"
    assert steps(path, "a/score") == [0, 1, 2] and steps(path, "b/score") == [0, 1, 2, 3]
    assert steps(path, "a/toxicity_rate") == [1, 2, 3, 4]
