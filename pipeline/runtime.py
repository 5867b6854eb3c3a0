"""The CPU runtime: how many threads torch's kernels use, flushing denormals to zero, and the
allocator (the last two at the end of the module, with their reasons).

Threads are chosen from the size of the work, unless the user chose.

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

import ctypes
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch

from pipeline.errors import ConfigError

log = logging.getLogger("fairl.runtime")
T = TypeVar("T")

# Below this many parameters a model runs single-threaded. Its largest kernel (one token of
# generation for a batch of 64, or a PPO minibatch) is then well under a millisecond, shorter
# than a time slice, so a barrier wait on a descheduled partner costs more than the second
# thread saves. The world LM (~0.15M) and the tests' tiny models are far below; the default
# encoder (all-MiniLM-L6-v2, 22M) and any real policy (Pythia-410m, SmolLM2-135M) are above.
SMALL_WORK_PARAMS = 10_000_000

ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

_set_by_fairl: int | None = None  # the count fairl last set; None while it set none


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


def user_threads() -> str | None:
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
    inherit its flush-to-zero mode (`enable_flush_to_zero` below)."""
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


# --------------------------------------------------------- denormals and the allocator
_local = threading.local()


class Interrupted(KeyboardInterrupt):
    """Raised inside a training thread when the caller was interrupted (Ctrl-C)."""


def enable_flush_to_zero() -> bool:
    """Flush float32 denormals to zero in this thread; returns whether the OpenMP workers that
    run its parallel kernels flush too.

    Saturated losses drive Adam's moments and some weights geometrically towards zero; once
    they are denormal (< 1.2e-38) every CPU kernel touching them slows ~100x (measured here: an
    MLP-bank epoch went from 0.2 s to 2.4 s after ~100 epochs). `torch.set_flush_denormal`
    affects the calling thread and the OpenMP workers created *after* it; call this at start-up
    (the CLI does) so the worker pool inherits it. The mode stays on: values below 1.2e-38 read
    as zero, which no result of fairl depends on. A later change of the thread count
    (`pipeline.runtime`) keeps it: workers it adds are started from a flushing thread, and
    `run_flushing_denormals` probes again once the count is set.
    """
    torch.set_flush_denormal(True)
    probe = torch.full((1 << 20,), 1e-30)  # large enough to be split across the workers
    return bool(((probe * 1e-10) == 0).all())


def run_flushing_denormals(fn: Callable[[threading.Event], T]) -> T:
    """Run `fn(stop)` where every worker thread flushes denormals to zero.

    Normally that is the calling thread (see `enable_flush_to_zero`). If the process's worker
    pool was created before flush-to-zero was enabled, `fn` runs in a fresh thread instead, whose
    own OpenMP team inherits the mode (slower for tiny models: a non-main thread's team handles
    small parallel regions less well). There, Ctrl-C in the caller sets `stop`, which `fn`
    polls, and the interrupt is re-raised once the thread has unwound. Nested calls reuse the
    enclosing context.

    Training runs on every core torch would use by default (unless the user chose a count,
    `pipeline.runtime`), even after a tiny policy set one thread: the bank's stacked GEMMs are
    large, and the bank and the reference loop then use the same count whatever ran before.
    """
    current = getattr(_local, "stop", None)
    if current is not None:
        return fn(current)
    with using_threads(default_threads(), "IRL training"):
        return _run_flushing(fn)


def _run_flushing(fn: Callable[[threading.Event], T]) -> T:
    if enable_flush_to_zero():  # after the thread count is set: probes the team that will run
        _local.stop = threading.Event()
        try:
            return fn(_local.stop)
        finally:
            _local.stop = None
    log.info(
        "the CPU worker pool predates flush-to-zero; training in a fresh thread so that "
        "denormals cannot slow it (call pipeline.runtime.enable_flush_to_zero() first "
        "thing to avoid this)"
    )
    stop = threading.Event()
    out: dict = {}

    def target() -> None:
        torch.set_flush_denormal(True)
        _local.stop = stop
        try:
            out["value"] = fn(stop)
        except BaseException as e:  # re-raised in the caller
            out["error"] = e

    worker = threading.Thread(target=target, name="fairl-train", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.2)
    except KeyboardInterrupt:
        stop.set()
        worker.join()
        raise
    if "error" in out:
        raise out["error"]
    return out["value"]


_ALLOCATOR_TUNED = False


def tune_allocator() -> None:
    """Keep freed large blocks in the heap instead of returning them to the OS.

    glibc serves allocations above 128 KiB with fresh mmap pages, so every bank-sized temporary
    (a 1 MiB activation, say) page-faults on first touch; measured here this doubled the time of
    an MLP bank step. Raising the mmap and trim thresholds (mallopt) makes the allocator reuse
    memory, the effect jemalloc/tcmalloc give PyTorch on CPU. Process-wide, so called once; the
    price is that peak memory is not handed back until exit. No-op off glibc.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return
    _ALLOCATOR_TUNED = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
        libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1)
    except (OSError, AttributeError):
        pass


# ------------------------------------------------------------------------ device and precision
@dataclass(frozen=True)
class Placement:
    """Where the heavy models run (run.device) and the dtype of inference-only models
    (run.precision). Training keeps float32 weights."""

    device: torch.device
    dtype: torch.dtype


_PLACEMENT = Placement(torch.device("cpu"), torch.float32)


def resolve_placement(device: str = "auto", precision: str = "auto") -> Placement:
    """run.device / run.precision -> a Placement. auto: CUDA when torch sees a GPU, else the
    CPU; bf16 where the GPU supports it, float32 on the CPU (the CPU path is unchanged). On a
    GPU, TF32 matmuls are switched on (Ampere and later)."""
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise ConfigError(
            "run.device is cuda, but torch sees no GPU",
            hint="run.device: auto (or cpu); check `fairl env` and CUDA_VISIBLE_DEVICES",
        )
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and cuda) else "cpu")
    if precision == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("run.precision is bf16, but this GPU has no bf16", hint="use fp32")
    bf16 = precision == "bf16" or (
        precision == "auto" and dev.type == "cuda" and torch.cuda.is_bf16_supported()
    )
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Placement(dev, torch.bfloat16 if bf16 else torch.float32)


def set_placement(p: Placement) -> None:
    """Set the process's placement (the CLI does, from the config, before a stage runs)."""
    global _PLACEMENT
    _PLACEMENT = p


def placement() -> Placement:
    """The process's placement: the CPU and float32 unless set_placement said otherwise."""
    return _PLACEMENT
