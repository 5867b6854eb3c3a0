"""`fairl evaluate`: score every recovered reward against the ground truth (paper Section 5,
Evaluation Metrics, and Appendix C).

Reads `runs/<name>/irl/`, writes `runs/<name>/evaluate/`:

    metrics.json     every metric, structure in README ("metrics.json")
    report.md        the paper's tables, mean ± std over seeds
    metric_bars.png  test accuracy / F1 / AUC / STARC by method, each seed a dot
    seed_dispersion.png  per method, each seed's STARC to the truth and the STARC between seeds
    roc.png          ROC of each method's reward on the test outputs (labels needed)
    reward_hist.png  each method's rewards on toxic vs non-toxic test outputs (labels needed)
    subtypes.png     the subtypes of the toxic train and test outputs (paper Figure 3, middle)
    reward_vs_gt.png learned reward against the ground-truth score on the test outputs
    manifest.json

What is measured, and the warnings on degenerate data: `pipeline.evaluate.metrics`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import world
from pipeline.artifacts import StageRun, require_stage, run_stage, write_json, write_text
from pipeline.config import EvaluateSection, ExperimentConfig, fingerprint
from pipeline.data.jigsaw import load_heldout
from pipeline.data.pairs import PairSet
from pipeline.embed import Embedder, embed_pairs
from pipeline.errors import ConfigError
from pipeline.evaluate.metrics import (
    SCHEMA,
    EvalInputs,
    RewardScores,
    default_comparisons,
    definitions,
    evaluate_rewards,
    split_masks,
)
from pipeline.evaluate.plots import (
    plot_metric_bars,
    plot_reward_histograms,
    plot_reward_vs_gt,
    plot_roc,
    plot_seed_dispersion,
    plot_subtype_distribution,
)
from pipeline.evaluate.report import render_report
from pipeline.irl.reward import RewardModel, reward_dir
from pipeline.metrics import stage_sink
from pipeline.scorers import reward_inputs, reward_scorer

log = logging.getLogger("fairl.evaluate")


def run(cfg: ExperimentConfig, force: bool = False) -> Path:
    """Evaluate the rewards of `fairl irl` (skipped when up to date, unless `force`); returns
    runs/<name>/evaluate/."""
    # 1. The inputs, checked before any work: irl's published rewards, the comparisons, the
    #    held-out file (a missing or malformed one fails here).
    ev = cfg.evaluate
    irl_dir = cfg.stage_dir("irl")
    irl_manifest = require_stage(irl_dir, "irl", "irl")
    summary = json.loads((irl_dir / "summary.json").read_text())
    comparisons = _comparisons(ev, [m["method"] for m in summary["models"]])
    heldout_path = None
    if ev.heldout is not None:
        heldout_path = Path(world.resolve(ev.heldout, cfg, "heldout"))
        load_heldout(heldout_path)
    set_paths = {k: Path(world.resolve(v, cfg, "heldout")) for k, v in ev.heldout_sets.items()}
    for p in set_paths.values():
        load_heldout(p)
    irl_cfg = irl_manifest["config"]["irl"]
    text_mode = irl_cfg["embed"]["text"]
    trained = {m["method"] for m in summary["models"]}
    for name, spec in ev.rewards.items():
        if name in trained or spec in ("ground_truth", "gt"):
            raise ConfigError(
                f"evaluate.rewards {name}: {spec!r} "
                + ("is the name of a method irl trained" if name in trained else "is the truth"),
                hint="give it another name, and a reward other than the ground truth it is "
                "measured against",
            )
    extra = {name: reward_scorer(spec, None) for name, spec in ev.rewards.items()}
    for name, scorer in extra.items():
        if getattr(scorer, "reward", None) is not None and scorer.reward.meta.get("text") == (
            "prompt+completion"
        ):
            raise ConfigError(
                f"evaluate.rewards {name}: that reward embeds prompt+completion, and "
                "evaluate.rewards are scored on the completions alone",
                hint="compare it in its own run's evaluate, or train it with irl.embed.text: "
                "completion",
            )

    def recipe(run: StageRun) -> None:
        # 2. The pairs irl trained on, with their train / test split.
        pairs = PairSet(
            df=pd.read_parquet(irl_dir / "pairs.parquet"), source=str(irl_dir / "pairs.parquet")
        )
        train, test = split_masks(pairs)

        # 3. Embeddings of every output (cache hits after `fairl irl`) and of the held-out set.
        embedder = Embedder(
            irl_cfg["embed"]["encoder"],
            cfg.irl.embed.batch_size,  # speed only: this run's, not the fingerprint's
            irl_cfg["embed"]["cache_dir"],
        )
        with run.timed("embed"):
            h_chosen, h_rejected = embed_pairs(pairs, embedder, text_mode)
            heldout = load_heldout(heldout_path) if heldout_path is not None else None
            h_heldout = embedder.embed(heldout["text"].tolist()) if heldout is not None else None
            sets = {k: load_heldout(p) for k, p in set_paths.items()}
            h_sets = {k: embedder.embed(df["text"].tolist()) for k, df in sets.items()}

        # 4. Every reward's scores on them.
        scores = {
            (m["method"], m["seed"]): RewardScores.of(
                RewardModel.load(reward_dir(irl_dir, m["method"], m["seed"])),
                h_chosen,
                h_rejected,
                h_heldout,
                h_sets,
            )
            for m in summary["models"]
        }
        for name, scorer in extra.items():  # evaluate.rewards: scored on the texts themselves

            def on(texts, scorer=scorer):
                return np.asarray(scorer.score(list(texts)).reward, dtype=float)

            scores[(name, 0)] = RewardScores(
                chosen=on(pairs.df["chosen"]),
                rejected=on(pairs.df["rejected"]),
                heldout=on(heldout["text"]) if heldout is not None else None,
                sets={k: on(df["text"]) for k, df in sets.items()},
            )

        # 5. The metrics: per reward, per method, per comparison (pipeline.evaluate.metrics).
        inputs = EvalInputs(
            pairs=pairs,
            train=train,
            test=test,
            scores=scores,
            heldout=heldout,
            text_mode=text_mode,
            near_tie=ev.near_tie,
            training={(m["method"], m["seed"]): m for m in summary["models"]},
            heldout_sets=sets,
        )
        metrics = {
            "schema": SCHEMA,
            "run": cfg.run.name,
            "irl_fingerprint": irl_manifest["fingerprint"],
            "data": _data_summary(inputs, irl_manifest, summary, heldout_path, set_paths),
            "definitions": definitions(ev.near_tie),
            **evaluate_rewards(inputs, comparisons),
        }
        write_json(run.path("metrics.json"), metrics)
        # the final metrics to the trackers (run.report_to): each method's mean over seeds
        with stage_sink(run, cfg.run.trackers, cfg.run.name, jsonl=False) as sink:
            for method, m in metrics["methods"].items():
                sink.log(0, {f"evaluate/{k}": v for k, v in m["mean"].items()}, method=method)

        # 6. The plots and report.md.
        plots = []
        if ev.plots:
            with run.timed("plots"):
                plots.append(plot_metric_bars(metrics, run.path("metric_bars.png")))
                plots.append(plot_seed_dispersion(metrics, run.path("seed_dispersion.png")))
                if pairs.has_scores:
                    plots.append(plot_reward_vs_gt(inputs, run.path("reward_vs_gt.png")))
                if pairs.has_labels:
                    plots.append(plot_roc(inputs, run.path("roc.png")))
                    plots.append(plot_reward_histograms(inputs, run.path("reward_hist.png")))
                    plots.append(plot_subtype_distribution(inputs, run.path("subtypes.png")))
        write_text(run.path("report.md"), render_report(metrics, [p.name for p in plots if p]))
        log.info("evaluate: report at %s", run.final_dir / "report.md")

    config = {"evaluate": fingerprint(ev), "irl": irl_manifest["fingerprint"]}
    return run_stage(
        "evaluate",
        cfg,
        config,
        {
            "irl": irl_dir,
            "heldout": heldout_path,
            **{f"heldout:{k}": p for k, p in set_paths.items()},
            **{k: p for v in ev.rewards.values() for k, p in reward_inputs(v).items()},
        },
        recipe,
        force=force,
        log=log.info,
    )


def _comparisons(ev: EvaluateSection, trained: list[str]) -> list[tuple[str, str]]:
    """(FA-IRL method, its baseline) pairs: evaluate.compare, or every FA-IRL method whose
    baseline was trained. A ConfigError if one names a method irl did not train."""
    methods = list(dict.fromkeys(trained))
    comparisons = [tuple(c) for c in ev.compare] if ev.compare else default_comparisons(methods)
    for fa, base in comparisons:
        for m in (fa, base):
            if m not in methods:
                raise ConfigError(
                    f"evaluate.compare names {m!r}, which irl did not train",
                    hint=f"trained methods: {', '.join(methods)}; fix "
                    "evaluate.compare, or add the method to irl.methods "
                    "and re-run `fairl irl`",
                )
    return comparisons


def _data_summary(
    inputs: EvalInputs,
    irl_manifest: dict,
    summary: dict,
    heldout_path: Path | None,
    set_paths: dict[str, Path],
) -> dict:
    """metrics.json "data": where the pairs came from, the split sizes, what they carry."""
    df, pairs, heldout = inputs.df, inputs.pairs, inputs.heldout
    pairs_summary = summary.get("pairs", {})
    heldout_summary = None
    if heldout is not None:
        heldout_summary = {
            "path": str(heldout_path),
            "n": len(heldout),
            "toxic_rate": float(heldout["toxic"].mean()),
        }
    return {
        "pairs": str(irl_manifest["inputs"]["pairs"]["path"]),
        "n_train": int(inputs.train.sum()),
        "n_val": int((df["split"] == "val").sum()),
        "n_test": int(inputs.test.sum()),
        "has_scores": pairs.has_scores,
        "has_labels": pairs.has_labels,
        "subtypes": pairs.subtypes,
        **({"split": pairs_summary["split"]} if "split" in pairs_summary else {}),
        "heldout": heldout_summary,
        **(
            {
                "heldout_sets": {
                    k: {
                        "path": str(set_paths[k]),
                        "n": len(df),
                        "toxic_rate": float(df["toxic"].mean()),
                    }
                    for k, df in inputs.heldout_sets.items()
                }
            }
            if inputs.heldout_sets
            else {}
        ),
    }
