"""Run directories, manifests and atomic publication.

A stage writes everything into `runs/<name>/.<stage>.partial/` and publishes it by renaming
that directory to `runs/<name>/<stage>/` only after `manifest.json` is written. Later stages
read only published directories whose manifest says `complete`, so a killed run never leaves
a half-written artifact that anything reads. Re-running a published stage whose fingerprint
(resolved config + input hashes) is unchanged is a no-op; `--force` or a changed fingerprint
redoes it.

The manifest lists every published file with its size and sha256, and a published stage is
trusted only while its files still match (`verify_stage`): a stale or damaged output is redone,
never silently reused. Publication only ever replaces a directory that fairl published for the
same stage; anything else at `runs/<name>/<stage>` (a user's directory, a symbolic link) is
refused before any work is done.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import filelock

from pipeline.distributed import distributed_rank, launch_id
from pipeline.errors import FairlError, MissingArtifactError


class StageBusy(FairlError):
    """Another process holds this stage's lock."""


class ForeignDirectory(FairlError):
    """`runs/<name>/<stage>` exists but is not an output fairl published for that stage."""


MANIFEST = "manifest.json"
STAMP = ".fingerprint"  # in a work directory: the fingerprint and launch it is being computed for
_UMASK = os.umask(0)
os.umask(_UMASK)
TRACKED_PACKAGES = (
    "fairl",
    "torch",
    "transformers",
    "sentence-transformers",
    "trl",
    "accelerate",
    "datasets",
    "numpy",
    "scikit-learn",
    "safetensors",
    "pydantic",
    "typer",
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
    try:
        yield tmp_path
        # mkstemp makes 0600 and writers such as safetensors keep or recreate that mode, so the
        # mode is set after the block: published files follow the umask, like any other file.
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(final_dir: Path, fsync: bool = False) -> Iterator[Path]:
    """Yield an empty directory beside `final_dir` (`<name>.tmp`; a leftover of a killed write
    is removed first) and swap it into place of `final_dir` (`publish`) only if the block
    succeeds; otherwise it is removed and `final_dir` is untouched. With `fsync`, its files are
    flushed to disk before the swap, so a power cut cannot publish a half-written file."""
    final_dir = Path(final_dir)
    tmp = final_dir.with_name(final_dir.name + ".tmp")
    remove_path(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if fsync:
            for f in tmp.rglob("*"):
                if f.is_file():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
        publish(tmp, final_dir)
    finally:
        remove_path(tmp)


@contextmanager
def file_lock(path: Path, busy: FairlError | None = None) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created if needed) for the block: wait for it,
    or, given `busy`, raise that error at once when another process holds it. The `filelock`
    package's flock-based lock: on a local filesystem the kernel releases it when its holder
    dies, so a killed run leaves no stale lock behind (where flock is unavailable, filelock
    falls back to a marker file with stale-owner detection)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.UnixFileLock(str(path))
    try:
        lock.acquire(timeout=0 if busy is not None else -1)
    except filelock.Timeout:
        raise busy from None
    try:
        yield
    finally:
        lock.release()


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


def file_table(root: Path) -> dict[str, dict]:
    """{relative path: {"size", "sha256"}} of every file under `root` but its own manifest.

    Hard links of one file are hashed once: an irl run publishes ~30 sentence-transformers
    exports whose encoder weights (88 MB each) are links of one inode."""
    root = Path(root)
    digests: dict[tuple[int, int], str] = {}
    out: dict[str, dict] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if rel in (MANIFEST, STAMP) or not p.is_file():
            continue
        st = p.stat()
        key = (st.st_dev, st.st_ino)
        if key not in digests:
            digests[key] = sha256_file(p)
        out[rel] = {"size": st.st_size, "sha256": digests[key]}
    return out


def follow_umask(root: Path) -> None:
    """Give every file and directory under `root` the mode the umask grants a new one.

    safetensors (rewards, sentence-transformers exports, `save_pretrained` models) creates its
    files 0600, so without this colleagues on a shared machine could not read published
    outputs. A file hard-linked from outside `root` (fewer of its links found inside than it
    has) is left alone: its mode is not fairl's to change."""
    inodes: dict[tuple[int, int], list] = {}
    for p in [Path(root), *Path(root).rglob("*")]:
        st = p.lstat()
        if stat.S_ISDIR(st.st_mode):
            _chmod_permissions(p, st, 0o777 & ~_UMASK)
        elif stat.S_ISREG(st.st_mode):
            inodes.setdefault((st.st_dev, st.st_ino), [p, st, 0])[2] += 1
    for p, st, links in inodes.values():
        if links == st.st_nlink:
            _chmod_permissions(p, st, (0o777 if st.st_mode & 0o111 else 0o666) & ~_UMASK)


def _chmod_permissions(path: Path, st: os.stat_result, want: int) -> None:
    """Set the rwx bits only (setgid / sticky bits of shared directories are kept)."""
    if st.st_mode & 0o777 != want:
        os.chmod(path, (stat.S_IMODE(st.st_mode) & ~0o777) | want)


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(
        json.dumps(obj, sort_keys=True, default=_json_default).encode()
    ).hexdigest()


def dir_digest(root: Path, include: Callable[[Path], bool] = lambda f: True) -> str:
    """sha256 over the files under `root` that `include` keeps: each one's path relative to
    `root`, then the sha256 of its contents, in sorted path order. Identifies a directory that
    has no manifest (an input model, an encoder) by its contents, wherever it lies."""
    h = hashlib.sha256()
    for f in sorted(Path(root).rglob("*")):
        if f.is_file() and include(f):
            h.update(str(f.relative_to(root)).encode())
            h.update(sha256_file(f).encode())
    return h.hexdigest()


def hash_inputs(paths: dict[str, Path | None]) -> dict[str, str | None]:
    """sha256 of each input file (directories: their manifest if published, else all files)."""
    out: dict[str, str | None] = {}
    for name, p in paths.items():
        if p is None:
            out[name] = None
        elif Path(p).is_dir():
            m = Path(p) / MANIFEST
            out[name] = sha256_file(m) if m.is_file() else dir_digest(Path(p))
        else:
            out[name] = sha256_file(Path(p))
    return out


# ------------------------------------------------------------------------- environment
def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    """Commit of the fairl checkout, with '-dirty' if it has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


# ------------------------------------------------------------------------------ stages
def read_manifest(stage_dir: Path) -> dict | None:
    """The parsed manifest, or None when it is missing or corrupt (see `_load_manifest`)."""
    return _load_manifest(stage_dir)[0]


def _load_manifest(stage_dir: Path) -> tuple[dict | None, str | None]:
    """(manifest, None), or (None, why): "missing" or a description of the corruption."""
    m = Path(stage_dir) / MANIFEST
    if not m.is_file():
        return None, "missing"
    try:
        manifest = json.loads(m.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, f"not valid JSON: {e}"
    if not isinstance(manifest, dict):
        return None, f"a JSON {type(manifest).__name__}, not an object"
    return manifest, None


def _complete(manifest: dict | None, stage: str) -> bool:
    return bool(
        manifest and manifest.get("stage") == stage and manifest.get("status") == "complete"
    )


def _files_problem(stage_dir: Path, manifest: dict) -> str | None:
    """Why the files of a published stage do not match its manifest, or None if they all do.
    Hard links of one file are hashed once (see `file_table`)."""
    files = manifest.get("files")
    if not isinstance(files, dict):
        return (
            "its manifest lists no file checksums (published by an older fairl), "
            "so it cannot be verified"
        )
    digests: dict[tuple[int, int], str] = {}
    for rel, want in sorted(files.items()):
        path = Path(stage_dir) / rel
        if not isinstance(want, dict):
            return f"the manifest's entry for {rel} is malformed"
        try:
            st = path.stat()
        except FileNotFoundError:
            return f"{path} is missing"
        if not stat.S_ISREG(st.st_mode):
            return f"{path} is not a regular file"
        if st.st_size != want.get("size"):
            return f"{path} has {st.st_size} bytes, its manifest says {want.get('size')}"
        key = (st.st_dev, st.st_ino)
        if key not in digests:
            digests[key] = sha256_file(path)
        if digests[key] != want.get("sha256"):
            return f"{path} has changed since it was published (sha256 differs)"
    return None


def verify_stage(stage_dir: Path, stage: str, command: str) -> dict:
    """The manifest of a published stage whose files all still match it; otherwise a
    `MissingArtifactError` naming what is missing, corrupt or changed and the command to run.
    A later stage must not build on an output that changed after it was published."""
    stage_dir = Path(stage_dir)
    manifest, why = _load_manifest(stage_dir)
    redo = f"re-run `fairl {command} --force` with the same config (run.name, run.root)"
    move = (
        f"move {stage_dir} away (fairl replaces only what it published), then run "
        f"`fairl {command}` with the same config (run.name, run.root)"
    )
    if why == "missing":
        raise MissingArtifactError(
            f"{stage} output not found at {stage_dir}",
            hint=f"run `fairl {command}` with the same config (run.name, run.root) first",
        )
    if manifest is None:
        raise MissingArtifactError(
            f"the {stage} manifest {stage_dir / MANIFEST} is corrupt ({why})", hint=move
        )
    if manifest.get("stage") != stage:
        raise MissingArtifactError(
            f"{stage_dir} is not a fairl {stage} output (its manifest is for stage "
            f"{manifest.get('stage')!r})",
            hint=move,
        )
    if manifest.get("status") != "complete":
        raise MissingArtifactError(f"the {stage} output at {stage_dir} is not complete", hint=redo)
    problem = _files_problem(stage_dir, manifest)
    if problem:
        raise MissingArtifactError(
            f"the {stage} output at {stage_dir} does not verify: {problem}", hint=redo
        )
    return manifest


def require_stage(stage_dir: Path, stage: str, command: str) -> dict:
    """The manifest of a published, verified stage, or a clear error saying which command to
    run (`verify_stage`)."""
    return verify_stage(stage_dir, stage, command)


def os_error(e: OSError) -> FairlError:
    """An operating-system error (disk full, read-only or missing directory, a file where a
    directory should be) as a `FairlError` naming the path, with a hint by errno. These are
    problems of the machine, not bugs, so the CLI reports them without a traceback."""
    paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    what = e.strerror or str(e) or type(e).__name__
    hints = {
        errno.ENOSPC: "the disk is full: free space, or point run.root (and FAIRL_CACHE, the "
        "cache directory) at a disk with room",
        errno.EDQUOT: "the disk quota is exhausted: free space, or point run.root (and "
        "FAIRL_CACHE) elsewhere",
        errno.EACCES: "fairl cannot write or read there: choose a writable run.root "
        "(--set run.root=DIR) or FAIRL_CACHE, or fix the permissions",
        errno.EPERM: "the operation is not permitted there: choose a writable run.root "
        "(--set run.root=DIR) or FAIRL_CACHE",
        errno.EROFS: "that file system is read-only: choose a writable run.root "
        "(--set run.root=DIR) or FAIRL_CACHE",
        errno.ENOTDIR: "a component of the path is a file where fairl needs a directory: check "
        "run.root, run.name, FAIRL_CACHE and the paths in the config",
        errno.EEXIST: "a file is in the way where fairl needs a directory: check run.root, "
        "run.name, FAIRL_CACHE and the paths in the config",
        errno.EISDIR: "a directory is where fairl expects a file: check the paths in the config",
        errno.ENOENT: "check that the path exists",
    }
    hint = hints.get(e.errno, "check the path, the disk and the permissions, then run again")
    return FairlError(
        f"{what}: {paths}" if paths else what,
        hint=hint + "; published outputs are left as they were",
    )


@dataclass
class StageRun:
    """The working state of one stage execution: where to write, and what goes in the manifest."""

    stage: str
    final_dir: Path
    work_dir: Path
    fingerprint: str
    config: dict
    inputs: dict
    seed: int | None
    resumed: bool = False
    is_main: bool = True  # False on the other ranks of a data-parallel launch
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
    inputs: dict[str, Path | None],
    seed: int | None,
    force: bool = False,
    log=print,
    resumable: bool = False,
) -> Iterator[StageRun]:
    """Run a stage into a private work directory and publish it atomically on success.

    Yields a `StageRun`; raises `StageSkipped` (before yielding) when the published output
    already has this fingerprint and its files still match its manifest. A `resumable` stage
    keeps the work directory of an interrupted run with the same fingerprint (`run.resumed`) so
    it can pick up where it stopped, unless `force`; other stages start afresh (their expensive
    inputs are cached elsewhere). On any exception, including Ctrl-C, nothing is published and
    the previous published output, if any, is left untouched. A lock file keeps two processes
    from running the same stage of one run at once; under it, a publication that a kill cut
    short is completed or undone first (`_recover`). A `<stage>` directory that fairl did not
    publish, or a symbolic link there, is refused before any work (`_check_replaceable`).
    """
    run_dir = Path(run_dir)
    final_dir = run_dir / stage
    input_hashes = hash_inputs(inputs)
    fingerprint = sha256_json({"stage": stage, "config": config, "inputs": input_hashes})

    if distributed_rank() > 0:
        # Another rank of a data-parallel launch: compute alongside rank 0, write nothing.
        # It reads the same files as rank 0, so it takes the same decision to skip or redo.
        before = read_manifest(final_dir)
        if _up_to_date(stage, final_dir, fingerprint, force, log):
            raise StageSkipped(stage)
        yield _secondary_rank_run(stage, run_dir, final_dir, fingerprint, config, seed, before)
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    busy = StageBusy(
        f"another fairl process is running {stage} in {run_dir}",
        hint="wait for it to finish, or use another run.name",
    )
    with file_lock(run_dir / f".{stage}.lock", busy=busy):
        _recover(stage, run_dir, final_dir, log)
        if _up_to_date(stage, final_dir, fingerprint, force, log):
            raise StageSkipped(stage)
        _check_replaceable(stage, final_dir)
        yield from _stage_run_locked(
            stage,
            run_dir,
            final_dir,
            fingerprint,
            config,
            inputs,
            input_hashes,
            seed,
            log,
            resumable,
            force,
        )


def run_stage(
    stage: str,
    cfg,
    config: dict,
    inputs: dict[str, Path | None],
    recipe: Callable[[StageRun], None],
    *,
    force: bool = False,
    log=print,
    resumable: bool = False,
) -> Path:
    """Run `recipe(run)` as stage `stage` of the run `cfg.run.name`, or skip it: the one place
    that owns the skip / publish / resume boilerplate of every stage (`stage_run`). The stage is
    skipped when its published output already has this fingerprint (`config` and the hashes of
    `inputs`); otherwise `recipe` writes into `run.work_dir` and what it wrote is published
    atomically. Returns the stage's published directory."""
    try:
        with stage_run(
            stage,
            cfg.run.root / cfg.run.name,
            config,
            inputs,
            seed=cfg.run.seed,
            force=force,
            log=log,
            resumable=resumable,
        ) as run:
            recipe(run)
    except StageSkipped:
        pass
    return cfg.stage_dir(stage)


def _up_to_date(stage: str, final_dir: Path, fingerprint: str, force: bool, log) -> bool:
    """Whether the published output can stand: same fingerprint, not forced, and every file
    still matches the manifest. Says why it is redone when it is not."""
    old = read_manifest(final_dir)
    if not _complete(old, stage):
        return False
    if old.get("fingerprint") != fingerprint:
        log(f"[{stage}] config or inputs changed since the published run: redoing it")
        return False
    if force:
        return False
    problem = _files_problem(final_dir, old)
    if problem:
        log(f"[{stage}] the published output does not verify ({problem}): redoing it")
        return False
    log(f"[{stage}] already done with this config and inputs: {final_dir} (use --force to redo)")
    return True


def _secondary_rank_run(
    stage, run_dir, final_dir, fingerprint, config, seed, before: dict | None
) -> StageRun:
    """Wait until rank 0 has prepared the work directory for this very config (so checkpoints
    to resume from are visible to every rank), then share it: read-only, except the files a
    stage gives each rank to write (make-pairs: its share of `batches/`). `before` is the
    manifest this rank judged stale or forced: only a different one, published meanwhile by
    rank 0, means rank 0 finished without this rank."""
    work_dir = run_dir / f".{stage}.partial"
    stamp = work_dir / STAMP
    while _read_stamp(stamp) != (fingerprint, launch_id()):
        done = read_manifest(final_dir)
        if (
            done != before
            and _complete(done, stage)
            and done.get("fingerprint") == fingerprint
            and _files_problem(final_dir, done) is None
        ):
            raise StageSkipped(stage)  # rank 0 finished it without us (nothing left to train)
        time.sleep(0.5)
    return StageRun(
        stage=stage,
        final_dir=final_dir,
        work_dir=work_dir,
        fingerprint=fingerprint,
        config=config,
        inputs={},
        seed=seed,
        is_main=False,
    )


def _stage_run_locked(
    stage,
    run_dir,
    final_dir,
    fingerprint,
    config,
    inputs,
    input_hashes,
    seed,
    log,
    resumable,
    force=False,
):
    # A partial directory left by a killed run with the same fingerprint is kept for resumable
    # stages (sampled batches, RL checkpoints), so they pick up instead of restarting; --force
    # discards it, so a damaged checkpoint there can always be got rid of.
    work_dir = run_dir / f".{stage}.partial"
    stamp = work_dir / STAMP
    resumed = resumable and not force and work_dir.is_dir() and _read_stamp(stamp)[0] == fingerprint
    if (work_dir.exists() or work_dir.is_symlink()) and not resumed:
        if force:
            log(f"[{stage}] --force: discarding the partial output in {work_dir}")
        else:
            log(f"[{stage}] discarding the partial output of an interrupted or changed run")
        remove_path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(f"{fingerprint} {launch_id()}")
    if resumed:
        log(f"[{stage}] resuming the interrupted run in {work_dir}")
    run = StageRun(
        stage=stage,
        final_dir=final_dir,
        work_dir=work_dir,
        fingerprint=fingerprint,
        config=config,
        inputs={
            k: {"path": str(v) if v else None, "sha256": input_hashes[k]} for k, v in inputs.items()
        },
        seed=seed,
        resumed=resumed,
    )
    yield run
    manifest = {
        "stage": stage,
        "status": "complete",
        "fingerprint": fingerprint,
        "config": config,
        "inputs": run.inputs,
        "seed": seed,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "platform": {
            "machine": platform.machine(),
            "system": platform.system(),
            "cpu_count": os.cpu_count(),
            "argv": sys.argv,
        },
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(run.started)),
        "wall_time_s": round(time.time() - run.started, 3),
        "timings_s": run.timings,
        **run.extra,
        "files": file_table(work_dir),  # what `verify_stage` checks before anything reuses it
    }
    follow_umask(work_dir)
    # The stamp goes only once the manifest is written: a kill before this point leaves a
    # resumable partial, a kill after it a complete one that `_recover` publishes.
    write_json(work_dir / MANIFEST, manifest)
    stamp.unlink()
    _check_replaceable(stage, final_dir)  # again: something may have appeared meanwhile
    publish(work_dir, final_dir)


def _read_stamp(stamp: Path) -> tuple[str | None, str | None]:
    """(fingerprint, launch id) of a work directory's stamp; (None, None) when absent."""
    try:
        fingerprint, _, launch = stamp.read_text().strip().partition(" ")
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        return None, None
    return fingerprint, launch or None


def _check_replaceable(stage: str, final_dir: Path) -> None:
    """Refuse to replace anything at `final_dir` but a stage directory fairl published for
    `stage` (a manifest naming that stage). Publication deletes the previous output, so a
    user's directory there, or one whose manifest cannot be read, must never be taken for one.
    A symbolic link is refused too: renaming the link away and back would not put the output
    where the link points, and its target is not fairl's to delete."""
    move = "move it away, or choose another run.name (or run.root)"
    if final_dir.is_symlink():
        raise ForeignDirectory(
            f"{final_dir} is a symbolic link: fairl publishes a stage by renaming directories and "
            "does not replace a link (or delete what it points to)",
            hint="move the link away (its target is left as it is), or link the whole run "
            "directory (run.root / run.name) instead of a stage directory",
        )
    if not final_dir.exists():
        return
    if not final_dir.is_dir():
        raise ForeignDirectory(
            f"{final_dir} is a file, not a fairl {stage} output: fairl will not replace it",
            hint=move,
        )
    manifest, why = _load_manifest(final_dir)
    if manifest is None or manifest.get("stage") != stage:
        reason = (
            "has no fairl manifest"
            if why == "missing"
            else f"its {MANIFEST} is corrupt ({why})"
            if manifest is None
            else f"its manifest is for stage {manifest.get('stage')!r}"
        )
        raise ForeignDirectory(
            f"{final_dir} exists and is not a fairl {stage} output ({reason}): "
            "fairl will not replace or delete it",
            hint=move,
        )


def _recover(stage: str, run_dir: Path, final_dir: Path, log) -> None:
    """Finish or undo a publication that a kill cut short (after the manifest was written, or
    between the two renames `final` -> `.old`, `.partial` -> `final`), so that neither the new
    output nor the old one is lost: a complete, verified new output is published; otherwise a
    missing output is put back from `.old`."""
    work_dir = run_dir / f".{stage}.partial"
    trash = run_dir / f".{stage}.old"
    new = read_manifest(work_dir)
    if _complete(new, stage) and _files_problem(work_dir, new) is None:
        log(
            f"[{stage}] completing the publication that an interrupted run left unfinished: "
            f"{final_dir}"
        )
        (work_dir / STAMP).unlink(missing_ok=True)
        _check_replaceable(stage, final_dir)
        publish(work_dir, final_dir)
        remove_path(trash)
        return
    if final_dir.exists() or final_dir.is_symlink():
        return
    if _complete(read_manifest(trash), stage):
        log(
            f"[{stage}] restoring the previous output that an interrupted publication left in "
            f"{trash}"
        )
        os.replace(trash, final_dir)


def remove_path(path: Path) -> None:
    """Delete a file, a symbolic link (never what it points to) or a directory tree."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def publish(work_dir: Path, final_dir: Path) -> None:
    """Swap `work_dir` into place of `final_dir` (the low-level swap; stages go through
    `_check_replaceable` first). Readers require a manifest, so the window in which neither
    exists only ever looks like 'not run yet', never like a partial result. If the second
    rename fails, the previous `final_dir` is put back; a kill between the two renames is
    repaired by the next run (`_recover`, or `policy.ppo.latest_checkpoint` for checkpoints)."""
    trash = final_dir.with_name(f".{final_dir.name}.old")
    remove_path(trash)
    moved = final_dir.exists() or final_dir.is_symlink()
    if moved:
        os.replace(final_dir, trash)
    try:
        os.replace(work_dir, final_dir)
    except BaseException:
        if moved and not (final_dir.exists() or final_dir.is_symlink()):
            os.replace(trash, final_dir)
        raise
    remove_path(trash)
