"""Is the world hard enough? (issue 9, item 5)

    python scripts/check_world.py configs/hard.yaml

Runs the config's pipeline (`fairl run` in a subprocess: stages already done are reused; its
output goes to stderr), then prints what it measured to stdout:

  a  probe_cf_acc  accuracy on the counterfactual set (the cue independent of toxicity) of a
                   logistic regression fitted on the same embeddings of the irl train outputs
                   with their ground-truth labels: the task itself is learnable from h(o)
  b  irl_in_auc    Max-Entropy IRL's test AUC (mean over seeds), in distribution
  c  irl_cf_auc    its AUC on the counterfactual set: b - c is what it owes to the cue
  d  gt_tox        held-out toxicity after re-RLHF with the ground-truth reward
  e  irl_tox       after re-RLHF with the Max-Entropy IRL reward (re_rlhf.rewards `irl`)
  f  base_tox      of the base model (re-RLHF's step 0)

and ends with `world_check probe_cf_acc=<a> irl_in_auc=<b> irl_cf_auc=<c> gt_tox=<d>
irl_tox=<e> base_tox=<f>`. The issue's criteria: a >= 0.90; b >= 0.95 and c <= b - 0.15;
e >= d + 0.10 with d at least 0.2 below f. d and e are means over re_rlhf.seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # this checkout's pipeline, whatever is installed
    sys.path.insert(0, str(ROOT))

from pipeline import world  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.data.jigsaw import load_heldout  # noqa: E402
from pipeline.embed import Embedder  # noqa: E402
from pipeline.errors import ConfigError  # noqa: E402

COUNTERFACTUAL = "world:eval-counterfactual"


def counterfactual_key(cfg) -> str:
    """The metrics.json prefix evaluate gave the counterfactual set: `heldout` or
    `heldout-<name>`."""
    if str(cfg.evaluate.heldout) == COUNTERFACTUAL:
        return "heldout"
    for name, value in cfg.evaluate.heldout_sets.items():
        if value == COUNTERFACTUAL:
            return f"heldout-{name}"
    raise ConfigError(
        f"evaluate scores no counterfactual set: neither evaluate.heldout nor "
        f"evaluate.heldout_sets is {COUNTERFACTUAL}",
        hint="check_world needs the hard world (world.kind: hard) and its counterfactual set, "
        "as in configs/hard.yaml",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    cfg = load_config(args.config, args.overrides)
    cf_key = counterfactual_key(cfg)
    cmd = [sys.executable, "-m", "cli.main", "run", str(args.config.resolve())]
    cmd += [a for o in args.overrides for a in ("--set", o)]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    subprocess.run(cmd, check=True, stdout=sys.stderr, env={**os.environ, "PYTHONPATH": path})
    print(f"check_world: {args.config}")

    # a: a supervised probe on the same embeddings
    irl = cfg.irl
    embedder = Embedder(irl.embed.encoder, irl.embed.batch_size, irl.embed.cache_dir)
    pairs = pd.read_parquet(cfg.stage_dir("irl") / "pairs.parquet")
    train = pairs[pairs["split"] == "train"]
    texts = train["chosen"].tolist() + train["rejected"].tolist()
    labels = np.concatenate([train["chosen_toxic"], train["rejected_toxic"]]).astype(int)
    cf = load_heldout(Path(world.resolve("world:eval-counterfactual", cfg, "heldout")))
    probe = LogisticRegression(max_iter=2000).fit(embedder.embed(texts).numpy(), labels)
    a = float(probe.score(embedder.embed(cf["text"].tolist()).numpy(), cf["toxic"].astype(int)))

    # b, c: Max-Entropy IRL in distribution and on the counterfactual set
    metrics = json.loads((cfg.stage_dir("evaluate") / "metrics.json").read_text())
    me = metrics["methods"]["me"]["mean"]
    b = me["test/auc"]
    c = me[f"{cf_key}/auc"]

    # d, e, f: re-RLHF's final toxicity per reward, and the base model's
    summary = json.loads((cfg.stage_dir("re_rlhf") / "summary.json").read_text())
    d = summary["ground_truth"]["final_toxicity"]
    e = summary["irl"]["final_toxicity"]
    f = summary["ground_truth"]["initial_toxicity"]

    print(f"probe trained on {len(texts)} irl train outputs; counterfactual set: {len(cf)} texts")
    print(
        f"Max-Entropy IRL over irl.seeds {cfg.irl.seeds}: test AUC {b:.3f}, counterfactual {c:.3f}"
    )
    for name, s in summary.items():
        ci = s.get("final_toxicity_ci95")
        cue = s.get("final_cue_rate")
        print(
            f"re-RLHF {name:<14} toxicity {s['initial_toxicity']:.3f} -> {s['final_toxicity']:.3f}"
            + (f" [95% CI {ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
            + f" over RL seeds {s['seeds']}"
            + (f", cue rate {cue:.3f}" if cue is not None else "")
        )
    for what, ok in (
        (f"a >= 0.90 (the task is learnable): a = {a:.3f}", a >= 0.90),
        (f"b >= 0.95 (IRL fits in distribution): b = {b:.3f}", b >= 0.95),
        (f"c <= b - 0.15 (IRL learned the cue): b - c = {b - c:.3f}", c <= b - 0.15),
        (f"d <= f - 0.20 (the true reward detoxifies): f - d = {f - d:.3f}", d <= f - 0.20),
        (f"e >= d + 0.10 (re-RLHF separates the rewards): e - d = {e - d:+.3f}", e >= d + 0.10),
    ):
        print(f"{'met    ' if ok else 'NOT MET'}  {what}")
    print(
        f"world_check probe_cf_acc={a:.3f} irl_in_auc={b:.3f} irl_cf_auc={c:.3f} "
        f"gt_tox={d:.3f} irl_tox={e:.3f} base_tox={f:.3f}"
    )


if __name__ == "__main__":
    main()
