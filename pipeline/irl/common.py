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
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional, TypeVar

import torch

from pipeline.irl.methods import MethodSpec

T = TypeVar("T")


def stream(seed: int, purpose: str) -> torch.Generator:
    digest = hashlib.sha256(f"fairl/{seed}/{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


class Interrupted(KeyboardInterrupt):
    """Raised inside a training thread when the caller was interrupted (Ctrl-C)."""


def run_flushing_denormals(fn: Callable[[threading.Event], T]) -> T:
    """Run `fn(stop)` in a fresh thread whose float unit flushes denormals to zero.

    Saturated losses drive Adam's moments and some weights geometrically towards zero; once
    they are denormal (< 1.2e-38) every CPU kernel touching them slows ~100x (measured here:
    an MLP-bank epoch went from 0.2 s to 2.4 s). `torch.set_flush_denormal` only affects the
    calling thread and the OpenMP workers it creates later, and the process's worker pool
    usually exists already (the encoder ran). A new thread gets its own OpenMP team, created
    after flush-to-zero is set, so every worker inherits it. Ctrl-C in the caller sets `stop`,
    which `fn` polls; the thread then unwinds and the interrupt is re-raised here.
    """
    stop = threading.Event()
    out: dict = {}

    def target() -> None:
        torch.set_flush_denormal(True)
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
