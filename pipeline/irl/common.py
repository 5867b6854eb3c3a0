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

from dataclasses import dataclass, field, fields

import torch

from pipeline.irl.methods import MethodSpec
from pipeline.seeds import derive_seed


def stream(seed: int, purpose: str) -> torch.Generator:
    """The random stream `purpose` of model seed `seed` (module docstring)."""
    return torch.Generator().manual_seed(derive_seed("fairl", seed, purpose))


@dataclass
class PairTensors:
    """Embedded pairs. Row i of h_pos/h_neg is pair i's o+ / o-; `train` and `val` index rows."""

    h_pos: torch.Tensor  # [N, d] h(o+)
    h_neg: torch.Tensor  # [N, d] h(o-)
    train: torch.Tensor  # [n_train] long
    val: torch.Tensor  # [n_val] long
    y_pos: torch.Tensor | None = None  # [N] +1 non-toxic / -1 toxic, for o+
    y_neg: torch.Tensor | None = None  # [N] same for o-

    def __post_init__(self):
        if self.h_pos.shape != self.h_neg.shape or self.h_pos.ndim != 2:
            raise ValueError(
                f"h_pos {tuple(self.h_pos.shape)} and h_neg {tuple(self.h_neg.shape)} must be "
                "equal [N, d] tensors"
            )
        if len(self.train) == 0 or len(self.val) == 0:
            raise ValueError("need at least one training and one validation pair")

    @property
    def has_labels(self) -> bool:
        return self.y_pos is not None

    def to(self, device: torch.device | str) -> PairTensors:
        """The same pairs with every tensor on `device` (the same tensors when they are there
        already, in a new PairTensors)."""
        moved = {
            f.name: None if (v := getattr(self, f.name)) is None else v.to(device)
            for f in fields(self)
        }
        return PairTensors(**moved)


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
    base: dict[str, torch.Tensor]  # R_D parameters at the best epoch
    failure: dict[str, torch.Tensor] | None  # R_F parameters, FA-IRL only
    best_epoch: int
    epochs_run: int
    best_val_loss: float
    history: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "method": self.method.name,
            "seed": self.seed,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "best_val_loss": self.best_val_loss,
        }


def n_used(n_train: int, batch_size: int) -> int:
    """Pairs used per epoch: whole minibatches only (drop_last), or all pairs if fewer than one
    batch. The <= batch_size - 1 left over differ every epoch, since the order is reshuffled.
    Equal-sized minibatches keep every step's arithmetic identical between a model trained alone
    and inside the bank (no short SIMD tail in one and not the other)."""
    return n_train if n_train < batch_size else n_train - n_train % batch_size
