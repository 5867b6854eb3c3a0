"""Reward heads on frozen embeddings h(o) in R^d (paper Section 3 and 4.1).

A head is written as functions of its parameters, so the same code scores one model or a bank
of G x M models stacked along a group axis G (models sharing minibatches) and a model axis M:

    one model:   params[name] has `shape(name)`;            h [n, d]    -> R [n]
    bank:        params[name] has `bank_shape(name, G, M)`; h [G, n, d] -> R [G, n, M]

In the bank the M models of a group read the same minibatch, so their first layers are one wide
GEMM ([n, d] x [d, M*H]) instead of M narrow ones: that is what makes training many seeds and
methods at once faster than a loop (see pipeline.irl.bank).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch


def kaiming_uniform(shape: tuple[int, ...], fan_in: int, gen: torch.Generator) -> torch.Tensor:
    """torch.nn.Linear's default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for weights and
    biases (kaiming_uniform_ with a=sqrt(5)); paper Section 4.1."""
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(shape, generator=gen) * 2.0 - 1.0) * bound


class RewardHead(ABC):
    """R(o) = f_params(h(o)). Subclasses: LinearHead, MLPHead."""

    kind: str
    activation: str = "identity"
    weight_names: tuple[str, ...]  # parameters in ||w||^2 (biases are not penalised)

    def __init__(self, d: int):
        self.d = d

    @abstractmethod
    def init(self, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """One model's parameters, drawn from `gen` in a fixed order."""

    @abstractmethod
    def forward(self, params: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        """Bank: h [G, n, d] -> R [G, n, M]."""

    @abstractmethod
    def forward_shared(self, params: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        """Bank, every group on the same inputs: h [n, d] -> R [G, n, M]. One GEMM over all
        groups' columns; equal to `forward` on h expanded over G (GEMM columns are independent)."""

    @abstractmethod
    def forward_pair(self, params: dict[str, torch.Tensor], h: torch.Tensor, b: int):
        """Bank, training: h [G, 2b, d] holds b o+ rows then b o- rows -> (R+ [G, b, M],
        R- [G, b, M]). One GEMM for both halves, but the output bias is added to each half
        separately: it cancels in Delta, and only then is its gradient exactly 0 (sum g - sum g)
        rather than rounding noise that Adam would amplify into lr-sized steps."""

    @abstractmethod
    def forward_one(self, params: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        """One model: h [n, d] -> R [n]."""

    @abstractmethod
    def stack(self, models: list[list[dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
        """models[g][m] (one model's params) -> bank params."""

    @abstractmethod
    def path_view(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """Bank tensor of parameter `name` viewed as [G, X, M, ...]: the model axis is dim 2."""

    @abstractmethod
    def unpath_view(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """Inverse of `path_view` (for any number of models)."""

    def unstack(self, params: dict[str, torch.Tensor], g: int, m: int) -> dict[str, torch.Tensor]:
        """Bank params -> model (g, m)'s params (a copy)."""
        one = {
            k: self.unpath_view(k, self.path_view(k, v)[g : g + 1, :, m : m + 1])
            for k, v in params.items()
        }
        return {k: v.reshape(self.shape(k)).clone() for k, v in one.items()}

    def select(self, params: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The sub-bank of models `idx` (same groups), detached."""
        return {
            k: self.unpath_view(k, self.path_view(k, v.detach())[:, :, idx])
            for k, v in params.items()
        }

    def model_mask(self, name: str, per_model: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Per-model values [G, M] broadcast to the layout of `like`, bank tensor `name`."""
        view = self.path_view(name, like)
        values = per_model.reshape(
            *per_model.shape[:1], 1, per_model.shape[1], *([1] * (view.dim() - 3))
        )
        return self.unpath_view(name, values.expand_as(view))

    @abstractmethod
    def shape(self, name: str) -> tuple[int, ...]:
        """One model's shape of parameter `name`."""

    @abstractmethod
    def sq_weight_norm(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Bank: ||w||^2 of each model's weights (not biases) -> [G, M]."""

    @abstractmethod
    def fold(
        self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """One model's params equivalent to R_a + R_b (exactly, up to float rounding)."""

    @abstractmethod
    def dense_layers(
        self, params: dict[str, torch.Tensor]
    ) -> list[tuple[torch.Tensor, torch.Tensor, str]]:
        """(weight [out, in], bias [out], activation) per layer, for a sentence-transformers
        export."""

    def describe(self) -> dict:
        return {"head": self.kind, "in_dim": self.d}

    def flops_per_pair(self) -> int:
        """Multiply-adds x2 for forward and weight-gradient on both outputs of one pair."""
        return 2 * 2 * 2 * self.n_weights()

    @abstractmethod
    def n_weights(self) -> int: ...


class LinearHead(RewardHead):
    """R(o) = theta^T h(o) + b."""

    kind = "linear"
    weight_names = ("w",)

    def init(self, gen):
        return {"w": kaiming_uniform((self.d,), self.d, gen), "b": kaiming_uniform((), self.d, gen)}

    @staticmethod
    def _scores(h, w):
        """h @ w, [G,n,d] @ [G,d,M] -> [G,n,M]. A single column is padded to two: with M = 1 the
        BLAS switches to a GEMV kernel whose rounding differs from the bank's GEMM, which would
        break bit-equality between a model trained alone and inside a bank."""
        if w.shape[-1] == 1:
            return torch.bmm(h, torch.nn.functional.pad(w, (0, 1)))[..., :1]
        return torch.bmm(h, w)

    def forward(self, params, h):
        return self._scores(h, params["w"]) + params["b"]  # [G, n, M]

    def forward_shared(self, params, h):
        G, d, M = params["w"].shape
        w = params["w"].permute(1, 0, 2).reshape(1, d, G * M)
        z = self._scores(h[None], w)[0].view(-1, G, M).transpose(0, 1)  # [G, n, M]
        return z + params["b"]

    def forward_pair(self, params, h, b):
        z = self._scores(h, params["w"])  # [G, 2b, M]
        return z[:, :b] + params["b"], z[:, b:] + params["b"]

    def forward_one(self, params, h):
        return h @ params["w"] + params["b"]

    def stack(self, models):
        return {
            "w": torch.stack([torch.stack([p["w"] for p in row], -1) for row in models]),  # [G,d,M]
            "b": torch.stack([torch.stack([p["b"] for p in row]) for row in models])[:, None, :],
        }

    def shape(self, name):
        return (self.d,) if name == "w" else ()

    def path_view(self, name, t):
        return t  # w [G,d,M], b [G,1,M]

    def unpath_view(self, name, t):
        return t

    def sq_weight_norm(self, params):
        return (params["w"] ** 2).sum(1)

    def fold(self, a, b):
        return {"w": a["w"] + b["w"], "b": a["b"] + b["b"]}

    def dense_layers(self, params):
        return [(params["w"][None, :], params["b"].reshape(1), "identity")]

    def n_weights(self):
        return self.d


class MLPHead(RewardHead):
    """R(o) = w2^T relu(W1^T h(o) + b1) + b2, a two-layer MLP (paper Section 5)."""

    kind = "mlp"
    activation = "relu"
    weight_names = ("W1", "w2")

    def __init__(self, d: int, hidden: int):
        super().__init__(d)
        self.hidden = hidden

    def describe(self):
        return {"head": self.kind, "in_dim": self.d, "hidden": self.hidden, "activation": "relu"}

    def init(self, gen):
        d, H = self.d, self.hidden
        return {
            "W1": kaiming_uniform((d, H), d, gen),
            "b1": kaiming_uniform((H,), d, gen),
            "w2": kaiming_uniform((H,), H, gen),
            "b2": kaiming_uniform((), H, gen),
        }

    def forward(self, params, h):
        G, n, _ = h.shape
        M = params["b2"].shape[-1]
        z = torch.relu(torch.bmm(h, params["W1"]) + params["b1"])  # [G, n, M*H]
        z = z.view(G, n, M, self.hidden)
        return (z * params["w2"]).sum(-1) + params["b2"]  # [G, n, M]

    def forward_shared(self, params, h):
        G, d, MH = params["W1"].shape
        M, H = MH // self.hidden, self.hidden
        W1 = params["W1"].permute(1, 0, 2).reshape(d, G * MH)
        a = torch.relu_((h @ W1).view(-1, G, MH) + params["b1"][:, 0])  # [n, G, M*H]
        r = (a.view(-1, G, M, H) * params["w2"][:, 0]).sum(-1)  # [n, G, M]
        return r.transpose(0, 1) + params["b2"]  # [G, n, M]

    def forward_pair(self, params, h, b):
        G, M, H = h.shape[0], params["b2"].shape[-1], self.hidden
        # b1 does not cancel in Delta, so it is added to both halves at once; slicing z into
        # halves first would make autograd rebuild z's gradient from two copies.
        a = torch.relu_(torch.bmm(h, params["W1"]) + params["b1"])  # [G, 2b, M*H]
        r = (a.view(G, 2 * b, M, H) * params["w2"]).sum(-1)  # [G, 2b, M]
        return r[:, :b] + params["b2"], r[:, b:] + params["b2"]

    def forward_one(self, params, h):
        return torch.relu(h @ params["W1"] + params["b1"]) @ params["w2"] + params["b2"]

    def stack(self, models):
        return {
            # [G, d, M*H]
            "W1": torch.stack([torch.cat([p["W1"] for p in row], 1) for row in models]),
            "b1": torch.stack([torch.cat([p["b1"] for p in row]) for row in models])[:, None, :],
            "w2": torch.stack([torch.stack([p["w2"] for p in row]) for row in models])[:, None],
            "b2": torch.stack([torch.stack([p["b2"] for p in row]) for row in models])[:, None, :],
        }

    def shape(self, name):
        shapes = {"W1": (self.d, self.hidden), "b1": (self.hidden,), "w2": (self.hidden,), "b2": ()}
        return shapes[name]

    def path_view(self, name, t):
        if name in ("W1", "b1"):  # [G, X, M*H] -> [G, X, M, H]
            return t.unflatten(2, (-1, self.hidden))
        return t  # w2 [G,1,M,H], b2 [G,1,M]

    def unpath_view(self, name, t):
        return t.flatten(2) if name in ("W1", "b1") else t

    def sq_weight_norm(self, params):
        G, d, MH = params["W1"].shape
        M = MH // self.hidden
        w1 = (params["W1"].view(G, d, M, self.hidden) ** 2).sum((1, 3))
        return w1 + (params["w2"][:, 0] ** 2).sum(-1)

    def fold(self, a, b):
        # Two ReLU paths side by side are one MLP with the hidden units concatenated.
        return {
            "W1": torch.cat([a["W1"], b["W1"]], 1),
            "b1": torch.cat([a["b1"], b["b1"]]),
            "w2": torch.cat([a["w2"], b["w2"]]),
            "b2": a["b2"] + b["b2"],
        }

    def dense_layers(self, params):
        return [
            (params["W1"].T.contiguous(), params["b1"], "relu"),
            (params["w2"][None, :].contiguous(), params["b2"].reshape(1), "identity"),
        ]

    def n_weights(self):
        return self.d * self.hidden + self.hidden


def make_head(kind: str, d: int, hidden: int = 256) -> RewardHead:
    if kind == "linear":
        return LinearHead(d)
    if kind == "mlp":
        return MLPHead(d, hidden)
    raise ValueError(f"unknown head {kind!r}; expected 'linear' or 'mlp'")
