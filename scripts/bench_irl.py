"""Benchmark fairl's IRL trainer (pipeline.irl.bank) against the naive one-model-at-a-time loop.

Workload (DEVELOPERS.md, "Benchmark"): 20,000 synthetic pairs of 384-dim Gaussian embeddings with
Bradley-Terry preferences from a known linear reward, the 6 methods of Table 1 x 5 seeds,
batch 32, Adam. Both trainers run the same epochs without early stopping (patience > epochs),
after a warm-up of each on a small problem, in this process.

Prints, per head (linear; MLP with hidden 256):
  pairs*epochs/s   training pairs processed per second, summed over all 30 models
  speedup          bank throughput / naive throughput
  fraction of peak useful training FLOP/s (forward + weight gradients of every path) over the
                   fp32 matmul peak measured here (2048^3 GEMMs, same thread count)
  max |diff|       largest difference between any parameter of any model trained in the bank
                   and the same model trained alone by the naive loop, and whether that is
                   within the tolerance tests/test_irl_training.py asserts (BANK_RTOL, BANK_ATOL
                   in pipeline/irl/synthetic.py). 0 means bit-identical: expected on some BLAS
                   code paths (an AVX2 machine, or MKL_CBWR=AVX2), not on others (MKL's default
                   AVX-512 path gives ~1e-8); DEVELOPERS.md says why.
Last line: `bench_irl linear_speedup=<x> mlp_speedup=<y> max_abs_diff=<z> bit_identical=<0|1>
within_tol=<0|1>` (numbers only: scripts/readme_results.py parses it).

    python scripts/bench_irl.py               # the issue's workload (~3 min on 2 cores)
    python scripts/bench_irl.py --quick       # 4,000 pairs, 1 epoch: a smoke run
    python scripts/bench_irl.py --device cuda # the bank on a GPU against the bank on the CPU

With --device other than cpu (run.device for the IRL stage), the comparison is the bank on that
device against the bank on this machine's CPU (the naive loop is left out): per head, both
times, pairs*epochs/s, the device's speedup, the largest parameter difference between the two
(IEEE float32 on both, as the irl stage trains; a GPU's kernels round differently, so not
bit-identical) and
the device's peak memory. Last line: `bench_irl_device device=<name> linear_speedup=<x>
mlp_speedup=<y> max_abs_diff=<z> peak_mem_gb=<m>`.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from pipeline.config import IRLSection
from pipeline.irl.bank import train_bank
from pipeline.irl.common import Optim
from pipeline.irl.heads import make_head
from pipeline.irl.methods import method_spec
from pipeline.irl.reference import train_reference
from pipeline.irl.synthetic import BANK_ATOL, BANK_RTOL, compare_params, synthetic_pairs
from pipeline.runtime import enable_flush_to_zero, run_flushing_denormals, tune_allocator


def matmul_peak_gflops(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def useful_flops_per_pair(head, specs) -> int:
    """Forward and weight-gradient FLOPs of one pair through every path of every method."""
    paths = sum(2 if s.failure_aware else 1 for s in specs)
    return paths * head.flops_per_pair()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pairs", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--quick", action="store_true", help="4,000 pairs, 1 epoch")
    ap.add_argument(
        "--device", default="cpu", help="where the bank trains: cpu (vs the naive loop) or cuda"
    )
    args = ap.parse_args()
    if args.quick:
        args.pairs, args.epochs = 4000, 1

    enable_flush_to_zero()  # first: the worker pool inherits it (pipeline.runtime)
    tune_allocator()
    torch.manual_seed(0)
    irl = IRLSection()
    specs = [method_spec(m, irl) for m in irl.methods]
    seeds = list(range(args.seeds))
    data = synthetic_pairs(args.pairs, args.dim)
    n_train = len(data.train)
    optim = Optim(max_epochs=args.epochs, patience=args.epochs + 1)
    print(
        f"bench_irl: {args.pairs} pairs ({n_train} train) x {args.dim} dims, "
        f"{len(specs)} methods x {len(seeds)} seeds, {args.epochs} epoch(s), batch 32, Adam; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs"
    )
    if args.device != "cpu":
        return bench_device(args, specs, seeds, data, optim)
    peak = matmul_peak_gflops()
    print(f"fp32 matmul peak (2048^3, measured): {peak:.0f} GFLOP/s")

    results = {}
    for kind in ("linear", "mlp"):
        head = make_head(kind, args.dim, args.hidden)
        warm = synthetic_pairs(2000, args.dim, seed=1)
        train_bank(warm, specs, seeds[:2], head, Optim(max_epochs=1), progress=False)
        run_flushing_denormals(
            lambda stop, warm=warm, head=head: [
                train_reference(warm, s, 0, head, Optim(max_epochs=1)) for s in specs
            ]
        )

        t0 = time.perf_counter()
        bank = train_bank(data, specs, seeds, head, optim, progress=False)
        t_bank = time.perf_counter() - t0
        # One training thread for the whole naive loop, as the bank gets one for all its models.
        t0 = time.perf_counter()
        naive = run_flushing_denormals(
            lambda stop, head=head, bank=bank: [
                train_reference(data, r.method, r.seed, head, optim) for r in bank
            ]
        )
        t_naive = time.perf_counter() - t0

        diff, ratio = map(max, zip(*(compare_params(b, r) for b, r in zip(bank, naive))))
        work = len(bank) * n_train * args.epochs  # pair-epochs, all models
        flops = useful_flops_per_pair(head, specs) * len(seeds) * n_train * args.epochs
        label = kind if kind == "linear" else f"mlp (hidden {args.hidden})"
        print(f"\n{label}:")
        print(
            f"  naive loop : {t_naive:7.1f} s  {work / t_naive:10.0f} pairs*epochs/s  "
            f"{flops / t_naive / 1e9 / peak:6.1%} of peak"
        )
        print(
            f"  fairl bank : {t_bank:7.1f} s  {work / t_bank:10.0f} pairs*epochs/s  "
            f"{flops / t_bank / 1e9 / peak:6.1%} of peak"
        )
        print(
            f"  speedup    : {t_naive / t_bank:.1f}x   max |param diff| bank vs alone: {diff:.3g}"
        )
        results[kind] = (t_naive / t_bank, diff, ratio)

    max_diff = max(d for _, d, _ in results.values())
    max_ratio = max(q for _, _, q in results.values())
    within = max_ratio <= 1.0
    print(
        f"\nbank vs alone, every parameter of every model: largest |diff| {max_diff:.3g}, "
        f"{'bit-identical' if max_diff == 0 else 'not bit-identical'} on this machine; "
        f"tolerance |diff| <= {BANK_ATOL:g} + {BANK_RTOL:g} * |alone|: "
        + (
            f"within ({max_ratio:.2g} of it)"
            if within
            else f"EXCEEDED ({max_ratio:.3g} times it): the bank no longer trains what the loop "
            "does"
        )
    )
    print(
        f"bench_irl linear_speedup={results['linear'][0]:.1f} "
        f"mlp_speedup={results['mlp'][0]:.1f} max_abs_diff={max_diff:.3g} "
        f"bit_identical={int(max_diff == 0)} within_tol={int(within)}"
    )


def bench_device(args, specs, seeds, data, optim) -> None:
    """The bank on args.device against the bank on the CPU, both heads (module docstring)."""
    dev = torch.device(args.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("bench_irl: --device cuda, but torch sees no GPU")
        print(f"device: {torch.cuda.get_device_name(dev)}")

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    n_train, results = len(data.train), {}
    for kind in ("linear", "mlp"):
        head = make_head(kind, args.dim, args.hidden)
        warm = synthetic_pairs(2000, args.dim, seed=1)
        for where in ("cpu", dev):
            warm_optim = Optim(max_epochs=1)
            train_bank(warm, specs, seeds[:2], head, warm_optim, progress=False, device=where)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        times, banks = {}, {}
        for where in ("cpu", dev):
            sync()
            t0 = time.perf_counter()
            banks[str(where)] = train_bank(
                data, specs, seeds, head, optim, progress=False, device=where
            )
            sync()
            times[str(where)] = time.perf_counter() - t0
        mem = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else 0.0
        diff = max(compare_params(a, b)[0] for a, b in zip(banks[str(dev)], banks["cpu"]))
        work = len(specs) * len(seeds) * n_train * args.epochs
        label = kind if kind == "linear" else f"mlp (hidden {args.hidden})"
        print(f"\n{label}:")
        for where, t in times.items():
            print(f"  bank on {where:5}: {t:7.1f} s  {work / t:12.0f} pairs*epochs/s")
        speedup = times["cpu"] / times[str(dev)]
        print(
            f"  speedup    : {speedup:.1f}x   max |param diff| {dev} vs cpu: {diff:.3g}   "
            f"peak {dev} memory {mem:.2f} GiB"
        )
        results[kind] = (speedup, diff, mem)
    print(
        f"bench_irl_device device={dev} linear_speedup={results['linear'][0]:.1f} "
        f"mlp_speedup={results['mlp'][0]:.1f} "
        f"max_abs_diff={max(d for _, d, _ in results.values()):.3g} "
        f"peak_mem_gb={max(m for *_, m in results.values()):.2f}"
    )


if __name__ == "__main__":
    main()
