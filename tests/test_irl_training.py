"""The IRL trainers: the vectorised bank equals the one-model reference loop, training is
deterministic, every method recovers a known reward, routing options work, divergence stops."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import IRLSection
from pipeline.errors import TrainingDiverged
from pipeline.evaluate.distances import starc_l1
from pipeline.irl.bank import train_bank
from pipeline.irl.common import Optim
from pipeline.irl.heads import make_head
from pipeline.irl.methods import method_spec
from pipeline.irl.reference import train_reference
from pipeline.irl.synthetic import BANK_ATOL, BANK_RTOL, compare_params, synthetic_pairs

METHODS = list(IRLSection().methods)


def specs_for(irl: IRLSection | None = None, methods=METHODS):
    irl = irl or IRLSection()
    return [method_spec(m, irl) for m in methods]


def max_param_diff(a, b) -> float:
    out = 0.0
    for path in ("base", "failure"):
        pa, pb = getattr(a, path), getattr(b, path)
        assert (pa is None) == (pb is None)
        if pa is not None:
            out = max(out, max((pa[k] - pb[k]).abs().max().item() for k in pa))
    return out


def assert_trained_alike(r, alone, optim: Optim) -> None:
    """The bank's model r equals the one trained alone: the same discrete decisions exactly
    (epochs run, best epoch, failures per round), every parameter and validation loss within
    BANK_RTOL / BANK_ATOL (pipeline/irl/synthetic.py says why those values).

    Not bit for bit: the bank's batched GEMM and the loop's one-model GEMM are different BLAS
    kernels, and whether they round alike depends on the CPU and the code path MKL picks (equal
    under MKL_CBWR=AVX2, ~1e-8 apart on MKL's default AVX-512 path). The data here is chosen so
    that no discrete decision is near a tie, checked below for early stopping: a 1e-8
    perturbation then cannot flip one, and a flip would be a real difference."""
    name = (r.method.name, r.seed)
    assert (r.epochs_run, r.best_epoch) == (alone.epochs_run, alone.best_epoch), name
    assert [h["failures"] for h in r.history] == [h["failures"] for h in alone.history], name
    diff, ratio = compare_params(r, alone)
    assert ratio <= 1.0, (*name, f"max |diff| {diff:.3g} is {ratio:.3g}x the tolerance")
    val = torch.tensor([h["val_loss"] for h in r.history], dtype=torch.float64)
    val_alone = torch.tensor([h["val_loss"] for h in alone.history], dtype=torch.float64)
    torch.testing.assert_close(val, val_alone, rtol=BANK_RTOL, atol=BANK_ATOL, msg=str(name))
    # The test's premise: each early-stopping comparison (val < best so far) is decided by a
    # relative gap far above what rounding differences can move (~1e-7).
    best = float("inf")
    for h in alone.history:
        if h["epoch"] < r.method.first_stoppable_epoch and h["epoch"] < optim.max_epochs - 1:
            continue
        if best < float("inf"):
            assert abs(h["val_loss"] - best) > 1e-5 * best, (*name, "near-tie at epoch", h["epoch"])
        best = min(best, h["val_loss"])


@pytest.mark.parametrize("head_kind", ["linear", "mlp"])
def test_bank_equals_each_model_trained_alone(head_kind):
    """Every (method, seed) trained inside the bank trains the model the reference loop trains
    alone, early stopping and the failure schedules included, to float32 rounding (see
    assert_trained_alike). The bank keeps batch 32 and MLP widths that are multiples of 32, where
    its arithmetic is the loop's (pipeline.irl.bank); on one BLAS code path that even makes them
    bit-identical, but the test does not rely on it."""
    data = synthetic_pairs(700, 64, seed=1)
    irl = IRLSection(fa={"rounds": 6})  # short schedule: early stopping arms mid-run
    head = make_head(head_kind, 64, 32)
    optim = Optim(max_epochs=30, patience=3)
    bank = train_bank(data, specs_for(irl), [0, 1], head, optim, progress=False)
    assert len(bank) == 12
    for r in bank:
        assert_trained_alike(r, train_reference(data, r.method, r.seed, head, optim), optim)


def test_bank_equality_with_mixed_routing_flags_and_threshold_schedule():
    """Per-model flags that differ inside one bank take the masked code paths."""
    data = synthetic_pairs(500, 32, seed=2)
    a = IRLSection(fa={"margin_schedule": "threshold", "rounds": 4})
    b = IRLSection(
        fa={
            "base_loss_trains_failure_path": True,
            "failure_loss_trains_base_path": False,
            "rounds": 4,
        }
    )
    specs = [method_spec("fa-mm-margin", a), method_spec("fa-me-gt", b), method_spec("me", a)]
    head = make_head("linear", 32)
    optim = Optim(max_epochs=8, patience=3)
    for r in train_bank(data, specs, [3], head, optim, progress=False):
        assert_trained_alike(r, train_reference(data, r.method, r.seed, head, optim), optim)


def test_penalty_scale_is_trained_alike_and_keeps_the_failure_path_alive():
    """irl.fa.penalty_scale weighs (1/2) ||w_F||^2 apart from lambda_t's weight on L_fail: the
    bank matches the reference with scales that differ between models (the masked path), and
    without the penalty R_F keeps more of the reward than under Eq. 3 as printed."""
    data = synthetic_pairs(500, 32, seed=2)
    specs = [
        method_spec("fa-me-gt", IRLSection(fa={"rounds": 4, "penalty_scale": scale}))
        for scale in (1.0, 0.0, 0.25)
    ]
    head = make_head("mlp", 32, 32)
    optim = Optim(max_epochs=8, patience=3)
    trained = train_bank(data, specs, [3], head, optim, progress=False)
    for r in trained:
        assert_trained_alike(r, train_reference(data, r.method, r.seed, head, optim), optim)
    h = data.h_pos
    share = []
    for r in trained:
        r_d, r_f = head.forward_one(r.base, h), head.forward_one(r.failure, h)
        share.append(float(r_f.std() / r_d.std()))
    assert share[1] > share[0], share  # no penalty: R_F keeps more than with Eq. 3's


def test_same_seed_gives_identical_weights():
    """Exact: the same code path runs the same kernels twice, on any CPU."""
    data = synthetic_pairs(400, 32, seed=0)
    head = make_head("mlp", 32, 32)
    runs = [
        train_bank(data, specs_for(), [7], head, Optim(max_epochs=5), progress=False)
        for _ in range(2)
    ]
    for a, b in zip(*runs):
        assert max_param_diff(a, b) == 0.0
    other = train_bank(
        data, specs_for(methods=["me"]), [8], head, Optim(max_epochs=5), progress=False
    )[0]
    assert max_param_diff(runs[0][1], other) > 0  # a different seed is a different model


@pytest.mark.parametrize("head_kind", ["linear", "mlp"])
def test_every_method_recovers_a_known_linear_reward(head_kind):
    """Acceptance 3: Gaussian features, Bradley-Terry preferences from theta. Linear heads
    recover theta's direction (cosine >= 0.9); every head scores a STARC far below a random
    reward's on fresh outputs."""
    d = 16
    data = synthetic_pairs(2000, d, seed=3)
    theta = torch.randn(d, generator=torch.Generator().manual_seed(3)) / d**0.5 * 3
    probe = torch.randn(2000, d, generator=torch.Generator().manual_seed(99))
    r_true = probe @ theta
    random_starc = starc_l1(
        probe @ torch.randn(d, generator=torch.Generator().manual_seed(5)), r_true
    )
    head = make_head(head_kind, d, 32)
    irl = IRLSection(fa={"rounds": 30})
    for r in train_bank(
        data, specs_for(irl), [0, 1], head, Optim(max_epochs=300, patience=10), progress=False
    ):
        folded = head.fold(r.base, r.failure) if r.failure else r.base
        starc = starc_l1(head.forward_one(folded, probe), r_true)
        assert starc < 0.4 * random_starc, (r.method.name, r.seed, starc, random_starc)
        if head_kind == "linear":
            cos = torch.nn.functional.cosine_similarity(folded["w"], theta, 0).item()
            assert cos >= 0.9, (r.method.name, r.seed, cos)


def test_failure_counts_follow_the_bottom_k_schedule():
    data = synthetic_pairs(1000, 16, seed=4)
    n_used = 896  # 900 training pairs, whole minibatches of 32
    irl = IRLSection(fa={"rounds": 5, "bottom_k_start": 0.2, "bottom_k_end": 0.0})
    r = train_bank(
        data,
        specs_for(irl, ["fa-me-margin"]),
        [0],
        make_head("linear", 16),
        Optim(max_epochs=6, patience=10),
        progress=False,
    )[0]
    # The round's failure set holds round(frac_t * 900) pairs; the minibatches see those of them
    # that are among the 896 pairs used this epoch.
    for h in r.history[:5]:
        k = round(method_spec("fa-me-margin", irl).bottom_k_t(h["epoch"]) * 900)
        assert k - 4 <= h["failures"] <= k <= n_used
    assert r.history[4]["failures"] == 0 and r.history[5]["failures"] == 0


def test_failure_path_is_trained_only_on_failures_by_default():
    """With the default routing, R_F gets no gradient from the base loss: a model whose
    schedule flags no failures leaves R_F where the penalty puts it."""
    data = synthetic_pairs(300, 16, seed=5)
    irl = IRLSection(fa={"bottom_k_start": 0.0, "bottom_k_end": 0.0, "lambda_0": 0.0})
    head = make_head("linear", 16)
    r = train_bank(
        data, specs_for(irl, ["fa-me-margin"]), [0], head, Optim(max_epochs=3), progress=False
    )[0]
    init = head.init(
        __import__("pipeline.irl.common", fromlist=["stream"]).stream(0, "init/failure")
    )
    assert torch.equal(r.failure["w"], init["w"])
    routed = IRLSection(
        fa={
            "bottom_k_start": 0.0,
            "bottom_k_end": 0.0,
            "lambda_0": 0.0,
            "base_loss_trains_failure_path": True,
        }
    )
    r2 = train_bank(
        data, specs_for(routed, ["fa-me-margin"]), [0], head, Optim(max_epochs=3), progress=False
    )[0]
    assert not torch.equal(r2.failure["w"], init["w"])


def test_nan_loss_stops_training_with_a_clear_error():
    data = synthetic_pairs(200, 16, seed=6)
    with pytest.raises(TrainingDiverged, match="lower irl.lr"):
        train_bank(
            data,
            specs_for(methods=["mm", "fa-me-gt"]),
            [0],
            make_head("mlp", 16, 32),
            Optim(lr=1e38, max_epochs=20),
            progress=False,
        )
    bad = synthetic_pairs(200, 16, seed=6)
    bad.h_pos[3, 0] = float("nan")
    with pytest.raises(TrainingDiverged):
        train_bank(
            bad,
            specs_for(methods=["me"]),
            [0],
            make_head("linear", 16),
            Optim(max_epochs=2),
            progress=False,
        )


def test_metrics_sink_gets_one_line_per_model_and_epoch(tmp_path):
    import pandas as pd

    from pipeline.metrics import MetricsSink

    data = synthetic_pairs(200, 16, seed=7)
    with MetricsSink(tmp_path / "m.jsonl") as sink:
        out = train_bank(
            data,
            specs_for(methods=["mm", "fa-mm-gt"]),
            [0, 1],
            make_head("linear", 16),
            Optim(max_epochs=4, patience=10),
            sink=sink,
            progress=False,
        )
    df = pd.read_json(tmp_path / "m.jsonl", lines=True)
    assert len(df) == sum(r.epochs_run for r in out) == 16
    assert {
        "irl/train_loss",
        "irl/val_loss",
        "irl/val_pair_acc",
        "irl/failures",
        "irl/lambda",
        "method",
        "seed",
    } <= set(df.columns)
    assert (df[df["method"] == "fa-mm-gt"]["irl/lambda"].iloc[0]) == pytest.approx(10.0)


def test_the_bank_places_every_tensor_on_its_device():
    """run.device for the IRL bank, without a GPU: on the meta device every tensor the bank
    builds (pairs, paths, Adam, per-model constants, one round's schedules, orders, S_t draws and
    failure statistics) lives there, while the random streams stay the CPU generators (the same
    draws on any device). The meta device has no values, so training itself is checked on the
    CPU by the tests above and on a GPU by scripts/gpu_check.sh."""
    import threading

    from pipeline.irl.bank import _Bank

    data = synthetic_pairs(200, 16, seed=1)
    specs = specs_for(None, ["me", "fa-me-gt", "fa-mm-margin"])  # bottom-k and supervised F_t
    head = make_head("mlp", 16, 8)
    bank = _Bank(data, specs, [0, 1], head, Optim(), None, False, threading.Event(), "meta")
    rnd = bank._start_round(0, len(bank.data.train))
    tensors = {
        **{f"attr {k}": v for k, v in vars(bank).items() if isinstance(v, torch.Tensor)},
        **{f"data {k}": v for k, v in vars(bank.data).items() if isinstance(v, torch.Tensor)},
        **{f"param {k}": v for k, v in bank.p.items()},
        **{f"round {k}": v for k, v in vars(rnd).items() if isinstance(v, torch.Tensor)},
    }
    expected = {"round perm", "round sampled", "round F_bottom_k", "round threshold", "param W1"}
    assert expected <= set(tensors)
    assert {k: v.device.type for k, v in tensors.items() if v.device.type != "meta"} == {}
    assert all(g.device.type == "cpu" for g in bank.order_gens)
    # the same bank on the CPU draws the same orders the meta one was given (shape-wise) and
    # trains: CPU placement is the default
    cpu = _Bank(data, specs, [0, 1], head, Optim(), None, False, threading.Event())
    assert cpu.p["W1"].device.type == "cpu" and cpu.data.h_pos is data.h_pos


def test_the_bank_trains_on_its_device_without_mixing_devices_or_a_sync_per_step():
    """The whole fit() on the meta device, watched op by op: no op takes a CPU tensor (other than
    a 0-dim scalar) with a device one, and no host sync happens inside a minibatch step (off the
    CPU the loss is checked once per epoch), so a GPU's steps queue without waiting. Meta
    tensors hold no values: each host sync is answered with a stand-in (True, 1, 0.5, zeros)."""
    import threading
    import traceback

    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_leaves

    from pipeline.irl.bank import _Bank

    syncs = {torch.Tensor.__bool__, torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.cpu}
    syncs |= {torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__}
    mixed, step_syncs, n_syncs = [], [], [0]

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            ts = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            devices = {t.device.type for t in ts if t.device.type != "cpu" or t.dim() > 0}
            if len(devices) > 1 and func not in (torch.Tensor.to, torch.Tensor.cpu):
                mixed.append(getattr(func, "__name__", str(func)))
            meta = [t for t in ts if t.device.type == "meta"]
            if meta and func in syncs:
                n_syncs[0] += 1
                frames = {f.name for f in traceback.extract_stack()}
                if frames & {"_step", "_failures", "_update"}:
                    step_syncs.append(func.__name__)
                if func is torch.Tensor.__bool__:
                    return True
                if func in (torch.Tensor.__int__, torch.Tensor.__index__):
                    return 1
                if func in (torch.Tensor.item, torch.Tensor.__float__):
                    return 0.5
                zeros = torch.zeros(meta[0].shape, dtype=meta[0].dtype)
                return zeros if func is torch.Tensor.cpu else zeros.tolist()
            return func(*args, **kwargs)

    data = synthetic_pairs(200, 16, seed=1)
    specs = specs_for(None, ["me", "mm", "fa-me-gt", "fa-mm-margin", "fa-me-margin"])
    head = make_head("mlp", 16, 8)
    optim = Optim(max_epochs=3, batch_size=32)
    bank = _Bank(data, specs, [0, 1], head, optim, None, True, threading.Event(), "meta")
    with Watch():
        out = bank.fit()
    assert len(out) == 10 and all(v.device.type == "cpu" for r in out for v in r.base.values())
    assert mixed == [] and step_syncs == []
    assert n_syncs[0] > 0  # the watch sees the per-epoch syncs (it would see per-step ones)
