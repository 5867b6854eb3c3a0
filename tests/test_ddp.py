"""Two CPU ranks with torchrun (not `accelerate launch --cpu`, which silently runs one process):
after a PPO step on different prompts, both ranks hold identical weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_two_rank_ppo_step_keeps_the_ranks_identical(tmp_path, micro_world):
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun) if torchrun.exists() else shutil.which("torchrun") or "torchrun",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "tests" / "ddp_step.py"),
        str(micro_world.base_lm),
        str(micro_world.prompts),
        str(tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, start_new_session=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2 and "MULTI_CPU" in r0["distributed_type"]
    assert set(r0["prompts"]).isdisjoint(r1["prompts"])  # each rank saw its own prompts
    assert r0["before"] == r1["before"]  # same start
    assert r0["after"] != r0["before"]  # the step changed the weights
    assert r0["after"] == r1["after"]  # and all-reduce kept them equal
    assert r0["kl_coef"] == r1["kl_coef"] and r0["score"] == r1["score"]  # global statistics


def _torchrun_fairl(*args: str) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "cli.main", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, start_new_session=True
    )


def test_fairl_run_data_parallel_with_torchrun_publishes_once_and_waits_for_rank0(
    tmp_path, micro_world
):
    """`fairl run` on two CPU ranks: rank 0 writes every artifact, rank 1 trains alongside it in
    the data-parallel stages (make-pairs: its share of the batches) and waits while rank 0
    alone runs irl and evaluate.
    The second launch changes irl: rank 1 must not read the stale irl output for re-rlhf."""
    from conftest import micro_config

    ppo = {"steps": 3, "batch_size": 16, "mini_batch_size": 8, "checkpoint_every": 2}
    cfg = micro_config(
        tmp_path,
        train_expert__ppo=ppo,
        re_rlhf__ppo={**ppo, "steps": 2},
        re_rlhf__eval_every=2,
        make_pairs__n_pairs=96,
        re_rlhf__rewards={"ground_truth": "ground_truth", "fa-irl": "irl:fa-me-margin"},
        irl__methods=["me", "fa-me-margin"],
    )
    proc = _torchrun_fairl("run", str(cfg))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    root = tmp_path / "runs" / "m"
    for stage in ("train_expert", "make_pairs", "irl", "evaluate", "re_rlhf"):
        assert json.loads((root / stage / "manifest.json").read_text())["status"] == "complete", (
            stage
        )
        assert not (root / f".{stage}.partial").exists()
    assert (root / "train_expert" / "model" / "config.json").is_file()
    log = [
        json.loads(line)
        for line in (root / "train_expert" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [row["step"] for row in log] == [0, 1, 2]  # one writer: rank 0
    assert not list((root / "re_rlhf").rglob("*checkpoint*"))  # finished runs drop checkpoints
    assert proc.stdout.count("report:") == 1

    irl_before = json.loads((root / "irl" / "manifest.json").read_text())["fingerprint"]
    proc = _torchrun_fairl("run", str(cfg), "--set", "irl.lr=0.003")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((root / "irl" / "manifest.json").read_text())["fingerprint"] != irl_before
    rr = json.loads((root / "re_rlhf" / "manifest.json").read_text())
    irl_hashes = {k: v["sha256"] for k, v in rr["inputs"].items() if k.startswith("reward:")}
    assert irl_hashes, rr["inputs"]
    from pipeline.artifacts import hash_inputs

    now = hash_inputs({"reward:fa-irl": root / "irl" / "rewards" / "fa-me-margin" / "seed-0"})
    assert irl_hashes["reward:fa-irl"] == now["reward:fa-irl"]  # re-rlhf used the new reward


def test_make_pairs_on_two_ranks_gives_the_pairs_of_one_process(tmp_path, micro_world):
    """make-pairs under torchrun: each rank samples its share of the batches (their seeds come
    from the batch index), rank 0 gathers them: the very pairs one process makes."""
    import pandas as pd
    from conftest import micro_config
    from typer.testing import CliRunner

    from cli.main import app

    def cfg(root):
        gen = {"max_new_tokens": 8, "batch_size": 16}
        return micro_config(root, make_pairs__expert_model="world", make_pairs__n_pairs=96,
                            make_pairs__generation=gen)  # fmt: skip

    one = CliRunner().invoke(app, ["make-pairs", str(cfg(tmp_path / "one")), "-q"])
    assert one.exit_code == 0, one.output
    proc = _torchrun_fairl("make-pairs", str(cfg(tmp_path / "two")), "-q")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a = pd.read_parquet(tmp_path / "one/runs/m/make_pairs/pairs.parquet")
    b = pd.read_parquet(tmp_path / "two/runs/m/make_pairs/pairs.parquet")
    pd.testing.assert_frame_equal(a, b)
    summary = json.loads((tmp_path / "two/runs/m/make_pairs/summary.json").read_text())
    assert summary["pairs_sampled_by_rank"] == {"0": 48, "1": 48}  # 6 batches of 16, 3 each
