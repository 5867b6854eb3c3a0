"""What happens to FA-IRL's failure path R_F under each choice of `irl.fa.penalty_scale`.

    python scripts/rf_penalty.py                       # toy, hard and rtp-challenging
    python scripts/rf_penalty.py --configs configs/toy.yaml --scales 1 0

Eq. 3 puts one lambda_t on the failure loss and on the (1/2) ||w_F||^2 penalty; `penalty_scale`
scales the penalty alone (1 = Eq. 3 as printed, 0 = no penalty). For each config this runs the
pipeline up to `evaluate` under `runs/rf-penalty/` (the expert and the pairs are made once and
shared by every scale; irl and evaluate are redone per scale) and prints, per FA-IRL method, R_F's
share of the reward on the test outputs (std R_F / std R_D, mean and range over seeds), its test
STARC, and the paired STARC difference against its matched baseline.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # this checkout's pipeline, whatever is installed
    sys.path.insert(0, str(ROOT))

from pipeline.config import METHOD_TABLE, load_config  # noqa: E402

RUN_ROOT = "runs/rf-penalty"


def stages(config: Path) -> str:
    """The config's stages up to evaluate (re-rlhf does not read penalty_scale's outcome)."""
    cfg = load_config(config)
    return "[" + ",".join(s for s in cfg.stages_to_run() if s != "re_rlhf") + "]"


def run(config: Path, scale: float) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "cli.main",
        "run",
        str(config),
        "-q",
        "--set",
        f"run.root={RUN_ROOT}",
        "--set",
        f"run.stages={stages(config)}",
        "--set",
        f"irl.fa.penalty_scale={scale}",
    ]
    print(f"rf_penalty: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    cfg = load_config(config, [f"run.root={RUN_ROOT}"])
    return json.loads((ROOT / cfg.stage_dir("evaluate") / "metrics.json").read_text())


def rows(name: str, scale: float, metrics: dict) -> list[str]:
    out = []
    for method, agg in metrics["methods"].items():
        if not METHOD_TABLE[method].failure_aware:
            continue
        shares = [
            m["fit/rf_share"]
            for key, m in metrics["models"].items()
            if key.split("/seed-")[0] == method and m.get("fit/rf_share") is not None
        ]
        matched = METHOD_TABLE[method].matched_baseline
        paired = metrics["paired"].get(f"{method} vs {matched}", {}).get("test/starc")
        diff = (
            f"{paired['mean']:+.3f} [{paired['ci95'][0]:+.3f}, {paired['ci95'][1]:+.3f}]"
            if paired and paired["ci95"]
            else "n/a"
        )
        out.append(
            f"| {name} | {scale:g} | {method} | {agg['mean']['fit/rf_share']:.3g} "
            f"({min(shares):.3g} - {max(shares):.3g}) | {agg['mean']['test/starc']:.3f} | "
            f"{diff} |"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--configs",
        nargs="+",
        type=Path,
        default=[Path("configs/toy.yaml"), Path("configs/hard.yaml")]
        + [Path("configs/rtp-challenging.yaml")] * (ROOT / "../shared/data").is_dir(),
    )
    ap.add_argument("--scales", nargs="+", type=float, default=[1.0, 0.0])
    args = ap.parse_args()
    table = [
        "| Config | penalty_scale | Method | R_F share, mean (range) | Test STARC | "
        "STARC vs matched [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for config in args.configs:
        config = config.resolve()  # the runs below start in the repository root
        for scale in args.scales:
            table += rows(config.stem, scale, run(config, scale))
    print("\n".join(table))


if __name__ == "__main__":
    main()
