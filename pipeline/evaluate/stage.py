"""`fairl evaluate`: score every recovered reward against the ground truth (paper Section 5,
Evaluation Metrics, and Appendix C).

Reads `runs/<name>/irl/`, writes `runs/<name>/evaluate/`:

    metrics.json     everything below, structure in README ("metrics.json")
    report.md        the paper's tables, mean ± std over seeds
    metric_bars.png  test accuracy / F1 / AUC / STARC by method, seed error bars
    reward_vs_gt.png learned reward against the ground-truth score on the test outputs
    manifest.json

Per reward: classification of individual outputs (threshold fitted on train, fixed on test
and on the optional held-out set), pairwise accuracy, and every reward distance of
pipeline.evaluate.distances on the test outputs. Per comparison (an FA-IRL method against its
standard-IRL baseline): the failure slice (test pairs the baseline gets wrong or nearly ties)
and the disagreement tables (Tables 2 and 3). Per method: seed dispersion (Corollary 1).

Tiny or degenerate data still gets every metric that is defined, but each affected metric
carries a warning (metrics.json "warnings": which metrics, why, the sizes; report.md: a
Warnings section and a dagger beside each affected number). See `data_warnings` for the
minimum sizes and why. A metric that is undefined (a distance to a constant ground truth or
from a constant reward) is null, with a warning, rather than a number: any number there
would be rounding noise that reads like a result.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch

from pipeline import world
from pipeline.artifacts import StageSkipped, require_stage, stage_run, write_json, write_text
from pipeline.config import ExperimentConfig, to_dict
from pipeline.data.jigsaw import load_heldout
from pipeline.data.pairs import PairSet
from pipeline.embed import Embedder
from pipeline.errors import ConfigError, DataError
from pipeline.evaluate import classify, distances
from pipeline.irl.reward import RewardModel
from pipeline.irl.stage import embed_pairs, reward_dir

log = logging.getLogger("fairl.evaluate")

DISTANCE_NAMES = {
    "starc": "STARC, paper Eq. 4 (L1/L1; headline)",
    "affine_mse": "paper Eq. 10 (affine-fit MSE, raw reward scale)",
    "affine_mse_std": "paper Eq. 10 with the learned reward standardised",
    "starc_l2": "STARC-L2 (Skalse et al. 2024), global centering",
    "starc_val": "STARC-L2 with per-prompt centering",
    "epic": "EPIC (Gleave et al. 2021), Pearson distance",
}


def default_comparisons(methods: list[str]) -> list[tuple[str, str]]:
    out = []
    for m in methods:
        if m.startswith("fa-"):
            base = m.split("-")[1]
            if base in methods:
                out.append((m, base))
    return out


def run(cfg: ExperimentConfig, force: bool = False) -> Path:
    irl_dir = cfg.stage_dir("irl")
    irl_manifest = require_stage(irl_dir, "irl", "irl")
    summary = json.loads((irl_dir / "summary.json").read_text())
    ev = cfg.evaluate
    methods = list(dict.fromkeys(m["method"] for m in summary["models"]))
    comparisons = [tuple(c) for c in ev.compare] if ev.compare else default_comparisons(methods)
    for fa, base in comparisons:
        for m in (fa, base):
            if m not in methods:
                raise ConfigError(f"evaluate.compare names {m!r}, which irl did not train",
                                  hint=f"trained methods: {', '.join(methods)}; fix "
                                       "evaluate.compare, or add the method to irl.methods "
                                       "and re-run `fairl irl`")
    heldout = Path(world.resolve(ev.heldout, cfg, "heldout")) if ev.heldout is not None else None
    if heldout is not None:
        load_heldout(heldout)   # a missing or malformed file fails here, before any work
    config = {"evaluate": to_dict(ev), "irl": irl_manifest["fingerprint"]}
    try:
        with stage_run("evaluate", cfg.run.root / cfg.run.name, config,
                       {"irl": irl_dir, "heldout": heldout}, seed=cfg.run.seed, force=force,
                       log=log.info) as run_:
            _evaluate(run_, cfg, irl_dir, irl_manifest, summary, comparisons, heldout)
    except StageSkipped:
        pass
    return cfg.stage_dir("evaluate")


# ----------------------------------------------------------------------------- scoring
class Scores:
    """Rewards of one model on every output it is evaluated on."""

    def __init__(self, model: RewardModel, hc, hr, hh):
        self.chosen = model.score_embeddings(hc).double().numpy()
        self.rejected = model.score_embeddings(hr).double().numpy()
        self.heldout = model.score_embeddings(hh).double().numpy() if hh is not None else None


def _outputs(df: pd.DataFrame, mask: np.ndarray, sc: Scores, col: Optional[str] = None):
    """Rewards (and a ground-truth column) of the chosen then rejected outputs of `mask` pairs."""
    r = np.concatenate([sc.chosen[mask], sc.rejected[mask]])
    if col is None:
        return r
    return r, np.concatenate([df[f"chosen_{col}"].to_numpy()[mask], df[f"rejected_{col}"].to_numpy()[mask]])


def _evaluate(run_, cfg, irl_dir: Path, irl_manifest: dict, summary: dict, comparisons,
              heldout_path: Optional[Path]) -> None:
    ev = cfg.evaluate
    irl_cfg = irl_manifest["config"]["irl"]
    df = pd.read_parquet(irl_dir / "pairs.parquet")
    pairs = PairSet(df=df, source=str(irl_dir / "pairs.parquet"))
    notes: list[str] = []

    # 1. Embeddings of every output (cache hits after `fairl irl`) and of the held-out set.
    embedder = Embedder(irl_cfg["embed"]["encoder"], irl_cfg["embed"]["batch_size"],
                        irl_cfg["embed"]["cache_dir"])
    with run_.timed("embed"):
        hc, hr = embed_pairs(pairs, embedder, irl_cfg["embed"]["text"])
        heldout, hh = None, None
        if heldout_path is not None:
            heldout = load_heldout(heldout_path)
            hh = embedder.embed(heldout["text"].tolist())
            if irl_cfg["embed"]["text"] != "completion":
                notes.append("held-out texts have no prompt: they are embedded alone although the "
                             "rewards were trained on prompt+completion")

    # 2. Score every reward.
    scores: dict[tuple[str, int], Scores] = {}
    for m in summary["models"]:
        model = RewardModel.load(reward_dir(irl_dir, m["method"], m["seed"]))
        scores[m["method"], m["seed"]] = Scores(model, hc, hr, hh)

    train = (df["split"] == "train").to_numpy()
    test = (df["split"] == "test").to_numpy()
    if not test.any():
        raise DataError("the pairs have no test split: nothing to evaluate on",
                        hint="give some pairs split=test, or drop the split column")
    if not pairs.has_labels:
        notes.append("no chosen_toxic/rejected_toxic labels: classification, failure-slice "
                     "classification and disagreement tables are skipped")
    if not pairs.has_scores:
        notes.append("no chosen_score/rejected_score: reward distances (STARC etc.) are skipped")
    groups = _groups(df, test)
    if np.bincount(groups).max() < 2:
        groups = None
        notes.append("starc_val (per-prompt centering) skipped: every test output answers a "
                     "different prompt, so there is nothing to centre within a prompt")

    warnings = data_warnings(pairs, train, test, heldout, irl_cfg["embed"]["text"],
                             _distance_names(groups))
    gt_constant = any(w.get("kind") == "constant_ground_truth" for w in warnings)
    undefined: dict[tuple[str, str], list[str]] = {}   # (reason, distance) -> models

    # 3. Per-model metrics.
    per_model: dict[str, dict] = {}
    thresholds: dict[tuple[str, int], float] = {}
    for (method, seed), sc in scores.items():
        flat: dict[str, Optional[float]] = {
            "test/pairwise_accuracy": classify.pairwise_accuracy(sc.chosen[test], sc.rejected[test]),
            "train/pairwise_accuracy": classify.pairwise_accuracy(sc.chosen[train], sc.rejected[train]),
        }
        if pairs.has_labels:
            r_tr, y_tr = _outputs(df, train, sc, "toxic")
            c = thresholds[method, seed] = classify.fit_threshold(r_tr, y_tr)
            flat.update(_prefixed("train", classify.classification_metrics(r_tr, y_tr, c)))
            flat.update(_prefixed("test", classify.classification_metrics(*_outputs(df, test, sc, "toxic"), c)))
            if heldout is not None:
                flat.update(_prefixed("heldout", classify.classification_metrics(sc.heldout, heldout["toxic"], c)))
        if pairs.has_scores and gt_constant:   # undefined for every reward: data_warnings says why
            flat.update({f"test/{k}": None for k in _distance_names(groups)})
        elif pairs.has_scores:
            d = distances.all_distances(*_outputs(df, test, sc, "score"), groups=groups)
            for note in d.pop("_notes", []):   # a reward constant on the test outputs
                name, _, why = note.partition(": ")
                undefined.setdefault((why, name), []).append(f"{method}/seed-{seed}")
            flat.update(_prefixed("test", d))
        per_model[f"{method}/seed-{seed}"] = {"method": method, "seed": seed,
                                              "threshold": thresholds.get((method, seed)), **flat}

    if pairs.has_labels:
        for split, mask in (("train", train), ("test", test)):
            y = np.concatenate([df["chosen_toxic"].to_numpy()[mask], df["rejected_toxic"].to_numpy()[mask]])
            if y.all() or not y.any():
                notes.append(f"{split} outputs are all {'toxic' if y.all() else 'non-toxic'}: "
                             f"{split}/auc is undefined" + ("" if y.any() else f" and {split}/f1 too"))
        if heldout is not None and (heldout["toxic"].all() or not heldout["toxic"].any()):
            notes.append("the held-out set has one class only: heldout/auc (and f1 without toxic "
                         "comments) are undefined")
        for st in pairs.subtypes:
            lab = df[[f"chosen_sub_{st}", f"rejected_sub_{st}"]].to_numpy(float)
            if not (np.nan_to_num(lab) > 0.5).any():
                notes.append(f"subtype {st!r}: no output carries it (score > 0.5), so its Table 3 rows are empty")
    by_reason: dict[tuple[str, tuple], list[str]] = {}
    for (why, name), models in sorted(undefined.items()):
        by_reason.setdefault((why, tuple(models)), []).append(f"test/{name}")
    warnings += [{"kind": "constant_reward", "metrics": names, "models": list(models),
                  "reason": f"{why} (left null)", "sizes": {"test_outputs": int(2 * test.sum())}}
                 for (why, models), names in by_reason.items()]
    methods = list(dict.fromkeys(m for m, _ in scores))
    seeds_of = {m: sorted(s for mm, s in scores if mm == m) for m in methods}

    # 4. Per-method aggregates and seed dispersion (Corollary 1, measured).
    by_method = {}
    for m in methods:
        rows = [per_model[f"{m}/seed-{s}"] for s in seeds_of[m]]
        keys = [k for k in rows[0] if "/" in k]
        by_method[m] = {"seeds": seeds_of[m], "mean": _agg(rows, keys, np.mean),
                        "std": _agg(rows, keys, np.std),
                        "dispersion": _dispersion([scores[m, s] for s in seeds_of[m]], test, df)}

    # 5. Failure slice and disagreement tables, per comparison.
    slices, disagreement = {}, {}
    for fa, base in comparisons:
        common = sorted(set(seeds_of[fa]) & set(seeds_of[base]))
        key = f"{fa} vs {base}"
        slices[key] = _failure_slice(df, test, fa, base, common, scores, thresholds, groups, ev.near_tie, pairs)
        n_slice = slices[key]["mean"].get("n_pairs")
        if n_slice is not None and n_slice < MIN_PAIRS:
            warnings.append({"kind": "small_slice", "metrics": [f"failure_slice/{key}"],
                             "reason": f"the failure slice holds {n_slice:g} test pairs on "
                                       f"average over seeds (minimum {MIN_PAIRS})",
                             "sizes": {"slice_pairs_mean": n_slice, "minimum": MIN_PAIRS}})
        if pairs.has_labels:
            disagreement[key] = _disagreement(df, train, test, fa, base, common, scores, thresholds,
                                              heldout, pairs.subtypes)

    metrics = {
        "schema": "fairl-evaluate/1",
        "run": cfg.run.name,
        "irl_fingerprint": irl_manifest["fingerprint"],
        "data": {"pairs": str(irl_manifest["inputs"]["pairs"]["path"]),
                 "n_train": int(train.sum()), "n_val": int((df["split"] == "val").sum()),
                 "n_test": int(test.sum()), "has_scores": pairs.has_scores,
                 "has_labels": pairs.has_labels, "subtypes": pairs.subtypes,
                 **({"split": summary["pairs"]["split"]} if "split" in summary.get("pairs", {})
                    else {}),
                 "heldout": None if heldout is None else {"path": str(heldout_path), "n": len(heldout),
                                                          "toxic_rate": float(heldout["toxic"].mean())}},
        "definitions": {**DISTANCE_NAMES,
                        "classification": "positive class = toxic; toxic iff reward <= threshold "
                                          "fitted for accuracy on the train outputs",
                        "pairwise_accuracy": "fraction of pairs with R(o+) > R(o-)",
                        "failure_slice": f"test pairs with baseline Delta <= {ev.near_tie} x std of "
                                         "the baseline's test rewards (misclassified or near-tie)",
                        "dispersion": "mean pairwise distance between the rewards of different "
                                      "seeds on the test outputs",
                        "warnings": f"metrics computed on fewer than {MIN_PAIRS} pairs, "
                                    f"{MIN_PER_CLASS} outputs of each class or {MIN_OUTPUTS} "
                                    "outputs, or on degenerate data, each with the reason"},
        "models": per_model,
        "methods": by_method,
        "failure_slice": slices,
        "disagreement": disagreement,
        "warnings": warnings,
        "notes": sorted(set(notes)),
    }
    write_json(run_.path("metrics.json"), metrics)
    from pipeline.evaluate.report import plot_metric_bars, plot_reward_vs_gt, render_report

    plots = []
    if ev.plots:
        with run_.timed("plots"):
            plots.append(plot_metric_bars(metrics, run_.path("metric_bars.png")))
            if pairs.has_scores:
                plots.append(plot_reward_vs_gt(df, test, scores, run_.path("reward_vs_gt.png")))
    write_text(run_.path("report.md"), render_report(metrics, [p.name for p in plots if p]))
    log.info("evaluate: report at %s", run_.final_dir / "report.md")


# ----------------------------------------------------------------------- degenerate data
# Minimum sizes below which a metric is still reported but carries a warning. One item moves
# a proportion over n items by 1/n; at n = 10 that is 0.1, already the size of the differences
# between methods that the tables are read for, so fewer is noise:
MIN_PAIRS = 10       # test (or train) pairs, for pairwise accuracy and the failure slice
MIN_PER_CLASS = 10   # toxic and non-toxic outputs each, for accuracy, F1 (rests on the toxic
#                      ones) and AUC (a mean over toxic x non-toxic couples)
# Distances compare the shape of two reward vectors over N outputs. On 2 outputs every centred
# vector is +-(a, -a), so STARC is exactly 0 or 2 whatever was learned (the 1-test-pair run
# reported 0.000); the sampling s.d. of a correlation, ~1/sqrt(N - 3), is still 0.25 at N = 20:
MIN_OUTPUTS = 20     # test outputs, for every distance and the seed dispersion


def _distance_names(groups) -> list[str]:
    return ["starc", "affine_mse", "affine_mse_std", "starc_l2", "epic",
            *(["starc_val"] if groups is not None else [])]


def data_warnings(pairs: PairSet, train: np.ndarray, test: np.ndarray,
                  heldout: Optional[pd.DataFrame], text_mode: str,
                  dist_names: list[str]) -> list[dict]:
    """A warning for each metric that the data cannot support: too few pairs or outputs for
    it (the minimums above), pairs whose two texts are identical, a ground truth constant on
    the test outputs. Each is {"kind", "metrics" (keys as in `models`/`methods`, "*" for all),
    "reason", "sizes"}."""
    df = pairs.df
    out: list[dict] = []

    def warn(kind: str, metrics: list[str], reason: str, **sizes) -> None:
        out.append({"kind": kind, "metrics": metrics, "reason": reason,
                    "sizes": {k: int(v) for k, v in sizes.items()}})

    same = np.array([a == b for a, b in zip(pairs.texts("chosen", text_mode),
                                            pairs.texts("rejected", text_mode))], dtype=bool)
    if train.any() and same[train].all():
        warn("identical_pairs", ["*"], "every training pair has identical chosen and rejected "
             "texts: the pairwise losses are constant, so no reward learned a preference (the "
             "standard-IRL ones stay at their random initialisation) and no metric here "
             "measures one", train_pairs=train.sum())
    for split, mask in (("train", train), ("test", test)):
        n, k = int(mask.sum()), int((same & mask).sum())
        if n < MIN_PAIRS:
            warn("few_pairs", [f"{split}/pairwise_accuracy"],
                 f"only {n} {split} pair(s) (minimum {MIN_PAIRS}): one pair moves it by "
                 f"{1 / max(n, 1):.2f}", pairs=n, minimum=MIN_PAIRS)
        if k:
            warn("identical_pairs", [f"{split}/pairwise_accuracy"],
                 f"{k} of {n} {split} pairs have identical chosen and rejected texts: every "
                 "reward ties on them, and a tie counts as wrong", identical=k, pairs=n)
    classes = []
    if pairs.has_labels:
        for split, mask in (("train", train), ("test", test)):
            y = np.concatenate([df["chosen_toxic"].to_numpy(bool)[mask],
                                df["rejected_toxic"].to_numpy(bool)[mask]])
            classes.append((split, y))
    if heldout is not None and pairs.has_labels:
        classes.append(("heldout", heldout["toxic"].to_numpy(bool)))
    for split, y in classes:
        pos, neg = int(y.sum()), int((~y).sum())
        if min(pos, neg) < MIN_PER_CLASS:
            warn("few_per_class", [f"{split}/{k}" for k in ("accuracy", "f1", "auc")],
                 f"{pos} toxic and {neg} non-toxic {split} outputs (minimum {MIN_PER_CLASS} of "
                 "each)", toxic=pos, non_toxic=neg, minimum=MIN_PER_CLASS)
    n_out = int(2 * test.sum())
    if n_out < MIN_OUTPUTS:
        warn("few_outputs", [f"test/{k}" for k in dist_names if pairs.has_scores]
             + ["dispersion/starc", "dispersion/starc_l2"],
             f"only {n_out} test outputs (minimum {MIN_OUTPUTS}): on 2 outputs every distance "
             "is 0 or its maximum whatever the rewards", test_outputs=n_out,
             minimum=MIN_OUTPUTS)
    if pairs.has_scores and test.any():
        gt = np.concatenate([df["chosen_score"].to_numpy(float)[test],
                             df["rejected_score"].to_numpy(float)[test]])
        if np.ptp(gt) <= 1e-12 * max(1.0, float(np.abs(gt).max())):
            warn("constant_ground_truth", [f"test/{k}" for k in dist_names],
                 f"the ground-truth score is {float(gt[0]):g} on every test output: a distance "
                 "to a constant reward is undefined, so these are left null",
                 test_outputs=n_out)
    return out


def _groups(df: pd.DataFrame, mask: np.ndarray) -> Optional[np.ndarray]:
    """Prompt id of every test output (chosen then rejected), for per-prompt canonicalisation."""
    pc = df["chosen_prompt"] if "chosen_prompt" in df else df["prompt"]
    pr = df["rejected_prompt"] if "rejected_prompt" in df else df["prompt"]
    prompts = np.concatenate([pc.to_numpy()[mask], pr.to_numpy()[mask]])
    _, ids = np.unique(prompts, return_inverse=True)
    return ids


def _prefixed(prefix: str, d: dict) -> dict:
    return {f"{prefix}/{k}": v for k, v in d.items()}


def _agg(rows: list[dict], keys: list[str], fn) -> dict:
    out = {}
    for k in keys:
        vals = [r[k] for r in rows if r.get(k) is not None]
        out[k] = float(fn(vals)) if vals else None
    return out


def _dispersion(seed_scores: list[Scores], test: np.ndarray, df: pd.DataFrame) -> dict:
    """Mean pairwise STARC (Eq. 4) and STARC-L2 between seeds' rewards on the test outputs."""
    vecs = [_outputs(df, test, sc) for sc in seed_scores]
    out = {"n_seeds": len(vecs)}
    for name, fn in (("starc", distances.starc_l1), ("starc_l2", distances.starc_l2)):
        vals = []
        for a, b in itertools.combinations(vecs, 2):
            try:
                vals.append(fn(a, b))
            except distances.DegenerateReward:
                pass
        out[name] = float(np.mean(vals)) if vals else None
    return out


def _failure_slice(df, test, fa, base, seeds, scores, thresholds, groups, near_tie, pairs) -> dict:
    """Metrics of both methods on the test pairs the baseline misclassifies or nearly ties."""
    per_seed = {}
    for s in seeds:
        b = scores[base, s]
        delta = b.chosen - b.rejected
        scale = np.std(_outputs(df, test, b))
        in_slice = test & (delta <= near_tie * scale)
        row: dict = {"n_pairs": int(in_slice.sum()),
                     "misclassified": int((test & (delta <= 0)).sum())}
        for name, m in (("fa", fa), ("base", base)):
            sc = scores[m, s]
            if in_slice.any():
                row[f"{name}/pairwise_accuracy"] = classify.pairwise_accuracy(sc.chosen[in_slice], sc.rejected[in_slice])
                if pairs.has_labels:
                    r, y = _outputs(df, in_slice, sc, "toxic")
                    row[f"{name}/accuracy"] = float(classify.correct(r, y, thresholds[m, s]).mean())
                if pairs.has_scores:
                    try:
                        row[f"{name}/starc"] = distances.starc_l1(*_outputs(df, in_slice, sc, "score"))
                    except distances.DegenerateReward:
                        row[f"{name}/starc"] = None
        per_seed[str(s)] = row
    keys = sorted({k for r in per_seed.values() for k in r})
    rows = list(per_seed.values())
    return {"seeds": per_seed, "mean": _agg(rows, keys, np.mean), "std": _agg(rows, keys, np.std)}


def _disagreement(df, train, test, fa, base, seeds, scores, thresholds, heldout, subtypes) -> dict:
    """Table 2 (both / only FA-IRL / only IRL / neither correct) on train, test and held-out
    outputs, and Table 3 (the same per toxicity subtype) where subtype labels exist."""
    cats = ("both", "only_fa", "only_base", "neither")

    def counts(ok_fa, ok_base, mask=None):
        if mask is not None:
            ok_fa, ok_base = ok_fa[mask], ok_base[mask]
        return dict(zip(cats, (int((ok_fa & ok_base).sum()), int((ok_fa & ~ok_base).sum()),
                               int((~ok_fa & ok_base).sum()), int((~ok_fa & ~ok_base).sum()))))

    tables: dict[str, list] = {}
    sub_tables: dict[str, dict[str, list]] = {}
    for s in seeds:
        for split, mask in (("train", train), ("test", test)):
            oks = [classify.correct(*_outputs(df, mask, scores[m, s], "toxic"), thresholds[m, s])
                   for m in (fa, base)]
            tables.setdefault(split, []).append(counts(*oks))
            for st in subtypes:
                lab = np.concatenate([df[f"chosen_sub_{st}"].to_numpy()[mask],
                                      df[f"rejected_sub_{st}"].to_numpy()[mask]])
                sub_tables.setdefault(split, {}).setdefault(st, []).append(counts(*oks, np.nan_to_num(lab) > 0.5))
        if heldout is not None:
            oks = [classify.correct(scores[m, s].heldout, heldout["toxic"], thresholds[m, s]) for m in (fa, base)]
            tables.setdefault("heldout", []).append(counts(*oks))
            for st in [c for c in heldout.columns if c not in ("text", "toxic")]:
                sub_tables.setdefault("heldout", {}).setdefault(st, []).append(
                    counts(*oks, heldout[st].to_numpy()))

    def summarise(rows):
        return {c: {"mean": float(np.mean([r[c] for r in rows])), "std": float(np.std([r[c] for r in rows]))}
                for c in cats}

    return {"seeds": seeds, **{k: summarise(v) for k, v in tables.items()},
            "subtypes": {split: {st: summarise(v) for st, v in d.items()} for split, d in sub_tables.items()}}
