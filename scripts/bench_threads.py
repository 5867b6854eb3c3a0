"""How much a fairl command slows down when another process keeps a core busy.

    python scripts/bench_threads.py                       # train-expert on the toy world
    python scripts/bench_threads.py --reps 3 --env OMP_NUM_THREADS=1
    python scripts/bench_threads.py --tree /path/to/other/checkout   # compare two versions

Times the command on the machine as it is ("idle") and with `yes > /dev/null` running beside
it ("loaded"), alternating, and prints both and their ratio (pipeline.runtime says why the
ratio was large: OpenMP threads of tiny kernels waiting for a descheduled partner). The first,
untimed run builds the world into the cache, which later runs reuse. Run it on an otherwise
quiet machine: the load average is printed first, and other work makes both times noisy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed_run(cmd: list[str], tree: Path, env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"command failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/toy.yaml")
    ap.add_argument("--command", default="train-expert", help="the fairl command to time")
    ap.add_argument("--reps", type=int, default=2, help="idle/loaded pairs (default 2)")
    ap.add_argument("--load", type=int, default=1, help="busy `yes` processes (default 1)")
    ap.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose code runs")
    ap.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the command (repeatable)",
    )
    ap.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="FAIRL_CACHE to (re)use; default $FAIRL_CACHE or a fixed temp dir",
    )
    args = ap.parse_args()

    tree = args.tree.resolve()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
    env["FAIRL_CACHE"] = str(
        args.cache or env.get("FAIRL_CACHE") or Path(tempfile.gettempdir()) / "fairl-bench-cache"
    )
    for kv in args.env:
        key, _, value = kv.partition("=")
        env[key] = value
    runs = Path(tempfile.mkdtemp(prefix="fairl-bench-runs-"))
    cmd = [
        sys.executable,
        "-m",
        "cli.main",
        args.command,
        args.config,
        "--force",
        "-q",
        "--set",
        f"run.root={runs}",
    ]
    extra = " ".join(args.env) or "(none)"
    print(
        f"{args.command} {args.config} from {tree}; extra env: {extra}; {os.cpu_count()} CPUs; "
        f"load average {os.getloadavg()[0]:.2f}; FAIRL_CACHE={env['FAIRL_CACHE']}",
        flush=True,
    )
    warm = timed_run(cmd, tree, env)
    print(f"warm-up (builds the world when the cache lacks it): {warm:.1f} s", flush=True)

    idle, loaded = [], []
    for rep in range(args.reps):
        idle.append(timed_run(cmd, tree, env))
        hogs = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(args.load)]
        try:
            time.sleep(0.5)  # let them reach full speed
            loaded.append(timed_run(cmd, tree, env))
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
        print(
            f"rep {rep + 1}: idle {idle[-1]:.1f} s, with {args.load} x yes {loaded[-1]:.1f} s",
            flush=True,
        )
    i, lo = statistics.median(idle), statistics.median(loaded)
    print(f"median idle {i:.1f} s, loaded {lo:.1f} s, ratio {lo / i:.2f}")


if __name__ == "__main__":
    main()
