"""Two CPU ranks with torchrun (not `accelerate launch --cpu`, which silently runs one process):
after a PPO step on different prompts, both ranks hold identical weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT


def test_two_rank_ppo_step_keeps_the_ranks_identical(tmp_path, micro_world):
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun) if torchrun.exists() else shutil.which("torchrun") or "torchrun",
           "--standalone", "--nproc_per_node", "2", str(ROOT / "tests" / "ddp_step.py"),
           str(micro_world.base_lm), str(micro_world.prompts), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                          start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2 and "MULTI_CPU" in r0["distributed_type"]
    assert set(r0["prompts"]).isdisjoint(r1["prompts"])          # each rank saw its own prompts
    assert r0["before"] == r1["before"]                           # same start
    assert r0["after"] != r0["before"]                            # the step changed the weights
    assert r0["after"] == r1["after"]                             # and all-reduce kept them equal
    assert r0["kl_coef"] == r1["kl_coef"] and r0["score"] == r1["score"]   # global statistics


def test_train_expert_runs_data_parallel_with_torchrun_and_publishes_once(tmp_path, micro_world):
    """The same `fairl train-expert` command, launched on two CPU ranks: rank 0 writes the
    artifacts, rank 1 trains alongside it."""
    from conftest import micro_config

    cfg = micro_config(tmp_path, train_expert__ppo={"steps": 3, "batch_size": 16,
                                                     "mini_batch_size": 8, "checkpoint_every": 2})
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "cli.main",
           "train-expert", str(cfg)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                          start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "runs" / "m" / "train_expert"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and (run / "model" / "config.json").is_file()
    assert not (tmp_path / "runs" / "m" / ".train_expert.partial").exists()
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [0, 1, 2]      # one writer: rank 0
