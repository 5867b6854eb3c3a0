"""How many threads torch's CPU kernels use: chosen from the size of the work, unless the user
chose.

Why: torch runs each kernel as an OpenMP parallel region that ends in a barrier. A kernel of a
small model (the offline world's 150k-parameter GPT-NeoX, a PPO minibatch of 16 short
sequences) takes microseconds, far less than a scheduler time slice (milliseconds). On an idle
machine a second thread still helps a little; when another process is busy on the same cores,
every region waits at its barrier for whichever of its threads was descheduled, and the
waiting thread spins meanwhile, so the run slows far beyond its share of the CPU (measured on 2
cores with one `yes > /dev/null`: train-expert on the toy world 45 s instead of 16.5 s alone;
with one thread 17.9 s). Work whose kernels are large (a real language model, the IRL bank's
stacked GEMMs) amortises the barrier and keeps every core.

The user's choice wins: `OMP_NUM_THREADS` or `MKL_NUM_THREADS` in the environment, or a count
set with `torch.set_num_threads` (seen as a count that is neither torch's default for this
process nor the last one fairl set) is left alone.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Iterator, Optional

import torch

log = logging.getLogger("fairl.runtime")

# Below this many parameters a model runs single-threaded. Its largest kernel (one token of
# generation for a batch of 64, or a PPO minibatch) is then well under a millisecond, shorter
# than a time slice, so a barrier wait on a descheduled partner costs more than the second
# thread saves. The world LM (~0.15M) and the tests' tiny models are far below; the default
# encoder (all-MiniLM-L6-v2, 22M) and any real policy (Pythia-410m, SmolLM2-135M) are above.
SMALL_WORK_PARAMS = 10_000_000

ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

_set_by_fairl: Optional[int] = None   # the count fairl last set; None while it set none


def default_threads() -> int:
    """torch's default intra-op thread count for this process (no environment variable set):
    its physical cores among the CPUs the process may run on."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topo = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            with open(f"{topo}/physical_package_id") as f1, open(f"{topo}/core_id") as f2:
                cores.add((f1.read().strip(), f2.read().strip()))
        except OSError:
            return len(cpus) or 1
    return len(cores) or 1


def user_threads() -> Optional[str]:
    """Why the thread count is the user's to keep (a short reason), or None if fairl may set it."""
    for var in ENV_VARS:
        if os.environ.get(var, "").strip():
            return f"{var}={os.environ[var].strip()}"
    current = torch.get_num_threads()
    expected = default_threads() if _set_by_fairl is None else _set_by_fairl
    if current != expected:
        return f"torch.set_num_threads({current})"
    return None


def threads_for(n_params: int) -> int:
    """The policy: one thread for work smaller than SMALL_WORK_PARAMS parameters, else every
    core torch would use by default."""
    return 1 if n_params < SMALL_WORK_PARAMS else default_threads()


def model_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def apply_threads(n: int, what: str = "work") -> int:
    """Use `n` intra-op threads from now on, unless the user chose a count; returns the count in
    effect. Setting it can start new OpenMP workers; they are created by this thread and
    inherit its flush-to-zero mode (`pipeline.irl.common.enable_flush_to_zero`)."""
    global _set_by_fairl
    reason = user_threads()
    if reason is not None:
        log.debug("torch threads: keeping %d for %s (%s)", torch.get_num_threads(), what, reason)
        return torch.get_num_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
        log.debug("torch threads: %d for %s", n, what)
    _set_by_fairl = n
    return n


def apply_threads_for_model(model: torch.nn.Module, what: str = "model") -> int:
    """Set the thread count for a model about to be used (see `threads_for`)."""
    n_params = model_params(model)
    return apply_threads(threads_for(n_params), f"{what} ({n_params:,} parameters)")


@contextmanager
def using_model_threads(model: torch.nn.Module, what: str = "model") -> Iterator[int]:
    """`using_threads` with the count `threads_for` gives this model: an encoder or classifier
    used between the steps of a tiny policy gets its own (larger) count back for its block."""
    with using_threads(threads_for(model_params(model)), what) as n:
        yield n


@contextmanager
def using_threads(n: int, what: str = "work") -> Iterator[int]:
    """`apply_threads(n)` for the duration of a block, then the previous count again (unless
    the user chose one in between)."""
    before = torch.get_num_threads()
    try:
        yield apply_threads(n, what)
    finally:
        if torch.get_num_threads() != before and user_threads() is None:
            apply_threads(before, "the work after " + what)
