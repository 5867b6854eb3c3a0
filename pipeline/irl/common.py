"""What the reference loop and the bank trainer share: inputs, settings, random streams, results.

Randomness is split into named streams per seed, so a model's trajectory depends only on its
own (seed, method), never on which other models train beside it:

    init/base      R_D's initial parameters   (shared by all methods with this seed)
    init/failure   R_F's initial parameters   (shared by all FA-IRL methods with this seed)
    order          minibatch order per epoch  (shared by all methods with this seed)
    sample/<name>  failure sampling S_t ⊆ F_t  (per method)

Methods with the same seed thus start from the same R_D and see the same minibatches: a paired
comparison in which only the objective differs, and the reason the bank can give every model of
a seed one shared GEMM.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional, TypeVar

import torch

from pipeline.irl.methods import MethodSpec
from pipeline.runtime import default_threads, using_threads

T = TypeVar("T")
log = logging.getLogger("fairl.irl")


def stream(seed: int, purpose: str) -> torch.Generator:
    digest = hashlib.sha256(f"fairl/{seed}/{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


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
    probe = torch.full((1 << 20,), 1e-30)      # large enough to be split across the workers
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
    if enable_flush_to_zero():   # after the thread count is set: probes the team that will run
        _local.stop = threading.Event()
        try:
            return fn(_local.stop)
        finally:
            _local.stop = None
    log.info("the CPU worker pool predates flush-to-zero; training in a fresh thread so that "
             "denormals cannot slow it (call pipeline.irl.common.enable_flush_to_zero() first "
             "thing to avoid this)")
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
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
        libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1)
    except (OSError, AttributeError):
        pass


@dataclass
class PairTensors:
    """Embedded pairs. Row i of hc/hr is pair i's o+ / o-; `train` and `val` index rows."""

    hc: torch.Tensor                      # [N, d] h(o+)
    hr: torch.Tensor                      # [N, d] h(o-)
    train: torch.Tensor                   # [n_train] long
    val: torch.Tensor                     # [n_val] long
    yc: Optional[torch.Tensor] = None     # [N] +1 non-toxic / -1 toxic, for o+
    yr: Optional[torch.Tensor] = None     # [N] same for o-

    def __post_init__(self):
        if self.hc.shape != self.hr.shape or self.hc.ndim != 2:
            raise ValueError(f"hc {tuple(self.hc.shape)} and hr {tuple(self.hr.shape)} must be "
                             "equal [N, d] tensors")
        if len(self.train) == 0 or len(self.val) == 0:
            raise ValueError("need at least one training and one validation pair")

    @property
    def has_labels(self) -> bool:
        return self.yc is not None


@dataclass(frozen=True)
class Optim:
    """Paper Section 5: Adam, lr 1e-3, batch 32, up to 800 epochs, early stopping."""

    lr: float = 1e-3
    batch_size: int = 32
    max_epochs: int = 800
    patience: int = 20


@dataclass
class TrainedReward:
    method: MethodSpec
    seed: int
    base: dict[str, torch.Tensor]                  # R_D parameters at the best epoch
    failure: Optional[dict[str, torch.Tensor]]     # R_F parameters, FA-IRL only
    best_epoch: int
    epochs_run: int
    best_val_loss: float
    history: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        return {"method": self.method.name, "seed": self.seed, "best_epoch": self.best_epoch,
                "epochs_run": self.epochs_run, "best_val_loss": self.best_val_loss}


def n_used(n_train: int, batch_size: int) -> int:
    """Pairs used per epoch: whole minibatches only (drop_last), or all pairs if fewer than one
    batch. The <= batch_size - 1 left over differ every epoch, since the order is reshuffled.
    Equal-sized minibatches keep every step's arithmetic identical between a model trained alone
    and inside the bank (no short SIMD tail in one and not the other)."""
    return n_train if n_train < batch_size else n_train - n_train % batch_size
