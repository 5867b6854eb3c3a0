"""Run directories, manifests and atomic publication.

A stage writes everything into `runs/<name>/.<stage>.partial/` and publishes it by renaming
that directory to `runs/<name>/<stage>/` only after `manifest.json` is written. Later stages
read only published directories whose manifest says `complete`, so a killed run never leaves
a half-written artifact that anything reads. Re-running a published stage whose fingerprint
(resolved config + input hashes) is unchanged is a no-op; `--force` or a changed fingerprint
redoes it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Optional

from pipeline.errors import FairlError, MissingArtifactError


class StageBusy(FairlError):
    """Another process holds this stage's lock."""

MANIFEST = "manifest.json"
_UMASK = os.umask(0)
os.umask(_UMASK)
TRACKED_PACKAGES = (
    "fairl", "torch", "transformers", "sentence-transformers", "trl", "accelerate",
    "datasets", "numpy", "scikit-learn", "safetensors", "pydantic", "typer",
)


# ------------------------------------------------------------------------- atomic writes
@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; published files follow the umask
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ------------------------------------------------------------------------------ hashing
def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(
        json.dumps(obj, sort_keys=True, default=_json_default).encode()
    ).hexdigest()


def hash_inputs(paths: dict[str, Optional[Path]]) -> dict[str, Optional[str]]:
    """sha256 of each input file (directories: their manifest if published, else all files)."""
    out: dict[str, Optional[str]] = {}
    for name, p in paths.items():
        if p is None:
            out[name] = None
        elif Path(p).is_dir():
            m = Path(p) / MANIFEST
            if m.is_file():
                out[name] = sha256_file(m)
            else:
                h = hashlib.sha256()
                for f in sorted(Path(p).rglob("*")):
                    if f.is_file():
                        h.update(str(f.relative_to(p)).encode())
                        h.update(sha256_file(f).encode())
                out[name] = h.hexdigest()
        else:
            out[name] = sha256_file(Path(p))
    return out


# ------------------------------------------------------------------------- environment
def package_versions() -> dict[str, Optional[str]]:
    out: dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> Optional[str]:
    """Commit of the fairl checkout, with '-dirty' if it has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


# ------------------------------------------------------------------------------ stages
def read_manifest(stage_dir: Path) -> Optional[dict]:
    m = Path(stage_dir) / MANIFEST
    if not m.is_file():
        return None
    try:
        return json.loads(m.read_text())
    except json.JSONDecodeError:
        return None


def require_stage(stage_dir: Path, stage: str, command: str) -> dict:
    """The manifest of a published stage, or a clear error saying which command to run."""
    manifest = read_manifest(stage_dir)
    if manifest is None or manifest.get("status") != "complete":
        raise MissingArtifactError(
            f"{stage} output not found at {stage_dir}",
            hint=f"run `fairl {command}` with the same config (run.name, run.root) first",
        )
    return manifest


@dataclass
class StageRun:
    """The working state of one stage execution: where to write, and what goes in the manifest."""

    stage: str
    final_dir: Path
    work_dir: Path
    fingerprint: str
    config: dict
    inputs: dict
    seed: Optional[int]
    resumed: bool = False
    is_main: bool = True           # False on the other ranks of a data-parallel launch
    started: float = field(default_factory=time.time)
    extra: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    def path(self, *parts: str) -> Path:
        p = self.work_dir.joinpath(*parts)
        if self.is_main:
            p.parent.mkdir(parents=True, exist_ok=True)
        return p

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - t0, 3)


class StageSkipped(Exception):
    """Raised inside `stage_run` when the published stage is already up to date."""


@contextmanager
def stage_run(
    stage: str,
    run_dir: Path,
    config: dict,
    inputs: dict[str, Optional[Path]],
    seed: Optional[int],
    force: bool = False,
    log=print,
    resumable: bool = False,
) -> Iterator[StageRun]:
    """Run a stage into a private work directory and publish it atomically on success.

    Yields a `StageRun`; raises `StageSkipped` (before yielding) when the published output
    already has this fingerprint. A `resumable` stage keeps the work directory of an
    interrupted run with the same fingerprint (`run.resumed`) so it can pick up where it stopped;
    other stages start afresh (their expensive inputs are cached elsewhere). On any exception,
    including Ctrl-C, nothing is published and the previous published output, if any, is left
    untouched. A lock file keeps two processes from running the same stage of one run at once.
    """
    run_dir = Path(run_dir)
    final_dir = run_dir / stage
    input_hashes = hash_inputs(inputs)
    fingerprint = sha256_json({"stage": stage, "config": config, "inputs": input_hashes})
    old = read_manifest(final_dir)
    if not force and old and old.get("status") == "complete" and old.get("fingerprint") == fingerprint:
        log(f"[{stage}] already done with this config and inputs: {final_dir} (use --force to redo)")
        raise StageSkipped(stage)
    if old and old.get("fingerprint") != fingerprint and old.get("status") == "complete":
        log(f"[{stage}] config or inputs changed since the published run: redoing it")

    if distributed_rank() > 0:
        # Another rank of a data-parallel launch: compute alongside rank 0, write nothing.
        yield _secondary_rank_run(stage, run_dir, final_dir, fingerprint, config, seed)
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = open(run_dir / f".{stage}.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise StageBusy(f"another fairl process is running {stage} in {run_dir}",
                        hint="wait for it to finish, or use another run.name") from None
    try:
        yield from _stage_run_locked(stage, run_dir, final_dir, fingerprint, config, inputs,
                                     input_hashes, seed, log, resumable)
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def distributed_rank() -> int:
    """This process's rank under torchrun / accelerate launch (0 when not distributed)."""
    return int(os.environ.get("RANK", "0")) if is_distributed() else 0


def is_distributed() -> bool:
    """Launched as one of several ranks (torchrun / accelerate launch)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


_RANK_BARRIER_GROUP = None


def wait_for_all_ranks() -> None:
    """Under a data-parallel launch, hold every rank here until all have arrived (no-op otherwise).

    `fairl run` calls it between stages: the other ranks must not resolve a stage's inputs (say,
    re-rlhf's reward paths) before rank 0 has published the stages that only it runs (make-pairs,
    irl, evaluate). Those can take hours, longer than the default process group's timeout, so
    the barrier uses a gloo group of its own with a long one. torchrun stops every rank when one
    fails, so no rank waits here for a rank 0 that is gone."""
    if not is_distributed():
        return
    import torch.distributed as dist

    dist.barrier(group=rank_barrier_group())


def rank_barrier_group():
    """The gloo group of `wait_for_all_ranks`, joining torchrun's process group if needed.
    Creating it is itself a rendezvous under the default timeout, so every command calls this
    first (`cli.main._invoke`), while the ranks are in step."""
    global _RANK_BARRIER_GROUP
    if _RANK_BARRIER_GROUP is None:
        from datetime import timedelta

        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            from accelerate import PartialState

            PartialState(cpu=not torch.cuda.is_available())   # joins torchrun's rendezvous
        _RANK_BARRIER_GROUP = dist.new_group(backend="gloo", timeout=timedelta(days=7))
    return _RANK_BARRIER_GROUP


def _secondary_rank_run(stage, run_dir, final_dir, fingerprint, config, seed) -> "StageRun":
    """Wait until rank 0 has prepared the work directory for this very config (so checkpoints
    to resume from are visible to every rank), then share it read-only."""
    work_dir = run_dir / f".{stage}.partial"
    stamp = work_dir / ".fingerprint"
    while not (stamp.is_file() and stamp.read_text() == fingerprint):
        done = read_manifest(final_dir)
        if done and done.get("status") == "complete" and done.get("fingerprint") == fingerprint:
            raise StageSkipped(stage)   # rank 0 finished it without us (nothing left to train)
        time.sleep(0.5)
    return StageRun(stage=stage, final_dir=final_dir, work_dir=work_dir, fingerprint=fingerprint,
                    config=config, inputs={}, seed=seed, is_main=False)


def _stage_run_locked(stage, run_dir, final_dir, fingerprint, config, inputs, input_hashes, seed,
                      log, resumable):
    # A partial directory left by a killed run with the same fingerprint is kept for resumable
    # stages (sampled batches, RL checkpoints), so they pick up instead of restarting.
    work_dir = run_dir / f".{stage}.partial"
    stamp = work_dir / ".fingerprint"
    resumed = (resumable and work_dir.exists() and stamp.is_file()
               and stamp.read_text() == fingerprint)
    if work_dir.exists() and not resumed:
        log(f"[{stage}] discarding the partial output of an interrupted or changed run")
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint)
    if resumed:
        log(f"[{stage}] resuming the interrupted run in {work_dir}")
    run = StageRun(
        stage=stage, final_dir=final_dir, work_dir=work_dir, fingerprint=fingerprint,
        config=config, inputs={k: {"path": str(v) if v else None, "sha256": input_hashes[k]}
                               for k, v in inputs.items()},
        seed=seed, resumed=resumed,
    )
    yield run
    stamp.unlink()
    manifest = {
        "stage": stage,
        "status": "complete",
        "fingerprint": fingerprint,
        "config": config,
        "inputs": run.inputs,
        "seed": seed,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "platform": {"machine": platform.machine(), "system": platform.system(),
                     "cpu_count": os.cpu_count(), "argv": sys.argv},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(run.started)),
        "wall_time_s": round(time.time() - run.started, 3),
        "timings_s": run.timings,
        "outputs": sorted(
            str(p.relative_to(work_dir)) for p in work_dir.rglob("*") if p.is_file()
        ),
        **run.extra,
    }
    write_json(work_dir / MANIFEST, manifest)
    publish(work_dir, final_dir)


def publish(work_dir: Path, final_dir: Path) -> None:
    """Swap `work_dir` into place of `final_dir`. Readers require a manifest, so the window in
    which neither exists only ever looks like 'not run yet', never like a partial result."""
    trash = final_dir.with_name(f".{final_dir.name}.old")
    if trash.exists():
        shutil.rmtree(trash)
    if final_dir.exists():
        os.replace(final_dir, trash)
    os.replace(work_dir, final_dir)
    if trash.exists():
        shutil.rmtree(trash)
