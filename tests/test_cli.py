"""Every command end to end through Typer's CliRunner, and every bad input a user can give."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, make_pairs_records, small_config, write_jsonl
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def published(tmp_path: Path, stage: str) -> bool:
    return (tmp_path / "runs" / "t" / stage / "manifest.json").is_file()


# ------------------------------------------------------------------------------- help
@pytest.mark.parametrize(
    "command,key",
    [
        ("irl", "irl.fa.lambda_0"),
        ("evaluate", "evaluate.near_tie"),
        ("make-pairs", "make_pairs.dataset.min_gap"),
        ("train-expert", "run.name"),
        ("re-rlhf", "run.seed"),
        ("run", "--config"),
    ],
)
def test_help_documents_every_option(command, key):
    out = invoke(command, "--help").output
    assert key in out and "--set" in out and "--force" in out


# --------------------------------------------------------------------------- pipeline
def test_irl_then_evaluate_end_to_end(tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_pairs_records(80))
    heldout = tmp_path / "jigsaw.csv"
    pd.DataFrame(
        {
            "comment_text": [
                "have a nice day",
                "you are an idiot",
                "thanks a lot",
                "shut up moron",
            ],
            "toxic": [0, 1, 0, 1],
            "insult": [0, 1, 0, 1],
        }
    ).to_csv(heldout, index=False)
    cfg = small_config(tmp_path, pairs)
    res = invoke("irl", cfg)
    assert res.exit_code == 0, res.output
    irl_dir = tmp_path / "runs" / "t" / "irl"
    manifest = json.loads((irl_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["inputs"]["pairs"]["sha256"]
    assert {"config", "versions", "seed", "wall_time_s", "git_commit", "embeddings_sha256"} <= set(
        manifest
    )
    assert manifest["versions"]["torch"].startswith("2.13")
    rewards = sorted(
        p.relative_to(irl_dir / "rewards").as_posix()
        for p in (irl_dir / "rewards").glob("*/seed-*")
    )
    assert len(rewards) == 12 and "fa-me-margin/seed-1" in rewards

    res = invoke("evaluate", cfg, "--set", f"evaluate.heldout={heldout}")
    assert res.exit_code == 0, res.output
    ev = tmp_path / "runs" / "t" / "evaluate"
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["schema"] == "fairl-evaluate/1"
    assert set(metrics["methods"]) == {
        "mm",
        "me",
        "fa-mm-gt",
        "fa-me-gt",
        "fa-mm-margin",
        "fa-me-margin",
    }
    for m in metrics["methods"].values():  # seed dispersion and spread reported for every method
        assert m["dispersion"]["starc"] is not None and m["std"]["test/starc"] is not None
        assert {
            "test/f1",
            "test/auc",
            "test/accuracy",
            "test/pairwise_accuracy",
            "heldout/auc",
            "test/affine_mse",
            "test/starc_l2",
            "test/epic",
        } <= set(m["mean"])
    assert set(metrics["disagreement"]) == {
        "fa-mm-gt vs mm",
        "fa-me-gt vs me",
        "fa-mm-margin vs mm",
        "fa-me-margin vs me",
    }
    assert "insult" in metrics["disagreement"]["fa-me-gt vs me"]["subtypes"]["test"]
    assert "heldout" in metrics["disagreement"]["fa-me-gt vs me"]
    report = (ev / "report.md").read_text()
    for heading in (
        "Table 1",
        "Table 2",
        "Table 3",
        "Failure slice",
        "Seed dispersion",
        "Held-out",
    ):
        assert heading in report
    plots = ("metric_bars", "seed_dispersion", "reward_vs_gt", "roc", "reward_hist", "subtypes")
    for plot in plots:  # not empty
        assert (ev / f"{plot}.png").stat().st_size > 10_000, plot
        assert f"![{plot}.png]({plot}.png)" in report
    assert (ev.parent / "irl" / "training_curves.png").stat().st_size > 10_000


def test_rerun_is_a_no_op_and_force_or_a_change_redoes(tmp_path):
    cfg = small_config(
        tmp_path,
        write_jsonl(tmp_path / "p.jsonl", make_pairs_records(60)),
        methods=["mm", "me"],
        seeds=[0],
    )
    assert invoke("irl", cfg).exit_code == 0
    stamp = (tmp_path / "runs/t/irl/manifest.json").stat().st_mtime_ns
    res = invoke("irl", cfg)
    assert res.exit_code == 0 and "already done" in res.output
    assert (tmp_path / "runs/t/irl/manifest.json").stat().st_mtime_ns == stamp
    res = invoke("irl", cfg, "--force")
    assert res.exit_code == 0 and "already done" not in res.output
    res = invoke("irl", cfg, "--set", "irl.lr=0.002")
    assert res.exit_code == 0 and "changed" in res.output
    assert (
        json.loads((tmp_path / "runs/t/irl/manifest.json").read_text())["config"]["irl"]["lr"]
        == 0.002
    )


def test_run_chains_the_stages_of_the_config(tmp_path):
    cfg = small_config(
        tmp_path,
        write_jsonl(tmp_path / "p.jsonl", make_pairs_records(60)),
        methods=["me", "fa-me-margin"],
        seeds=[0],
    )
    res = invoke("run", cfg)
    assert res.exit_code == 0, res.output
    assert published(tmp_path, "irl") and published(tmp_path, "evaluate")
    assert "report:" in res.output
    assert "already done" in invoke("run", cfg).output


def test_evaluate_before_irl_says_what_to_run(tmp_path):
    res = invoke("evaluate", "--set", f"run.root={tmp_path}")
    assert res.exit_code == 4 and "fairl irl" in res.output


# --------------------------------------------------------------------------- bad input
def _publish_first(tmp_path):
    """A good published run, which a failing run must leave exactly as it was."""
    cfg = small_config(
        tmp_path,
        write_jsonl(tmp_path / "good.jsonl", make_pairs_records(40)),
        methods=["mm"],
        seeds=[0],
    )
    assert invoke("irl", cfg).exit_code == 0
    return cfg, (tmp_path / "runs/t/irl/manifest.json").read_bytes()


@pytest.mark.parametrize(
    "case,code,message",
    [
        ("unknown_key", 2, "unknown key 'irl.learning_rate'"),
        ("wrong_type", 2, "irl.batch_size"),
        ("missing_file", 3, "does not exist"),
        ("missing_columns", 3, "lacks required column"),
        ("empty_file", 3, "is empty"),
        ("null_scores", 3, "null ground truth"),
        ("nan_training", 5, "loss is nan"),
    ],
)
def test_bad_input_fails_clearly_and_corrupts_nothing(tmp_path, case, code, message):
    cfg, before = _publish_first(tmp_path)
    bad = tmp_path / "bad.jsonl"
    args = ["irl", cfg]
    if case == "unknown_key":
        args += ["--set", "irl.learning_rate=0.1"]
    elif case == "wrong_type":
        args += ["--set", "irl.batch_size=big"]
    elif case == "missing_file":
        args += ["--set", f"irl.pairs={tmp_path / 'nope.jsonl'}"]
    elif case == "missing_columns":
        write_jsonl(bad, [{"prompt": "p", "chosen": "a", "loser": "b"}])
        args += ["--set", f"irl.pairs={bad}"]
    elif case == "empty_file":
        bad.write_text("")
        args += ["--set", f"irl.pairs={bad}"]
    elif case == "null_scores":
        rows = make_pairs_records(40)
        rows[3]["chosen_score"] = None
        args += ["--set", f"irl.pairs={write_jsonl(bad, rows)}"]
    elif case == "nan_training":
        args += ["--set", "irl.lr=1e38", "--set", "irl.head=mlp", "--set", "irl.hidden=32"]
    res = invoke(*args)
    assert res.exit_code == code, res.output
    assert message in res.output.lower() or message in res.output
    assert "Traceback" not in res.output
    assert (tmp_path / "runs/t/irl/manifest.json").read_bytes() == before  # untouched


def test_ctrl_c_mid_training_publishes_nothing(tmp_path):
    cfg, before = _publish_first(tmp_path)
    pairs = write_jsonl(tmp_path / "long.jsonl", make_pairs_records(400))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli.main",
            "irl",
            str(cfg),
            "--set",
            f"irl.pairs={pairs}",
            "--set",
            "irl.max_epochs=100000",
            "--set",
            "irl.patience=100000",
            "--set",
            "irl.head=mlp",
        ],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # only this test's signal reaches it
        # As a terminal would have it: a shell script's background job (`pytest &`) starts with
        # SIGINT ignored, which Python then keeps, and Ctrl-C could not be tested.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines = []
    deadline = time.time() + 120
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("irl: training") or time.time() > deadline:  # (tmp path says "training")
            break
    time.sleep(2.0)  # well inside the epochs
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # never leave a run training in the background
        proc.kill()
        _, err = proc.communicate()
        pytest.fail("irl did not stop within 60 s of Ctrl-C:\n" + "".join(lines) + err)
    assert proc.returncode == 130, "".join(lines) + err
    assert "interrupted: nothing was published" in err
    assert (tmp_path / "runs/t/irl/manifest.json").read_bytes() == before
    # The next run starts clean and publishes.
    res = invoke("irl", cfg, "--set", f"irl.pairs={pairs}", "--set", "irl.max_epochs=2")
    assert res.exit_code == 0 and "discarding the partial output" in res.output
    assert published(tmp_path, "irl")


# ---------------------------------------------------------------------- real RTP data
@pytest.mark.slow
def test_real_realtoxicityprompts_subset_end_to_end(tmp_path, rtp_dir, monkeypatch):
    """Acceptance 5: configs/rtp-challenging.yaml through the CLI on the real subset."""
    monkeypatch.chdir(ROOT)  # the config's paths are relative to the project root
    common = ["configs/rtp-challenging.yaml", "--set", f"run.root={tmp_path}"]
    for command in ("make-pairs", "irl", "evaluate"):
        res = invoke(command, *common)
        assert res.exit_code == 0, res.output
    ev = tmp_path / "rtp-challenging" / "evaluate"
    metrics = json.loads((ev / "metrics.json").read_text())
    summary = json.loads((tmp_path / "rtp-challenging/make_pairs/summary.json").read_text())
    assert summary["dropped_null_toxicity"] > 0  # the subset's null scores are handled
    assert metrics["data"]["n_test"] > 100 and len(metrics["models"]) == 40  # 8 methods x 5
    for m in metrics["methods"].values():
        assert m["mean"]["test/auc"] > 0.8  # Perspective toxicity is learnable from MiniLM
        assert m["mean"]["test/starc"] < 0.9
    assert "Table 1" in (ev / "report.md").read_text()


def test_a_missing_heldout_file_fails_before_any_work(tmp_path):
    cfg = small_config(
        tmp_path,
        write_jsonl(tmp_path / "p.jsonl", make_pairs_records(40)),
        methods=["mm"],
        seeds=[0],
    )
    assert invoke("irl", cfg).exit_code == 0
    res = invoke("evaluate", cfg, "--set", f"evaluate.heldout={tmp_path / 'nope.csv'}")
    assert res.exit_code == 3 and "does not exist" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "runs/t/.evaluate.partial").exists()


def test_make_pairs_notices_a_changed_file_inside_an_input_directory(tmp_path, rtp_dir):
    import shutil

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(rtp_dir / "toxic.jsonl", data / "a.jsonl")
    args = [
        "make-pairs",
        "--set",
        f"run.root={tmp_path}",
        "--set",
        "make_pairs.source=dataset",
        "--set",
        f"make_pairs.dataset.files=[{data}]",
    ]
    assert invoke(*args).exit_code == 0
    lines = (data / "a.jsonl").read_text().splitlines()
    (data / "a.jsonl").write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    res = invoke(*args)
    assert res.exit_code == 0 and "changed" in res.output


def test_a_stage_running_elsewhere_is_not_clobbered(tmp_path):
    import fcntl

    (tmp_path / "runs" / "t").mkdir(parents=True)
    cfg = small_config(
        tmp_path,
        write_jsonl(tmp_path / "p.jsonl", make_pairs_records(40)),
        methods=["mm"],
        seeds=[0],
    )
    with open(tmp_path / "runs/t/.irl.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        res = invoke("irl", cfg)
    assert res.exit_code == 1 and "another fairl process" in res.output
