"""The metrics of `fairl evaluate` (paper Section 5, Evaluation Metrics, and Appendix C), as
pure functions of one `EvalInputs`: the pairs with their train / test masks, every reward's
scores on the chosen, rejected and held-out outputs, and the held-out labels.

Per reward: classification of individual outputs (threshold fitted on train, fixed on test
and on the optional held-out set), pairwise accuracy, and every reward distance of
`pipeline.evaluate.distances` on the test outputs. Per comparison (an FA-IRL method against
its standard-IRL baseline): the failure slice (test pairs the baseline gets wrong or nearly
ties) and the disagreement tables (Tables 2 and 3). Per method: seed dispersion (Corollary 1).

Tiny or degenerate data still gets every metric that is defined, but each affected metric
carries a warning (metrics.json "warnings": which metrics, why, the sizes; report.md: a
Warnings section and a dagger beside each affected number). See `data_warnings` for the
minimum sizes and why. A metric that is undefined (a distance to a constant ground truth or
from a constant reward) is null, with a warning, rather than a number: any number there
would be rounding noise that reads like a result.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from pipeline.config import METHOD_TABLE
from pipeline.data.pairs import PairSet
from pipeline.errors import DataError
from pipeline.evaluate import classify, distances
from pipeline.irl.reward import RewardModel

SCHEMA = "fairl-evaluate/1"

DISTANCE_NAMES = {
    "starc": "STARC, paper Eq. 4 (L1/L1; headline)",
    "affine_mse": "paper Eq. 10 (affine-fit MSE, raw reward scale)",
    "affine_mse_std": "paper Eq. 10 with the learned reward standardised",
    "starc_l2": "STARC-L2 (Skalse et al. 2024), global centering",
    "starc_val": "STARC-L2 with per-prompt centering",
    "epic": "EPIC (Gleave et al. 2021), Pearson distance",
}

# Minimum sizes below which a metric is still reported but carries a warning. One item moves
# a proportion over n items by 1/n; at n = 10 that is 0.1, already the size of the differences
# between methods that the tables are read for, so fewer is noise:
MIN_PAIRS = 10  # test (or train) pairs, for pairwise accuracy and the failure slice
MIN_PER_CLASS = 10  # toxic and non-toxic outputs each, for accuracy, F1 (rests on the toxic
#                      ones) and AUC (a mean over toxic x non-toxic couples)
# Distances compare the shape of two reward vectors over N outputs. On 2 outputs every centred
# vector is +-(a, -a), so STARC is exactly 0 or 2 whatever was learned (the 1-test-pair run
# reported 0.000); the sampling s.d. of a correlation, ~1/sqrt(N - 3), is still 0.25 at N = 20:
MIN_OUTPUTS = 20  # test outputs, for every distance and the seed dispersion

DISAGREEMENT = ("both", "only_fa", "only_base", "neither")


def default_comparisons(methods: list[str]) -> list[tuple[str, str]]:
    """Each FA-IRL method against the plain IRL method with its objective, when both were
    trained: its matched baseline (same model selection, `mm-matched` / `me-matched`) when
    that was trained, else the plain one (the method table's `baseline`)."""
    out = []
    for m in methods:
        row = METHOD_TABLE.get(m)
        if row is None or not row.failure_aware:
            continue
        for base in (row.matched_baseline, row.baseline):
            if base in methods:
                out.append((m, base))
                break
    return out


# ------------------------------------------------------------------------------- inputs
@dataclass(frozen=True, eq=False)
class RewardScores:
    """Rewards of one model (float64) on every output it is evaluated on: the chosen and the
    rejected output of each pair, and the held-out texts (None without a held-out set)."""

    chosen: np.ndarray
    rejected: np.ndarray
    heldout: np.ndarray | None
    # rewards on each named held-out set (evaluate.heldout_sets)
    sets: dict[str, np.ndarray] = field(default_factory=dict)
    # FA-IRL only: R_D and R_F apart on the chosen then the rejected outputs, [2, N] each
    base_path: np.ndarray | None = None
    failure_path: np.ndarray | None = None

    @classmethod
    def of(
        cls, model: RewardModel, h_chosen, h_rejected, h_heldout, h_sets: dict | None = None
    ) -> RewardScores:
        """Score the embeddings h(o+), h(o-) and, if given, those of the held-out texts."""
        base_path = failure_path = None
        if model.failure:
            paths = [model.path_scores(h) for h in (h_chosen, h_rejected)]
            base_path = np.stack([p[0].double().numpy() for p in paths])
            failure_path = np.stack([p[1].double().numpy() for p in paths])
        return cls(
            chosen=model.score_embeddings(h_chosen).double().numpy(),
            rejected=model.score_embeddings(h_rejected).double().numpy(),
            heldout=(
                model.score_embeddings(h_heldout).double().numpy()
                if h_heldout is not None
                else None
            ),
            sets={k: model.score_embeddings(h).double().numpy() for k, h in (h_sets or {}).items()},
            base_path=base_path,
            failure_path=failure_path,
        )

    def rf_share(self, mask: np.ndarray) -> float | None:
        """std R_F / std R_D over the `mask` pairs' outputs: the failure path's share of the
        reward (None for plain IRL; inf when R_D is constant there)."""
        if self.failure_path is None:
            return None
        r_d, r_f = self.base_path[:, mask].ravel(), self.failure_path[:, mask].ravel()
        sd = float(r_d.std())
        return float(r_f.std()) / sd if sd > 0 else float("inf")

    def outputs(self, mask: np.ndarray) -> np.ndarray:
        """Rewards of the chosen then the rejected outputs of the `mask` pairs."""
        return np.concatenate([self.chosen[mask], self.rejected[mask]])


def split_masks(pairs: PairSet) -> tuple[np.ndarray, np.ndarray]:
    """The train and test pairs (boolean masks); a DataError without test pairs."""
    train = (pairs.df["split"] == "train").to_numpy()
    test = (pairs.df["split"] == "test").to_numpy()
    if not test.any():
        raise DataError(
            "the pairs have no test split: nothing to evaluate on",
            hint="give some pairs split=test, or drop the split column",
        )
    return train, test


@dataclass
class EvalInputs:
    """Everything the metrics are computed from.

    `scores` maps (method, seed) to that reward's `RewardScores`, in irl's order. `heldout` is
    the held-out set (`pipeline.data.jigsaw.load_heldout`: text, toxic, subtype columns) or
    None. `text_mode` is what the rewards were trained on (irl.embed.text), `near_tie` the
    failure slice's threshold (evaluate.near_tie). `groups` is derived: the prompt id of each
    test output (chosen then rejected), or None when no two test outputs share a prompt.
    """

    pairs: PairSet
    train: np.ndarray
    test: np.ndarray
    scores: dict[tuple[str, int], RewardScores]
    heldout: pd.DataFrame | None
    text_mode: str
    near_tie: float
    # (method, seed) -> irl's training summary of that model: best_epoch, epochs_run
    training: dict[tuple[str, int], dict] = field(default_factory=dict)
    # name -> a labelled set like `heldout` (evaluate.heldout_sets)
    heldout_sets: dict[str, pd.DataFrame] = field(default_factory=dict)
    groups: np.ndarray | None = field(init=False)

    def __post_init__(self) -> None:
        groups = prompt_groups(self.pairs.df, self.test)
        self.groups = None if np.bincount(groups).max() < 2 else groups

    @property
    def df(self) -> pd.DataFrame:
        return self.pairs.df

    def column(self, name: str, mask: np.ndarray, dtype=None) -> np.ndarray:
        """Column `name` of the chosen then the rejected outputs of the `mask` pairs
        (`chosen_<name>`, `rejected_<name>`)."""
        return np.concatenate(
            [
                self.df[f"chosen_{name}"].to_numpy(dtype)[mask],
                self.df[f"rejected_{name}"].to_numpy(dtype)[mask],
            ]
        )

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(m for m, _ in self.scores))

    def seeds_of(self, method: str) -> list[int]:
        return sorted(s for m, s in self.scores if m == method)

    @property
    def distance_names(self) -> list[str]:
        """The distances computed per reward (starc_val only with shared prompts)."""
        return [
            "starc",
            "affine_mse",
            "affine_mse_std",
            "starc_l2",
            "epic",
            *(["starc_val"] if self.groups is not None else []),
        ]


def prompt_groups(df: pd.DataFrame, mask: np.ndarray) -> np.ndarray:
    """Prompt id of every `mask` output (chosen then rejected), for per-prompt canonicalisation."""
    pc = df["chosen_prompt"] if "chosen_prompt" in df else df["prompt"]
    pr = df["rejected_prompt"] if "rejected_prompt" in df else df["prompt"]
    prompts = np.concatenate([pc.to_numpy()[mask], pr.to_numpy()[mask]])
    _, ids = np.unique(prompts, return_inverse=True)
    return ids


# ------------------------------------------------------------------------ the evaluation
def evaluate_rewards(inp: EvalInputs, comparisons: list[tuple[str, str]]) -> dict:
    """The result sections of metrics.json, in its order: models, methods, failure_slice,
    disagreement, warnings, notes."""
    warnings = data_warnings(inp)
    gt_constant = any(w["kind"] == "constant_ground_truth" for w in warnings)
    per_model, thresholds, undefined = model_metrics(inp, gt_constant)
    warnings += constant_reward_warnings(undefined, n_test_outputs=int(2 * inp.test.sum()))
    by_method = {m: method_summary(inp, m, per_model) for m in inp.methods}
    slices, disagreement, paired = {}, {}, {}
    for fa, base in comparisons:
        common = sorted(set(inp.seeds_of(fa)) & set(inp.seeds_of(base)))
        key = f"{fa} vs {base}"
        paired[key] = paired_differences(per_model, fa, base, common)
        slices[key] = failure_slice(inp, fa, base, common, thresholds)
        warnings += slice_warnings(key, slices[key])
        if inp.pairs.has_labels:
            disagreement[key] = disagreement_tables(inp, fa, base, common, thresholds)
    for fa, base in comparisons:  # beside a matched baseline, the plain one too (the paper's)
        plain = METHOD_TABLE[fa].baseline if fa in METHOD_TABLE else None
        if plain not in (None, base) and plain in inp.methods and f"{fa} vs {plain}" not in paired:
            common = sorted(set(inp.seeds_of(fa)) & set(inp.seeds_of(plain)))
            paired[f"{fa} vs {plain}"] = paired_differences(per_model, fa, plain, common)
            if inp.pairs.has_labels:
                disagreement[f"{fa} vs {plain}"] = disagreement_tables(
                    inp, fa, plain, common, thresholds
                )
    return {
        "models": per_model,
        "methods": by_method,
        "paired": paired,
        "failure_slice": slices,
        "disagreement": disagreement,
        "warnings": warnings,
        "notes": sorted(set(data_notes(inp) + collapse_notes(per_model))),
    }


def definitions(near_tie: float) -> dict[str, str]:
    """metrics.json "definitions": what each metric is."""
    return {
        **DISTANCE_NAMES,
        "classification": "positive class = toxic; toxic iff reward <= threshold "
        "fitted for accuracy on the train outputs",
        "pairwise_accuracy": "fraction of pairs with R(o+) > R(o-)",
        "failure_slice": f"test pairs with baseline Delta <= {near_tie} x std of "
        "the baseline's test rewards (misclassified or near-tie)",
        "dispersion": "mean pairwise distance between the rewards of different "
        "seeds on the test outputs",
        "warnings": f"metrics computed on fewer than {MIN_PAIRS} pairs, "
        f"{MIN_PER_CLASS} outputs of each class or {MIN_OUTPUTS} "
        "outputs, or on degenerate data, each with the reason",
    }


# ----------------------------------------------------------------------- per reward
def model_metrics(
    inp: EvalInputs, gt_constant: bool
) -> tuple[dict[str, dict], dict[tuple[str, int], float], dict]:
    """Per reward ("<method>/seed-<s>"): its threshold and flat "<split>/<metric>" values;
    every distance null when the ground truth is constant on the test outputs (`gt_constant`).
    Also returns the thresholds by (method, seed) (with labels only), and the distances left
    undefined by a reward constant on the test outputs, {(reason, distance): [models]}."""
    per_model: dict[str, dict] = {}
    thresholds: dict[tuple[str, int], float] = {}
    undefined: dict[tuple[str, str], list[str]] = {}
    train, test = inp.train, inp.test
    for (method, seed), sc in inp.scores.items():
        flat: dict[str, float | None] = {
            "test/pairwise_accuracy": classify.pairwise_accuracy(
                sc.chosen[test], sc.rejected[test]
            ),
            "train/pairwise_accuracy": classify.pairwise_accuracy(
                sc.chosen[train], sc.rejected[train]
            ),
        }
        if inp.pairs.has_labels:
            thresholds[method, seed] = classify.fit_threshold(
                sc.outputs(train), inp.column("toxic", train)
            )
            flat.update(classification(inp, sc, thresholds[method, seed]))
        if inp.pairs.has_scores and gt_constant:  # undefined for every reward (data_warnings)
            flat.update({f"test/{k}": None for k in inp.distance_names})
        elif inp.pairs.has_scores:
            d = distances.all_distances(
                sc.outputs(test), inp.column("score", test), groups=inp.groups
            )
            for note in d.pop("_notes", []):  # a reward constant on the test outputs
                name, _, why = note.partition(": ")
                undefined.setdefault((why, name), []).append(f"{method}/seed-{seed}")
            flat.update(_prefixed("test", d))
            # the paper's Figure 4 plots STARC on the training outputs: Eq. 4 there too
            try:
                flat["train/starc"] = distances.starc_l1(
                    sc.outputs(train), inp.column("score", train)
                )
            except distances.DegenerateReward:  # constant on the train outputs
                flat["train/starc"] = None
        fit = inp.training.get((method, seed), {})
        flat.update(
            {
                "fit/best_epoch": fit.get("best_epoch"),
                "fit/epochs_run": fit.get("epochs_run"),
                "fit/rf_share": sc.rf_share(test),
            }
        )
        per_model[f"{method}/seed-{seed}"] = {
            "method": method,
            "seed": seed,
            "threshold": thresholds.get((method, seed)),
            **flat,
        }
    return per_model, thresholds, undefined


def classification(inp: EvalInputs, sc: RewardScores, threshold: float) -> dict:
    """Accuracy, F1, AUC (and support) of one reward as a toxicity classifier at `threshold`,
    on the train, test and held-out outputs."""
    out = {}
    for split, mask in (("train", inp.train), ("test", inp.test)):
        m = classify.classification_metrics(sc.outputs(mask), inp.column("toxic", mask), threshold)
        out.update(_prefixed(split, m))
    # per subtype (paper Figure 3, left): AUC of the outputs carrying it against the non-toxic
    # ones, on the test pairs
    r, toxic = sc.outputs(inp.test), inp.column("toxic", inp.test, bool)
    for st in inp.pairs.subtypes:
        carries = np.nan_to_num(inp.column(f"sub_{st}", inp.test, float)) > 0.5
        keep = carries | ~toxic
        m = classify.classification_metrics(r[keep], carries[keep], threshold)
        out[f"test/auc_{st}"] = m["auc"]
    if inp.heldout is not None:
        m = classify.classification_metrics(sc.heldout, inp.heldout["toxic"], threshold)
        out.update(_prefixed("heldout", m))
    for name, df in inp.heldout_sets.items():
        m = classify.classification_metrics(sc.sets[name], df["toxic"], threshold)
        out.update(_prefixed(f"heldout-{name}", m))
    return out


# ------------------------------------------------------------------- FA vs baseline
def t_interval(values) -> tuple[float | None, list[float] | None]:
    """The mean of `values` and a 95% confidence interval for it (Student t, n - 1 degrees of
    freedom): (None, None) when empty, (mean, None) for a single value."""
    d = np.asarray(values, dtype=float)
    if len(d) == 0:
        return None, None
    mean = float(np.mean(d))
    if len(d) < 2:
        return mean, None
    half = float(stats.t.ppf(0.975, len(d) - 1) * np.std(d, ddof=1) / np.sqrt(len(d)))
    return mean, [mean - half, mean + half]


PAIRED_KEYS = ("test/f1", "test/auc", "test/starc")
LOWER_IS_BETTER = ("starc",)
RF_COLLAPSED = 1e-3  # fit/rf_share below this: R_F carries nothing of the reward


def paired_differences(
    per_model: dict[str, dict], fa: str, base: str, seeds: list[int], keys=PAIRED_KEYS
) -> dict:
    """Per metric, the per-seed differences FA - baseline over `seeds` (methods of one seed share
    R_D's initialisation and the minibatch order, so the seeds pair them): the differences, their
    mean, a 95% confidence interval for it (Student t, n - 1 degrees of freedom; None below 2
    seeds) and the seeds FA wins (higher F1/AUC, lower STARC). Seeds where either value is null
    are left out; `n` says how many remain."""
    out = {}
    for key in keys:
        d = [
            per_model[f"{fa}/seed-{s}"][key] - per_model[f"{base}/seed-{s}"][key]
            for s in seeds
            if per_model[f"{fa}/seed-{s}"].get(key) is not None
            and per_model[f"{base}/seed-{s}"].get(key) is not None
        ]
        sign = -1.0 if key.split("/")[-1] in LOWER_IS_BETTER else 1.0
        mean, ci = t_interval(d)
        out[key] = {
            "n": len(d),
            "mean": mean,
            "ci95": ci,
            "wins": int(sum(sign * x > 0 for x in d)),
            "diffs": [float(x) for x in d],
        }
    return out


def collapse_notes(per_model: dict[str, dict]) -> list[str]:
    """A note when R_F has collapsed (fit/rf_share < RF_COLLAPSED) in FA-IRL models: FA-IRL is
    then one reward trained with up-weighted failures, not a dual-path one."""
    shares = {k: m["fit/rf_share"] for k, m in per_model.items() if m["fit/rf_share"] is not None}
    collapsed = sorted(k for k, v in shares.items() if v < RF_COLLAPSED)
    if not collapsed:
        return []
    return [
        f"R_F has collapsed (std R_F / std R_D < {RF_COLLAPSED:g} on the test outputs) in "
        f"{len(collapsed)} of {len(shares)} FA-IRL models: {', '.join(collapsed)}"
    ]


# ----------------------------------------------------------------------- per method
def method_summary(inp: EvalInputs, method: str, per_model: dict[str, dict]) -> dict:
    """Mean and std over seeds of every per-reward metric, and the seed dispersion."""
    seeds = inp.seeds_of(method)
    rows = [per_model[f"{method}/seed-{s}"] for s in seeds]
    keys = [k for k in rows[0] if "/" in k]
    return {
        "seeds": seeds,
        "mean": _agg(rows, keys, np.mean),
        "std": _agg(rows, keys, np.std),
        "dispersion": dispersion(inp, method),
    }


def dispersion(inp: EvalInputs, method: str) -> dict:
    """Mean pairwise STARC (Eq. 4) and STARC-L2 between seeds' rewards on the test outputs
    (Corollary 1, measured), and the STARC of each pair of seeds (`starc_pairs`, "<s>-<t>")."""
    seeds = inp.seeds_of(method)
    vecs = [inp.scores[method, s].outputs(inp.test) for s in seeds]
    out: dict = {"n_seeds": len(vecs)}
    pairs = {}
    for name, fn in (("starc", distances.starc_l1), ("starc_l2", distances.starc_l2)):
        vals = []
        for (sa, a), (sb, b) in itertools.combinations(zip(seeds, vecs, strict=True), 2):
            try:
                vals.append(fn(a, b))
            except distances.DegenerateReward:
                continue
            if name == "starc":
                pairs[f"{sa}-{sb}"] = float(vals[-1])
        out[name] = float(np.mean(vals)) if vals else None
    out["starc_pairs"] = pairs  # each pair of seeds' STARC: the jackknife in scripts/claims.py
    return out


# ------------------------------------------------------------------- per comparison
def failure_slice(
    inp: EvalInputs, fa: str, base: str, seeds: list[int], thresholds: dict[tuple[str, int], float]
) -> dict:
    """Metrics of both methods on the test pairs the baseline misclassifies or nearly ties:
    Delta = R(o+) - R(o-) of the baseline at most `near_tie` x the std of its test rewards."""
    per_seed = {}
    for s in seeds:
        b = inp.scores[base, s]
        delta = b.chosen - b.rejected
        scale = np.std(b.outputs(inp.test))
        in_slice = inp.test & (delta <= inp.near_tie * scale)
        row: dict = {
            "n_pairs": int(in_slice.sum()),
            "misclassified": int((inp.test & (delta <= 0)).sum()),
        }
        for name, m in (("fa", fa), ("base", base)):
            if in_slice.any():
                row.update(
                    _slice_metrics(inp, name, inp.scores[m, s], in_slice, thresholds.get((m, s)))
                )
        per_seed[str(s)] = row
    keys = sorted({k for r in per_seed.values() for k in r})
    rows = list(per_seed.values())
    return {"seeds": per_seed, "mean": _agg(rows, keys, np.mean), "std": _agg(rows, keys, np.std)}


def _slice_metrics(
    inp: EvalInputs, name: str, sc: RewardScores, in_slice: np.ndarray, threshold: float | None
) -> dict:
    """Pairwise accuracy, classification accuracy and STARC of one reward on the slice."""
    row = {
        f"{name}/pairwise_accuracy": classify.pairwise_accuracy(
            sc.chosen[in_slice], sc.rejected[in_slice]
        )
    }
    if inp.pairs.has_labels:
        ok = classify.correct(sc.outputs(in_slice), inp.column("toxic", in_slice), threshold)
        row[f"{name}/accuracy"] = float(ok.mean())
    if inp.pairs.has_scores:
        try:
            row[f"{name}/starc"] = distances.starc_l1(
                sc.outputs(in_slice), inp.column("score", in_slice)
            )
        except distances.DegenerateReward:
            row[f"{name}/starc"] = None
    return row


def disagreement_tables(
    inp: EvalInputs, fa: str, base: str, seeds: list[int], thresholds: dict[tuple[str, int], float]
) -> dict:
    """Table 2 (both / only FA-IRL / only IRL / neither correct) on train, test and held-out
    outputs, with each seed's counts (`per_seed`, in `seeds` order: the paired test of the
    asymmetry), and Table 3 (the same per toxicity subtype) where subtype labels exist."""
    tables: dict[str, list] = {}
    sub_tables: dict[str, dict[str, list]] = {}
    for s in seeds:
        for split, mask in (("train", inp.train), ("test", inp.test)):
            oks = [
                classify.correct(
                    inp.scores[m, s].outputs(mask), inp.column("toxic", mask), thresholds[m, s]
                )
                for m in (fa, base)
            ]
            tables.setdefault(split, []).append(_counts(*oks))
            for st in inp.pairs.subtypes:
                carries = np.nan_to_num(inp.column(f"sub_{st}", mask)) > 0.5
                sub_tables.setdefault(split, {}).setdefault(st, []).append(_counts(*oks, carries))
        if inp.heldout is not None:
            oks = [
                classify.correct(inp.scores[m, s].heldout, inp.heldout["toxic"], thresholds[m, s])
                for m in (fa, base)
            ]
            tables.setdefault("heldout", []).append(_counts(*oks))
            for st in [c for c in inp.heldout.columns if c not in ("text", "toxic")]:
                sub_tables.setdefault("heldout", {}).setdefault(st, []).append(
                    _counts(*oks, inp.heldout[st].to_numpy())
                )
    return {
        "seeds": seeds,
        **{k: _summarise(v) for k, v in tables.items()},
        "per_seed": tables,
        "subtypes": {
            split: {st: _summarise(v) for st, v in d.items()} for split, d in sub_tables.items()
        },
    }


def _counts(ok_fa: np.ndarray, ok_base: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """How many outputs both, only FA-IRL, only the baseline, or neither classify correctly."""
    if mask is not None:
        ok_fa, ok_base = ok_fa[mask], ok_base[mask]
    return dict(
        zip(
            DISAGREEMENT,
            (
                int((ok_fa & ok_base).sum()),
                int((ok_fa & ~ok_base).sum()),
                int((~ok_fa & ok_base).sum()),
                int((~ok_fa & ~ok_base).sum()),
            ),
        )
    )


def _summarise(rows: list[dict]) -> dict:
    return {
        c: {
            "mean": float(np.mean([r[c] for r in rows])),
            "std": float(np.std([r[c] for r in rows])),
        }
        for c in DISAGREEMENT
    }


# ------------------------------------------------------------------- degenerate data
def data_warnings(inp: EvalInputs) -> list[dict]:
    """A warning for each metric that the data cannot support: too few pairs or outputs for
    it (the minimums above), pairs whose two texts are identical, a ground truth constant on
    the test outputs. Each is {"kind", "metrics" (keys as in `models`/`methods`, "*" for all),
    "reason", "sizes"}."""
    pairs, train, test = inp.pairs, inp.train, inp.test
    out: list[dict] = []

    def warn(kind: str, metrics: list[str], reason: str, **sizes) -> None:
        out.append(
            {
                "kind": kind,
                "metrics": metrics,
                "reason": reason,
                "sizes": {k: int(v) for k, v in sizes.items()},
            }
        )

    same = np.array(
        [
            a == b
            for a, b in zip(
                pairs.texts("chosen", inp.text_mode), pairs.texts("rejected", inp.text_mode)
            )
        ],
        dtype=bool,
    )
    if train.any() and same[train].all():
        warn(
            "identical_pairs",
            ["*"],
            "every training pair has identical chosen and rejected "
            "texts: the pairwise losses are constant, so no reward learned a preference (the "
            "standard-IRL ones stay at their random initialisation) and no metric here "
            "measures one",
            train_pairs=train.sum(),
        )
    for split, mask in (("train", train), ("test", test)):
        n, k = int(mask.sum()), int((same & mask).sum())
        if n < MIN_PAIRS:
            warn(
                "few_pairs",
                [f"{split}/pairwise_accuracy"],
                f"only {n} {split} pair(s) (minimum {MIN_PAIRS}): one pair moves it by "
                f"{1 / max(n, 1):.2f}",
                pairs=n,
                minimum=MIN_PAIRS,
            )
        if k:
            warn(
                "identical_pairs",
                [f"{split}/pairwise_accuracy"],
                f"{k} of {n} {split} pairs have identical chosen and rejected texts: every "
                "reward ties on them, and a tie counts as wrong",
                identical=k,
                pairs=n,
            )
    classes = []
    if pairs.has_labels:
        for split, mask in (("train", train), ("test", test)):
            classes.append((split, inp.column("toxic", mask, bool)))
    if pairs.has_labels:
        classes += [(key, df["toxic"].to_numpy(bool)) for key, df in heldout_sets(inp)]
    for split, y in classes:
        pos, neg = int(y.sum()), int((~y).sum())
        if min(pos, neg) < MIN_PER_CLASS:
            warn(
                "few_per_class",
                [f"{split}/{k}" for k in ("accuracy", "f1", "auc")],
                f"{pos} toxic and {neg} non-toxic {split} outputs (minimum {MIN_PER_CLASS} of "
                "each)",
                toxic=pos,
                non_toxic=neg,
                minimum=MIN_PER_CLASS,
            )
    n_out = int(2 * test.sum())
    if n_out < MIN_OUTPUTS:
        warn(
            "few_outputs",
            [f"test/{k}" for k in inp.distance_names if pairs.has_scores]
            + ["dispersion/starc", "dispersion/starc_l2"],
            f"only {n_out} test outputs (minimum {MIN_OUTPUTS}): on 2 outputs every distance "
            "is 0 or its maximum whatever the rewards",
            test_outputs=n_out,
            minimum=MIN_OUTPUTS,
        )
    if pairs.has_scores and test.any():
        gt = inp.column("score", test, float)
        if np.ptp(gt) <= 1e-12 * max(1.0, float(np.abs(gt).max())):
            warn(
                "constant_ground_truth",
                [f"test/{k}" for k in inp.distance_names],
                f"the ground-truth score is {float(gt[0]):g} on every test output: a distance "
                "to a constant reward is undefined, so these are left null",
                test_outputs=n_out,
            )
    return out


def constant_reward_warnings(
    undefined: dict[tuple[str, str], list[str]], n_test_outputs: int
) -> list[dict]:
    """One warning per reason and set of models whose reward is constant on the test outputs,
    naming the distances it leaves null (`model_metrics`' `undefined`)."""
    by_reason: dict[tuple[str, tuple], list[str]] = {}
    for (why, name), models in sorted(undefined.items()):
        by_reason.setdefault((why, tuple(models)), []).append(f"test/{name}")
    return [
        {
            "kind": "constant_reward",
            "metrics": names,
            "models": list(models),
            "reason": f"{why} (left null)",
            "sizes": {"test_outputs": n_test_outputs},
        }
        for (why, models), names in by_reason.items()
    ]


def slice_warnings(key: str, fs: dict) -> list[dict]:
    """A warning when comparison `key`'s failure slice holds fewer than MIN_PAIRS test pairs
    on average over seeds."""
    n_slice = fs["mean"].get("n_pairs")
    if n_slice is None or n_slice >= MIN_PAIRS:
        return []
    return [
        {
            "kind": "small_slice",
            "metrics": [f"failure_slice/{key}"],
            "reason": f"the failure slice holds {n_slice:g} test pairs on "
            f"average over seeds (minimum {MIN_PAIRS})",
            "sizes": {"slice_pairs_mean": n_slice, "minimum": MIN_PAIRS},
        }
    ]


def data_notes(inp: EvalInputs) -> list[str]:
    """Metrics the data leaves out or undefined, and why (metrics.json "notes")."""
    df, notes = inp.df, []
    if heldout_sets(inp) and inp.text_mode != "completion":
        notes.append(
            "held-out texts have no prompt: they are embedded alone although the "
            "rewards were trained on prompt+completion"
        )
    if not inp.pairs.has_labels:
        notes.append(
            "no chosen_toxic/rejected_toxic labels: classification, failure-slice "
            "classification and disagreement tables are skipped"
        )
    if not inp.pairs.has_scores:
        notes.append("no chosen_score/rejected_score: reward distances (STARC etc.) are skipped")
    if inp.groups is None:
        notes.append(
            "starc_val (per-prompt centering) skipped: every test output answers a "
            "different prompt, so there is nothing to centre within a prompt"
        )
    if not inp.pairs.has_labels:
        return notes
    for split, mask in (("train", inp.train), ("test", inp.test)):
        y = inp.column("toxic", mask)
        if y.all() or not y.any():
            notes.append(
                f"{split} outputs are all {'toxic' if y.all() else 'non-toxic'}: "
                f"{split}/auc is undefined" + ("" if y.any() else f" and {split}/f1 too")
            )
    for key, held in heldout_sets(inp):
        if held["toxic"].all() or not held["toxic"].any():
            what = "the held-out set" if key == "heldout" else f"held-out set {key[8:]!r}"
            notes.append(
                f"{what} has one class only: {key}/auc (and f1 without toxic comments) are "
                "undefined"
            )
    for st in inp.pairs.subtypes:
        lab = df[[f"chosen_sub_{st}", f"rejected_sub_{st}"]].to_numpy(float)
        if not (np.nan_to_num(lab) > 0.5).any():
            notes.append(
                f"subtype {st!r}: no output carries it (score > 0.5), so its Table 3 rows are empty"
            )
    return notes


# ------------------------------------------------------------------------------ helpers
def heldout_sets(inp: EvalInputs) -> list[tuple[str, pd.DataFrame]]:
    """Every labelled held-out set with its metrics.json prefix: `heldout`, `heldout-<name>`."""
    named = [(f"heldout-{name}", df) for name, df in inp.heldout_sets.items()]
    return ([("heldout", inp.heldout)] if inp.heldout is not None else []) + named


def _prefixed(prefix: str, d: dict) -> dict:
    return {f"{prefix}/{k}": v for k, v in d.items()}


def _agg(rows: list[dict], keys: list[str], fn) -> dict:
    """fn (mean or std) over the rows of each key, skipping nulls; None if all are null."""
    out = {}
    for k in keys:
        vals = [r[k] for r in rows if r.get(k) is not None]
        out[k] = float(fn(vals)) if vals else None
    return out
