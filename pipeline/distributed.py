"""Ranks of a data-parallel launch (torchrun): who writes, and the barriers between them.

Stages run on every rank of a data-parallel launch (train-expert, make-pairs, re-rlhf) or on
rank 0 only;
rank 0 alone writes and publishes (pipeline.artifacts). torch is imported inside the functions
that need it, only once a launch is distributed: `fairl --help` and single-process runs of the
stages that need no torch do not pay for it.
"""

from __future__ import annotations

import os
import uuid
from datetime import timedelta


def distributed_rank() -> int:
    """This process's rank under torchrun / accelerate launch (0 when not distributed)."""
    return int(os.environ.get("RANK", "0")) if is_distributed() else 0


def world_size() -> int:
    """The number of ranks of this launch (1 when not distributed)."""
    return int(os.environ.get("WORLD_SIZE", "1")) if is_distributed() else 1


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
    import torch.distributed as dist  # torch only once a launch is distributed (docstring)

    dist.barrier(group=rank_barrier_group())


_LAUNCH_ID = uuid.uuid4().hex


def launch_id() -> str:
    """An id of this command's launch, the same on every rank of a data-parallel launch (rank
    0's, broadcast by `rank_barrier_group`). Rank 0 stamps a stage's work directory with it, so
    the other ranks wait for the directory of *this* launch, never for one an earlier,
    interrupted launch left with the same fingerprint (which rank 0 may be about to discard)."""
    return _LAUNCH_ID


def rank_barrier_group():
    """The gloo group of `wait_for_all_ranks`, joining torchrun's process group if needed.
    Creating it is itself a rendezvous under the default timeout, so every command calls this
    first (`cli.main._invoke`), while the ranks are in step."""
    global _RANK_BARRIER_GROUP
    if _RANK_BARRIER_GROUP is None:
        import torch  # torch only once a launch is distributed (module docstring)
        import torch.distributed as dist

        if not dist.is_initialized():
            from accelerate import PartialState

            PartialState(cpu=not torch.cuda.is_available())  # joins torchrun's rendezvous
        _RANK_BARRIER_GROUP = dist.new_group(backend="gloo", timeout=timedelta(days=7))
        global _LAUNCH_ID
        shared = [_LAUNCH_ID]
        dist.broadcast_object_list(shared, src=0, group=_RANK_BARRIER_GROUP)
        _LAUNCH_ID = shared[0]
    return _RANK_BARRIER_GROUP


# Stages that train on every rank of a data-parallel launch; the others run on rank 0 alone
# (their inputs are small, or they are evaluation) while the other ranks wait at the next
# barrier.
DATA_PARALLEL_STAGES = ("train_expert", "make_pairs", "re_rlhf")


def runs_on_this_rank(stage: str) -> bool:
    """Whether this process runs `stage`: always on rank 0, on the others only when the stage
    is data-parallel."""
    return distributed_rank() == 0 or stage in DATA_PARALLEL_STAGES
