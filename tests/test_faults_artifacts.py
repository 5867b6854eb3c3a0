"""Issue 7, artifacts: verified manifests, publication that never loses or clobbers a
directory, OS errors as clear errors, published files that follow the umask.

Most cases start from one small published irl run (one method, one seed), built once per
module and copied into each test's run root (the irl fingerprint does not include run.root,
so the copy is "already done" for the same config)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, make_pairs_records, small_config, write_jsonl
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from cli.main import app
from pipeline import artifacts
from pipeline.errors import MissingArtifactError

runner = CliRunner()
IRL = {"methods": ["mm"], "seeds": [0]}
REWARD = "rewards/mm/seed-0/reward.safetensors"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """(pairs file, a published `runs/` tree holding run t's irl and evaluate stages)."""
    base = tmp_path_factory.mktemp("published")
    pairs = write_jsonl(base / "pairs.jsonl", make_pairs_records(40))
    cfg = small_config(base, pairs, **IRL)
    for command in ("irl", "evaluate"):
        res = invoke(command, cfg)
        assert res.exit_code == 0, res.output
    return pairs, base / "runs"


@pytest.fixture
def published(tmp_path, template):
    """(config, run dir) with a copy of the published run t under this test's run.root."""
    pairs, runs = template
    shutil.copytree(runs, tmp_path / "runs")
    return small_config(tmp_path, pairs, **IRL), tmp_path / "runs" / "t"


def _manifest(stage_dir: Path) -> dict:
    return json.loads((stage_dir / "manifest.json").read_text())


# ------------------------------------------------------------------ manifests, verification
def test_manifest_lists_every_file_with_size_and_sha256_hashing_hard_links_once(
    tmp_path, monkeypatch, published
):
    _, run = published
    files = _manifest(run / "irl")["files"]
    on_disk = sorted(
        p.relative_to(run / "irl").as_posix()
        for p in (run / "irl").rglob("*")
        if p.is_file() and p.name != "manifest.json"
    )
    assert sorted(files) == on_disk and REWARD in files
    assert files[REWARD] == {
        "size": (run / "irl" / REWARD).stat().st_size,
        "sha256": artifacts.sha256_file(run / "irl" / REWARD),
    }

    calls = []
    real = artifacts.sha256_file
    monkeypatch.setattr(artifacts, "sha256_file", lambda p, *a: calls.append(p) or real(p, *a))
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"o")
    outside.chmod(0o600)
    with artifacts.stage_run("s", tmp_path / "r", {}, {}, seed=0, log=lambda m: None) as run_:
        run_.path("a.bin").write_bytes(b"x" * 1000)
        os.link(run_.path("a.bin"), run_.path("sub", "link.bin"))  # one inode, two names
        run_.path("sub", "b.txt").write_text("b")
        os.link(outside, run_.path("ext.bin"))
    assert len(calls) == 3  # the linked file once
    assert stat.S_IMODE(outside.stat().st_mode) == 0o600  # not fairl's to chmod
    files = _manifest(tmp_path / "r" / "s")["files"]
    assert set(files) == {"a.bin", "sub/link.bin", "sub/b.txt", "ext.bin"}
    assert (
        files["a.bin"]
        == files["sub/link.bin"]
        == {"size": 1000, "sha256": real(tmp_path / "r/s/a.bin")}
    )
    assert artifacts.verify_stage(tmp_path / "r" / "s", "s", "s")["status"] == "complete"


def test_a_tampered_irl_output_is_redone_and_evaluate_refuses_it(published):
    """Case 3: negating a saved reward's weights used to leave irl and evaluate 'already done'."""
    cfg, run = published
    weights = run / "irl" / REWARD
    original = load_file(str(weights))
    with safe_open(str(weights), "pt") as f:
        metadata = f.metadata()
    save_file({k: -v for k, v in original.items()}, str(weights), metadata=metadata)
    res = invoke("evaluate", cfg)
    assert res.exit_code == 4, res.output
    assert str(weights) in res.output and "fairl irl --force" in res.output
    assert "already done" not in res.output and "Traceback" not in res.output

    res = invoke("irl", cfg)
    assert res.exit_code == 0, res.output
    assert "already done" not in res.output and "does not verify" in res.output
    artifacts.verify_stage(run / "irl", "irl", "irl")
    redone = load_file(str(weights))
    assert all(torch.equal(redone[k], original[k]) for k in original)  # same seed, same path


def test_a_missing_file_or_an_old_manifest_does_not_verify(published):
    _, run = published
    (run / "evaluate" / "report.md").unlink()
    with pytest.raises(MissingArtifactError, match="report.md is missing") as e:
        artifacts.require_stage(run / "evaluate", "evaluate", "evaluate")
    assert "fairl evaluate --force" in str(e.value)
    m = _manifest(run / "irl")
    del m["files"]  # as written before manifests listed files
    (run / "irl" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(MissingArtifactError, match="cannot be verified") as e:
        artifacts.require_stage(run / "irl", "irl", "irl")
    assert "fairl irl --force" in str(e.value)


def test_a_corrupt_manifest_is_reported_as_corrupt_and_not_replaced(published):
    cfg, run = published
    (run / "irl" / "manifest.json").write_text('{"stage": "irl", "status": "compl')
    res = invoke("evaluate", cfg, "--force")
    assert res.exit_code == 4, res.output
    assert "corrupt" in res.output and "output not found" not in res.output
    res = invoke("irl", cfg, "--force")  # fairl cannot tell it published this: left alone
    assert res.exit_code == 1 and "corrupt" in res.output and "Traceback" not in res.output
    assert (run / "irl" / REWARD).is_file()


# ------------------------------------------------------------------------ never clobber
def test_publishing_refuses_a_directory_fairl_did_not_publish(tmp_path):
    """Case 1b: a user's directory at <run>/irl used to be deleted by the publication."""
    cfg = small_config(tmp_path, write_jsonl(tmp_path / "p.jsonl", make_pairs_records(40)), **IRL)
    victim = tmp_path / "runs" / "t" / "irl"
    victim.mkdir(parents=True)
    (victim / "notes.txt").write_text("keep")
    for extra in ([], ["--force"]):
        res = invoke("irl", cfg, *extra)
        assert res.exit_code == 1, res.output
        assert str(victim) in res.output and "not a fairl irl output" in res.output
        assert "move it away" in res.output and "Traceback" not in res.output
        assert (victim / "notes.txt").read_text() == "keep"
        assert sorted(p.name for p in victim.iterdir()) == ["notes.txt"]
        assert not (tmp_path / "runs/t/.irl.partial").exists()  # refused before any work


def test_a_symlinked_stage_directory_is_refused_clearly_every_time(tmp_path, published):
    """Case 6: the first --force used to publish and then fail, and every later one failed."""
    cfg, run = published
    elsewhere = tmp_path / "elsewhere" / "irl"
    elsewhere.parent.mkdir()
    os.replace(run / "irl", elsewhere)
    (run / "irl").symlink_to(elsewhere, target_is_directory=True)
    before = (elsewhere / "manifest.json").read_bytes()
    for _ in range(2):
        res = invoke("irl", cfg, "--force")
        assert res.exit_code == 1, res.output
        assert "symbolic link" in res.output and "Traceback" not in res.output
        assert (run / "irl").is_symlink() and (elsewhere / "manifest.json").read_bytes() == before
        assert not (run / ".irl.old").exists() and not (run / ".irl.partial").exists()
    res = invoke("irl", cfg)  # reading through the link is fine
    assert res.exit_code == 0 and "already done" in res.output


# --------------------------------------------------------------------- interrupted publish
def _killed_between_renames(run: Path, new_complete: bool) -> None:
    """The state a SIGKILL between `irl -> .irl.old` and `.irl.partial -> irl` leaves."""
    partial = run / ".irl.partial"
    shutil.copytree(run / "irl", partial)
    m = _manifest(partial)
    if new_complete:
        m["started_at"] = "new"
        (partial / "manifest.json").write_text(json.dumps(m))
    else:  # killed before its manifest: still being written
        (partial / "manifest.json").unlink()
        (partial / ".fingerprint").write_text(m["fingerprint"])
    old = _manifest(run / "irl")
    old["started_at"] = "old"
    (run / "irl" / "manifest.json").write_text(json.dumps(old))
    os.replace(run / "irl", run / ".irl.old")


@pytest.mark.parametrize("new_complete,kept", [(True, "new"), (False, "old")])
def test_a_kill_between_the_two_renames_keeps_an_output(published, new_complete, kept):
    """Case 7: the next run used to delete both the new and the old output and recompute."""
    cfg, run = published
    _killed_between_renames(run, new_complete)
    res = invoke("irl", cfg)
    assert res.exit_code == 0, res.output
    assert "already done" in res.output  # nothing recomputed
    assert _manifest(run / "irl")["started_at"] == kept
    assert not (run / ".irl.old").exists()
    artifacts.verify_stage(run / "irl", "irl", "irl")


def test_a_kill_after_the_manifest_but_before_publishing_keeps_the_new_output(published):
    """A kill after the manifest is written (stamp still there, old output still in place)
    must not throw the finished work away: the next run publishes it."""
    cfg, run = published
    partial = run / ".irl.partial"
    shutil.copytree(run / "irl", partial)
    m = _manifest(partial)
    m["started_at"] = "new"
    (partial / "manifest.json").write_text(json.dumps(m))
    (partial / artifacts.STAMP).write_text(f"{m['fingerprint']} killed-launch")
    res = invoke("irl", cfg)
    assert res.exit_code == 0, res.output
    assert "completing the publication" in res.output and "already done" in res.output
    assert _manifest(run / "irl")["started_at"] == "new"
    assert not partial.exists() and not (run / "irl" / artifacts.STAMP).exists()
    artifacts.verify_stage(run / "irl", "irl", "irl")


# ---------------------------------------------------------------------- --force, partial
def test_force_discards_the_partial_state_of_a_resumable_stage(tmp_path):
    """Case 4: a truncated checkpoint in the partial dir used to be resumed even with --force."""
    logs = []

    def stage(force):
        return artifacts.stage_run(
            "train_expert",
            tmp_path,
            {"a": 1},
            {},
            seed=0,
            force=force,
            log=logs.append,
            resumable=True,
        )

    with pytest.raises(KeyboardInterrupt):
        with stage(False) as run_:
            run_.path("checkpoint", "model.safetensors").write_bytes(b"\x08\x00\x00")  # truncated
            raise KeyboardInterrupt
    checkpoint = tmp_path / ".train_expert.partial/checkpoint/model.safetensors"
    assert checkpoint.is_file()
    with stage(True) as run_:
        assert not run_.resumed and not checkpoint.exists()
        run_.path("model.txt").write_text("fresh")
    assert any("--force: discarding the partial output" in m for m in logs), logs
    assert artifacts.verify_stage(tmp_path / "train_expert", "train_expert", "train-expert")


# --------------------------------------------------------------------------- OS errors
def test_run_root_being_a_file_is_a_clear_error(tmp_path):
    cfg = small_config(tmp_path, write_jsonl(tmp_path / "p.jsonl", make_pairs_records(40)), **IRL)
    (tmp_path / "afile").write_text("x")
    res = invoke("irl", cfg, "--set", f"run.root={tmp_path / 'afile'}")
    assert res.exit_code == 1, res.output
    assert f"error: Not a directory: {tmp_path / 'afile'}" in res.output
    assert "hint:" in res.output and "run.root" in res.output and "Traceback" not in res.output


def test_fairl_cache_being_a_file_is_named_without_a_traceback(tmp_path, monkeypatch, published):
    """An unusable embedding cache is a warning (the texts are embedded in memory) that names
    the path and FAIRL_CACHE, with no traceback; the run completes and publishes."""
    cfg, run = published
    (tmp_path / "cachefile").write_text("x")
    monkeypatch.setenv("FAIRL_CACHE", str(tmp_path / "cachefile"))
    res = invoke("irl", cfg, "--force")
    assert res.exit_code == 0, res.output
    assert "Not a directory" in res.output and str(tmp_path / "cachefile") in res.output
    assert "FAIRL_CACHE" in res.output and "Traceback" not in res.output
    artifacts.verify_stage(run / "irl", "irl", "irl")


def test_a_full_disk_is_a_clear_error_and_loses_nothing(monkeypatch, published):
    from pipeline.irl.reward import RewardModel

    cfg, run = published
    before = (run / "irl" / "manifest.json").read_bytes()

    def full(self, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path / "reward.safetensors"))

    monkeypatch.setattr(RewardModel, "save", full)
    res = invoke("irl", cfg, "--force")
    assert res.exit_code == 1, res.output
    assert "error: No space left on device: " in res.output and "reward.safetensors" in res.output
    assert "free space" in res.output and "Traceback" not in res.output
    assert (run / "irl" / "manifest.json").read_bytes() == before
    artifacts.verify_stage(run / "irl", "irl", "irl")


def test_a_failed_publication_puts_the_previous_output_back(monkeypatch, published):
    cfg, run = published
    before = (run / "irl" / "manifest.json").read_bytes()
    real = os.replace

    def replace(src, dst):
        if Path(src).name == ".irl.partial" and Path(dst).name == "irl":
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(src), str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    res = invoke("irl", cfg, "--force")
    assert res.exit_code == 1, res.output
    assert "error: Input/output error: " in res.output and "Traceback" not in res.output
    assert (run / "irl" / "manifest.json").read_bytes() == before
    assert not (run / ".irl.old").exists()
    artifacts.verify_stage(run / "irl", "irl", "irl")


# ------------------------------------------------------------------------------ modes
def test_published_files_and_cache_shards_follow_the_umask(tmp_path):
    """Case 10: every .safetensors (rewards, cache shards) used to be written mode 0600."""
    cfg = small_config(tmp_path, write_jsonl(tmp_path / "p.jsonl", make_pairs_records(40)), **IRL)
    env = {**os.environ, "FAIRL_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "irl", str(cfg)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        umask=0o022,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    shards = list((tmp_path / "cache").rglob("shard-*.safetensors"))
    files = [p for p in (tmp_path / "runs/t/irl").rglob("*") if p.is_file()]
    assert shards and any(p.suffix == ".safetensors" for p in files)
    unreadable = [
        f"{p} {stat.filemode(p.stat().st_mode)}"
        for p in files + shards
        if p.stat().st_mode & 0o044 != 0o044
    ]
    closed = [
        p
        for p in (tmp_path / "runs/t/irl").rglob("*")
        if p.is_dir() and p.stat().st_mode & 0o055 != 0o055
    ]
    assert not unreadable and not closed


def test_a_secondary_rank_waits_for_this_launch_not_a_leftover_partial(tmp_path, monkeypatch):
    """Under torchrun, rank 1 must not start on the partial directory an earlier, interrupted
    launch left with the same fingerprint: with --force rank 0 discards it (and without, rank 0
    alone decides to resume). Rank 1 waits for rank 0's stamp of this very launch."""
    import threading

    from pipeline import artifacts

    run_dir, config = tmp_path / "run", {"x": 1}
    fp = artifacts.sha256_json(
        {"stage": "train_expert", "config": config, "inputs": artifacts.hash_inputs({})}
    )
    work = run_dir / ".train_expert.partial"
    (work / "checkpoint").mkdir(parents=True)
    (work / artifacts.STAMP).write_text(fp)  # an older fairl's stamp
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    entered = threading.Event()

    def rank1():
        with artifacts.stage_run(
            "train_expert", run_dir, config, {}, seed=0, force=True, resumable=True
        ):
            entered.set()

    t = threading.Thread(target=rank1, daemon=True)
    t.start()
    assert not entered.wait(1.5), "rank 1 started on a partial directory rank 0 may discard"
    (work / artifacts.STAMP).write_text(f"{fp} earlier-launch")
    assert not entered.wait(1.0)
    (work / artifacts.STAMP).write_text(f"{fp} {artifacts.launch_id()}")  # rank 0 prepared it
    assert entered.wait(5.0)
    t.join(5.0)
